// CPU kernels of lite_detr::ms_deform_attn_key_aware (Lite DETR, Li et al. 2023, sec. 3.3).
//
// Per (n, q, m), with v_j, k_j the bilinear samples of value and key at the L*P points j (k = v
// when key is None):
//   s_j = q . k_j / sqrt(D),  a = softmax(s),  out = sum_j a_j v_j.
// Fused: the samples are gathered into a per-task buffer, nothing of size (N, Lq, M, L*P, D) is
// allocated. The softmax weights a (N, Lq, M, L*P) are returned for the backward, which
// recomputes the samples.
//
// Backward, with g = grad_output and scale = 1 / sqrt(D):
//   ds_j = a_j (g . v_j - g . out),  grad_q = scale sum_j ds_j k_j,
//   grad_v_j = a_j g,  grad_k_j = ds_j scale q  (both scattered bilinearly to the corners),
//   grad_loc_j = sum over corners c of dw_c/dloc (V_c . grad_v_j + K_c . grad_k_j);
// with k = v the last is one dot product per corner: V_c . (grad_v_j + grad_k_j).
// Pass 1, parallel over (n, q), reads only and gives ds_j, grad_loc and grad_q. Pass 2, parallel
// over (n, m, l) slices, scatters grad_v_j and grad_k_j: one writer per grad_value / grad_key
// slice, one query order (cpu/query_order.h), so the gradients are bitwise reproducible run to
// run and for any number of threads.
//
// The channel loops of the forward and pass 1 come from the `Loops` argument
// (cpu/channel_loops.h), chosen once per call by with_channel_loops (cpu/kernel_target.h).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <cmath>
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

constexpr const char* kForward = "lite_detr::ms_deform_attn_key_aware";
constexpr const char* kBackward = "lite_detr::ms_deform_attn_key_aware_backward";

// The L*P points of row qm (= (n * Lq + q) * M + m), whether each lies inside its map, and the
// corner rows and weights in value and (when given) key, with their prefetches. A point outside
// the map has no corner inside: it reads zeros with weight 0, so its samples are 0.
template <typename scalar_t>
void corners_of_points(const scalar_t* value, const scalar_t* key, const int64_t* shapes,
                       const int64_t* starts, const scalar_t* locations, int64_t n, int64_t m,
                       int64_t qm, int64_t D, const Sizes& s, const scalar_t* zeros,
                       BilinearPoint<at::opmath_type<scalar_t>>* points, char* inside,
                       const scalar_t** rows, const scalar_t** key_rows,
                       at::opmath_type<scalar_t>* w) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t row = s.M * D, LP = s.L * s.P;
  for (int64_t l = 0; l < s.L; ++l) {
    const Level lv = level_at(shapes, starts, l, s.S);
    const int64_t offset = ((n * s.S + lv.start) * s.M + m) * D;
    for (int64_t p = 0; p < s.P; ++p) {
      const int64_t j = l * s.P + p, i = qm * LP + j;
      BilinearPoint<acc_t>& b = points[j];
      inside[j] = bilinear_setup<acc_t>(locations[2 * i], locations[2 * i + 1], lv.H, lv.W, b);
      if (!inside[j]) {
        b.token[0] = b.token[1] = b.token[2] = b.token[3] = -1;
      }
      corner_rows<acc_t>(b, value + offset, row, zeros, acc_t(1), &rows[4 * j], &w[4 * j]);
      prefetch_rows(&rows[4 * j], D * sizeof(scalar_t));
      if (key) {
        acc_t unused[4];
        corner_rows<acc_t>(b, key + offset, row, zeros, acc_t(1), &key_rows[4 * j], unused);
        prefetch_rows(&key_rows[4 * j], D * sizeof(scalar_t));
      }
    }
  }
}

template <typename scalar_t, typename Loops>
void forward_kernel(const scalar_t* query, const scalar_t* value, const scalar_t* key,
                    const int64_t* shapes, const int64_t* starts, const scalar_t* locations,
                    scalar_t* out, at::opmath_type<scalar_t>* attn, Sizes s) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t D = Loops::kChannels > 0 ? Loops::kChannels : s.D;
  const int64_t M = s.M, LP = s.L * s.P;
  const acc_t scale = acc_t(1) / std::sqrt(static_cast<acc_t>(D));
  const QueryOrder order = query_order(locations, shapes, starts, s.N, s.S, s.Lq, M, s.L, s.P);
  at::parallel_for(0, s.N * s.Lq, 8, [&](int64_t begin, int64_t end) {
    Loops loops(D);
    // per-task buffers, reused by every query: the samples (L*P x D) of value and key, the corner
    // rows and weights of the L*P points
    std::vector<acc_t> q(D), v(LP * D), k(key ? LP * D : 0), logits(LP), w(4 * LP);
    std::vector<const scalar_t*> rows(4 * LP), key_rows(key ? 4 * LP : 0);
    std::vector<BilinearPoint<acc_t>> points(LP);
    std::vector<char> inside(LP);
    const std::vector<scalar_t> zeros(D, scalar_t(0));
    for (int64_t i_nq = begin; i_nq < end; ++i_nq) {
      const int64_t nq = order[i_nq];
      const int64_t n = nq / s.Lq;
      for (int64_t m = 0; m < M; ++m) {
        const int64_t qm = nq * M + m;
        for (int64_t d = 0; d < D; ++d) {
          q[d] = static_cast<acc_t>(query[qm * D + d]) * scale;
        }
        corners_of_points(value, key, shapes, starts, locations, n, m, qm, D, s, zeros.data(),
                          points.data(), inside.data(), rows.data(), key_rows.data(), w.data());
        // v_j and the logits q . k_j / sqrt(D)
        if (key) {
          loops.samples_and_dots(key_rows.data(), w.data(), q.data(), LP, k.data(), logits.data());
          loops.samples(rows.data(), w.data(), LP, v.data());
        } else {
          loops.samples_and_dots(rows.data(), w.data(), q.data(), LP, v.data(), logits.data());
        }
        const acc_t max = *std::max_element(logits.begin(), logits.end());
        acc_t sum = 0;
        for (int64_t j = 0; j < LP; ++j) {
          logits[j] = std::exp(logits[j] - max);
          sum += logits[j];
        }
        acc_t* a = attn + qm * LP;
        for (int64_t j = 0; j < LP; ++j) {
          a[j] = logits[j] / sum;
        }
        loops.weighted_sum(v.data(), a, LP, acc_t(1), out + qm * D);
      }
    }
  });
}

// Backward, pass 1 (reads only; parallel over (n, q) like the forward): the samples v_j (and
// k_j) again, then ds_j (kept for pass 2), grad_q and grad_loc. Every element of grad_loc is
// written: 0 for the points outside the map.
template <typename scalar_t, typename Loops>
void backward_dots_kernel(const scalar_t* grad_out, const scalar_t* query, const scalar_t* value,
                          const scalar_t* key, const int64_t* shapes, const int64_t* starts,
                          const scalar_t* locations, const at::opmath_type<scalar_t>* attn,
                          scalar_t* grad_query, scalar_t* grad_loc, at::opmath_type<scalar_t>* ds,
                          const QueryOrder& order, Sizes s) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t D = Loops::kChannels > 0 ? Loops::kChannels : s.D;
  const int64_t M = s.M, L = s.L, P = s.P, LP = L * P;
  const acc_t scale = acc_t(1) / std::sqrt(static_cast<acc_t>(D));
  at::parallel_for(0, s.N * s.Lq, 8, [&](int64_t begin, int64_t end) {
    Loops loops(D);
    // per-task buffers: g and q, the samples, g . v_j, the gradients of the samples of one point
    std::vector<acc_t> g(D), q(D), v(LP * D), k(key ? LP * D : 0), g_dot_v(LP), w(4 * LP);
    std::vector<acc_t> grad_vj(key ? D : 0), grad_kj(key ? D : 0);
    std::vector<const scalar_t*> rows(4 * LP), key_rows(key ? 4 * LP : 0);
    std::vector<BilinearPoint<acc_t>> points(LP);
    std::vector<char> inside(LP);
    const std::vector<scalar_t> zeros(D, scalar_t(0));
    for (int64_t i_nq = begin; i_nq < end; ++i_nq) {
      const int64_t nq = order[i_nq];
      const int64_t n = nq / s.Lq;
      for (int64_t m = 0; m < M; ++m) {
        const int64_t qm = nq * M + m;
        const acc_t* a = attn + qm * LP;
        for (int64_t d = 0; d < D; ++d) {
          g[d] = static_cast<acc_t>(grad_out[qm * D + d]);
          q[d] = static_cast<acc_t>(query[qm * D + d]);
        }
        corners_of_points(value, key, shapes, starts, locations, n, m, qm, D, s, zeros.data(),
                          points.data(), inside.data(), rows.data(), key_rows.data(), w.data());
        loops.samples_and_dots(rows.data(), w.data(), g.data(), LP, v.data(), g_dot_v.data());
        if (key) {
          loops.samples(key_rows.data(), w.data(), LP, k.data());
        }
        // ds_j = a_j (g . v_j - g . out), g . out = sum_j a_j g . v_j
        acc_t g_dot_out = 0;
        for (int64_t j = 0; j < LP; ++j) {
          g_dot_v[j] = inside[j] ? g_dot_v[j] : acc_t(0);  // exactly 0, even for a non-finite g
          g_dot_out += a[j] * g_dot_v[j];
        }
        acc_t* ds_q = ds + qm * LP;
        for (int64_t j = 0; j < LP; ++j) {
          ds_q[j] = a[j] * (g_dot_v[j] - g_dot_out);
        }
        // grad_q = scale sum_j ds_j k_j (a point outside the map has k_j = 0 and adds nothing)
        loops.weighted_sum(key ? k.data() : v.data(), ds_q, LP, scale, grad_query + qm * D);
        // grad_loc_j: dw_c/dloc-weighted sums of V_c . grad_v_j + K_c . grad_k_j
        for (int64_t l = 0; l < L; ++l) {
          const Level lv = level_at(shapes, starts, l, s.S);
          for (int64_t p = 0; p < P; ++p) {
            const int64_t j = l * P + p, i = qm * LP + j;
            if (!inside[j]) {
              grad_loc[2 * i] = grad_loc[2 * i + 1] = scalar_t(0);
              continue;
            }
            const acc_t dk = ds_q[j] * scale;
            acc_t d_corner[4];  // d out / d V_c (and K_c) at each corner
            if (key) {
              for (int64_t d = 0; d < D; ++d) {
                grad_vj[d] = a[j] * g[d];
                grad_kj[d] = dk * q[d];
              }
              acc_t k_part[4];
              loops.corner_dots(&rows[4 * j], grad_vj.data(), d_corner);
              loops.corner_dots(&key_rows[4 * j], grad_kj.data(), k_part);
              for (int c = 0; c < 4; ++c) {
                d_corner[c] += k_part[c];
              }
            } else {  // k = v: one gradient for the sample, dk q + a_j g
              loops.corner_dots_of_sum(&rows[4 * j], dk, q.data(), a[j], g.data(), d_corner);
            }
            const BilinearPoint<acc_t>& b = points[j];
            acc_t g_x = 0, g_y = 0;
            for (int c = 0; c < 4; ++c) {
              const acc_t dc = b.token[c] >= 0 ? d_corner[c] : acc_t(0);  // 0 outside the map
              g_x += b.dw_dx[c] * dc;
              g_y += b.dw_dy[c] * dc;
            }
            grad_loc[2 * i] = static_cast<scalar_t>(g_x * static_cast<acc_t>(lv.W));
            grad_loc[2 * i + 1] = static_cast<scalar_t>(g_y * static_cast<acc_t>(lv.H));
          }
        }
      }
    }
  });
}

// Backward, pass 2: grad_value += w_c a_j g and grad_key += w_c ds_j scale q at every corner (both
// into grad_value when key is None), one task per (n, m, l) slice (points of level l only touch
// its tokens), as the standard op's backward. Each slice has one writer and sums in query order,
// whatever the thread count: bitwise reproducible.
template <typename scalar_t, int64_t kD>
void backward_scatter_kernel(const scalar_t* grad_out, const scalar_t* query, const int64_t* shapes,
                             const int64_t* starts, const scalar_t* locations,
                             const at::opmath_type<scalar_t>* attn,
                             const at::opmath_type<scalar_t>* ds,
                             at::opmath_type<scalar_t>* grad_value,
                             at::opmath_type<scalar_t>* grad_key, const QueryOrder& order,
                             Sizes s) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t D = kD > 0 ? kD : s.D, M = s.M, L = s.L, P = s.P, LP = L * P, Lq = s.Lq;
  const int64_t row = M * D;
  const acc_t scale = acc_t(1) / std::sqrt(static_cast<acc_t>(D));
  zero_sparse_levels(grad_value, shapes, starts, s.N, s.S, M, D, L, Lq * P);
  if (grad_key) {
    zero_sparse_levels(grad_key, shapes, starts, s.N, s.S, M, D, L, Lq * P);
  }
  at::parallel_for(0, s.N * M * L, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> g(D), q(D), grad_v(D);
    PointRing<acc_t> ring(P);
    SliceBuffer<acc_t> value_slice, key_slice;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / (M * L), m = task / L % M, l = task % L;
      const Level lv = level_at(shapes, starts, l, s.S);
      const int64_t offset = ((n * s.S + lv.start) * M + m) * D;
      // dense slices pay off when the points touch most tokens (encoders); a sparse slice (the
      // decoder's queries) is scattered in place (zeroed before the tasks start): the same sums
      // in the same order
      const int64_t tokens = lv.H * lv.W;
      const bool dense = dense_slice(Lq * P, tokens);
      const int64_t stride = dense ? D : row;  // between the tokens of grad_v_level
      acc_t* grad_v_level = dense ? value_slice.reset(tokens, D) : grad_value + offset;
      acc_t* grad_k_level = !grad_key ? nullptr
                            : dense   ? key_slice.reset(tokens, D)
                                      : grad_key + offset;
      // row (n * Lq + q) * M + m of the i-th query of the sweep, and its first point on level l
      auto qm_at = [&](int64_t i) { return order[n * Lq + i] * M + m; };
      auto first_point = [&](int64_t i) { return qm_at(i) * LP + l * P; };
      for (int64_t iq = 0; iq < Lq; ++iq) {
        if (iq + kAhead < Lq) {  // this slice reads one row in M * D of each
          prefetch(grad_out + qm_at(iq + kAhead) * D, D * sizeof(scalar_t));
          prefetch(query + qm_at(iq + kAhead) * D, D * sizeof(scalar_t));
          prefetch(locations + 2 * first_point(iq + kAhead), 2 * P * sizeof(scalar_t));
          prefetch(attn + first_point(iq + kAhead), P * sizeof(acc_t));
          prefetch(ds + first_point(iq + kAhead), P * sizeof(acc_t));
        }
        for (int64_t i = ring.new_begin(iq); i < ring.new_end(iq, Lq); ++i) {
          ring.set_up(i, locations + 2 * first_point(i), lv);
          for (int64_t p = 0; p < P; ++p) {
            if (ring.inside(i)[p]) {
              prefetch_corners<true>(ring.points(i)[p], grad_v_level, stride, D);
              if (grad_key) {
                prefetch_corners<true>(ring.points(i)[p], grad_k_level, stride, D);
              }
            }
          }
        }
        const int64_t qm = qm_at(iq);
        for (int64_t d = 0; d < D; ++d) {
          g[d] = static_cast<acc_t>(grad_out[qm * D + d]);
          q[d] = static_cast<acc_t>(query[qm * D + d]);
        }
        const BilinearPoint<acc_t>* points = ring.points(iq);
        const char* inside = ring.inside(iq);
        for (int64_t p = 0; p < P; ++p) {
          if (!inside[p]) {
            continue;
          }
          const BilinearPoint<acc_t>& b = points[p];
          const int64_t j = qm * LP + l * P + p;
          const acc_t a = attn[j], dk = ds[j] * scale;
          if (!grad_key) {
            for (int64_t d = 0; d < D; ++d) {
              grad_v[d] = a * g[d] + dk * q[d];  // k == v: one gradient for the shared sample
            }
          }
          for (int c = 0; c < 4; ++c) {
            if (b.token[c] < 0) {
              continue;
            }
            const int64_t t = b.token[c] * stride;
            if (grad_key) {
              axpy(grad_v_level + t, g.data(), a * b.w[c], D);
              axpy(grad_k_level + t, q.data(), dk * b.w[c], D);
            } else {
              axpy(grad_v_level + t, grad_v.data(), b.w[c], D);
            }
          }
        }
      }
      if (dense) {
        value_slice.copy_to(grad_value + offset, row, D);
        if (grad_key) {
          key_slice.copy_to(grad_key + offset, row, D);
        }
      }
    }
  });
}

}  // namespace

template <>
std::tuple<at::Tensor, at::Tensor> key_aware<kBuild>(const at::Tensor& query,
                                                     const at::Tensor& value,
                                                     const std::optional<at::Tensor>& key,
                                                     const at::Tensor& spatial_shapes,
                                                     const at::Tensor& level_start_index,
                                                     const at::Tensor& sampling_locations) {
  check_inputs(kForward, value, spatial_shapes, level_start_index, sampling_locations, std::nullopt,
               query, key);
  check_levels_host(kForward, value, spatial_shapes, level_start_index);
  const Sizes s = sizes_of(value, spatial_shapes, sampling_locations);
  auto out = at::empty({s.N, s.Lq, s.M * s.D}, value.options());
  auto attn = at::empty({s.N, s.Lq, s.M, s.L * s.P},
                        value.options().dtype(attn_dtype(value.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), kForward, [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // the generic loops keep a run-time D: the forward and pass 1 ran 10-20% slower with a
    // compile-time one (measured side by side, benchmarks/README.md), the scatter faster
    with_channel_loops<scalar_t, /*kFixedD=*/false>(s.D, [&](auto loops) {
      forward_kernel<scalar_t, typename decltype(loops)::type>(
          query.const_data_ptr<scalar_t>(), value.const_data_ptr<scalar_t>(),
          key ? key->const_data_ptr<scalar_t>() : nullptr, spatial_shapes.const_data_ptr<int64_t>(),
          level_start_index.const_data_ptr<int64_t>(),
          sampling_locations.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
          attn.mutable_data_ptr<acc_t>(), s);
    });
  });
  return std::make_tuple(out, attn);
}

template <>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> key_aware_backward<kBuild>(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& value,
    const std::optional<at::Tensor>& key, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attn) {
  check_inputs(kBackward, value, spatial_shapes, level_start_index, sampling_locations,
               std::nullopt, query, key);
  check_levels_host(kBackward, value, spatial_shapes, level_start_index);
  check_grad_output(kBackward, grad_output, value, sampling_locations);
  const Sizes s = sizes_of(value, spatial_shapes, sampling_locations);
  const auto acc_type = attn_dtype(value.scalar_type());
  TORCH_CHECK(attn.scalar_type() == acc_type && attn.is_contiguous() && attn.dim() == 4 &&
                  attn.size(0) == s.N && attn.size(1) == s.Lq && attn.size(2) == s.M &&
                  attn.size(3) == s.L * s.P,
              kBackward, ": attn must be the contiguous (N, Lq, M, L*P) ", acc_type,
              " softmax weights returned by the forward");
  auto grad_query = at::empty_like(query);
  // every element of grad_value (and grad_key) is written by pass 2, of grad_loc by pass 1
  const auto acc_options = value.options().dtype(acc_type);
  auto grad_value = at::empty(value.sizes(), acc_options);
  auto grad_key = key ? at::empty(value.sizes(), acc_options) : at::empty({0}, value.options());
  auto grad_loc = at::empty_like(sampling_locations);
  auto ds = at::empty_like(attn);  // logit gradients, from pass 1 to pass 2
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), kBackward, [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* grad_out = grad_output.const_data_ptr<scalar_t>();
    const scalar_t* q = query.const_data_ptr<scalar_t>();
    const int64_t* shapes = spatial_shapes.const_data_ptr<int64_t>();
    const int64_t* starts = level_start_index.const_data_ptr<int64_t>();
    const scalar_t* locations = sampling_locations.const_data_ptr<scalar_t>();
    const acc_t* a = attn.const_data_ptr<acc_t>();
    // the order of cpu/query_order.h, for both passes
    const QueryOrder order = query_order(locations, shapes, starts, s.N, s.S, s.Lq, s.M, s.L, s.P);
    with_channel_loops<scalar_t, /*kFixedD=*/false>(s.D, [&](auto loops) {
      backward_dots_kernel<scalar_t, typename decltype(loops)::type>(
          grad_out, q, value.const_data_ptr<scalar_t>(),
          key ? key->const_data_ptr<scalar_t>() : nullptr, shapes, starts, locations, a,
          grad_query.mutable_data_ptr<scalar_t>(), grad_loc.mutable_data_ptr<scalar_t>(),
          ds.mutable_data_ptr<acc_t>(), order, s);
    });
    with_head_dim(s.D, [&](auto kD) {
      backward_scatter_kernel<scalar_t, decltype(kD)::value>(
          grad_out, q, shapes, starts, locations, a, ds.const_data_ptr<acc_t>(),
          grad_value.mutable_data_ptr<acc_t>(), key ? grad_key.mutable_data_ptr<acc_t>() : nullptr,
          order, s);
    });
  });
  const auto dtype = value.scalar_type();
  return std::make_tuple(grad_query, grad_value.to(dtype), key ? grad_key.to(dtype) : grad_key,
                         grad_loc);
}

}  // namespace cpu
}  // namespace lite_detr
