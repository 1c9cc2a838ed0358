// Schemas of the lite_detr ops and the input checks shared by their CPU and CUDA kernels.
#include "ms_deform_attn.h"
#include "cpu/instruction_set.h"
#include "sampling.h"

#include <c10/util/Exception.h>
#include <torch/library.h>

#include <string>
#include <vector>

namespace lite_detr {
namespace {

std::string shape_str(const at::Tensor& t) {
  std::string s = "(";
  for (int64_t i = 0; i < t.dim(); ++i) {
    s += std::to_string(t.size(i)) + (i + 1 < t.dim() ? ", " : "");
  }
  return s + (t.dim() == 1 ? ",)" : ")");
}

// Checks `t` against `expected` sizes (-1: any), value's dtype and device, and contiguity.
void check_float(const char* op, const char* name, const char* layout, const at::Tensor& t,
                 const std::vector<int64_t>& expected, const at::Tensor& value) {
  TORCH_CHECK(t.dim() == static_cast<int64_t>(expected.size()), op, ": ", name, " must be ", layout,
              ", got shape ", shape_str(t));
  for (size_t i = 0; i < expected.size(); ++i) {
    TORCH_CHECK(expected[i] < 0 || t.size(i) == expected[i], op, ": ", name, " must be ", layout,
                ", got shape ", shape_str(t), " with value of shape ", shape_str(value));
  }
  TORCH_CHECK(t.scalar_type() == value.scalar_type(), op, ": ", name, " must have value's dtype ",
              value.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == value.device(), op, ": ", name, " is on ", t.device(),
              " but value is on ", value.device());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

}  // namespace

void check_inputs(const char* op, const at::Tensor& value, const at::Tensor& spatial_shapes,
                  const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                  const std::optional<at::Tensor>& attention_weights,
                  const std::optional<at::Tensor>& query, const std::optional<at::Tensor>& key) {
  TORCH_CHECK(value.dim() == 4, op, ": value must be (N, S, M, D), got shape ", shape_str(value));
  const auto dtype = value.scalar_type();
  TORCH_CHECK(
      dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
      op, ": value must be float16, bfloat16, float32 or float64, got ", dtype);
  TORCH_CHECK(value.is_contiguous(), op, ": value must be contiguous");
  const int64_t N = value.size(0), S = value.size(1), M = value.size(2), D = value.size(3);

  TORCH_CHECK(
      spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2 && spatial_shapes.size(0) > 0, op,
      ": spatial_shapes must be (L, 2) with L >= 1, got shape ", shape_str(spatial_shapes));
  const int64_t L = spatial_shapes.size(0);
  TORCH_CHECK(level_start_index.dim() == 1 && level_start_index.size(0) == L, op,
              ": level_start_index must be (L,) with L = ", L, ", got shape ",
              shape_str(level_start_index));
  for (const auto* t : {&spatial_shapes, &level_start_index}) {
    const char* name = t == &spatial_shapes ? "spatial_shapes" : "level_start_index";
    TORCH_CHECK(t->scalar_type() == at::kLong, op, ": ", name, " must be int64, got ",
                t->scalar_type());
    TORCH_CHECK(t->device() == value.device(), op, ": ", name, " is on ", t->device(),
                " but value is on ", value.device());
    TORCH_CHECK(t->is_contiguous(), op, ": ", name, " must be contiguous");
  }

  TORCH_CHECK(sampling_locations.dim() == 6, op,
              ": sampling_locations must be (N, Lq, M, L, P, 2), got shape ",
              shape_str(sampling_locations));
  const int64_t Lq = sampling_locations.size(1), P = sampling_locations.size(4);
  check_float(op, "sampling_locations", "(N, Lq, M, L, P, 2)", sampling_locations,
              {N, -1, M, L, -1, 2}, value);
  if (attention_weights) {
    check_float(op, "attention_weights", "(N, Lq, M, L, P)", *attention_weights, {N, Lq, M, L, P},
                value);
  }
  if (query) {
    check_float(op, "query", "(N, Lq, M, D)", *query, {N, Lq, M, D}, value);
  }
  if (key) {
    check_float(op, "key", "(N, S, M, D) like value", *key, {N, S, M, D}, value);
  }
}

void check_levels_host(const char* op, const at::Tensor& value, const at::Tensor& spatial_shapes,
                       const at::Tensor& level_start_index) {
  TORCH_CHECK(spatial_shapes.device().is_cpu() && level_start_index.device().is_cpu(), op,
              ": check_levels_host needs the level tensors on the CPU");
  const int64_t L = spatial_shapes.size(0), S = value.size(1);
  const int64_t* shapes = spatial_shapes.data_ptr<int64_t>();
  const int64_t* starts = level_start_index.data_ptr<int64_t>();
  int64_t total = 0;  // <= S throughout: level_fits is checked before adding
  for (int64_t l = 0; l < L; ++l) {
    const int64_t H = shapes[2 * l], W = shapes[2 * l + 1];
    TORCH_CHECK(H > 0 && W > 0, op, ": spatial_shapes must hold positive (H, W), got (", H, ", ", W,
                ") at level ", l);
    TORCH_CHECK(starts[l] == total, op, ": level_start_index[", l, "] is ", starts[l],
                " but spatial_shapes put level ", l, " at ", total);
    TORCH_CHECK(level_fits(H, W, total, S), op, ": level ", l, " of spatial_shapes, (H, W) = (", H,
                ", ", W, ") starting at token ", total, ", does not fit in the S = ", S,
                " tokens of value");
    total += H * W;
  }
  TORCH_CHECK(total == S, op, ": sum of H*W over spatial_shapes is ", total,
              " but value has S = ", S, " tokens");
}

void check_grad_output(const char* op, const at::Tensor& grad_output, const at::Tensor& value,
                       const at::Tensor& sampling_locations) {
  check_float(op, "grad_output", "(N, Lq, M * D)", grad_output,
              {value.size(0), sampling_locations.size(1), value.size(2) * value.size(3)}, value);
}

}  // namespace lite_detr

TORCH_LIBRARY(lite_detr, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  m.def(
      "ms_deform_attn(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights) -> Tensor",
      tags);
  m.def(
      "ms_deform_attn_backward(Tensor grad_output, Tensor value, Tensor spatial_shapes, "
      "Tensor level_start_index, Tensor sampling_locations, Tensor attention_weights) "
      "-> (Tensor grad_value, Tensor grad_sampling_locations, Tensor grad_attention_weights)",
      tags);
  m.def(
      "ms_deform_attn_key_aware(Tensor query, Tensor value, Tensor? key, Tensor spatial_shapes, "
      "Tensor level_start_index, Tensor sampling_locations) -> (Tensor output, Tensor attn)",
      tags);
  // grad_key is an empty tensor when key is None (the keys are the values).
  m.def(
      "ms_deform_attn_key_aware_backward(Tensor grad_output, Tensor query, Tensor value, "
      "Tensor? key, Tensor spatial_shapes, Tensor level_start_index, Tensor sampling_locations, "
      "Tensor attn) -> (Tensor grad_query, Tensor grad_value, Tensor grad_key, "
      "Tensor grad_sampling_locations)",
      tags);
  // "avx2" or "baseline": the build of the CPU kernels that runs (cpu/instruction_set.h)
  m.def("cpu_kernels() -> str", [] { return std::string(lite_detr::cpu::kernels_name()); });
}
