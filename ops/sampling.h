// The sampling rules of both ops, written once for the CPU and the CUDA kernels (host/device
// inline functions): level bounds, and bilinear sampling with grid_sample(align_corners=False,
// padding_mode="zeros") semantics. The CPU tests therefore exercise the code the GPU runs.
//
// This header must stay free of CUDA and torch headers: the CPU-only build includes it.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define LITE_DETR_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define LITE_DETR_HOST_DEVICE inline
#endif

namespace lite_detr {

// One level of the flattened value: H x W tokens starting at token `start`.
struct Level {
  int64_t H, W, start;
};

// Whether the tokens [start, start + H * W) of a level lie inside the S tokens of value, without
// overflow for any int64 inputs (H * W is never formed unless it fits).
LITE_DETR_HOST_DEVICE bool level_fits(int64_t H, int64_t W, int64_t start, int64_t S) {
  return H > 0 && W > 0 && start >= 0 && start <= S && H <= S - start && W <= (S - start) / H;
}

// Level l of (spatial_shapes, level_start_index). A level that does not fit in value becomes an
// empty 0 x 0 level at token 0, whose points sample nothing: the kernels never read out of
// bounds, whatever the level tensors hold. (The CPU entry points reject such levels first; the
// CUDA ones cannot read device tensors without synchronising, so they rely on this.)
LITE_DETR_HOST_DEVICE Level level_at(const int64_t* shapes, const int64_t* starts, int64_t l,
                                     int64_t S) {
  const int64_t H = shapes[2 * l], W = shapes[2 * l + 1], start = starts[l];
  return level_fits(H, W, start, S) ? Level{H, W, start} : Level{0, 0, 0};
}

// The four corners of one sampling point on an H x W map.
template <typename acc_t>
struct BilinearPoint {
  int64_t token[4];  // y * W + x inside the level, -1 when the corner lies outside the map
  acc_t w[4];        // interpolation weights
  acc_t dw_dx[4];    // derivatives of w w.r.t. the pixel coordinates
  acc_t dw_dy[4];
};

// Fills `b` for the normalised location (loc_x, loc_y); returns false when no corner can
// contribute to the value or its gradient: outside the map, NaN or Inf, or an empty level.
template <typename acc_t>
LITE_DETR_HOST_DEVICE bool bilinear_setup(acc_t loc_x, acc_t loc_y, int64_t H, int64_t W,
                                          BilinearPoint<acc_t>& b) {
  // pixel centres at (i + 0.5) / size, as grid_sample with align_corners=False
  const acc_t x = loc_x * static_cast<acc_t>(W) - acc_t(0.5);
  const acc_t y = loc_y * static_cast<acc_t>(H) - acc_t(0.5);
  // x == -1 still has a corner (x = 0) with zero weight but a non-zero derivative
  if (!(H > 0 && W > 0 && x >= acc_t(-1) && x < static_cast<acc_t>(W) && y >= acc_t(-1) &&
        y < static_cast<acc_t>(H))) {
    return false;  // comparisons with NaN are false
  }
  // x, y >= -1 here, so truncating x + 1 is floor(x) + 1 (and cheaper than floor)
  const int64_t x0 = static_cast<int64_t>(x + acc_t(1)) - 1;
  const int64_t y0 = static_cast<int64_t>(y + acc_t(1)) - 1;
  const acc_t fx = static_cast<acc_t>(x0), fy = static_cast<acc_t>(y0);
  const acc_t lx = x - fx, ly = y - fy, hx = acc_t(1) - lx, hy = acc_t(1) - ly;
  const int64_t xs[4] = {x0, x0 + 1, x0, x0 + 1};
  const int64_t ys[4] = {y0, y0, y0 + 1, y0 + 1};
  const acc_t w[4] = {hy * hx, hy * lx, ly * hx, ly * lx};
  const acc_t dx[4] = {-hy, hy, -ly, ly};
  const acc_t dy[4] = {-hx, -lx, hx, lx};
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int c = 0; c < 4; ++c) {
    const bool inside = xs[c] >= 0 && xs[c] < W && ys[c] >= 0 && ys[c] < H;
    b.token[c] = inside ? ys[c] * W + xs[c] : -1;
    b.w[c] = w[c];
    b.dw_dx[c] = dx[c];
    b.dw_dy[c] = dy[c];
  }
  return true;
}

}  // namespace lite_detr
