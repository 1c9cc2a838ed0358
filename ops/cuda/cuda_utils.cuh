// Device helpers of the CUDA kernels: bilinear sampling with grid_sample(align_corners=False,
// padding_mode="zeros") semantics (as ops/cpu/bilinear.h), warp reductions, math overloads.
#pragma once

#include <cstdint>

namespace lite_detr {
namespace cuda {

constexpr int kWarpSize = 32;
constexpr int kThreadsPerBlock = 256;  // 8 warps, one (n, q, m) per warp

__device__ __forceinline__ float floor_(float x) { return floorf(x); }
__device__ __forceinline__ double floor_(double x) { return floor(x); }
__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return exp(x); }

// Sum over the 32 lanes of a warp; every lane gets the result (in a fixed order: deterministic).
template <typename T>
__device__ __forceinline__ T warp_sum(T x) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    x += __shfl_xor_sync(0xffffffffu, x, offset);
  }
  return x;
}

template <typename acc_t>
struct BilinearPoint {
  int64_t token[4];  // y * W + x inside the level, -1 when the corner lies outside the map
  acc_t w[4];        // interpolation weights
  acc_t dw_dx[4];    // derivatives of w w.r.t. the pixel coordinates
  acc_t dw_dy[4];
};

// Returns false when no corner can contribute (outside the map, NaN or Inf).
template <typename acc_t>
__device__ __forceinline__ bool bilinear_setup(acc_t loc_x, acc_t loc_y, int64_t H, int64_t W,
                                               BilinearPoint<acc_t>& b) {
  const acc_t x = loc_x * static_cast<acc_t>(W) - acc_t(0.5);
  const acc_t y = loc_y * static_cast<acc_t>(H) - acc_t(0.5);
  if (!(x >= acc_t(-1) && x < static_cast<acc_t>(W) && y >= acc_t(-1) &&
        y < static_cast<acc_t>(H))) {
    return false;
  }
  const acc_t fx = floor_(x), fy = floor_(y);
  const int64_t x0 = static_cast<int64_t>(fx), y0 = static_cast<int64_t>(fy);
  const acc_t lx = x - fx, ly = y - fy, hx = acc_t(1) - lx, hy = acc_t(1) - ly;
  const int64_t xs[4] = {x0, x0 + 1, x0, x0 + 1};
  const int64_t ys[4] = {y0, y0, y0 + 1, y0 + 1};
  const acc_t w[4] = {hy * hx, hy * lx, ly * hx, ly * lx};
  const acc_t dx[4] = {-hy, hy, -ly, ly};
  const acc_t dy[4] = {-hx, -lx, hx, lx};
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    const bool inside = xs[c] >= 0 && xs[c] < W && ys[c] >= 0 && ys[c] < H;
    b.token[c] = inside ? ys[c] * W + xs[c] : -1;
    b.w[c] = w[c];
    b.dw_dx[c] = dx[c];
    b.dw_dy[c] = dy[c];
  }
  return true;
}

// Blocks needed for one warp per item.
inline int64_t blocks_for_warps(int64_t warps) {
  const int64_t warps_per_block = kThreadsPerBlock / kWarpSize;
  return (warps + warps_per_block - 1) / warps_per_block;
}

}  // namespace cuda
}  // namespace lite_detr
