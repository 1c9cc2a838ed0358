// CPU kernels of lite_detr::ms_deform_attn (Deformable DETR, Zhu et al. 2021, eq. 3):
//   out = sum_{l, p} a_lp * V_l(loc_lp),  V_l(loc) = sum_c w_c(loc) V_l[corner c]  (bilinear)
// per (n, q, m). Forward: parallel over (n, q). Backward, with g = grad_output:
//   grad_weights_lp = g . V_l(loc_lp),  grad_value[corner c] += a_lp w_c g,
//   grad_loc_lp = a_lp sum_c (dw_c / dloc) g . V_l[corner c],
// parallel over (n, m, l) slices of value, so the scatter into each slice of grad_value has a
// single writer and runs in one query order (cpu/query_order.h): gradients are bitwise
// reproducible run to run and for any number of threads.
//
// The channel loops come from the `Loops` argument (cpu/channel_loops.h), chosen once per call by
// with_channel_loops (cpu/kernel_target.h).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>

#include <vector>

#include "cpu/channel_loops.h"
#include "cpu/kernels.h"
#include "cpu/prefetch.h"
#include "cpu/query_order.h"
#include "cpu/value_slices.h"
#include "ms_deform_attn.h"
#include "sampling.h"

// last: the AVX2 build compiles what follows for AVX2
#include "cpu/kernel_target.h"

namespace lite_detr {
namespace cpu {
namespace {

constexpr const char* kForward = "lite_detr::ms_deform_attn";
constexpr const char* kBackward = "lite_detr::ms_deform_attn_backward";

template <typename scalar_t, typename Loops>
void forward_kernel(const scalar_t* value, const int64_t* shapes, const int64_t* starts,
                    const scalar_t* locations, const scalar_t* weights, scalar_t* out, Sizes s) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t D = Loops::kChannels > 0 ? Loops::kChannels : s.D;
  const int64_t M = s.M, L = s.L, P = s.P, LP = L * P;
  const int64_t row = M * D;  // stride between tokens in value
  const QueryOrder order = query_order(locations, shapes, starts, s.N, s.S, s.Lq, M, L, P);
  at::parallel_for(0, s.N * s.Lq, 16, [&](int64_t begin, int64_t end) {
    Loops loops(D);
    // per-task buffers, reused by every query: the corner rows and weights of the L*P points
    std::vector<acc_t> w(4 * LP);
    std::vector<const scalar_t*> rows(4 * LP);
    const std::vector<scalar_t> zeros(D, scalar_t(0));
    BilinearPoint<acc_t> b;
    for (int64_t i_nq = begin; i_nq < end; ++i_nq) {
      const int64_t nq = order[i_nq];
      const int64_t n = nq / s.Lq;
      for (int64_t m = 0; m < M; ++m) {
        const int64_t qm = nq * M + m;
        // corners of every point first, with prefetches, so the gathers below overlap; a point
        // outside the map reads zeros with weight 0
        for (int64_t l = 0; l < L; ++l) {
          const Level lv = level_at(shapes, starts, l, s.S);
          const scalar_t* level = value + ((n * s.S + lv.start) * M + m) * D;
          for (int64_t p = 0; p < P; ++p) {
            const int64_t j = l * P + p, i = qm * LP + j;
            if (!bilinear_setup<acc_t>(locations[2 * i], locations[2 * i + 1], lv.H, lv.W, b)) {
              b.token[0] = b.token[1] = b.token[2] = b.token[3] = -1;
            }
            corner_rows<acc_t>(b, level, row, zeros.data(), weights[i], &rows[4 * j], &w[4 * j]);
            prefetch_rows(&rows[4 * j], D * sizeof(scalar_t));
          }
        }
        loops.weighted_corners(rows.data(), w.data(), LP, out + qm * D);
      }
    }
  });
}

// Backward: one task per (n, m, l) slice, since the points of level l only touch its tokens. The
// task copies its slice of value into a dense buffer when its points touch most tokens (encoders),
// sweeps the queries in order (grad_weights and grad_loc of the level's points, and the scatter of
// a w_c g into the gradient slice), then writes the slice into grad_value. A sparse slice (the
// decoder's queries) is read and updated in place (zeroed before the tasks start), which adds the
// same sums in the same order. Each slice has one writer and sums in query order, whatever the
// thread count: bitwise reproducible, with N * M * L parallel tasks.
template <typename scalar_t, typename Loops>
void backward_kernel(const scalar_t* grad_out, const scalar_t* value, const int64_t* shapes,
                     const int64_t* starts, const scalar_t* locations, const scalar_t* weights,
                     at::opmath_type<scalar_t>* grad_value, scalar_t* grad_loc,
                     scalar_t* grad_weights, Sizes s) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t D = Loops::kChannels > 0 ? Loops::kChannels : s.D;
  const int64_t M = s.M, L = s.L, P = s.P, LP = L * P, Lq = s.Lq;
  const int64_t row = M * D;
  const QueryOrder order = query_order(locations, shapes, starts, s.N, s.S, Lq, M, L, P);
  zero_sparse_levels(grad_value, shapes, starts, s.N, s.S, M, D, L, Lq * P);
  at::parallel_for(0, s.N * M * L, 1, [&](int64_t begin, int64_t end) {
    Loops loops(D);
    std::vector<acc_t> g(D);
    PointRing<acc_t> ring(P);
    SliceBuffer<scalar_t> value_slice;
    SliceBuffer<acc_t> grad_slice;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / (M * L), m = task / L % M, l = task % L;
      const Level lv = level_at(shapes, starts, l, s.S);
      const int64_t offset = ((n * s.S + lv.start) * M + m) * D;
      const int64_t tokens = lv.H * lv.W;
      const bool dense = dense_slice(Lq * P, tokens);
      const int64_t stride = dense ? D : row;  // between the tokens of v and grad_v
      const scalar_t* v = dense ? value_slice.load(value + offset, tokens, row, D) : value + offset;
      acc_t* grad_v = dense ? grad_slice.reset(tokens, D) : grad_value + offset;
      // row (n * Lq + q) * M + m of the i-th query of the sweep, and its first point on level l
      auto qm_at = [&](int64_t i) { return order[n * Lq + i] * M + m; };
      auto first_point = [&](int64_t i) { return qm_at(i) * LP + l * P; };
      for (int64_t iq = 0; iq < Lq; ++iq) {
        if (iq + kAhead < Lq) {  // this slice reads one row in M * D of grad_output
          prefetch(grad_out + qm_at(iq + kAhead) * D, D * sizeof(scalar_t));
          prefetch(locations + 2 * first_point(iq + kAhead), 2 * P * sizeof(scalar_t));
          prefetch(weights + first_point(iq + kAhead), P * sizeof(scalar_t));
        }
        for (int64_t i = ring.new_begin(iq); i < ring.new_end(iq, Lq); ++i) {
          ring.set_up(i, locations + 2 * first_point(i), lv);
          for (int64_t p = 0; p < P; ++p) {
            if (ring.inside(i)[p]) {
              prefetch_corners(ring.points(i)[p], v, stride, D);
              prefetch_corners<true>(ring.points(i)[p], grad_v, stride, D);
            }
          }
        }
        const int64_t qm = qm_at(iq);
        for (int64_t d = 0; d < D; ++d) {
          g[d] = static_cast<acc_t>(grad_out[qm * D + d]);
        }
        const BilinearPoint<acc_t>* points = ring.points(iq);
        const char* inside = ring.inside(iq);
        for (int64_t p = 0; p < P; ++p) {
          if (!inside[p]) {
            continue;  // outputs start at zero
          }
          const int64_t i = qm * LP + l * P + p;
          const BilinearPoint<acc_t>& b = points[p];
          const acc_t a = weights[i];
          acc_t g_dot_v[4];  // g . V_c, with grad_v += a w_c g at each corner c inside
          loops.dot_axpy_corners(b, v, grad_v, stride, g.data(), a, g_dot_v);
          acc_t g_weight = 0, g_x = 0, g_y = 0;
          for (int c = 0; c < 4; ++c) {
            if (b.token[c] >= 0) {
              g_weight += b.w[c] * g_dot_v[c];
              g_x += b.dw_dx[c] * g_dot_v[c];
              g_y += b.dw_dy[c] * g_dot_v[c];
            }
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

template <>
at::Tensor ms_deform_attn<kBuild>(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                  const at::Tensor& level_start_index,
                                  const at::Tensor& sampling_locations,
                                  const at::Tensor& attention_weights) {
  check_inputs(kForward, value, spatial_shapes, level_start_index, sampling_locations,
               attention_weights, std::nullopt, std::nullopt);
  check_levels_host(kForward, value, spatial_shapes, level_start_index);
  const Sizes s = sizes_of(value, spatial_shapes, sampling_locations);
  auto out = at::empty({s.N, s.Lq, s.M * s.D}, value.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), kForward, [&] {
    with_channel_loops<scalar_t>(s.D, [&](auto loops) {
      forward_kernel<scalar_t, typename decltype(loops)::type>(
          value.const_data_ptr<scalar_t>(), spatial_shapes.const_data_ptr<int64_t>(),
          level_start_index.const_data_ptr<int64_t>(),
          sampling_locations.const_data_ptr<scalar_t>(),
          attention_weights.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), s);
    });
  });
  return out;
}

template <>
std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward<kBuild>(
    const at::Tensor& grad_output, const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  check_inputs(kBackward, value, spatial_shapes, level_start_index, sampling_locations,
               attention_weights, std::nullopt, std::nullopt);
  check_levels_host(kBackward, value, spatial_shapes, level_start_index);
  check_grad_output(kBackward, grad_output, value, sampling_locations);
  const Sizes s = sizes_of(value, spatial_shapes, sampling_locations);
  // grad_value accumulates in the op-math type (float for half / bfloat16); every element is
  // written by the kernel
  auto grad_value =
      at::empty(value.sizes(), value.options().dtype(attn_dtype(value.scalar_type())));
  auto grad_loc = at::zeros_like(sampling_locations);
  auto grad_weights = at::zeros_like(attention_weights);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), kBackward, [&] {
    using acc_t = at::opmath_type<scalar_t>;
    with_channel_loops<scalar_t>(s.D, [&](auto loops) {
      backward_kernel<scalar_t, typename decltype(loops)::type>(
          grad_output.const_data_ptr<scalar_t>(), value.const_data_ptr<scalar_t>(),
          spatial_shapes.const_data_ptr<int64_t>(), level_start_index.const_data_ptr<int64_t>(),
          sampling_locations.const_data_ptr<scalar_t>(),
          attention_weights.const_data_ptr<scalar_t>(), grad_value.mutable_data_ptr<acc_t>(),
          grad_loc.mutable_data_ptr<scalar_t>(), grad_weights.mutable_data_ptr<scalar_t>(), s);
    });
  });
  return std::make_tuple(grad_value.to(value.scalar_type()), grad_loc, grad_weights);
}

}  // namespace cpu
}  // namespace lite_detr
