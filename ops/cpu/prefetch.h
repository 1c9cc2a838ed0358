// Prefetches of the CPU kernels. Their gathers and scatters are bound by memory latency, and the
// points of a query (and the queries of a backward's slice) are independent, so the rows they will
// touch are asked for ahead of their use.
#pragma once

#include <cstdint>
#include <vector>

#include "sampling.h"

namespace lite_detr {
namespace cpu {

// Asks for the cache lines of `bytes` at `p`: to read, or with kWrite to update.
template <bool kWrite = false>
inline void prefetch(const void* p, int64_t bytes) {
#if defined(__GNUC__)
  const char* c = static_cast<const char*>(p);
  for (int64_t off = 0; off < bytes; off += 64) {
    __builtin_prefetch(c + off, kWrite ? 1 : 0);
  }
#endif
}

template <typename src_t>
inline void prefetch_rows(const src_t* const rows[4], int64_t bytes) {
  for (int c = 0; c < 4; ++c) {
    prefetch(rows[c], bytes);
  }
}

// Prefetches the rows of the inside corners of `b` in `level` (tokens `row` apart): rows to read,
// or with kWrite rows to update.
template <bool kWrite = false, typename acc_t, typename t>
inline void prefetch_corners(const BilinearPoint<acc_t>& b, const t* level, int64_t row,
                             int64_t D) {
  for (int c = 0; c < 4; ++c) {
    if (b.token[c] >= 0) {
      prefetch<kWrite>(level + b.token[c] * row, D * sizeof(t));
    }
  }
}

constexpr int64_t kAhead = 8;  // queries between the prefetch of a query's own rows and their use
constexpr int64_t kLead = 4;   // queries between the prefetch of a point's corners and their use

// The sweep of a backward's (n, m, l) slice task over the queries (i = 0 .. Lq-1 in the sweep's
// order), with two prefetch distances. A query's own rows (grad_output, its locations...) are
// asked for kAhead queries ahead. The P points of each query on the level are set up kLead
// queries ahead, when their corner rows are asked for, and kept in a ring until used: a decoder's
// corners lie anywhere in a large level, and a prefetch issued just before their use came too late.
template <typename acc_t>
class PointRing {
 public:
  explicit PointRing(int64_t P) : P_(P), points_((kLead + 1) * P), inside_((kLead + 1) * P) {}

  // Call for i = 0, 1, ..., Lq - 1 in turn before using the points of query i. Calls
  // query_rows(i + kAhead), sets up the points of query i + kLead (at i = 0: of queries 0 to
  // kLead) from the P (x, y) pairs at locations_of(query) on level `lv`, and calls corners(point)
  // for each point inside the map.
  template <typename QueryRows, typename Locations, typename Corners>
  void advance(int64_t i, int64_t Lq, const Level& lv, QueryRows&& query_rows,
               Locations&& locations_of, Corners&& corners) {
    if (i + kAhead < Lq) {
      query_rows(i + kAhead);
    }
    for (int64_t i2 = i == 0 ? 0 : i + kLead; i2 <= i + kLead && i2 < Lq; ++i2) {
      const auto* loc = locations_of(i2);
      BilinearPoint<acc_t>* b = &points_[i2 % (kLead + 1) * P_];
      char* inside = &inside_[i2 % (kLead + 1) * P_];
      for (int64_t p = 0; p < P_; ++p) {
        inside[p] = bilinear_setup<acc_t>(loc[2 * p], loc[2 * p + 1], lv.H, lv.W, b[p]);
        if (inside[p]) {
          corners(b[p]);
        }
      }
    }
  }

  // The P points of query i, and whether each lies inside the map (else it contributes nothing)
  const BilinearPoint<acc_t>* points(int64_t i) const { return &points_[i % (kLead + 1) * P_]; }
  const char* inside(int64_t i) const { return &inside_[i % (kLead + 1) * P_]; }

 private:
  int64_t P_;
  std::vector<BilinearPoint<acc_t>> points_;
  std::vector<char> inside_;
};

}  // namespace cpu
}  // namespace lite_detr
