// Prefetches of the CPU kernels. Their gathers and scatters are bound by memory latency, and the
// points of a query (and the queries of a backward's slice) are independent, so the rows they will
// touch are asked for ahead of their use.
#pragma once

#include <algorithm>
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

// The points of one level of a backward's (n, m, l) slice task, query after query of its sweep
// (i = 0 .. Lq-1 in the sweep's order). The points of each query are set up kLead queries ahead,
// when the kernel prefetches their corner rows, and kept in a ring until used: a decoder's corners
// lie anywhere in a large level, and a prefetch issued just before their use came too late. (The
// kernel issues the prefetches itself: GCC drops a call whose only effect is a prefetch, so they
// cannot come through a callback.)
template <typename acc_t>
class PointRing {
 public:
  explicit PointRing(int64_t P) : P_(P), points_((kLead + 1) * P), inside_((kLead + 1) * P) {}

  // Before query i is used (i = 0, 1, ... in turn), the queries [new_begin(i), new_end(i, Lq))
  // are set up: query i + kLead, and at i = 0 every query up to it.
  static int64_t new_begin(int64_t i) { return i == 0 ? 0 : i + kLead; }
  static int64_t new_end(int64_t i, int64_t Lq) { return std::min(i + kLead + 1, Lq); }

  // Sets up the P points of query i from its P (x, y) pairs at `loc` on level `lv`.
  template <typename loc_t>
  void set_up(int64_t i, const loc_t* loc, const Level& lv) {
    BilinearPoint<acc_t>* b = &points_[i % (kLead + 1) * P_];
    char* inside = &inside_[i % (kLead + 1) * P_];
    for (int64_t p = 0; p < P_; ++p) {
      inside[p] = bilinear_setup<acc_t>(loc[2 * p], loc[2 * p + 1], lv.H, lv.W, b[p]);
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
