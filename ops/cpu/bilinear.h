// Channel loops of the CPU kernels, written to auto-vectorise; the sampling rules themselves
// (BilinearPoint, bilinear_setup, level_at) are shared with the CUDA kernels in sampling.h.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#include <type_traits>
#include <utility>
#include <vector>

#include "sampling.h"

namespace lite_detr {
namespace cpu {

// Calls f(std::integral_constant<int64_t, 32>) when the channels per head D are 32 (256 channels
// in 8 heads: every detector here), f(std::integral_constant<int64_t, 0>) otherwise. A kernel
// templated on kD uses `kD > 0 ? kD : D`, so its channel loops get a trip count known at compile
// time (fully unrolled) in the common case; the arithmetic and its order are the same.
template <typename F>
inline void with_head_dim(int64_t D, F&& f) {
  if (D == 32) {
    f(std::integral_constant<int64_t, 32>{});
  } else {
    f(std::integral_constant<int64_t, 0>{});
  }
}

// The rows of the four corners of `b` in a level whose token 0 is `level` (tokens `row` apart) and
// their weights; corners outside the map read `zeros` with weight 0, so the channel loops below
// need no branches.
template <typename acc_t, typename src_t>
inline void corner_rows(const BilinearPoint<acc_t>& b, const src_t* level, int64_t row,
                        const src_t* zeros, acc_t scale, const src_t* rows[4], acc_t w[4]) {
  for (int c = 0; c < 4; ++c) {
    const bool inside = b.token[c] >= 0;
    rows[c] = inside ? level + b.token[c] * row : zeros;
    w[c] = inside ? scale * b.w[c] : acc_t(0);
  }
}

// Asks for the cache lines of `bytes` at `p` ahead of their use: the gathers and scatters are
// bound by memory latency, and the L*P points of a query are independent.
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

// Copies the D channels of one row. For 32 channels the copy has a size known at compile time,
// which the compiler expands into a few vector moves; a copy loop of run-time length becomes a
// call to memmove per row (GCC turns such loops into library calls), which cost 8-11% of the
// backwards of the decoder and the 25% encoder in `perf`.
template <typename T>
inline void copy_row(const T* __restrict__ src, T* __restrict__ dst, int64_t D) {
  if (D == 32) {
    std::memcpy(dst, src, 32 * sizeof(T));
    return;
  }
  for (int64_t d = 0; d < D; ++d) {
    dst[d] = src[d];
  }
}

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

// dst[d] (+)= sum_c w[c] * rows[c][d]: one pass over the channels for the four corners.
template <bool kAccumulate, typename acc_t, typename src_t>
inline void combine4(acc_t* __restrict__ dst, const src_t* const rows[4], const acc_t w[4],
                     int64_t D) {
  const src_t *r0 = rows[0], *r1 = rows[1], *r2 = rows[2], *r3 = rows[3];
  const acc_t w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
  for (int64_t d = 0; d < D; ++d) {
    const acc_t x = w0 * static_cast<acc_t>(r0[d]) + w1 * static_cast<acc_t>(r1[d]) +
                    w2 * static_cast<acc_t>(r2[d]) + w3 * static_cast<acc_t>(r3[d]);
    dst[d] = kAccumulate ? dst[d] + x : x;
  }
}

// dst[d] += alpha * src[d]
template <typename acc_t, typename src_t>
inline void axpy(acc_t* __restrict__ dst, const src_t* __restrict__ src, acc_t alpha, int64_t D) {
  for (int64_t d = 0; d < D; ++d) {
    dst[d] += alpha * static_cast<acc_t>(src[d]);
  }
}

// sum_d a[d] * b[d]; eight partial sums so the compiler vectorises it without reassociating
// (the order is fixed, so results are bitwise reproducible).
template <typename acc_t, typename a_t>
inline acc_t dot(const a_t* __restrict__ a, const acc_t* __restrict__ b, int64_t D) {
  acc_t part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t d = 0;
  for (; d + 8 <= D; d += 8) {
    for (int k = 0; k < 8; ++k) {
      part[k] += static_cast<acc_t>(a[d + k]) * b[d + k];
    }
  }
  acc_t tail = 0;
  for (; d < D; ++d) {
    tail += static_cast<acc_t>(a[d]) * b[d];
  }
  return ((part[0] + part[4]) + (part[1] + part[5])) + ((part[2] + part[6]) + (part[3] + part[7])) +
         tail;
}

// grad[d] += alpha * g[d], returning sum_d v[d] * g[d]: the two uses of a corner in a backward,
// in one pass (partial sums as in dot()).
template <typename acc_t, typename v_t>
inline acc_t dot_axpy(const v_t* __restrict__ v, acc_t* __restrict__ grad,
                      const acc_t* __restrict__ g, acc_t alpha, int64_t D) {
  acc_t part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t d = 0;
  for (; d + 8 <= D; d += 8) {
    for (int k = 0; k < 8; ++k) {
      part[k] += static_cast<acc_t>(v[d + k]) * g[d + k];
      grad[d + k] += alpha * g[d + k];
    }
  }
  acc_t tail = 0;
  for (; d < D; ++d) {
    tail += static_cast<acc_t>(v[d]) * g[d];
    grad[d] += alpha * g[d];
  }
  return ((part[0] + part[4]) + (part[1] + part[5])) + ((part[2] + part[6]) + (part[3] + part[7])) +
         tail;
}

}  // namespace cpu
}  // namespace lite_detr
