// Bilinear sampling helpers of the CPU kernels: grid_sample(align_corners=False,
// padding_mode="zeros") semantics, and channel loops written to auto-vectorise.
#pragma once

#include <cmath>
#include <cstdint>

namespace lite_detr {
namespace cpu {

// The four corners of one sampling point on an H x W map.
template <typename acc_t>
struct BilinearPoint {
  int64_t token[4];  // y * W + x inside the level, -1 when the corner lies outside the map
  acc_t w[4];        // interpolation weights
  acc_t dw_dx[4];    // derivatives of w w.r.t. the pixel coordinates
  acc_t dw_dy[4];
};

// Fills `b` for the normalised location (loc_x, loc_y); returns false when no corner can
// contribute to the value or its gradient: outside the map, NaN or Inf.
template <typename acc_t>
inline bool bilinear_setup(acc_t loc_x, acc_t loc_y, int64_t H, int64_t W,
                           BilinearPoint<acc_t>& b) {
  // pixel centres at (i + 0.5) / size, as grid_sample with align_corners=False
  const acc_t x = loc_x * static_cast<acc_t>(W) - acc_t(0.5);
  const acc_t y = loc_y * static_cast<acc_t>(H) - acc_t(0.5);
  // x == -1 still has a corner (x = 0) with zero weight but a non-zero derivative
  if (!(x >= acc_t(-1) && x < static_cast<acc_t>(W) && y >= acc_t(-1) &&
        y < static_cast<acc_t>(H))) {
    return false;  // comparisons with NaN are false
  }
  const acc_t fx = std::floor(x), fy = std::floor(y);
  const int64_t x0 = static_cast<int64_t>(fx), y0 = static_cast<int64_t>(fy);
  const acc_t lx = x - fx, ly = y - fy, hx = acc_t(1) - lx, hy = acc_t(1) - ly;
  const int64_t xs[4] = {x0, x0 + 1, x0, x0 + 1};
  const int64_t ys[4] = {y0, y0, y0 + 1, y0 + 1};
  const acc_t w[4] = {hy * hx, hy * lx, ly * hx, ly * lx};
  const acc_t dx[4] = {-hy, hy, -ly, ly};
  const acc_t dy[4] = {-hx, -lx, hx, lx};
  for (int c = 0; c < 4; ++c) {
    const bool inside = xs[c] >= 0 && xs[c] < W && ys[c] >= 0 && ys[c] < H;
    b.token[c] = inside ? ys[c] * W + xs[c] : -1;
    b.w[c] = w[c];
    b.dw_dx[c] = dx[c];
    b.dw_dy[c] = dy[c];
  }
  return true;
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

}  // namespace cpu
}  // namespace lite_detr
