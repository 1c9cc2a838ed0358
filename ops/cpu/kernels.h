// Entry points of the CPU kernels, specialised once per build (cpu/instruction_set.h): checked
// inputs in, outputs out, as the schemas of ms_deform_attn.cpp. cpu/register_kernels.cpp
// registers them with torch.library.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

#include "cpu/instruction_set.h"

namespace lite_detr {
namespace cpu {

// ops/cpu/ms_deform_attn_cpu.cpp
template <Build>
at::Tensor ms_deform_attn(const at::Tensor& value, const at::Tensor& spatial_shapes,
                          const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                          const at::Tensor& attention_weights);

template <Build>
std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward(
    const at::Tensor& grad_output, const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights);

// ops/cpu/ms_deform_attn_key_aware_cpu.cpp
template <Build>
std::tuple<at::Tensor, at::Tensor> key_aware(const at::Tensor& query, const at::Tensor& value,
                                             const std::optional<at::Tensor>& key,
                                             const at::Tensor& spatial_shapes,
                                             const at::Tensor& level_start_index,
                                             const at::Tensor& sampling_locations);

template <Build>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> key_aware_backward(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& value,
    const std::optional<at::Tensor>& key, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attn);

}  // namespace cpu
}  // namespace lite_detr
