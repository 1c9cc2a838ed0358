// Reused storage for the CPU backwards' largest outputs (grad_value, grad_key).
#pragma once

#include <ATen/core/Tensor.h>

namespace lite_detr {
namespace cpu {

// The buffers kept, one per output of the backwards.
enum class GradientBuffer : int { kValue = 0, kKeyAwareValue, kKeyAwareKey, kCount };

// An uninitialised contiguous tensor of `sizes` for the gradient `slot`.
//
// glibc serves every block above 32 MiB (the decoder's grad_value at 800x1333 and batch 2: 45
// MiB) with a fresh mmap, which the kernel page-faults in and zeroes on first touch: ~11 ms per
// 45 MiB on the 2-core test machine, half the decoder's forward+backward. So the storage of the
// last tensor handed out for a slot is kept, and handed out again when nothing else holds it any
// more (its only reference is this cache's: the gradient has been consumed and freed) and it is
// large enough; otherwise a new tensor is allocated and becomes the slot's. The cache holds at
// most one storage per slot, and only of at least 1 MiB (smaller blocks come from glibc's heap);
// release_gradient_buffers() frees them.
at::Tensor gradient_buffer(GradientBuffer slot, at::IntArrayRef sizes,
                           const at::TensorOptions& options);

// Frees the storages kept by gradient_buffer() that no tensor uses (the others are freed with
// their last tensor).
void release_gradient_buffers();

}  // namespace cpu
}  // namespace lite_detr
