// CUDA kernels of lite_detr::ms_deform_attn (Deformable DETR, Zhu et al. 2021, eq. 3).
//
// One warp per (n, q, m); lanes run over the channels D (32 at a time), so the value rows are
// read coalesced. Accumulation in float (double for float64); the backward scatters into a
// float grad_value with atomicAdd and reduces the per-point gradients with warp shuffles.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/cuda_utils.cuh"
#include "ms_deform_attn.h"

namespace lite_detr {
namespace {

using cuda::kThreadsPerBlock;
using cuda::kWarpSize;
using cuda::warp_sum;

constexpr const char* kForward = "lite_detr::ms_deform_attn";
constexpr const char* kBackward = "lite_detr::ms_deform_attn_backward";

template <typename scalar_t>
__global__ void forward_kernel(const scalar_t* __restrict__ value,
                               const int64_t* __restrict__ shapes,
                               const int64_t* __restrict__ starts,
                               const scalar_t* __restrict__ locations,
                               const scalar_t* __restrict__ weights, scalar_t* __restrict__ out,
                               Sizes s) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t qm = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarpSize;
  if (qm >= s.N * s.Lq * s.M) {
    return;  // warp-uniform
  }
  const int lane = threadIdx.x % kWarpSize;
  const int64_t n = qm / (s.Lq * s.M), m = qm % s.M, row = s.M * s.D;
  for (int64_t d0 = 0; d0 < s.D; d0 += kWarpSize) {
    const int64_t d = d0 + lane;
    acc_t acc = 0;
    for (int64_t l = 0; l < s.L; ++l) {
      const Level lv = level_at(shapes, starts, l, s.S);
      const int64_t H = lv.H, W = lv.W;
      const int64_t offset = ((n * s.S + lv.start) * s.M + m) * s.D + d;
      for (int64_t p = 0; p < s.P; ++p) {
        const int64_t i = (qm * s.L + l) * s.P + p;
        BilinearPoint<acc_t> b;
        if (d >= s.D || !bilinear_setup<acc_t>(locations[2 * i], locations[2 * i + 1], H, W, b)) {
          continue;
        }
        const acc_t a = weights[i];
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          if (b.token[c] >= 0) {
            acc += a * b.w[c] * static_cast<acc_t>(value[offset + b.token[c] * row]);
          }
        }
      }
    }
    if (d < s.D) {
      out[qm * s.D + d] = static_cast<scalar_t>(acc);
    }
  }
}

template <typename scalar_t>
__global__ void backward_kernel(
    const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ value,
    const int64_t* __restrict__ shapes, const int64_t* __restrict__ starts,
    const scalar_t* __restrict__ locations, const scalar_t* __restrict__ weights,
    at::opmath_type<scalar_t>* __restrict__ grad_value, scalar_t* __restrict__ grad_loc,
    scalar_t* __restrict__ grad_weights, Sizes s) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t qm = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarpSize;
  if (qm >= s.N * s.Lq * s.M) {
    return;
  }
  const int lane = threadIdx.x % kWarpSize;
  const int64_t n = qm / (s.Lq * s.M), m = qm % s.M, row = s.M * s.D;
  for (int64_t l = 0; l < s.L; ++l) {
    const Level lv = level_at(shapes, starts, l, s.S);
    const int64_t H = lv.H, W = lv.W;
    const int64_t offset = ((n * s.S + lv.start) * s.M + m) * s.D;
    for (int64_t p = 0; p < s.P; ++p) {
      const int64_t i = (qm * s.L + l) * s.P + p;
      BilinearPoint<acc_t> b;
      if (!bilinear_setup<acc_t>(locations[2 * i], locations[2 * i + 1], H, W, b)) {
        continue;  // outputs start at zero
      }
      const acc_t a = weights[i];
      acc_t g_weight = 0, g_x = 0, g_y = 0;
      for (int64_t d = lane; d < s.D; d += kWarpSize) {
        const acc_t g = static_cast<acc_t>(grad_out[qm * s.D + d]);
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          if (b.token[c] < 0) {
            continue;
          }
          const int64_t t = offset + b.token[c] * row + d;
          const acc_t g_dot_v = g * static_cast<acc_t>(value[t]);
          g_weight += b.w[c] * g_dot_v;
          g_x += b.dw_dx[c] * g_dot_v;
          g_y += b.dw_dy[c] * g_dot_v;
          atomicAdd(grad_value + t, a * b.w[c] * g);
        }
      }
      g_weight = warp_sum(g_weight);
      g_x = warp_sum(g_x);
      g_y = warp_sum(g_y);
      if (lane == 0) {
        grad_weights[i] = static_cast<scalar_t>(g_weight);
        grad_loc[2 * i] = static_cast<scalar_t>(a * g_x * static_cast<acc_t>(W));
        grad_loc[2 * i + 1] = static_cast<scalar_t>(a * g_y * static_cast<acc_t>(H));
      }
    }
  }
}

int64_t check_grid(const char* op, const Sizes& s) {
  const int64_t blocks = cuda::blocks_for_warps(s.N * s.Lq * s.M);
  TORCH_CHECK(blocks < (int64_t{1} << 31), op, ": too many (batch, query, head) triples for one ",
              "launch: N * Lq * M = ", s.N * s.Lq * s.M);
  return blocks;
}

at::Tensor ms_deform_attn_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                               const at::Tensor& level_start_index,
                               const at::Tensor& sampling_locations,
                               const at::Tensor& attention_weights) {
  check_inputs(kForward, value, spatial_shapes, level_start_index, sampling_locations,
               attention_weights, std::nullopt, std::nullopt);
  const c10::cuda::CUDAGuard guard(value.device());
  const Sizes s = sizes_of(value, spatial_shapes, sampling_locations);
  auto out = at::empty({s.N, s.Lq, s.M * s.D}, value.options());
  const int64_t blocks = check_grid(kForward, s);
  if (blocks == 0 || s.D == 0) {
    return out.zero_();
  }
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), kForward, [&] {
    forward_kernel<scalar_t><<<blocks, kThreadsPerBlock, 0, stream>>>(
        value.const_data_ptr<scalar_t>(), spatial_shapes.const_data_ptr<int64_t>(),
        level_start_index.const_data_ptr<int64_t>(), sampling_locations.const_data_ptr<scalar_t>(),
        attention_weights.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), s);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  check_inputs(kBackward, value, spatial_shapes, level_start_index, sampling_locations,
               attention_weights, std::nullopt, std::nullopt);
  check_grad_output(kBackward, grad_output, value, sampling_locations);
  const c10::cuda::CUDAGuard guard(value.device());
  const Sizes s = sizes_of(value, spatial_shapes, sampling_locations);
  // atomics accumulate in float (double for float64), then round once
  auto grad_value =
      at::zeros(value.sizes(), value.options().dtype(attn_dtype(value.scalar_type())));
  auto grad_loc = at::zeros_like(sampling_locations);
  auto grad_weights = at::zeros_like(attention_weights);
  const int64_t blocks = check_grid(kBackward, s);
  if (blocks > 0 && s.D > 0) {
    const auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), kBackward, [&] {
      using acc_t = at::opmath_type<scalar_t>;
      backward_kernel<scalar_t><<<blocks, kThreadsPerBlock, 0, stream>>>(
          grad_output.const_data_ptr<scalar_t>(), value.const_data_ptr<scalar_t>(),
          spatial_shapes.const_data_ptr<int64_t>(), level_start_index.const_data_ptr<int64_t>(),
          sampling_locations.const_data_ptr<scalar_t>(),
          attention_weights.const_data_ptr<scalar_t>(), grad_value.mutable_data_ptr<acc_t>(),
          grad_loc.mutable_data_ptr<scalar_t>(), grad_weights.mutable_data_ptr<scalar_t>(), s);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return std::make_tuple(grad_value.to(value.scalar_type()), grad_loc, grad_weights);
}

}  // namespace
}  // namespace lite_detr

TORCH_LIBRARY_IMPL(lite_detr, CUDA, m) {
  m.impl("ms_deform_attn", &lite_detr::ms_deform_attn_cuda);
  m.impl("ms_deform_attn_backward", &lite_detr::ms_deform_attn_backward_cuda);
}
