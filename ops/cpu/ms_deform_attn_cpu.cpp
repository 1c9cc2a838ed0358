// CPU kernels of lite_detr::ms_deform_attn (Deformable DETR, Zhu et al. 2021, eq. 3).
//
// Forward: parallel over (n, q); per head, a channel-contiguous accumulation of the weighted
// corners. Backward: parallel over (n, m, l) slices of value, so the scatter into each slice of
// grad_value has a single writer and runs in one query order (cpu/query_order.h): gradients are
// bitwise reproducible run to run and for any number of threads.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>  // the AVX2 build's corner loop
#endif

#include "cpu/bilinear.h"
#include "cpu/gradient_buffers.h"
#include "cpu/instruction_set.h"
#include "cpu/query_order.h"
#include "ms_deform_attn.h"

// last: the AVX2 build compiles what follows for AVX2 (namespace LITE_DETR_CPU_NS)
#include "cpu/kernel_target.h"

namespace lite_detr {
namespace LITE_DETR_CPU_NS {
namespace {

using cpu::combine4;
using cpu::corner_rows;
using cpu::dense_slice;
using cpu::dot_axpy;
using cpu::prefetch;
using cpu::prefetch_corners;
using cpu::prefetch_rows;
using cpu::SliceBuffer;

constexpr const char* kForward = "lite_detr::ms_deform_attn";
constexpr const char* kBackward = "lite_detr::ms_deform_attn_backward";
constexpr int64_t kAhead = 8;  // queries between a prefetch and the use of its rows
constexpr int64_t kLead = 4;   // queries between a corner prefetch and the corner's use

#if defined(LITE_DETR_CPU_AVX2)
// out = sum over the LP points of combine4() of their corners, for 32 float channels (the AVX2
// build's common case), summed in registers: the operations of combine4<true>() in its order
// (the compile-time channel-count test checks that the results are bitwise the same).
inline void weighted_corners_32(const float* const* rows, const float* w, int64_t LP, float* out) {
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
  for (int64_t j = 0; j < LP; ++j) {
    const float* const* r = rows + 4 * j;
    const __m256 w0 = _mm256_set1_ps(w[4 * j]), w1 = _mm256_set1_ps(w[4 * j + 1]);
    const __m256 w2 = _mm256_set1_ps(w[4 * j + 2]), w3 = _mm256_set1_ps(w[4 * j + 3]);
    for (int k = 0; k < 4; ++k) {
      __m256 x = _mm256_fmadd_ps(w0, _mm256_loadu_ps(r[0] + 8 * k),
                                 _mm256_mul_ps(w1, _mm256_loadu_ps(r[1] + 8 * k)));
      x = _mm256_fmadd_ps(w2, _mm256_loadu_ps(r[2] + 8 * k), x);
      x = _mm256_fmadd_ps(w3, _mm256_loadu_ps(r[3] + 8 * k), x);
      acc[k] = _mm256_add_ps(acc[k], x);
    }
  }
  for (int k = 0; k < 4; ++k) {
    _mm256_storeu_ps(out + 8 * k, acc[k]);
  }
}
#endif

template <typename scalar_t, int64_t kD>
void forward_kernel(const scalar_t* value, const int64_t* shapes, const int64_t* starts,
                    const scalar_t* locations, const scalar_t* weights, scalar_t* out, int64_t N,
                    int64_t S, int64_t M, int64_t head_dim, int64_t Lq, int64_t L, int64_t P) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t D = kD > 0 ? kD : head_dim;
  const int64_t row = M * D;  // stride between tokens in value
  const std::vector<int64_t> order = cpu::query_order(locations, shapes, starts, N, S, Lq, M, L, P);
  at::parallel_for(0, N * Lq, 16, [&](int64_t begin, int64_t end) {
    const int64_t LP = L * P;
    // per-task buffers, reused by every query: the accumulator, corner rows and weights
    std::vector<acc_t> acc(D), w(4 * LP);
    std::vector<const scalar_t*> rows(4 * LP);
    const std::vector<scalar_t> zeros(D, scalar_t(0));
    BilinearPoint<acc_t> b;
    for (int64_t i_nq = begin; i_nq < end; ++i_nq) {
      const int64_t nq = order.empty() ? i_nq : order[i_nq];
      const int64_t n = nq / Lq;
      for (int64_t m = 0; m < M; ++m) {
        const int64_t qm = nq * M + m;
        // corners of every point first, with prefetches, so the gathers below overlap
        for (int64_t l = 0; l < L; ++l) {
          const Level lv = level_at(shapes, starts, l, S);
          const int64_t H = lv.H, W = lv.W;
          const scalar_t* level = value + ((n * S + lv.start) * M + m) * D;
          for (int64_t p = 0; p < P; ++p) {
            const int64_t j = l * P + p, i = qm * LP + j;
            if (!bilinear_setup<acc_t>(locations[2 * i], locations[2 * i + 1], H, W, b)) {
              b.token[0] = b.token[1] = b.token[2] = b.token[3] = -1;
            }
            corner_rows<acc_t>(b, level, row, zeros.data(), weights[i], &rows[4 * j], &w[4 * j]);
            prefetch_rows(&rows[4 * j], D * sizeof(scalar_t));
          }
        }
        scalar_t* o = out + qm * D;
#if defined(LITE_DETR_CPU_AVX2)
        if constexpr (std::is_same_v<scalar_t, float> && kD == 32) {
          weighted_corners_32(rows.data(), w.data(), LP, o);
          continue;
        }
#endif
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t j = 0; j < LP; ++j) {
          combine4<true>(acc.data(), &rows[4 * j], &w[4 * j], D);
        }
        for (int64_t d = 0; d < D; ++d) {
          o[d] = static_cast<scalar_t>(acc[d]);
        }
      }
    }
  });
}

#if defined(LITE_DETR_CPU_AVX2)
// cpu::dot_axpy at the four corners of a point, for 32 float channels (the AVX2 build's common
// case): grad[c] += alpha[c] * g, out[c] = v[c] . g. The same operations in the same order as
// dot_axpy (lane k of a vector is its part[k]), so the results are bitwise dot_axpy's; only the
// four final reductions run together, as horizontal adds over the four sums at once.
inline void dot_axpy4_32(const float* const v[4], float* const grad[4], const float* g,
                         const float alpha[4], float out[4]) {
  const __m256 gs[4] = {_mm256_loadu_ps(g), _mm256_loadu_ps(g + 8), _mm256_loadu_ps(g + 16),
                        _mm256_loadu_ps(g + 24)};
  __m128 q[4];
  for (int c = 0; c < 4; ++c) {
    const __m256 a = _mm256_set1_ps(alpha[c]);
    __m256 sum = _mm256_setzero_ps();
    for (int k = 0; k < 4; ++k) {
      sum = _mm256_fmadd_ps(_mm256_loadu_ps(v[c] + 8 * k), gs[k], sum);
      const __m256 updated = _mm256_fmadd_ps(a, gs[k], _mm256_loadu_ps(grad[c] + 8 * k));
      _mm256_storeu_ps(grad[c] + 8 * k, updated);
    }
    // (p0 + p4, p1 + p5, p2 + p6, p3 + p7)
    q[c] = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
  }
  // ((p0 + p4) + (p1 + p5)) + ((p2 + p6) + (p3 + p7)) of each corner, + 0 as dot_axpy's tail
  const __m128 sums = _mm_hadd_ps(_mm_hadd_ps(q[0], q[1]), _mm_hadd_ps(q[2], q[3]));
  _mm_storeu_ps(out, _mm_add_ps(sums, _mm_setzero_ps()));
}
#endif

// Backward: one task per (n, m, l) slice, since the points of level l only touch its tokens. The
// task copies its slice of value into a dense buffer, sweeps the queries in order (grad_weights
// and grad_loc of the level's points, and the scatter of a * w_c * grad_output into a dense
// gradient slice), then writes the slice into grad_value. Each slice has one writer and sums in
// query order, whatever the thread count: bitwise reproducible, with N * M * L parallel tasks.
template <typename scalar_t, int64_t kD>
void backward_kernel(const scalar_t* grad_out, const scalar_t* value, const int64_t* shapes,
                     const int64_t* starts, const scalar_t* locations, const scalar_t* weights,
                     at::opmath_type<scalar_t>* grad_value, scalar_t* grad_loc,
                     scalar_t* grad_weights, int64_t N, int64_t S, int64_t M, int64_t head_dim,
                     int64_t Lq, int64_t L, int64_t P) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t D = kD > 0 ? kD : head_dim;
  const int64_t row = M * D;
  const std::vector<int64_t> order = cpu::query_order(locations, shapes, starts, N, S, Lq, M, L, P);
  cpu::zero_sparse_levels(grad_value, shapes, starts, N, S, M, D, L, Lq * P);
  at::parallel_for(0, N * M * L, 1, [&](int64_t begin, int64_t end) {
    const int64_t LP = L * P;
    std::vector<acc_t> g(D);
    // the points of the queries from iq to iq + kLead, in a ring
    std::vector<BilinearPoint<acc_t>> ring((kLead + 1) * P);
    std::vector<char> ring_valid((kLead + 1) * P);
    SliceBuffer<scalar_t> value_slice;
    SliceBuffer<acc_t> grad_slice;
    // the rows that the outside corners of a point read and update (with weight 0)
    const std::vector<scalar_t> zero_row(D, scalar_t(0));
    std::vector<acc_t> scratch_row(D);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / (M * L), m = task / L % M, l = task % L;
      const Level lv = level_at(shapes, starts, l, S);
      const int64_t offset = ((n * S + lv.start) * M + m) * D;
      // dense slices pay off when the points touch most tokens (encoders); a sparse slice (the
      // decoder's queries) is read and updated in place (zeroed before the tasks start), which
      // adds the same sums in the same order
      const int64_t tokens = lv.H * lv.W;
      const bool dense = dense_slice(Lq * P, tokens);
      const int64_t stride = dense ? D : row;  // between the tokens of v and grad_v
      const scalar_t* v = dense ? value_slice.load(value + offset, tokens, row, D) : value + offset;
      acc_t* grad_v = dense ? grad_slice.reset(tokens, D) : grad_value + offset;
      for (int64_t iq = 0; iq < Lq; ++iq) {
        const int64_t qm = (order.empty() ? n * Lq + iq : order[n * Lq + iq]) * M + m;
        if (iq + kAhead < Lq) {  // this slice reads one row in M * D of grad_output: prefetch it
          const int64_t ahead =
              (order.empty() ? n * Lq + iq + kAhead : order[n * Lq + iq + kAhead]) * M + m;
          const int64_t i = ahead * LP + l * P;
          prefetch(grad_out + ahead * D, D * sizeof(scalar_t));
          prefetch(locations + 2 * i, 2 * P * sizeof(scalar_t));
          prefetch(weights + i, P * sizeof(scalar_t));
        }
        // set up the points of query iq + kLead (at first, of every query up to it) and ask for
        // their corner rows: a decoder's corners lie anywhere in a large level, and a prefetch
        // issued just before their use came too late
        for (int64_t iq2 = iq == 0 ? 0 : iq + kLead; iq2 <= iq + kLead && iq2 < Lq; ++iq2) {
          const int64_t qm2 = (order.empty() ? n * Lq + iq2 : order[n * Lq + iq2]) * M + m;
          BilinearPoint<acc_t>* b = &ring[iq2 % (kLead + 1) * P];
          char* inside = &ring_valid[iq2 % (kLead + 1) * P];
          for (int64_t p = 0; p < P; ++p) {
            const int64_t i = qm2 * LP + l * P + p;
            inside[p] =
                bilinear_setup<acc_t>(locations[2 * i], locations[2 * i + 1], lv.H, lv.W, b[p]);
            if (inside[p]) {
              prefetch_corners(b[p], v, stride, D);
              prefetch_corners<true>(b[p], grad_v, stride, D);
            }
          }
        }
        const BilinearPoint<acc_t>* points = &ring[iq % (kLead + 1) * P];
        const char* valid = &ring_valid[iq % (kLead + 1) * P];
        for (int64_t d = 0; d < D; ++d) {
          g[d] = static_cast<acc_t>(grad_out[qm * D + d]);
        }
        for (int64_t p = 0; p < P; ++p) {
          if (!valid[p]) {
            continue;  // outputs start at zero
          }
          const int64_t i = qm * LP + l * P + p;
          const BilinearPoint<acc_t>& b = points[p];
          const acc_t a = weights[i];
          acc_t g_dot_v[4];  // g . V_c, with grad_v += a * w_c * g at each corner c inside
          bool four_at_once = false;
#if defined(LITE_DETR_CPU_AVX2)
          if constexpr (std::is_same_v<scalar_t, float> && kD == 32) {
            const float* rows[4];
            float* grad_rows[4];
            float alpha[4];
            for (int c = 0; c < 4; ++c) {
              const bool inside = b.token[c] >= 0;
              rows[c] = inside ? v + b.token[c] * stride : zero_row.data();
              grad_rows[c] = inside ? grad_v + b.token[c] * stride : scratch_row.data();
              alpha[c] = inside ? a * b.w[c] : 0.0f;
            }
            dot_axpy4_32(rows, grad_rows, g.data(), alpha, g_dot_v);
            four_at_once = true;
          }
#endif
          acc_t g_weight = 0, g_x = 0, g_y = 0;
          for (int c = 0; c < 4; ++c) {
            if (b.token[c] < 0) {
              continue;
            }
            if (!four_at_once) {
              const int64_t t = b.token[c] * stride;
              g_dot_v[c] = dot_axpy(v + t, grad_v + t, g.data(), a * b.w[c], D);
            }
            g_weight += b.w[c] * g_dot_v[c];
            g_x += b.dw_dx[c] * g_dot_v[c];
            g_y += b.dw_dy[c] * g_dot_v[c];
          }
          grad_weights[i] = static_cast<scalar_t>(g_weight);
          grad_loc[2 * i] = static_cast<scalar_t>(a * g_x * static_cast<acc_t>(lv.W));
          grad_loc[2 * i + 1] = static_cast<scalar_t>(a * g_y * static_cast<acc_t>(lv.H));
        }
      }
      if (dense) {
        grad_slice.copy_to(grad_value + offset, row, D);
      }
    }
  });
}

}  // namespace

at::Tensor ms_deform_attn_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                              const at::Tensor& level_start_index,
                              const at::Tensor& sampling_locations,
                              const at::Tensor& attention_weights) {
  check_inputs(kForward, value, spatial_shapes, level_start_index, sampling_locations,
               attention_weights, std::nullopt, std::nullopt);
  check_levels_host(kForward, value, spatial_shapes, level_start_index);
  const int64_t N = value.size(0), S = value.size(1), M = value.size(2), D = value.size(3);
  const int64_t Lq = sampling_locations.size(1), L = spatial_shapes.size(0);
  const int64_t P = sampling_locations.size(4);
  auto out = at::empty({N, Lq, M * D}, value.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), kForward, [&] {
    cpu::with_head_dim(D, [&](auto kD) {
      forward_kernel<scalar_t, decltype(kD)::value>(
          value.const_data_ptr<scalar_t>(), spatial_shapes.const_data_ptr<int64_t>(),
          level_start_index.const_data_ptr<int64_t>(),
          sampling_locations.const_data_ptr<scalar_t>(),
          attention_weights.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), N, S, M,
          D, Lq, L, P);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  check_inputs(kBackward, value, spatial_shapes, level_start_index, sampling_locations,
               attention_weights, std::nullopt, std::nullopt);
  check_levels_host(kBackward, value, spatial_shapes, level_start_index);
  check_grad_output(kBackward, grad_output, value, sampling_locations);
  const int64_t N = value.size(0), S = value.size(1), M = value.size(2), D = value.size(3);
  const int64_t Lq = sampling_locations.size(1), L = spatial_shapes.size(0);
  const int64_t P = sampling_locations.size(4);
  // grad_value accumulates in the op-math type (float for half / bfloat16)
  const auto acc_type = attn_dtype(value.scalar_type());
  // every element is written by the scatter pass; the storage is reused from call to call
  auto grad_value = cpu::gradient_buffer(cpu::GradientBuffer::kValue, value.sizes(),
                                         value.options().dtype(acc_type));
  auto grad_loc = at::zeros_like(sampling_locations);
  auto grad_weights = at::zeros_like(attention_weights);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), kBackward, [&] {
    using acc_t = at::opmath_type<scalar_t>;
    cpu::with_head_dim(D, [&](auto kD) {
      backward_kernel<scalar_t, decltype(kD)::value>(
          grad_output.const_data_ptr<scalar_t>(), value.const_data_ptr<scalar_t>(),
          spatial_shapes.const_data_ptr<int64_t>(), level_start_index.const_data_ptr<int64_t>(),
          sampling_locations.const_data_ptr<scalar_t>(),
          attention_weights.const_data_ptr<scalar_t>(), grad_value.mutable_data_ptr<acc_t>(),
          grad_loc.mutable_data_ptr<scalar_t>(), grad_weights.mutable_data_ptr<scalar_t>(), N, S, M,
          D, Lq, L, P);
    });
  });
  return std::make_tuple(grad_value.to(value.scalar_type()), grad_loc, grad_weights);
}

}  // namespace LITE_DETR_CPU_NS

#if !defined(LITE_DETR_CPU_AVX2)
#if LITE_DETR_HAVE_AVX2_KERNELS
namespace avx2 {  // cpu/avx2/
at::Tensor ms_deform_attn_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                              const at::Tensor& level_start_index,
                              const at::Tensor& sampling_locations,
                              const at::Tensor& attention_weights);
std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights);
}  // namespace avx2
#endif

namespace {

at::Tensor forward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                   const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                   const at::Tensor& attention_weights) {
  return LITE_DETR_CPU_BUILD(ms_deform_attn_cpu)(value, spatial_shapes, level_start_index,
                                                 sampling_locations, attention_weights);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(const at::Tensor& grad_output,
                                                        const at::Tensor& value,
                                                        const at::Tensor& spatial_shapes,
                                                        const at::Tensor& level_start_index,
                                                        const at::Tensor& sampling_locations,
                                                        const at::Tensor& attention_weights) {
  return LITE_DETR_CPU_BUILD(ms_deform_attn_backward_cpu)(
      grad_output, value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
}

}  // namespace
#endif
}  // namespace lite_detr

#if !defined(LITE_DETR_CPU_AVX2)
TORCH_LIBRARY_IMPL(lite_detr, CPU, m) {
  m.impl("ms_deform_attn", &lite_detr::forward);
  m.impl("ms_deform_attn_backward", &lite_detr::backward);
}
#endif
