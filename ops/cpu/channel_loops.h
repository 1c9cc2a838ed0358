// The channel loops of the CPU kernels: the per-row arithmetic over the D channels of a head,
// written to auto-vectorise. ChannelLoops<scalar_t, kD> gathers what the kernels do per point or
// per query; the AVX2 build has a 32-channel float version with the same interface
// (cpu/avx2/channel_loops_32.h), and cpu/kernel_target.h picks one per call.
//
// Every function here is inline and comes before the AVX2 build's target switch, so it keeps the
// default target in both builds; inlined into an AVX2 kernel it is vectorised for AVX2.
#pragma once

#include <ATen/OpMathType.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "sampling.h"

namespace lite_detr {
namespace cpu {

// Calls f(std::integral_constant<int64_t, 32>) when the channels per head D are 32 (256 channels
// in 8 heads: every detector here), f(std::integral_constant<int64_t, 0>) otherwise. A kernel
// templated on kD uses `kD > 0 ? kD : D`, so its channel loops get a trip count known at compile
// time (fully unrolled) in the common case; the arithmetic and its order are the same.
template <typename F>
inline void with_head_dim(int64_t D, F&& f) {
  if (D == 32) {
    f(std::integral_constant<int64_t, 32>{});
  } else {
    f(std::integral_constant<int64_t, 0>{});
  }
}

// The rows of the four corners of `b` in a level whose token 0 is `level` (tokens `row` apart) and
// their weights times `scale`; corners outside the map read `zeros` with weight 0, so the channel
// loops need no branches.
template <typename acc_t, typename src_t>
inline void corner_rows(const BilinearPoint<acc_t>& b, const src_t* level, int64_t row,
                        const src_t* zeros, acc_t scale, const src_t* rows[4], acc_t w[4]) {
  for (int c = 0; c < 4; ++c) {
    const bool inside = b.token[c] >= 0;
    rows[c] = inside ? level + b.token[c] * row : zeros;
    w[c] = inside ? scale * b.w[c] : acc_t(0);
  }
}

// Copies the D channels of one row. For 32 channels the copy has a size known at compile time,
// which the compiler expands into a few vector moves; a copy loop of run-time length becomes a
// call to memmove per row (GCC turns such loops into library calls), which cost 8-11% of the
// backwards of the decoder and the 25% encoder in `perf`.
template <typename T>
inline void copy_row(const T* __restrict__ src, T* __restrict__ dst, int64_t D) {
  if (D == 32) {
    std::memcpy(dst, src, 32 * sizeof(T));
    return;
  }
  for (int64_t d = 0; d < D; ++d) {
    dst[d] = src[d];
  }
}

// dst[d] (+)= sum_c w[c] * rows[c][d]: one pass over the channels for the four corners.
template <bool kAccumulate, typename acc_t, typename src_t>
inline void combine4(acc_t* __restrict__ dst, const src_t* const rows[4], const acc_t w[4],
                     int64_t D) {
  const src_t *r0 = rows[0], *r1 = rows[1], *r2 = rows[2], *r3 = rows[3];
  const acc_t w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
  for (int64_t d = 0; d < D; ++d) {
    const acc_t x = w0 * static_cast<acc_t>(r0[d]) + w1 * static_cast<acc_t>(r1[d]) +
                    w2 * static_cast<acc_t>(r2[d]) + w3 * static_cast<acc_t>(r3[d]);
    dst[d] = kAccumulate ? dst[d] + x : x;
  }
}

// dst[d] += alpha * src[d]
template <typename acc_t, typename src_t>
inline void axpy(acc_t* __restrict__ dst, const src_t* __restrict__ src, acc_t alpha, int64_t D) {
  for (int64_t d = 0; d < D; ++d) {
    dst[d] += alpha * static_cast<acc_t>(src[d]);
  }
}

// sum_d a[d] * b[d]; eight partial sums so the compiler vectorises it without reassociating
// (the order is fixed, so results are bitwise reproducible).
template <typename acc_t, typename a_t>
inline acc_t dot(const a_t* __restrict__ a, const acc_t* __restrict__ b, int64_t D) {
  acc_t part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t d = 0;
  for (; d + 8 <= D; d += 8) {
    for (int k = 0; k < 8; ++k) {
      part[k] += static_cast<acc_t>(a[d + k]) * b[d + k];
    }
  }
  acc_t tail = 0;
  for (; d < D; ++d) {
    tail += static_cast<acc_t>(a[d]) * b[d];
  }
  return ((part[0] + part[4]) + (part[1] + part[5])) + ((part[2] + part[6]) + (part[3] + part[7])) +
         tail;
}

// grad[d] += alpha * g[d], returning sum_d v[d] * g[d]: the two uses of a corner in a backward,
// in one pass (partial sums as in dot()).
template <typename acc_t, typename v_t>
inline acc_t dot_axpy(const v_t* __restrict__ v, acc_t* __restrict__ grad,
                      const acc_t* __restrict__ g, acc_t alpha, int64_t D) {
  acc_t part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t d = 0;
  for (; d + 8 <= D; d += 8) {
    for (int k = 0; k < 8; ++k) {
      part[k] += static_cast<acc_t>(v[d + k]) * g[d + k];
      grad[d + k] += alpha * g[d + k];
    }
  }
  acc_t tail = 0;
  for (; d < D; ++d) {
    tail += static_cast<acc_t>(v[d]) * g[d];
    grad[d] += alpha * g[d];
  }
  return ((part[0] + part[4]) + (part[1] + part[5])) + ((part[2] + part[6]) + (part[3] + part[7])) +
         tail;
}

// What the kernels compute over the channels, per point or per query, for any dtype and D (kD:
// D known at compile time, or 0). Points j = 0 .. LP-1 come as four corner rows rows[4j + c]
// with weights w[4j + c] (corner_rows()). One object per task: it holds the task's scratch row.
template <typename scalar_t, int64_t kD>
class ChannelLoops {
 public:
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr int64_t kChannels = kD;

  explicit ChannelLoops(int64_t D) : D_(D), acc_(D) {}

  // the channels per head (a constant when kD > 0: fully unrolled loops)
  int64_t D() const { return kD > 0 ? kD : D_; }

  // out = sum_j sum_c w[4j + c] rows[4j + c]: a bilinear sample per point, weighted and summed
  void weighted_corners(const scalar_t* const* rows, const acc_t* w, int64_t LP, scalar_t* out) {
    std::fill(acc_.begin(), acc_.end(), acc_t(0));
    for (int64_t j = 0; j < LP; ++j) {
      combine4<true>(acc_.data(), rows + 4 * j, w + 4 * j, D());
    }
    for (int64_t d = 0; d < D(); ++d) {
      out[d] = static_cast<scalar_t>(acc_[d]);
    }
  }

  // The samples v_j = sum_c w[4j + c] rows[4j + c] (into v, D each) and x . v_j (into dots)
  void samples_and_dots(const scalar_t* const* rows, const acc_t* w, const acc_t* x, int64_t LP,
                        acc_t* v, acc_t* dots) {
    for (int64_t j = 0; j < LP; ++j) {
      combine4<false>(v + j * D(), rows + 4 * j, w + 4 * j, D());
      dots[j] = dot(v + j * D(), x, D());
    }
  }

  // The samples alone
  void samples(const scalar_t* const* rows, const acc_t* w, int64_t LP, acc_t* v) {
    for (int64_t j = 0; j < LP; ++j) {
      combine4<false>(v + j * D(), rows + 4 * j, w + 4 * j, D());
    }
  }

  // out = scale * sum_j a_j v_j over LP rows of D
  void weighted_sum(const acc_t* v, const acc_t* a, int64_t LP, acc_t scale, scalar_t* out) {
    std::fill(acc_.begin(), acc_.end(), acc_t(0));
    for (int64_t j = 0; j < LP; ++j) {
      axpy(acc_.data(), v + j * D(), a[j], D());
    }
    for (int64_t d = 0; d < D(); ++d) {
      out[d] = static_cast<scalar_t>(acc_[d] * scale);
    }
  }

  // out[c] = rows[c] . x at the four corners of a point
  void corner_dots(const scalar_t* const rows[4], const acc_t* x, acc_t out[4]) {
    for (int c = 0; c < 4; ++c) {
      out[c] = dot(rows[c], x, D());
    }
  }

  // out[c] = rows[c] . (a x + b y) at the four corners of a point
  void corner_dots_of_sum(const scalar_t* const rows[4], acc_t a, const acc_t* x, acc_t b,
                          const acc_t* y, acc_t out[4]) {
    for (int64_t d = 0; d < D(); ++d) {
      acc_[d] = a * x[d] + b * y[d];
    }
    corner_dots(rows, acc_.data(), out);
  }

  // At each corner c of `b` inside the map (its row at token * stride in v and grad_v):
  // grad_v[c] += a w_c g and g_dot_v[c] = V_c . g (the other entries are left as they are)
  void dot_axpy_corners(const BilinearPoint<acc_t>& b, const scalar_t* v, acc_t* grad_v,
                        int64_t stride, const acc_t* g, acc_t a, acc_t g_dot_v[4]) {
    for (int c = 0; c < 4; ++c) {
      if (b.token[c] >= 0) {
        const int64_t t = b.token[c] * stride;
        g_dot_v[c] = dot_axpy(v + t, grad_v + t, g, a * b.w[c], D());
      }
    }
  }

 private:
  int64_t D_;
  std::vector<acc_t> acc_;
};

}  // namespace cpu
}  // namespace lite_detr
