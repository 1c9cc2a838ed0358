// Device helpers of the CUDA kernels: launch sizes, warp reductions, math overloads. The sampling
// rules (BilinearPoint, bilinear_setup, level_at) are shared with the CPU kernels in sampling.h.
#pragma once

#include <cstdint>

#include "sampling.h"

namespace lite_detr {
namespace cuda {

constexpr int kWarpSize = 32;
constexpr int kThreadsPerBlock = 256;  // 8 warps, one (n, q, m) per warp

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

// Blocks needed for one warp per item.
inline int64_t blocks_for_warps(int64_t warps) {
  const int64_t warps_per_block = kThreadsPerBlock / kWarpSize;
  return (warps + warps_per_block - 1) / warps_per_block;
}

}  // namespace cuda
}  // namespace lite_detr
