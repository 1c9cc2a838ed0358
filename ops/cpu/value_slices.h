// The (n, m, l) slices of value that the CPU backwards work on, one task each: one head's tokens
// of one level of one image. A slice that the points touch several times over is copied into a
// dense buffer; the others are read and updated in place.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu/channel_loops.h"
#include "sampling.h"

namespace lite_detr {
namespace cpu {

// One head's slice of a level (tokens x D), held densely: the backward copies the slice of value
// in, scatters its gradient into another, and copies that out to its strided place in
// grad_value. Rows of one head lie M * D apart in value, a power of two: they crowd a few cache
// sets, and the gathers and scatters of a dense slice hit the cache far more often.
template <typename T>
class SliceBuffer {
 public:
  // Zeroes and returns the buffer for `tokens` rows of `D` channels.
  T* reset(int64_t tokens, int64_t D) {
    data_.assign(tokens * D, T(0));
    return data_.data();
  }
  // Fills the buffer with `tokens` rows of `D` channels read at src + t * row; returns it.
  const T* load(const T* src, int64_t tokens, int64_t row, int64_t D) {
    data_.resize(tokens * D);
    T* dst = data_.data();
    for (int64_t t = 0; t < tokens; ++t) {
      copy_row(src + t * row, dst + t * D, D);
    }
    return dst;
  }
  // Writes row t of the buffer to dst + t * row, for every row.
  void copy_to(T* dst, int64_t row, int64_t D) const {
    const int64_t tokens = static_cast<int64_t>(data_.size()) / D;
    const T* src = data_.data();
#if defined(__SSE2__)
    // rows of whole 64-byte cache lines (float, a multiple of 16 channels, aligned) go out with
    // streaming stores: the lines are written without first being read (a plain copy reads every
    // line of grad_value that it writes), and they do not push the slices still being worked on
    // out of the caches
    if constexpr (std::is_same_v<T, float>) {
      if (D % 16 == 0 && row % 16 == 0 && reinterpret_cast<uintptr_t>(dst) % 64 == 0) {
        for (int64_t t = 0; t < tokens; ++t) {
          for (int64_t d = 0; d < D; d += 4) {
            _mm_stream_ps(dst + t * row + d, _mm_loadu_ps(src + t * D + d));
          }
        }
        _mm_sfence();  // before another thread reads grad_value
        return;
      }
    }
#endif
    for (int64_t t = 0; t < tokens; ++t) {
      copy_row(src + t * D, dst + t * row, D);
    }
  }

 private:
  std::vector<T> data_;
};

// Whether a slice of `tokens` tokens that `points` sampling points touch is worth a dense copy:
// when its rows are used several times over (each point reads four corners).
inline bool dense_slice(int64_t points, int64_t tokens) { return 4 * points >= 2 * tokens; }

// Zeroes, in `grad` (N, S, M, D), the levels whose slices the backward updates in place (not
// dense_slice): each is one contiguous block per image, zeroed in chunks in parallel before the
// per-slice tasks start. (Zeroing its 128-byte rows of each head inside every task, M * D apart,
// cost 16% of the decoder's backward.)
template <typename T>
void zero_sparse_levels(T* grad, const int64_t* shapes, const int64_t* starts, int64_t N, int64_t S,
                        int64_t M, int64_t D, int64_t L, int64_t points_per_level) {
  constexpr int64_t kChunk = 16384;                 // elements per task (64 KiB of float)
  std::vector<std::pair<int64_t, int64_t>> blocks;  // (first element, elements)
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t l = 0; l < L; ++l) {
      const Level lv = level_at(shapes, starts, l, S);
      const int64_t tokens = lv.H * lv.W;
      if (tokens == 0 || dense_slice(points_per_level, tokens)) {
        continue;
      }
      const int64_t first = (n * S + lv.start) * M * D, size = tokens * M * D;
      for (int64_t off = 0; off < size; off += kChunk) {
        blocks.emplace_back(first + off, std::min(kChunk, size - off));
      }
    }
  }
  at::parallel_for(0, static_cast<int64_t>(blocks.size()), 16, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      std::fill(grad + blocks[b].first, grad + blocks[b].first + blocks[b].second, T(0));
    }
  });
}

}  // namespace cpu
}  // namespace lite_detr
