// See gradient_buffers.h.
#include "cpu/gradient_buffers.h"

#include <ATen/ops/empty.h>
#include <c10/core/Storage.h>
#include <c10/util/strides.h>

#include <array>
#include <mutex>

namespace lite_detr {
namespace cpu {
namespace {

constexpr size_t kMinBytes = size_t(1) << 20;

struct Cache {
  std::mutex mutex;
  std::array<c10::Storage, static_cast<size_t>(GradientBuffer::kCount)> storages;
};

Cache& cache() {
  static Cache instance;  // never destroyed before the tensors it handed out
  return instance;
}

}  // namespace

at::Tensor gradient_buffer(GradientBuffer slot, at::IntArrayRef sizes,
                           const at::TensorOptions& options) {
  const size_t nbytes = c10::multiply_integers(sizes) * options.dtype().itemsize();
  if (nbytes < kMinBytes) {
    return at::empty(sizes, options);
  }
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  c10::Storage& kept = c.storages[static_cast<size_t>(slot)];
  // use_count() == 1: only this cache holds it, and only this cache (under the lock) can hand it
  // out again, so the tensor returned has the memory to itself
  if (kept && kept.use_count() == 1 && kept.nbytes() >= nbytes &&
      kept.device() == options.device()) {
    at::Tensor t = at::empty({0}, options);
    t.set_(kept, /*storage_offset=*/0, sizes, c10::contiguous_strides(sizes));
    return t;
  }
  at::Tensor t = at::empty(sizes, options);
  kept = t.storage();
  return t;
}

void release_gradient_buffers() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  for (c10::Storage& kept : c.storages) {
    kept = c10::Storage();
  }
}

}  // namespace cpu
}  // namespace lite_detr
