// CPU kernels of lite_detr::ms_deform_attn_key_aware (Lite DETR, Li et al. 2023, sec. 3.3).
//
// Fused: per (n, q, m) the L*P keys and values are gathered into a per-task buffer (one gather
// when key is None, since k == v), then logits q.k / sqrt(D), a max-subtracted softmax and the
// weighted sum. Nothing of size (N, Lq, M, L*P, D) is allocated. The softmax weights (N, Lq, M,
// L*P) are returned for the backward, which recomputes the samples.
//
// Backward, with a = softmax(s), s_j = q.k_j / sqrt(D), g = grad_output:
//   ds_j = a_j (g.v_j - g.out),  grad_q = sum_j ds_j k_j / sqrt(D),
//   grad_k_j = ds_j q / sqrt(D),  grad_v_j = a_j g  (both scattered bilinearly),
//   grad_loc_j = sum over corners of dw/dxy * (grad_v_j . V_c + grad_k_j . K_c).
// Pass 1, parallel over (n, q), reads only: the dot products g.V_c and q.K_c of every corner give
// ds_j, grad_loc and grad_q. Pass 2, parallel over (n, m, l) slices, scatters grad_v_j and
// grad_k_j: one writer per grad_value / grad_key slice, one query order (cpu/query_order.h), so
// the gradients are bitwise reproducible run to run and for any number of threads.
//
// The AVX2 build has its own forward and pass 1 for 32 float channels with k == v (every Lite DETR
// layer here): the samples and their dot products four points at a time, sums kept in registers,
// and a pass 1 that needs one dot product per corner instead of two (backward_dots_kernel_32).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>  // the AVX2 build's corner dot products
#endif

#include "cpu/bilinear.h"
#include "cpu/gradient_buffers.h"
#include "cpu/instruction_set.h"
#include "cpu/query_order.h"
#include "ms_deform_attn.h"

// last: the AVX2 build compiles what follows for AVX2 (namespace LITE_DETR_CPU_NS)
#include "cpu/kernel_target.h"

namespace lite_detr {
namespace LITE_DETR_CPU_NS {
namespace {

using cpu::axpy;
using cpu::combine4;
using cpu::corner_rows;
using cpu::dense_slice;
using cpu::dot;
using cpu::prefetch;
using cpu::prefetch_corners;
using cpu::prefetch_rows;
using cpu::SliceBuffer;

constexpr const char* kForward = "lite_detr::ms_deform_attn_key_aware";
constexpr const char* kBackward = "lite_detr::ms_deform_attn_key_aware_backward";
constexpr int64_t kAhead = 8;  // queries between a prefetch and the use of its rows
constexpr int64_t kLead = 4;   // queries between a scatter's corner prefetch and its update

struct Sizes {
  int64_t N, S, M, D, Lq, L, P;
};

// dst = bilinear sample at `b` of the level slice `level` (token 0 of head m); zero when no corner
// lies inside the map.
template <typename acc_t, typename scalar_t>
inline void gather(acc_t* dst, const scalar_t* level, const BilinearPoint<acc_t>& b, int64_t row,
                   const scalar_t* zeros, int64_t D) {
  const scalar_t* rows[4];
  acc_t w[4];
  corner_rows<acc_t>(b, level, row, zeros, acc_t(1), rows, w);
  combine4<false>(dst, rows, w, D);
}

#if defined(LITE_DETR_CPU_AVX2)
// The sum of the 8 lanes of each of x[0..3], in dot()'s order: ((p0 + p4) + (p1 + p5)) + ((p2 +
// p6) + (p3 + p7)), + 0 as dot()'s tail.
inline void reduce4(const __m256 x[4], float out[4]) {
  __m128 h[4];
  for (int c = 0; c < 4; ++c) {  // (p0 + p4, p1 + p5, p2 + p6, p3 + p7)
    h[c] = _mm_add_ps(_mm256_castps256_ps128(x[c]), _mm256_extractf128_ps(x[c], 1));
  }
  const __m128 sums = _mm_hadd_ps(_mm_hadd_ps(h[0], h[1]), _mm_hadd_ps(h[2], h[3]));
  _mm_storeu_ps(out, _mm_add_ps(sums, _mm_setzero_ps()));
}

// The samples v_j = sum_c w_c V_c of the LP points (into v, 32 floats each) and their logits q.v_j,
// for 32 float channels and k == v (the AVX2 build's common case): combine4() and dot() in
// registers, the final reductions of four points at once. Also gives g.v_j, with g for q.
inline void samples_and_logits_32(const float* const* rows, const float* w, const float* q,
                                  int64_t LP, float* v, float* logits) {
  const __m256 qs[4] = {_mm256_loadu_ps(q), _mm256_loadu_ps(q + 8), _mm256_loadu_ps(q + 16),
                        _mm256_loadu_ps(q + 24)};
  for (int64_t j0 = 0; j0 < LP; j0 += 4) {
    __m256 dots[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                      _mm256_setzero_ps()};
    const int64_t count = std::min<int64_t>(4, LP - j0);
    for (int64_t i = 0; i < count; ++i) {
      const int64_t j = j0 + i;
      const float* const* r = rows + 4 * j;
      const __m256 w0 = _mm256_set1_ps(w[4 * j]), w1 = _mm256_set1_ps(w[4 * j + 1]);
      const __m256 w2 = _mm256_set1_ps(w[4 * j + 2]), w3 = _mm256_set1_ps(w[4 * j + 3]);
      for (int k = 0; k < 4; ++k) {
        __m256 x = _mm256_mul_ps(w0, _mm256_loadu_ps(r[0] + 8 * k));
        x = _mm256_fmadd_ps(w1, _mm256_loadu_ps(r[1] + 8 * k), x);
        x = _mm256_fmadd_ps(w2, _mm256_loadu_ps(r[2] + 8 * k), x);
        x = _mm256_fmadd_ps(w3, _mm256_loadu_ps(r[3] + 8 * k), x);
        _mm256_storeu_ps(v + 32 * j + 8 * k, x);
        dots[i] = _mm256_fmadd_ps(x, qs[k], dots[i]);
      }
    }
    float out[4];
    reduce4(dots, out);
    std::copy(out, out + count, logits + j0);
  }
}

// out = scale * sum_j a_j v_j over the LP samples of samples_and_logits_32(), summed in registers
// (axpy() from zero, in j order; a scale of 1 changes nothing).
inline void weighted_sum_32(const float* v, const float* a, int64_t LP, float scale, float* out) {
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

// Backward, pass 1, for 32 float channels and k == v (the AVX2 build's common case): the same
// quantities as backward_dots_kernel() from fewer operations, rounded differently. Per (query,
// head), with u_j = a_j g + ds_j scale q, the gradient of the shared sample v_j:
//   the samples v_j and g.v_j, four reductions at once (samples_and_logits_32() with g for q);
//   ds_j = a_j (g.v_j - g.out) with g.out = sum_j a_j g.v_j;
//   grad_q = scale sum_j ds_j v_j, summed in registers (weighted_sum_32() with ds for a);
//   per corner u_j.V_c, whose dw/dx- and dw/dy-weighted sums are grad_loc.
// That is one dot product per corner and one per point, where the generic pass takes g.V_c and
// q.K_c at every corner and then sums ds_j w_c K_c over the corners again for grad_q.
void backward_dots_kernel_32(const float* grad_out, const float* query, const float* value,
                             const int64_t* shapes, const int64_t* starts, const float* locations,
                             const float* attn, float* grad_query, float* grad_loc, float* ds,
                             const std::vector<int64_t>& order, Sizes s) {
  constexpr int64_t D = 32;
  const int64_t M = s.M, L = s.L, P = s.P, LP = s.L * s.P, row = s.M * D;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  at::parallel_for(0, s.N * s.Lq, 8, [&](int64_t begin, int64_t end) {
    // per-task buffers: the corner rows and weights of the L*P points, their samples and g.v_j
    std::vector<float> w(4 * LP), v(LP * D), g_dot_v(LP);
    std::vector<const float*> rows(4 * LP);
    std::vector<BilinearPoint<float>> points(LP);
    std::vector<char> valid(LP);
    const std::vector<float> zeros(D, 0.0f);
    for (int64_t i_nq = begin; i_nq < end; ++i_nq) {
      const int64_t nq = order.empty() ? i_nq : order[i_nq];
      const int64_t n = nq / s.Lq;
      for (int64_t m = 0; m < M; ++m) {
        const int64_t qm = nq * M + m;
        const float* a = attn + qm * LP;
        const float* g = grad_out + qm * D;
        // corners of every point first, with prefetches, so the reads below overlap; a point
        // outside the map reads zeros with weight 0 (v_j = 0)
        for (int64_t l = 0; l < L; ++l) {
          const Level lv = level_at(shapes, starts, l, s.S);
          const int64_t offset = ((n * s.S + lv.start) * M + m) * D;
          for (int64_t p = 0; p < P; ++p) {
            const int64_t j = l * P + p, i = qm * LP + j;
            BilinearPoint<float>& b = points[j];
            valid[j] = bilinear_setup<float>(locations[2 * i], locations[2 * i + 1], lv.H, lv.W, b);
            if (!valid[j]) {
              b.token[0] = b.token[1] = b.token[2] = b.token[3] = -1;
            }
            corner_rows<float>(b, value + offset, row, zeros.data(), 1.0f, &rows[4 * j], &w[4 * j]);
            prefetch_rows(&rows[4 * j], D * sizeof(float));
          }
        }
        samples_and_logits_32(rows.data(), w.data(), g, LP, v.data(), g_dot_v.data());
        float g_dot_out = 0;
        for (int64_t j = 0; j < LP; ++j) {
          g_dot_v[j] = valid[j] ? g_dot_v[j] : 0.0f;  // exactly 0, even for a non-finite g
          g_dot_out += a[j] * g_dot_v[j];
        }
        float* ds_q = ds + qm * LP;
        for (int64_t j = 0; j < LP; ++j) {
          ds_q[j] = a[j] * (g_dot_v[j] - g_dot_out);
        }
        // grad_q = scale sum_j ds_j v_j (a point outside the map has v_j = 0 and adds nothing)
        weighted_sum_32(v.data(), ds_q, LP, scale, grad_query + qm * D);
        __m256 g8[4], q8[4];
        for (int k = 0; k < 4; ++k) {
          g8[k] = _mm256_loadu_ps(g + 8 * k);
          q8[k] = _mm256_loadu_ps(query + qm * D + 8 * k);
        }
        // grad_loc: u_j . V_c at the corners, weighted by dw/dx and dw/dy; every element is
        // written (grad_loc is not zeroed first), 0 for the points outside the map
        for (int64_t l = 0; l < L; ++l) {
          const Level lv = level_at(shapes, starts, l, s.S);
          for (int64_t p = 0; p < P; ++p) {
            const int64_t j = l * P + p, i = qm * LP + j;
            if (!valid[j]) {
              grad_loc[2 * i] = grad_loc[2 * i + 1] = 0.0f;
              continue;
            }
            const __m256 aj = _mm256_set1_ps(a[j]), dk = _mm256_set1_ps(ds_q[j] * scale);
            __m256 u[4];
            for (int k = 0; k < 4; ++k) {
              u[k] = _mm256_fmadd_ps(dk, q8[k], _mm256_mul_ps(aj, g8[k]));
            }
            __m256 dots[4];
            for (int c = 0; c < 4; ++c) {
              const float* r = rows[4 * j + c];
              dots[c] = _mm256_mul_ps(u[0], _mm256_loadu_ps(r));
              for (int k = 1; k < 4; ++k) {
                dots[c] = _mm256_fmadd_ps(u[k], _mm256_loadu_ps(r + 8 * k), dots[c]);
              }
            }
            float u_dot_c[4];
            reduce4(dots, u_dot_c);
            const BilinearPoint<float>& b = points[j];
            float g_x = 0, g_y = 0;
            for (int c = 0; c < 4; ++c) {
              const float d = b.token[c] >= 0 ? u_dot_c[c] : 0.0f;  // 0 outside the map
              g_x += b.dw_dx[c] * d;
              g_y += b.dw_dy[c] * d;
            }
            grad_loc[2 * i] = g_x * static_cast<float>(lv.W);
            grad_loc[2 * i + 1] = g_y * static_cast<float>(lv.H);
          }
        }
      }
    }
  });
}
#endif

template <typename scalar_t>
void forward_kernel(const scalar_t* query, const scalar_t* value, const scalar_t* key,
                    const int64_t* shapes, const int64_t* starts, const scalar_t* locations,
                    scalar_t* out, at::opmath_type<scalar_t>* attn, Sizes s) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t D = s.D, M = s.M, L = s.L, P = s.P, LP = s.L * s.P, row = s.M * s.D;
  const acc_t scale = acc_t(1) / std::sqrt(static_cast<acc_t>(D));
  const std::vector<int64_t> order =
      cpu::query_order(locations, shapes, starts, s.N, s.S, s.Lq, s.M, s.L, s.P);
  at::parallel_for(0, s.N * s.Lq, 8, [&](int64_t begin, int64_t end) {
    // per-task buffers, reused by every query: the sampled values (L*P x D), one sampled key,
    // the corner rows and weights of the L*P points
    std::vector<acc_t> q(D), v(LP * D), k(key ? D : 0), logits(LP), acc(D), w(4 * LP);
    std::vector<const scalar_t*> rows(4 * LP), key_rows(key ? 4 * LP : 0);
    const std::vector<scalar_t> zeros(D, scalar_t(0));
    BilinearPoint<acc_t> b;
    for (int64_t i_nq = begin; i_nq < end; ++i_nq) {
      const int64_t nq = order.empty() ? i_nq : order[i_nq];
      const int64_t n = nq / s.Lq;
      for (int64_t m = 0; m < M; ++m) {
        const int64_t qm = nq * M + m;
        for (int64_t d = 0; d < D; ++d) {
          q[d] = static_cast<acc_t>(query[qm * D + d]) * scale;
        }
        // corners of every point first, with prefetches, so the gathers below overlap
        for (int64_t l = 0; l < L; ++l) {
          const Level lv = level_at(shapes, starts, l, s.S);
          const int64_t H = lv.H, W = lv.W;
          const int64_t offset = ((n * s.S + lv.start) * M + m) * D;
          for (int64_t p = 0; p < P; ++p) {
            const int64_t j = l * P + p, i = qm * LP + j;
            if (!bilinear_setup<acc_t>(locations[2 * i], locations[2 * i + 1], H, W, b)) {
              b.token[0] = b.token[1] = b.token[2] = b.token[3] = -1;  // k = v = 0, logit 0
            }
            corner_rows<acc_t>(b, value + offset, row, zeros.data(), acc_t(1), &rows[4 * j],
                               &w[4 * j]);
            prefetch_rows(&rows[4 * j], D * sizeof(scalar_t));
            if (key) {
              acc_t unused[4];
              corner_rows<acc_t>(b, key + offset, row, zeros.data(), acc_t(1), &key_rows[4 * j],
                                 unused);
              prefetch_rows(&key_rows[4 * j], D * sizeof(scalar_t));
            }
          }
        }
        bool fast = false;  // the AVX2 build's path for 32 float channels and k == v
#if defined(LITE_DETR_CPU_AVX2)
        if constexpr (std::is_same_v<scalar_t, float>) {
          fast = D == 32 && !key;
          if (fast) {
            samples_and_logits_32(rows.data(), w.data(), q.data(), LP, v.data(), logits.data());
          }
        }
#endif
        for (int64_t j = 0; j < LP && !fast; ++j) {
          acc_t* vj = v.data() + j * D;
          combine4<false>(vj, &rows[4 * j], &w[4 * j], D);
          if (key) {
            combine4<false>(k.data(), &key_rows[4 * j], &w[4 * j], D);
            logits[j] = dot(k.data(), q.data(), D);
          } else {
            logits[j] = dot(vj, q.data(), D);
          }
        }
        const acc_t max = *std::max_element(logits.begin(), logits.end());
        acc_t sum = 0;
        for (int64_t j = 0; j < LP; ++j) {
          logits[j] = std::exp(logits[j] - max);
          sum += logits[j];
        }
        acc_t* a = attn + qm * LP;
        for (int64_t j = 0; j < LP; ++j) {
          a[j] = logits[j] / sum;
        }
#if defined(LITE_DETR_CPU_AVX2)
        if constexpr (std::is_same_v<scalar_t, float>) {
          if (fast) {
            weighted_sum_32(v.data(), a, LP, 1.0f, out + qm * D);
            continue;
          }
        }
#endif
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t j = 0; j < LP; ++j) {
          axpy(acc.data(), v.data() + j * D, a[j], D);
        }
        for (int64_t d = 0; d < D; ++d) {
          out[qm * D + d] = static_cast<scalar_t>(acc[d]);
        }
      }
    }
  });
}

#if defined(LITE_DETR_CPU_AVX2)
// cpu::dot(v[c], x) and cpu::dot(k[c], y) at the four corners of a point, for 32 float channels
// (the AVX2 build's common case): the same operations in the same order as dot() (lane i of a
// vector is its part[i]), so bitwise dot()'s results; the eight final reductions run together,
// as horizontal adds over four sums at once.
inline void dots4_32(const float* const v[4], const float* const k[4], const float* x,
                     const float* y, float v_dot_x[4], float k_dot_y[4]) {
  __m128 qv[4], qk[4];
  for (int c = 0; c < 4; ++c) {
    __m256 sv = _mm256_setzero_ps(), sk = _mm256_setzero_ps();
    for (int i = 0; i < 4; ++i) {
      sv = _mm256_fmadd_ps(_mm256_loadu_ps(v[c] + 8 * i), _mm256_loadu_ps(x + 8 * i), sv);
      sk = _mm256_fmadd_ps(_mm256_loadu_ps(k[c] + 8 * i), _mm256_loadu_ps(y + 8 * i), sk);
    }
    // (p0 + p4, p1 + p5, p2 + p6, p3 + p7)
    qv[c] = _mm_add_ps(_mm256_castps256_ps128(sv), _mm256_extractf128_ps(sv, 1));
    qk[c] = _mm_add_ps(_mm256_castps256_ps128(sk), _mm256_extractf128_ps(sk, 1));
  }
  // ((p0 + p4) + (p1 + p5)) + ((p2 + p6) + (p3 + p7)), + 0 as dot()'s tail
  const __m128 zero = _mm_setzero_ps();
  _mm_storeu_ps(
      v_dot_x, _mm_add_ps(_mm_hadd_ps(_mm_hadd_ps(qv[0], qv[1]), _mm_hadd_ps(qv[2], qv[3])), zero));
  _mm_storeu_ps(
      k_dot_y, _mm_add_ps(_mm_hadd_ps(_mm_hadd_ps(qk[0], qk[1]), _mm_hadd_ps(qk[2], qk[3])), zero));
}
#endif

// Backward, pass 1 (reads only; parallel over (n, q) like the forward): the dot products of g and
// q with the corner rows give g.v_j, ds_j, grad_loc and grad_q; ds_j is kept for pass 2.
template <typename scalar_t>
void backward_dots_kernel(const scalar_t* grad_out, const scalar_t* query, const scalar_t* value,
                          const scalar_t* key, const int64_t* shapes, const int64_t* starts,
                          const scalar_t* locations, const at::opmath_type<scalar_t>* attn,
                          scalar_t* grad_query, scalar_t* grad_loc, at::opmath_type<scalar_t>* ds,
                          const std::vector<int64_t>& order, Sizes s) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t D = s.D, M = s.M, L = s.L, P = s.P, LP = s.L * s.P, row = s.M * s.D;
  const scalar_t* keys = key ? key : value;  // k == v when key is None
  const acc_t scale = acc_t(1) / std::sqrt(static_cast<acc_t>(D));
  at::parallel_for(0, s.N * s.Lq, 8, [&](int64_t begin, int64_t end) {
    // per-task buffers: g and q, the points, g.V_c and q.K_c of their corners, g.v_j
    std::vector<acc_t> g(D), q(D), grad_q(D), g_dot_c(4 * LP), q_dot_c(4 * LP), g_dot_v(LP);
    std::vector<BilinearPoint<acc_t>> points(LP);
    std::vector<char> valid(LP);
    const std::vector<scalar_t> zeros(D, scalar_t(0));
    for (int64_t i_nq = begin; i_nq < end; ++i_nq) {
      const int64_t nq = order.empty() ? i_nq : order[i_nq];
      const int64_t n = nq / s.Lq;
      for (int64_t m = 0; m < M; ++m) {
        const int64_t qm = nq * M + m;
        const acc_t* a = attn + qm * LP;
        for (int64_t d = 0; d < D; ++d) {
          g[d] = static_cast<acc_t>(grad_out[qm * D + d]);
          q[d] = static_cast<acc_t>(query[qm * D + d]);
        }
        // corners of every point first, with prefetches, so the reads below overlap
        for (int64_t l = 0; l < L; ++l) {
          const Level lv = level_at(shapes, starts, l, s.S);
          const int64_t offset = ((n * s.S + lv.start) * M + m) * D;
          for (int64_t p = 0; p < P; ++p) {
            const int64_t j = l * P + p, i = qm * LP + j;
            valid[j] = bilinear_setup<acc_t>(locations[2 * i], locations[2 * i + 1], lv.H, lv.W,
                                             points[j]);
            if (valid[j]) {
              prefetch_corners(points[j], value + offset, row, D);
              if (key) {
                prefetch_corners(points[j], key + offset, row, D);
              }
            }
          }
        }
        // g.V_c and q.K_c of every corner; g.v_j = sum_c w_c g.V_c; g.out = sum_j a_j g.v_j
        acc_t g_dot_out = 0;
        for (int64_t l = 0; l < L; ++l) {
          const int64_t offset = ((n * s.S + level_at(shapes, starts, l, s.S).start) * M + m) * D;
          for (int64_t p = 0; p < P; ++p) {
            const int64_t j = l * P + p;
            const BilinearPoint<acc_t>& b = points[j];
            g_dot_v[j] = 0;
            if (!valid[j]) {
              continue;  // v_j = 0
            }
            bool four_at_once = false;
#if defined(LITE_DETR_CPU_AVX2)
            if constexpr (std::is_same_v<scalar_t, float>) {
              if (D == 32) {
                const float *v_rows[4], *k_rows[4];
                for (int c = 0; c < 4; ++c) {
                  const int64_t t = offset + b.token[c] * row;
                  v_rows[c] = b.token[c] >= 0 ? value + t : zeros.data();
                  k_rows[c] = b.token[c] >= 0 ? keys + t : zeros.data();
                }
                dots4_32(v_rows, k_rows, g.data(), q.data(), &g_dot_c[4 * j], &q_dot_c[4 * j]);
                four_at_once = true;
              }
            }
#endif
            for (int c = 0; c < 4; ++c) {
              const bool inside = b.token[c] >= 0;
              if (!four_at_once) {
                const int64_t t = offset + (inside ? b.token[c] : 0) * row;
                g_dot_c[4 * j + c] = inside ? dot(value + t, g.data(), D) : acc_t(0);
                q_dot_c[4 * j + c] = inside ? dot(keys + t, q.data(), D) : acc_t(0);
              } else if (!inside) {  // exactly 0, as above, even for a non-finite g or q
                g_dot_c[4 * j + c] = q_dot_c[4 * j + c] = 0;
              }
              g_dot_v[j] += b.w[c] * g_dot_c[4 * j + c];
            }
            g_dot_out += a[j] * g_dot_v[j];
          }
        }
        // ds_j, grad_loc, grad_q = scale * sum_j ds_j k_j
        std::fill(grad_q.begin(), grad_q.end(), acc_t(0));
        for (int64_t l = 0; l < L; ++l) {
          const Level lv = level_at(shapes, starts, l, s.S);
          const int64_t offset = ((n * s.S + lv.start) * M + m) * D;
          for (int64_t p = 0; p < P; ++p) {
            const int64_t j = l * P + p, i = qm * LP + j;
            const acc_t ds_j = a[j] * (g_dot_v[j] - g_dot_out);
            ds[qm * LP + j] = ds_j;
            if (!valid[j]) {
              continue;  // k_j = 0: no grad_q term; grad_loc stays zero
            }
            const BilinearPoint<acc_t>& b = points[j];
            acc_t g_x = 0, g_y = 0;
            for (int c = 0; c < 4; ++c) {
              // d out / d corner sample: a_j g . V_c + ds_j scale q . K_c
              const acc_t dv = a[j] * g_dot_c[4 * j + c] + ds_j * scale * q_dot_c[4 * j + c];
              g_x += b.dw_dx[c] * dv;
              g_y += b.dw_dy[c] * dv;
            }
            grad_loc[2 * i] = static_cast<scalar_t>(g_x * static_cast<acc_t>(lv.W));
            grad_loc[2 * i + 1] = static_cast<scalar_t>(g_y * static_cast<acc_t>(lv.H));
            const scalar_t* rows[4];
            acc_t w[4];
            corner_rows<acc_t>(b, keys + offset, row, zeros.data(), ds_j, rows, w);
            combine4<true>(grad_q.data(), rows, w, D);
          }
        }
        for (int64_t d = 0; d < D; ++d) {
          grad_query[qm * D + d] = static_cast<scalar_t>(grad_q[d] * scale);
        }
      }
    }
  });
}

// Backward, pass 2: grad_value += w_c a_j g and grad_key += w_c ds_j scale q at every corner (both
// into grad_value when key is None), one task per (n, m, l) slice (points of level l only touch
// its tokens). Each slice has one writer and sums in query order, whatever the thread count:
// bitwise reproducible.
template <typename scalar_t, int64_t kD>
void backward_scatter_kernel(const scalar_t* grad_out, const scalar_t* query, const int64_t* shapes,
                             const int64_t* starts, const scalar_t* locations,
                             const at::opmath_type<scalar_t>* attn,
                             const at::opmath_type<scalar_t>* ds,
                             at::opmath_type<scalar_t>* grad_value,
                             at::opmath_type<scalar_t>* grad_key, const std::vector<int64_t>& order,
                             Sizes s) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t D = kD > 0 ? kD : s.D, M = s.M, L = s.L, P = s.P, LP = s.L * s.P, row = M * D;
  const acc_t scale = acc_t(1) / std::sqrt(static_cast<acc_t>(D));
  cpu::zero_sparse_levels(grad_value, shapes, starts, s.N, s.S, M, D, L, s.Lq * P);
  if (grad_key) {
    cpu::zero_sparse_levels(grad_key, shapes, starts, s.N, s.S, M, D, L, s.Lq * P);
  }
  at::parallel_for(0, s.N * M * L, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> g(D), q(D), grad_v(D);
    // the points of the queries from iq to iq + kLead, in a ring
    std::vector<BilinearPoint<acc_t>> ring((kLead + 1) * P);
    std::vector<char> ring_valid((kLead + 1) * P);
    SliceBuffer<acc_t> value_slice, key_slice;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / (M * L), m = task / L % M, l = task % L;
      const Level lv = level_at(shapes, starts, l, s.S);
      const int64_t offset = ((n * s.S + lv.start) * M + m) * D;
      // dense slices pay off when the points touch most tokens (encoders); a sparse slice (the
      // decoder's queries) is scattered in place (zeroed before the tasks start): the same sums
      // in the same order
      const int64_t tokens = lv.H * lv.W;
      const bool dense = dense_slice(s.Lq * P, tokens);
      const int64_t stride = dense ? D : row;  // between the tokens of grad_v_level
      acc_t* grad_v_level = dense ? value_slice.reset(tokens, D) : grad_value + offset;
      acc_t* grad_k_level = !grad_key ? nullptr
                            : dense   ? key_slice.reset(tokens, D)
                                      : grad_key + offset;
      for (int64_t iq = 0; iq < s.Lq; ++iq) {
        const int64_t qm = (order.empty() ? n * s.Lq + iq : order[n * s.Lq + iq]) * M + m;
        if (iq + kAhead < s.Lq) {  // this slice reads one row in M * D: prefetch them
          const int64_t ahead =
              (order.empty() ? n * s.Lq + iq + kAhead : order[n * s.Lq + iq + kAhead]) * M + m;
          const int64_t i = ahead * LP + l * P;
          prefetch(grad_out + ahead * D, D * sizeof(scalar_t));
          prefetch(query + ahead * D, D * sizeof(scalar_t));
          prefetch(locations + 2 * i, 2 * P * sizeof(scalar_t));
          prefetch(attn + i, P * sizeof(acc_t));
          prefetch(ds + i, P * sizeof(acc_t));
        }
        // set up the points of query iq + kLead (at first, of every query up to it) and ask for
        // their corner rows: a decoder's corners lie anywhere in a large level, and a prefetch
        // issued just before the update came too late
        for (int64_t iq2 = iq == 0 ? 0 : iq + kLead; iq2 <= iq + kLead && iq2 < s.Lq; ++iq2) {
          const int64_t qm2 = (order.empty() ? n * s.Lq + iq2 : order[n * s.Lq + iq2]) * M + m;
          BilinearPoint<acc_t>* b = &ring[iq2 % (kLead + 1) * P];
          char* inside = &ring_valid[iq2 % (kLead + 1) * P];
          for (int64_t p = 0; p < P; ++p) {
            const int64_t i = qm2 * LP + l * P + p;
            inside[p] =
                bilinear_setup<acc_t>(locations[2 * i], locations[2 * i + 1], lv.H, lv.W, b[p]);
            if (inside[p]) {
              prefetch_corners<true>(b[p], grad_v_level, stride, D);
              if (grad_key) {
                prefetch_corners<true>(b[p], grad_k_level, stride, D);
              }
            }
          }
        }
        const BilinearPoint<acc_t>* points = &ring[iq % (kLead + 1) * P];
        const char* valid = &ring_valid[iq % (kLead + 1) * P];
        for (int64_t d = 0; d < D; ++d) {
          g[d] = static_cast<acc_t>(grad_out[qm * D + d]);
          q[d] = static_cast<acc_t>(query[qm * D + d]);
        }
        for (int64_t p = 0; p < P; ++p) {
          if (!valid[p]) {
            continue;
          }
          const BilinearPoint<acc_t>& b = points[p];
          const int64_t j = qm * LP + l * P + p;
          const acc_t a = attn[j], dk = ds[j] * scale;
          if (!grad_key) {
            for (int64_t d = 0; d < D; ++d) {
              grad_v[d] = a * g[d] + dk * q[d];  // k == v: one gradient for the shared sample
            }
          }
          for (int c = 0; c < 4; ++c) {
            if (b.token[c] < 0) {
              continue;
            }
            const int64_t t = b.token[c] * stride;
            if (grad_key) {
              axpy(grad_v_level + t, g.data(), a * b.w[c], D);
              axpy(grad_k_level + t, q.data(), dk * b.w[c], D);
            } else {
              axpy(grad_v_level + t, grad_v.data(), b.w[c], D);
            }
          }
        }
      }
      if (dense) {
        value_slice.copy_to(grad_value + offset, row, D);
        if (grad_key) {
          key_slice.copy_to(grad_key + offset, row, D);
        }
      }
    }
  });
}

Sizes sizes_of(const at::Tensor& value, const at::Tensor& spatial_shapes,
               const at::Tensor& sampling_locations) {
  return {value.size(0),
          value.size(1),
          value.size(2),
          value.size(3),
          sampling_locations.size(1),
          spatial_shapes.size(0),
          sampling_locations.size(4)};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> key_aware_cpu(const at::Tensor& query, const at::Tensor& value,
                                                 const std::optional<at::Tensor>& key,
                                                 const at::Tensor& spatial_shapes,
                                                 const at::Tensor& level_start_index,
                                                 const at::Tensor& sampling_locations) {
  check_inputs(kForward, value, spatial_shapes, level_start_index, sampling_locations, std::nullopt,
               query, key);
  check_levels_host(kForward, value, spatial_shapes, level_start_index);
  const Sizes s = sizes_of(value, spatial_shapes, sampling_locations);
  auto out = at::empty({s.N, s.Lq, s.M * s.D}, value.options());
  auto attn = at::empty({s.N, s.Lq, s.M, s.L * s.P},
                        value.options().dtype(attn_dtype(value.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), kForward, [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_kernel<scalar_t>(
        query.const_data_ptr<scalar_t>(), value.const_data_ptr<scalar_t>(),
        key ? key->const_data_ptr<scalar_t>() : nullptr, spatial_shapes.const_data_ptr<int64_t>(),
        level_start_index.const_data_ptr<int64_t>(), sampling_locations.const_data_ptr<scalar_t>(),
        out.mutable_data_ptr<scalar_t>(), attn.mutable_data_ptr<acc_t>(), s);
  });
  return std::make_tuple(out, attn);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> key_aware_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& value,
    const std::optional<at::Tensor>& key, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attn) {
  check_inputs(kBackward, value, spatial_shapes, level_start_index, sampling_locations,
               std::nullopt, query, key);
  check_levels_host(kBackward, value, spatial_shapes, level_start_index);
  check_grad_output(kBackward, grad_output, value, sampling_locations);
  const Sizes s = sizes_of(value, spatial_shapes, sampling_locations);
  const auto acc_type = attn_dtype(value.scalar_type());
  TORCH_CHECK(attn.scalar_type() == acc_type && attn.is_contiguous() && attn.dim() == 4 &&
                  attn.size(0) == s.N && attn.size(1) == s.Lq && attn.size(2) == s.M &&
                  attn.size(3) == s.L * s.P,
              kBackward, ": attn must be the contiguous (N, Lq, M, L*P) ", acc_type,
              " softmax weights returned by the forward");
  auto grad_query = at::empty_like(query);
  // every element of grad_value (and grad_key) is written by the scatter pass; their storage is
  // reused from call to call
  const auto acc_options = value.options().dtype(acc_type);
  auto grad_value =
      cpu::gradient_buffer(cpu::GradientBuffer::kKeyAwareValue, value.sizes(), acc_options);
  auto grad_key =
      key ? cpu::gradient_buffer(cpu::GradientBuffer::kKeyAwareKey, value.sizes(), acc_options)
          : at::empty({0}, value.options());
  // pass 1: the AVX2 build's kernel for 32 float channels and k == v (it writes every element of
  // grad_loc), else the generic one
#if defined(LITE_DETR_CPU_AVX2)
  const bool pass1_32 = value.scalar_type() == at::kFloat && s.D == 32 && !key;
#else
  const bool pass1_32 = false;
#endif
  auto grad_loc =
      pass1_32 ? at::empty_like(sampling_locations) : at::zeros_like(sampling_locations);
  auto ds = at::empty_like(attn);  // logit gradients, from pass 1 to pass 2
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), kBackward, [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* grad_out = grad_output.const_data_ptr<scalar_t>();
    const scalar_t* q = query.const_data_ptr<scalar_t>();
    const int64_t* shapes = spatial_shapes.const_data_ptr<int64_t>();
    const int64_t* starts = level_start_index.const_data_ptr<int64_t>();
    const scalar_t* locations = sampling_locations.const_data_ptr<scalar_t>();
    const acc_t* a = attn.const_data_ptr<acc_t>();
    // the order of cpu/query_order.h, for both passes
    const std::vector<int64_t> order =
        cpu::query_order(locations, shapes, starts, s.N, s.S, s.Lq, s.M, s.L, s.P);
#if defined(LITE_DETR_CPU_AVX2)
    if (pass1_32) {
      // (the casts change nothing: scalar_t and acc_t are float here)
      backward_dots_kernel_32(
          reinterpret_cast<const float*>(grad_out), reinterpret_cast<const float*>(q),
          value.const_data_ptr<float>(), shapes, starts, reinterpret_cast<const float*>(locations),
          reinterpret_cast<const float*>(a), grad_query.mutable_data_ptr<float>(),
          grad_loc.mutable_data_ptr<float>(), ds.mutable_data_ptr<float>(), order, s);
    }
#endif
    if (!pass1_32) {
      backward_dots_kernel<scalar_t>(grad_out, q, value.const_data_ptr<scalar_t>(),
                                     key ? key->const_data_ptr<scalar_t>() : nullptr, shapes,
                                     starts, locations, a, grad_query.mutable_data_ptr<scalar_t>(),
                                     grad_loc.mutable_data_ptr<scalar_t>(),
                                     ds.mutable_data_ptr<acc_t>(), order, s);
    }
    // only the scatter gets a compile-time D: the forward and pass 1 ran 10-20% slower with one
    // (measured side by side, benchmarks/README.md), the scatter faster
    cpu::with_head_dim(s.D, [&](auto kD) {
      backward_scatter_kernel<scalar_t, decltype(kD)::value>(
          grad_out, q, shapes, starts, locations, a, ds.const_data_ptr<acc_t>(),
          grad_value.mutable_data_ptr<acc_t>(), key ? grad_key.mutable_data_ptr<acc_t>() : nullptr,
          order, s);
    });
  });
  const auto dtype = value.scalar_type();
  return std::make_tuple(grad_query, grad_value.to(dtype), key ? grad_key.to(dtype) : grad_key,
                         grad_loc);
}

}  // namespace LITE_DETR_CPU_NS

#if !defined(LITE_DETR_CPU_AVX2)
#if LITE_DETR_HAVE_AVX2_KERNELS
namespace avx2 {  // cpu/avx2/
std::tuple<at::Tensor, at::Tensor> key_aware_cpu(const at::Tensor& query, const at::Tensor& value,
                                                 const std::optional<at::Tensor>& key,
                                                 const at::Tensor& spatial_shapes,
                                                 const at::Tensor& level_start_index,
                                                 const at::Tensor& sampling_locations);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> key_aware_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& value,
    const std::optional<at::Tensor>& key, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attn);
}  // namespace avx2
#endif

namespace {

std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& query, const at::Tensor& value,
                                           const std::optional<at::Tensor>& key,
                                           const at::Tensor& spatial_shapes,
                                           const at::Tensor& level_start_index,
                                           const at::Tensor& sampling_locations) {
  return LITE_DETR_CPU_BUILD(key_aware_cpu)(query, value, key, spatial_shapes, level_start_index,
                                            sampling_locations);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& value,
    const std::optional<at::Tensor>& key, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attn) {
  return LITE_DETR_CPU_BUILD(key_aware_backward_cpu)(grad_output, query, value, key, spatial_shapes,
                                                     level_start_index, sampling_locations, attn);
}

}  // namespace
#endif
}  // namespace lite_detr

#if !defined(LITE_DETR_CPU_AVX2)
TORCH_LIBRARY_IMPL(lite_detr, CPU, m) {
  m.impl("ms_deform_attn_key_aware", &lite_detr::forward);
  m.impl("ms_deform_attn_key_aware_backward", &lite_detr::backward);
}
#endif
