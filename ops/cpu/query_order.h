// The order in which the CPU kernels sweep the queries. A decoder's queries come in score order,
// at random places of the image: consecutive queries read rows of value (and update rows of its
// gradient) far apart in memory, and on the largest level, which outgrows the caches, nearly every
// corner misses. Swept in spatial order instead (tiles of the largest level, row-major), nearby
// queries share cache lines. Encoder queries are the tokens themselves, in raster order already,
// and keep their order.
//
// The order is a function of the sampling locations alone, so the kernels stay bitwise
// reproducible run to run and for any number of threads. The forward kernels and the pass of the
// key-aware backward that is parallel over queries give each query's outputs by themselves: their
// results do not depend on the order at all.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <utility>
#include <vector>

#include "sampling.h"

namespace lite_detr {
namespace cpu {

constexpr int64_t kOrderTile = 8;  // tokens per side of the tiles of the spatial order

// Whether `Lq` queries of P points per head are few next to the `tokens` of the largest level:
// fewer points than half its tokens. The decoder (900 queries, 16.7k tokens at 800x1333) is
// swept in spatial order; the encoders (one query per token) are not.
inline bool sparse_queries(int64_t Lq, int64_t P, int64_t tokens) { return 2 * Lq * P < tokens; }

// The order of the queries of every image: order[n * Lq + i] is the index n * Lq + q of the
// i-th query of image n.
class QueryOrder {
 public:
  explicit QueryOrder(std::vector<int64_t> order) : order_(std::move(order)) {}
  int64_t operator[](int64_t i) const { return order_.empty() ? i : order_[i]; }

 private:
  std::vector<int64_t> order_;  // empty: the given order
};

// The order in which to sweep the queries. The key of a query is the tile (kOrderTile tokens
// square) of the largest level holding the mean of its points there, over every head; ties keep
// their given order (a stable sort). Not sparse_queries(): the given order.
template <typename scalar_t>
QueryOrder query_order(const scalar_t* locations, const int64_t* shapes, const int64_t* starts,
                       int64_t N, int64_t S, int64_t Lq, int64_t M, int64_t L, int64_t P) {
  int64_t largest = 0, tokens = 0;
  for (int64_t l = 0; l < L; ++l) {
    const Level lv = level_at(shapes, starts, l, S);
    if (lv.H * lv.W > tokens) {
      largest = l;
      tokens = lv.H * lv.W;
    }
  }
  if (tokens == 0 || !sparse_queries(Lq, P, tokens)) {
    return QueryOrder({});
  }
  const Level lv = level_at(shapes, starts, largest, S);
  const int64_t tiles_x = (lv.W + kOrderTile - 1) / kOrderTile;
  const int64_t tiles_y = (lv.H + kOrderTile - 1) / kOrderTile;
  std::vector<int64_t> order(N * Lq), key(N * Lq);
  for (int64_t nq = 0; nq < N * Lq; ++nq) {
    double x = 0, y = 0;
    for (int64_t m = 0; m < M; ++m) {
      const scalar_t* loc = locations + 2 * ((nq * M + m) * L + largest) * P;
      for (int64_t p = 0; p < P; ++p) {
        x += static_cast<double>(loc[2 * p]);
        y += static_cast<double>(loc[2 * p + 1]);
      }
    }
    // tile of the mean point, clamped to the map (NaN and Inf go to tile 0)
    const double fx = std::clamp(x / static_cast<double>(M * P), 0.0, 1.0);
    const double fy = std::clamp(y / static_cast<double>(M * P), 0.0, 1.0);
    const int64_t tx =
        std::isfinite(fx) ? std::min<int64_t>(fx * lv.W / kOrderTile, tiles_x - 1) : 0;
    const int64_t ty =
        std::isfinite(fy) ? std::min<int64_t>(fy * lv.H / kOrderTile, tiles_y - 1) : 0;
    key[nq] = ty * tiles_x + tx;
  }
  std::iota(order.begin(), order.end(), int64_t(0));
  for (int64_t n = 0; n < N; ++n) {
    std::stable_sort(order.begin() + n * Lq, order.begin() + (n + 1) * Lq,
                     [&](int64_t a, int64_t b) { return key[a] < key[b]; });
  }
  return QueryOrder(std::move(order));
}

}  // namespace cpu
}  // namespace lite_detr
