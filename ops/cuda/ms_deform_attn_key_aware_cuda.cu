// CUDA kernels of lite_detr::ms_deform_attn_key_aware (Lite DETR, Li et al. 2023, sec. 3.3).
//
// One warp per (n, q, m); each lane holds VPT = ceil(D / 32) channels of q and of the output in
// registers. The forward runs an online softmax over the L*P points (running max and sum, as in
// FlashAttention), so the sampled keys and values are never stored; the logits are written to
// `attn` and normalised at the end. The backward recomputes the samples: pass 1 gives
// g.out = sum_j a_j g.v_j, pass 2 the logit gradients ds_j = a_j (g.v_j - g.out) and the scatter
// (atomicAdd into float buffers). See the CPU file for the formulas.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "cuda/cuda_utils.cuh"
#include "ms_deform_attn.h"

namespace lite_detr {
namespace {

using cuda::exp_;
using cuda::kThreadsPerBlock;
using cuda::kWarpSize;
using cuda::warp_sum;

constexpr const char* kForward = "lite_detr::ms_deform_attn_key_aware";
constexpr const char* kBackward = "lite_detr::ms_deform_attn_key_aware_backward";
constexpr int64_t kMaxChannels = 8 * kWarpSize;  // VPT <= 8 registers per lane

// v[i] (and k[i]) = bilinear sample of channel lane + 32 i; zero when the point is invalid.
template <int VPT, typename scalar_t, typename acc_t>
__device__ __forceinline__ void gather(const scalar_t* __restrict__ src, int64_t offset,
                                       int64_t row, int64_t D, int lane,
                                       const BilinearPoint<acc_t>& b, acc_t (&out)[VPT]) {
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    out[i] = 0;
  }
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    if (b.token[c] < 0) {
      continue;
    }
    const int64_t t = offset + b.token[c] * row;
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const int64_t d = lane + i * kWarpSize;
      if (d < D) {
        out[i] += b.w[c] * static_cast<acc_t>(src[t + d]);
      }
    }
  }
}

template <typename scalar_t, int VPT>
__global__ void forward_kernel(const scalar_t* __restrict__ query,
                               const scalar_t* __restrict__ value, const scalar_t* __restrict__ key,
                               const int64_t* __restrict__ shapes,
                               const int64_t* __restrict__ starts,
                               const scalar_t* __restrict__ locations, scalar_t* __restrict__ out,
                               at::opmath_type<scalar_t>* attn, Sizes s) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t qm = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarpSize;
  if (qm >= s.N * s.Lq * s.M) {
    return;  // warp-uniform: the shuffles below see full warps
  }
  const int lane = threadIdx.x % kWarpSize;
  const int64_t n = qm / (s.Lq * s.M), m = qm % s.M, row = s.M * s.D, LP = s.L * s.P;
  const acc_t scale = acc_t(1) / sqrt(static_cast<acc_t>(s.D));
  acc_t q[VPT], acc[VPT], v[VPT], k[VPT];
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int64_t d = lane + i * kWarpSize;
    q[i] = d < s.D ? static_cast<acc_t>(query[qm * s.D + d]) * scale : acc_t(0);
    acc[i] = 0;
  }
  acc_t running_max = -std::numeric_limits<acc_t>::infinity(), running_sum = 0;
  acc_t* logits = attn + qm * LP;
  for (int64_t l = 0; l < s.L; ++l) {
    const Level lv = level_at(shapes, starts, l, s.S);
    const int64_t H = lv.H, W = lv.W;
    const int64_t offset = ((n * s.S + lv.start) * s.M + m) * s.D;
    for (int64_t p = 0; p < s.P; ++p) {
      const int64_t j = l * s.P + p, i_loc = qm * LP + j;
      BilinearPoint<acc_t> b;
      if (!bilinear_setup<acc_t>(locations[2 * i_loc], locations[2 * i_loc + 1], H, W, b)) {
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          b.token[c] = -1;  // no sample: k = v = 0, logit 0
        }
      }
      gather<VPT>(value, offset, row, s.D, lane, b, v);
      if (key != nullptr) {
        gather<VPT>(key, offset, row, s.D, lane, b, k);
      }
      acc_t partial = 0;
#pragma unroll
      for (int i = 0; i < VPT; ++i) {
        partial += q[i] * (key != nullptr ? k[i] : v[i]);
      }
      const acc_t logit = warp_sum(partial);
      if (lane == 0) {
        logits[j] = logit;
      }
      const acc_t new_max = logit > running_max ? logit : running_max;
      const acc_t correction = exp_(running_max - new_max);
      const acc_t e = exp_(logit - new_max);
      running_sum = running_sum * correction + e;
#pragma unroll
      for (int i = 0; i < VPT; ++i) {
        acc[i] = acc[i] * correction + e * v[i];
      }
      running_max = new_max;
    }
  }
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int64_t d = lane + i * kWarpSize;
    if (d < s.D) {
      out[qm * s.D + d] = static_cast<scalar_t>(acc[i] / running_sum);
    }
  }
  __syncwarp();  // lane 0's logits are visible to the whole warp
  for (int64_t j = lane; j < LP; j += kWarpSize) {
    logits[j] = exp_(logits[j] - running_max) / running_sum;
  }
}

template <typename scalar_t, int VPT>
__global__ void backward_kernel(
    const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ query,
    const scalar_t* __restrict__ value, const scalar_t* __restrict__ key,
    const int64_t* __restrict__ shapes, const int64_t* __restrict__ starts,
    const scalar_t* __restrict__ locations, const at::opmath_type<scalar_t>* __restrict__ attn,
    scalar_t* __restrict__ grad_query, at::opmath_type<scalar_t>* __restrict__ grad_value,
    at::opmath_type<scalar_t>* __restrict__ grad_key, scalar_t* __restrict__ grad_loc, Sizes s) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t qm = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarpSize;
  if (qm >= s.N * s.Lq * s.M) {
    return;
  }
  const int lane = threadIdx.x % kWarpSize;
  const int64_t n = qm / (s.Lq * s.M), m = qm % s.M, row = s.M * s.D, LP = s.L * s.P;
  const acc_t scale = acc_t(1) / sqrt(static_cast<acc_t>(s.D));
  const acc_t* a = attn + qm * LP;
  acc_t g[VPT], q[VPT], v[VPT], k[VPT], grad_q[VPT];
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int64_t d = lane + i * kWarpSize;
    g[i] = d < s.D ? static_cast<acc_t>(grad_out[qm * s.D + d]) : acc_t(0);
    q[i] = d < s.D ? static_cast<acc_t>(query[qm * s.D + d]) : acc_t(0);
    grad_q[i] = 0;
  }
  // pass 1: g.out = sum_j a_j g.v_j
  acc_t g_dot_out = 0;
  for (int64_t l = 0; l < s.L; ++l) {
    const Level lv = level_at(shapes, starts, l, s.S);
    const int64_t H = lv.H, W = lv.W;
    const int64_t offset = ((n * s.S + lv.start) * s.M + m) * s.D;
    for (int64_t p = 0; p < s.P; ++p) {
      const int64_t j = l * s.P + p, i_loc = qm * LP + j;
      BilinearPoint<acc_t> b;
      if (!bilinear_setup<acc_t>(locations[2 * i_loc], locations[2 * i_loc + 1], H, W, b)) {
        continue;
      }
      gather<VPT>(value, offset, row, s.D, lane, b, v);
      acc_t partial = 0;
#pragma unroll
      for (int i = 0; i < VPT; ++i) {
        partial += g[i] * v[i];
      }
      g_dot_out += a[j] * warp_sum(partial);
    }
  }
  // pass 2: logit gradients, scatter, location gradients
  for (int64_t l = 0; l < s.L; ++l) {
    const Level lv = level_at(shapes, starts, l, s.S);
    const int64_t H = lv.H, W = lv.W;
    const int64_t offset = ((n * s.S + lv.start) * s.M + m) * s.D;
    for (int64_t p = 0; p < s.P; ++p) {
      const int64_t j = l * s.P + p, i_loc = qm * LP + j;
      BilinearPoint<acc_t> b;
      if (!bilinear_setup<acc_t>(locations[2 * i_loc], locations[2 * i_loc + 1], H, W, b)) {
        continue;  // k_j = 0: no grad_q term; grad_loc stays zero
      }
      gather<VPT>(value, offset, row, s.D, lane, b, v);
      if (key != nullptr) {
        gather<VPT>(key, offset, row, s.D, lane, b, k);
      }
      acc_t partial = 0;
#pragma unroll
      for (int i = 0; i < VPT; ++i) {
        partial += g[i] * v[i];
      }
      const acc_t ds = a[j] * (warp_sum(partial) - g_dot_out);
      acc_t grad_v[VPT], grad_k[VPT];
#pragma unroll
      for (int i = 0; i < VPT; ++i) {
        grad_q[i] += ds * (key != nullptr ? k[i] : v[i]);
        grad_v[i] = a[j] * g[i];
        grad_k[i] = ds * scale * q[i];
        if (key == nullptr) {
          grad_v[i] += grad_k[i];  // k == v: one combined gradient for the shared sample
        }
      }
      acc_t g_x = 0, g_y = 0;
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        if (b.token[c] < 0) {
          continue;
        }
        const int64_t t = offset + b.token[c] * row;
#pragma unroll
        for (int i = 0; i < VPT; ++i) {
          const int64_t d = lane + i * kWarpSize;
          if (d >= s.D) {
            continue;
          }
          acc_t dv = grad_v[i] * static_cast<acc_t>(value[t + d]);
          atomicAdd(grad_value + t + d, b.w[c] * grad_v[i]);
          if (key != nullptr) {
            dv += grad_k[i] * static_cast<acc_t>(key[t + d]);
            atomicAdd(grad_key + t + d, b.w[c] * grad_k[i]);
          }
          g_x += b.dw_dx[c] * dv;
          g_y += b.dw_dy[c] * dv;
        }
      }
      g_x = warp_sum(g_x);
      g_y = warp_sum(g_y);
      if (lane == 0) {
        grad_loc[2 * i_loc] = static_cast<scalar_t>(g_x * static_cast<acc_t>(W));
        grad_loc[2 * i_loc + 1] = static_cast<scalar_t>(g_y * static_cast<acc_t>(H));
      }
    }
  }
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int64_t d = lane + i * kWarpSize;
    if (d < s.D) {
      grad_query[qm * s.D + d] = static_cast<scalar_t>(grad_q[i] * scale);
    }
  }
}

int64_t check_sizes(const char* op, const Sizes& s) {
  TORCH_CHECK(s.D <= kMaxChannels, op, ": the CUDA kernel supports up to ", kMaxChannels,
              " channels per head, got D = ", s.D);
  const int64_t blocks = cuda::blocks_for_warps(s.N * s.Lq * s.M);
  TORCH_CHECK(blocks < (int64_t{1} << 31), op, ": too many (batch, query, head) triples for one ",
              "launch: N * Lq * M = ", s.N * s.Lq * s.M);
  return blocks;
}

// Calls f with the number of channels per lane as a compile-time constant (1, 2, 4 or 8).
template <typename F>
void dispatch_vpt(int64_t D, F&& f) {
  const int64_t vpt = (D + kWarpSize - 1) / kWarpSize;
  if (vpt <= 1) {
    f(std::integral_constant<int, 1>{});
  } else if (vpt <= 2) {
    f(std::integral_constant<int, 2>{});
  } else if (vpt <= 4) {
    f(std::integral_constant<int, 4>{});
  } else {
    f(std::integral_constant<int, 8>{});
  }
}

std::tuple<at::Tensor, at::Tensor> key_aware_cuda(const at::Tensor& query, const at::Tensor& value,
                                                  const std::optional<at::Tensor>& key,
                                                  const at::Tensor& spatial_shapes,
                                                  const at::Tensor& level_start_index,
                                                  const at::Tensor& sampling_locations) {
  check_inputs(kForward, value, spatial_shapes, level_start_index, sampling_locations, std::nullopt,
               query, key);
  const c10::cuda::CUDAGuard guard(value.device());
  const Sizes s = sizes_of(value, spatial_shapes, sampling_locations);
  const int64_t blocks = check_sizes(kForward, s);
  auto out = at::empty({s.N, s.Lq, s.M * s.D}, value.options());
  auto attn = at::empty({s.N, s.Lq, s.M, s.L * s.P},
                        value.options().dtype(attn_dtype(value.scalar_type())));
  if (blocks == 0) {
    return std::make_tuple(out, attn);
  }
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), kForward, [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_vpt(s.D, [&](auto vpt) {
      forward_kernel<scalar_t, decltype(vpt)::value><<<blocks, kThreadsPerBlock, 0, stream>>>(
          query.const_data_ptr<scalar_t>(), value.const_data_ptr<scalar_t>(),
          key ? key->const_data_ptr<scalar_t>() : nullptr, spatial_shapes.const_data_ptr<int64_t>(),
          level_start_index.const_data_ptr<int64_t>(),
          sampling_locations.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
          attn.mutable_data_ptr<acc_t>(), s);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return std::make_tuple(out, attn);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> key_aware_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& value,
    const std::optional<at::Tensor>& key, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attn) {
  check_inputs(kBackward, value, spatial_shapes, level_start_index, sampling_locations,
               std::nullopt, query, key);
  check_grad_output(kBackward, grad_output, value, sampling_locations);
  const c10::cuda::CUDAGuard guard(value.device());
  const Sizes s = sizes_of(value, spatial_shapes, sampling_locations);
  const auto acc_type = attn_dtype(value.scalar_type());
  TORCH_CHECK(attn.scalar_type() == acc_type && attn.is_contiguous() && attn.dim() == 4 &&
                  attn.device() == value.device() && attn.size(0) == s.N && attn.size(1) == s.Lq &&
                  attn.size(2) == s.M && attn.size(3) == s.L * s.P,
              kBackward, ": attn must be the contiguous (N, Lq, M, L*P) ", acc_type,
              " softmax weights returned by the forward");
  const int64_t blocks = check_sizes(kBackward, s);
  auto grad_query = at::zeros_like(query);
  auto grad_value = at::zeros(value.sizes(), value.options().dtype(acc_type));
  auto grad_key = key ? at::zeros(value.sizes(), value.options().dtype(acc_type))
                      : at::empty({0}, value.options());
  auto grad_loc = at::zeros_like(sampling_locations);
  if (blocks > 0) {
    const auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), kBackward, [&] {
      using acc_t = at::opmath_type<scalar_t>;
      dispatch_vpt(s.D, [&](auto vpt) {
        backward_kernel<scalar_t, decltype(vpt)::value><<<blocks, kThreadsPerBlock, 0, stream>>>(
            grad_output.const_data_ptr<scalar_t>(), query.const_data_ptr<scalar_t>(),
            value.const_data_ptr<scalar_t>(), key ? key->const_data_ptr<scalar_t>() : nullptr,
            spatial_shapes.const_data_ptr<int64_t>(), level_start_index.const_data_ptr<int64_t>(),
            sampling_locations.const_data_ptr<scalar_t>(), attn.const_data_ptr<acc_t>(),
            grad_query.mutable_data_ptr<scalar_t>(), grad_value.mutable_data_ptr<acc_t>(),
            key ? grad_key.mutable_data_ptr<acc_t>() : nullptr,
            grad_loc.mutable_data_ptr<scalar_t>(), s);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  const auto dtype = value.scalar_type();
  return std::make_tuple(grad_query, grad_value.to(dtype), key ? grad_key.to(dtype) : grad_key,
                         grad_loc);
}

}  // namespace
}  // namespace lite_detr

TORCH_LIBRARY_IMPL(lite_detr, CUDA, m) {
  m.impl("ms_deform_attn_key_aware", &lite_detr::key_aware_cuda);
  m.impl("ms_deform_attn_key_aware_backward", &lite_detr::key_aware_backward_cuda);
}
