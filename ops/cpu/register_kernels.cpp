// Registers the CPU kernels with torch.library: each call runs the build that avx2_kernels()
// selects (cpu/instruction_set.h).
#include <torch/library.h>

#include "cpu/instruction_set.h"
#include "cpu/kernels.h"

namespace lite_detr {
namespace {

at::Tensor forward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                   const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                   const at::Tensor& attention_weights) {
  return LITE_DETR_CPU_BUILD(cpu::ms_deform_attn)(value, spatial_shapes, level_start_index,
                                                  sampling_locations, attention_weights);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(const at::Tensor& grad_output,
                                                        const at::Tensor& value,
                                                        const at::Tensor& spatial_shapes,
                                                        const at::Tensor& level_start_index,
                                                        const at::Tensor& sampling_locations,
                                                        const at::Tensor& attention_weights) {
  return LITE_DETR_CPU_BUILD(cpu::ms_deform_attn_backward)(
      grad_output, value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
}

std::tuple<at::Tensor, at::Tensor> key_aware_forward(const at::Tensor& query,
                                                     const at::Tensor& value,
                                                     const std::optional<at::Tensor>& key,
                                                     const at::Tensor& spatial_shapes,
                                                     const at::Tensor& level_start_index,
                                                     const at::Tensor& sampling_locations) {
  return LITE_DETR_CPU_BUILD(cpu::key_aware)(query, value, key, spatial_shapes, level_start_index,
                                             sampling_locations);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> key_aware_backward(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& value,
    const std::optional<at::Tensor>& key, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attn) {
  return LITE_DETR_CPU_BUILD(cpu::key_aware_backward)(
      grad_output, query, value, key, spatial_shapes, level_start_index, sampling_locations, attn);
}

}  // namespace
}  // namespace lite_detr

TORCH_LIBRARY_IMPL(lite_detr, CPU, m) {
  m.impl("ms_deform_attn", &lite_detr::forward);
  m.impl("ms_deform_attn_backward", &lite_detr::backward);
  m.impl("ms_deform_attn_key_aware", &lite_detr::key_aware_forward);
  m.impl("ms_deform_attn_key_aware_backward", &lite_detr::key_aware_backward);
}
