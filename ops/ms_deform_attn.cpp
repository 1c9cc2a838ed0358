// Schemas of the lite_detr ops and the input checks shared by their CPU and CUDA kernels.
#include "ms_deform_attn.h"
#include "cpu/instruction_set.h"

#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <limits>
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

// "torch.float64": dtypes as users write them.
std::string dtype_str(at::ScalarType t) {
  return "torch." + std::string(c10::getDtypeNames(t).first);
}

// "[[4, 5], [2, 3]]" / "[0, 20]": the level tensors (on the host) as Python prints their lists.
std::string list_str(const at::Tensor& t) {
  const int64_t* p = t.const_data_ptr<int64_t>();
  std::string s = "[";
  for (int64_t i = 0; i < t.numel(); ++i) {
    const bool pair = t.dim() == 2;
    if (pair && i % 2 == 0) s += "[";
    s += std::to_string(p[i]);
    if (pair && i % 2 == 1) s += "]";
    if (i + 1 < t.numel()) s += ", ";
  }
  return s + "]";
}

// One input's layout: a name per dim (a shared size such as "N", "L") or a fixed size ("2").
struct Layout {
  const char* name;
  const at::Tensor* tensor;
  std::vector<const char*> dims;
};

std::string layout_str(const std::vector<const char*>& dims) {
  std::string s = "(";
  for (size_t i = 0; i < dims.size(); ++i)
    s += std::string(dims[i]) + (i + 1 < dims.size() ? ", " : "");
  return s + (dims.size() == 1 ? ",)" : ")");
}

// Checks each input's rank and fixed sizes, and that a named size (N, S, M, D, Lq, L, P) is the
// same wherever it appears; the first input to show a name sets its size.
void check_layouts(const char* op, const std::vector<Layout>& inputs) {
  struct Seen {
    int64_t size;
    const char* name;
    size_t axis;
  };
  std::vector<std::pair<const char*, Seen>> seen;
  for (const auto& in : inputs) {
    const at::Tensor& t = *in.tensor;
    TORCH_CHECK_VALUE(t.dim() == static_cast<int64_t>(in.dims.size()), op, ": ", in.name,
                      " must be ", layout_str(in.dims), ", got shape ", shape_str(t));
    for (size_t axis = 0; axis < in.dims.size(); ++axis) {
      const char* dim = in.dims[axis];
      const int64_t size = t.size(static_cast<int64_t>(axis));
      if (std::isdigit(static_cast<unsigned char>(dim[0]))) {
        TORCH_CHECK_VALUE(size == std::atoll(dim), op, ": ", in.name, " must have size ", dim,
                          " at dim ", axis, ", got ", shape_str(t));
        continue;
      }
      auto it = std::find_if(seen.begin(), seen.end(),
                             [&](const auto& s) { return std::strcmp(s.first, dim) == 0; });
      if (it == seen.end()) {
        seen.push_back({dim, {size, in.name, axis}});
        continue;
      }
      const Seen& other = it->second;
      TORCH_CHECK_VALUE(size == other.size, op, ": ", in.name, " has ", dim, "=", size, " at dim ",
                        axis, " but ", other.name, " has ", dim, "=", other.size, " at dim ",
                        other.axis, " (", in.name, " shape ", shape_str(t), ")");
    }
  }
}

void check_dtype_device(const char* op, const char* name, const at::Tensor& t, at::ScalarType dtype,
                        const at::Tensor& value) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, op, ": ", name, " must have dtype ", dtype_str(dtype),
                   ", got ", dtype_str(t.scalar_type()));
  TORCH_CHECK_VALUE(t.device() == value.device(), op, ": ", name, " is on ", t.device(),
                    " but value is on ", value.device());
  // the public functions copy non-contiguous inputs; the raw ops take contiguous ones only
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

}  // namespace

void check_inputs(const char* op, const at::Tensor& value, const at::Tensor& spatial_shapes,
                  const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                  const std::optional<at::Tensor>& attention_weights,
                  const std::optional<at::Tensor>& query, const std::optional<at::Tensor>& key) {
  TORCH_CHECK_VALUE(value.dim() == 4, op, ": value must be (N, S, M, D), got shape ",
                    shape_str(value));
  const auto dtype = value.scalar_type();
  TORCH_CHECK_TYPE(
      dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
      op, ": value must be float16/bfloat16/float32/float64, got ", dtype_str(dtype));
  TORCH_CHECK(value.is_contiguous(), op, ": value must be contiguous");

  // the order sets which input a mismatch is reported against (value first, the levels last)
  std::vector<Layout> layouts{{"value", &value, {"N", "S", "M", "D"}}};
  if (key) layouts.push_back({"key", &*key, {"N", "S", "M", "D"}});
  if (query) layouts.push_back({"query", &*query, {"N", "Lq", "M", "D"}});
  layouts.push_back({"sampling_locations", &sampling_locations, {"N", "Lq", "M", "L", "P", "2"}});
  if (attention_weights) {
    layouts.push_back({"attention_weights", &*attention_weights, {"N", "Lq", "M", "L", "P"}});
  }
  layouts.push_back({"spatial_shapes", &spatial_shapes, {"L", "2"}});
  layouts.push_back({"level_start_index", &level_start_index, {"L"}});
  check_layouts(op, layouts);
  TORCH_CHECK_VALUE(spatial_shapes.size(0) > 0, op,
                    ": spatial_shapes must hold at least one level, got shape (0, 2)");

  for (const auto& in : layouts) {
    if (in.tensor == &value) continue;  // the reference dtype and device
    const bool levels = in.tensor == &spatial_shapes || in.tensor == &level_start_index;
    check_dtype_device(op, in.name, *in.tensor, levels ? at::kLong : dtype, value);
  }
}

void check_levels_host(const char* op, const at::Tensor& value, const at::Tensor& spatial_shapes,
                       const at::Tensor& level_start_index) {
  TORCH_CHECK(spatial_shapes.device().is_cpu() && level_start_index.device().is_cpu(), op,
              ": check_levels_host needs the level tensors on the CPU");
  const int64_t L = spatial_shapes.size(0), S = value.size(1);
  const int64_t* shapes = spatial_shapes.const_data_ptr<int64_t>();
  const int64_t* starts = level_start_index.const_data_ptr<int64_t>();
  for (int64_t l = 0; l < L; ++l) {
    TORCH_CHECK_VALUE(shapes[2 * l] > 0 && shapes[2 * l + 1] > 0, op,
                      ": spatial_shapes must be positive (H, W) pairs, got ",
                      list_str(spatial_shapes));
  }
  // the exact sum, unless it overflows int64 (hostile sizes): then it exceeds any S
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  int64_t total = 0;
  bool overflow = false, expected_starts = true;
  for (int64_t l = 0; l < L && !overflow; ++l) {
    const int64_t H = shapes[2 * l], W = shapes[2 * l + 1];
    overflow = H > kMax / W || total > kMax - H * W;
    expected_starts = expected_starts && starts[l] == total;
    total += overflow ? 0 : H * W;
  }
  const char* fix = ": pass the (H, W) of the levels flattened into value";
  TORCH_CHECK_VALUE(!overflow, op, ": sum of H*W over spatial_shapes ", list_str(spatial_shapes),
                    " is more than the S=", S, " tokens of value (value shape ", shape_str(value),
                    ")", fix);
  TORCH_CHECK_VALUE(total == S, op, ": sum of H*W over spatial_shapes ", list_str(spatial_shapes),
                    " is ", total, " but value has S=", S, " tokens (value shape ",
                    shape_str(value), ")", fix);
  if (!expected_starts) {
    std::string expected = "[";
    for (int64_t l = 0, start = 0; l < L; start += shapes[2 * l] * shapes[2 * l + 1], ++l) {
      expected += std::to_string(start) + (l + 1 < L ? ", " : "]");
    }
    TORCH_CHECK_VALUE(false, op, ": level_start_index ", list_str(level_start_index),
                      " is inconsistent with spatial_shapes ", list_str(spatial_shapes),
                      ": expected ", expected);
  }
}

void check_grad_output(const char* op, const at::Tensor& grad_output, const at::Tensor& value,
                       const at::Tensor& sampling_locations) {
  const std::vector<int64_t> expected{value.size(0), sampling_locations.size(1),
                                      value.size(2) * value.size(3)};
  TORCH_CHECK_VALUE(grad_output.sizes() == at::IntArrayRef(expected), op,
                    ": grad_output must be (N, Lq, M * D) like the forward's output, got shape ",
                    shape_str(grad_output), " with value of shape ", shape_str(value));
  check_dtype_device(op, "grad_output", grad_output, value.scalar_type(), value);
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
