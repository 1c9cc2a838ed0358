// ChannelLoops (cpu/channel_loops.h) for 32 float channels in the AVX2 build: four 8-float
// vectors per row, sums kept in registers, and the final reductions of four dot products done
// together. cpu/kernel_target.h picks it for float and D = 32 (256 channels in 8 heads: every
// detector here). Included by the AVX2 build only; its functions are compiled for AVX2 and FMA.
//
// Each function does the operations of its ChannelLoops counterpart in the same order (lane k of
// a vector holds the partial sum part[k] of cpu::dot), so up to FMA contraction the results are
// those of the generic loops; tests/ops/test_ms_deform_attn.py compares both at D = 32 and 33.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstdint>

#include "cpu/channel_loops.h"
#include "sampling.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")

namespace lite_detr {
namespace cpu {
namespace avx2 {

// The sum of the 8 lanes of each of x[0..3], in cpu::dot's order: ((p0 + p4) + (p1 + p5)) +
// ((p2 + p6) + (p3 + p7)), + 0 as its tail.
inline void reduce4(const __m256 x[4], float out[4]) {
  __m128 h[4];
  for (int c = 0; c < 4; ++c) {  // (p0 + p4, p1 + p5, p2 + p6, p3 + p7)
    h[c] = _mm_add_ps(_mm256_castps256_ps128(x[c]), _mm256_extractf128_ps(x[c], 1));
  }
  const __m128 sums = _mm_hadd_ps(_mm_hadd_ps(h[0], h[1]), _mm_hadd_ps(h[2], h[3]));
  _mm_storeu_ps(out, _mm_add_ps(sums, _mm_setzero_ps()));
}

class ChannelLoops32 {
 public:
  using acc_t = float;
  static constexpr int64_t kChannels = 32;

  explicit ChannelLoops32(int64_t /*D: 32*/) {}

  static constexpr int64_t D() { return 32; }

  // combine4<true>() over the points, summed in registers
  void weighted_corners(const float* const* rows, const float* w, int64_t LP, float* out) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    for (int64_t j = 0; j < LP; ++j) {
      const float* const* r = rows + 4 * j;
      const __m256 w0 = _mm256_set1_ps(w[4 * j]), w1 = _mm256_set1_ps(w[4 * j + 1]);
      const __m256 w2 = _mm256_set1_ps(w[4 * j + 2]), w3 = _mm256_set1_ps(w[4 * j + 3]);
      for (int k = 0; k < 4; ++k) {
        __m256 x = _mm256_fmadd_ps(w0, _mm256_loadu_ps(r[0] + 8 * k),
                                   _mm256_mul_ps(w1, _mm256_loadu_ps(r[1] + 8 * k)));
        x = _mm256_fmadd_ps(w2, _mm256_loadu_ps(r[2] + 8 * k), x);
        x = _mm256_fmadd_ps(w3, _mm256_loadu_ps(r[3] + 8 * k), x);
        acc[k] = _mm256_add_ps(acc[k], x);
      }
    }
    for (int k = 0; k < 4; ++k) {
      _mm256_storeu_ps(out + 8 * k, acc[k]);
    }
  }

  // the samples and their dot products with x, the reductions of four points at once
  void samples_and_dots(const float* const* rows, const float* w, const float* x, int64_t LP,
                        float* v, float* dots) {
    const __m256 xs[4] = {_mm256_loadu_ps(x), _mm256_loadu_ps(x + 8), _mm256_loadu_ps(x + 16),
                          _mm256_loadu_ps(x + 24)};
    for (int64_t j0 = 0; j0 < LP; j0 += 4) {
      __m256 sums[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                        _mm256_setzero_ps()};
      const int64_t count = std::min<int64_t>(4, LP - j0);
      for (int64_t i = 0; i < count; ++i) {
        const int64_t j = j0 + i;
        const float* const* r = rows + 4 * j;
        const __m256 w0 = _mm256_set1_ps(w[4 * j]), w1 = _mm256_set1_ps(w[4 * j + 1]);
        const __m256 w2 = _mm256_set1_ps(w[4 * j + 2]), w3 = _mm256_set1_ps(w[4 * j + 3]);
        for (int k = 0; k < 4; ++k) {
          __m256 s = _mm256_mul_ps(w0, _mm256_loadu_ps(r[0] + 8 * k));
          s = _mm256_fmadd_ps(w1, _mm256_loadu_ps(r[1] + 8 * k), s);
          s = _mm256_fmadd_ps(w2, _mm256_loadu_ps(r[2] + 8 * k), s);
          s = _mm256_fmadd_ps(w3, _mm256_loadu_ps(r[3] + 8 * k), s);
          _mm256_storeu_ps(v + 32 * j + 8 * k, s);
          sums[i] = _mm256_fmadd_ps(s, xs[k], sums[i]);
        }
      }
      float out[4];
      reduce4(sums, out);
      std::copy(out, out + count, dots + j0);
    }
  }

  // the samples alone (the keys' when key is given): the generic loop suffices
  void samples(const float* const* rows, const float* w, int64_t LP, float* v) {
    for (int64_t j = 0; j < LP; ++j) {
      combine4<false>(v + 32 * j, rows + 4 * j, w + 4 * j, int64_t(32));
    }
  }

  // axpy() from zero in j order, summed in registers, then scaled (a scale of 1 changes nothing)
  void weighted_sum(const float* v, const float* a, int64_t LP, float scale, float* out) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    for (int64_t j = 0; j < LP; ++j) {
      const __m256 aj = _mm256_set1_ps(a[j]);
      for (int k = 0; k < 4; ++k) {
        acc[k] = _mm256_fmadd_ps(aj, _mm256_loadu_ps(v + 32 * j + 8 * k), acc[k]);
      }
    }
    const __m256 scale8 = _mm256_set1_ps(scale);
    for (int k = 0; k < 4; ++k) {
      _mm256_storeu_ps(out + 8 * k, _mm256_mul_ps(acc[k], scale8));
    }
  }

  void corner_dots(const float* const rows[4], const float* x, float out[4]) {
    __m256 xs[4];
    for (int k = 0; k < 4; ++k) {
      xs[k] = _mm256_loadu_ps(x + 8 * k);
    }
    corner_dots_in_registers(rows, xs, out);
  }

  // a x + b y is formed in registers (it is the per-point gradient of pass 1: through a buffer
  // it cost a store and a reload of 32 floats at every point)
  void corner_dots_of_sum(const float* const rows[4], float a, const float* x, float b,
                          const float* y, float out[4]) {
    const __m256 a8 = _mm256_set1_ps(a), b8 = _mm256_set1_ps(b);
    __m256 xs[4];
    for (int k = 0; k < 4; ++k) {
      xs[k] = _mm256_fmadd_ps(a8, _mm256_loadu_ps(x + 8 * k),
                              _mm256_mul_ps(b8, _mm256_loadu_ps(y + 8 * k)));
    }
    corner_dots_in_registers(rows, xs, out);
  }

  // dot_axpy() at the four corners at once; the corners outside the map read a row of zeros and
  // update a scratch row with weight 0, so the loop has no branches
  void dot_axpy_corners(const BilinearPoint<float>& b, const float* v, float* grad_v,
                        int64_t stride, const float* g, float a, float g_dot_v[4]) {
    const __m256 gs[4] = {_mm256_loadu_ps(g), _mm256_loadu_ps(g + 8), _mm256_loadu_ps(g + 16),
                          _mm256_loadu_ps(g + 24)};
    __m256 sums[4];
    for (int c = 0; c < 4; ++c) {
      const bool inside = b.token[c] >= 0;
      const float* row = inside ? v + b.token[c] * stride : zeros_.data();
      float* grad_row = inside ? grad_v + b.token[c] * stride : scratch_.data();
      const __m256 alpha = _mm256_set1_ps(inside ? a * b.w[c] : 0.0f);
      sums[c] = _mm256_setzero_ps();
      for (int k = 0; k < 4; ++k) {
        sums[c] = _mm256_fmadd_ps(_mm256_loadu_ps(row + 8 * k), gs[k], sums[c]);
        const __m256 updated = _mm256_fmadd_ps(alpha, gs[k], _mm256_loadu_ps(grad_row + 8 * k));
        _mm256_storeu_ps(grad_row + 8 * k, updated);
      }
    }
    reduce4(sums, g_dot_v);
  }

 private:
  // corner_dots() of x = xs[0..3], 8 channels each
  static void corner_dots_in_registers(const float* const rows[4], const __m256 xs[4],
                                       float out[4]) {
    __m256 sums[4];
    for (int c = 0; c < 4; ++c) {
      sums[c] = _mm256_mul_ps(xs[0], _mm256_loadu_ps(rows[c]));
      for (int k = 1; k < 4; ++k) {
        sums[c] = _mm256_fmadd_ps(xs[k], _mm256_loadu_ps(rows[c] + 8 * k), sums[c]);
      }
    }
    reduce4(sums, out);
  }

  std::array<float, 32> zeros_{};
  std::array<float, 32> scratch_{};
};

}  // namespace avx2
}  // namespace cpu
}  // namespace lite_detr

#pragma GCC pop_options
