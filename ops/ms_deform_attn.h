// Multi-scale deformable attention ops of lite_detr: declarations shared by the CPU and CUDA
// kernels. Schemas live in ms_deform_attn.cpp (namespace lite_detr, torch.library).
//
// Layouts (all contiguous):
//   value, key          (N, S, M, D)        S = sum_l H_l * W_l, levels flattened in order
//   query               (N, Lq, M, D)
//   spatial_shapes      (L, 2) int64        (H_l, W_l)
//   level_start_index   (L,) int64
//   sampling_locations  (N, Lq, M, L, P, 2) normalised (x, y), grid_sample(align_corners=False)
//   attention_weights   (N, Lq, M, L, P)
//   output              (N, Lq, M * D)
//   attn (key-aware)    (N, Lq, M, L * P)   softmax weights, float32 (float64 for double inputs)
//
// This header must stay free of CUDA headers: a CPU-only build includes it.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace lite_detr {

// The op boundary: the one place where the ops' tensor inputs are checked (the Python functions
// above them add nothing but what C++ cannot see: autocast, meta tensors, non-tensors). Checks
// shapes (each named size, N, S, M, D, Lq, L, P, agreeing across the inputs), dtypes, devices and
// contiguity; `op` prefixes the messages, which name the input and what it must be. Bad shapes
// and devices raise ValueError in Python, bad dtypes TypeError, non-contiguous inputs (which the
// public functions copy) RuntimeError. `attention_weights`, `query` and `key` are checked when
// given.
void check_inputs(const char* op, const at::Tensor& value, const at::Tensor& spatial_shapes,
                  const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                  const std::optional<at::Tensor>& attention_weights,
                  const std::optional<at::Tensor>& query, const std::optional<at::Tensor>& key);

// Checks that spatial_shapes / level_start_index (on the host) describe the S tokens of value:
// positive sizes, sum of H*W == S, level_start_index their running sum. Kernels index value with
// them, so a mismatch would read out of bounds. The CPU entry points call it; the CUDA ones do not
// (reading device tensors would synchronise), and the kernels skip a level that does not fit.
void check_levels_host(const char* op, const at::Tensor& value, const at::Tensor& spatial_shapes,
                       const at::Tensor& level_start_index);

// Checks that grad_output is a contiguous (N, Lq, M * D) tensor like the forward output.
void check_grad_output(const char* op, const at::Tensor& grad_output, const at::Tensor& value,
                       const at::Tensor& sampling_locations);

// The sizes of one call, named as in the layouts above (every kernel, CPU and CUDA, takes them).
struct Sizes {
  int64_t N, S, M, D, Lq, L, P;
};

inline Sizes sizes_of(const at::Tensor& value, const at::Tensor& spatial_shapes,
                      const at::Tensor& sampling_locations) {
  return {value.size(0),
          value.size(1),
          value.size(2),
          value.size(3),
          sampling_locations.size(1),
          spatial_shapes.size(0),
          sampling_locations.size(4)};
}

// dtype of the saved softmax weights of the key-aware op: the kernels' accumulation type.
inline at::ScalarType attn_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace lite_detr
