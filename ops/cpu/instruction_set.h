// Two builds of the CPU kernels. The baseline one is compiled for the compiler's default target
// (SSE2 on x86-64) and runs anywhere. On x86-64 with GCC the same kernel sources are compiled a
// second time for AVX2 and FMA (ops/cpu/avx2/ includes them with LITE_DETR_CPU_AVX2 defined;
// cpu/kernel_target.h switches the target and adds the 32-channel AVX2 loops): 8-wide fused
// channel loops, 15-20% faster kernels on this project's benchmark machine (benchmarks/README.md,
// "AVX2 kernels"). Each call picks one with avx2_kernels(): the AVX2 build when the CPU has AVX2
// and FMA, unless LITE_DETR_CPU_KERNELS says otherwise.
//
// The two builds round differently (FMA contracts a * b + c), within float tolerance of each
// other; each is bitwise reproducible run to run and for any number of threads.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LITE_DETR_HAVE_AVX2_KERNELS 1
#else
#define LITE_DETR_HAVE_AVX2_KERNELS 0
#endif

namespace lite_detr {
namespace cpu {

// The builds; the entry points of cpu/kernels.h are specialised for each.
enum class Build { kBaseline, kAvx2 };

// Whether the CPU ops run their AVX2 build. Read once, from LITE_DETR_CPU_KERNELS: "auto" or unset
// (AVX2 when the CPU has AVX2 and FMA), "baseline", or "avx2" (an error on a CPU without them).
// Any other value is an error that names the accepted ones.
bool avx2_kernels();

// "avx2" or "baseline": the build that avx2_kernels() selects (the op lite_detr::cpu_kernels).
const char* kernels_name();

}  // namespace cpu
}  // namespace lite_detr

// The entry point f<Build> of the build that avx2_kernels() selects; an unusable
// LITE_DETR_CPU_KERNELS raises its error here.
#if LITE_DETR_HAVE_AVX2_KERNELS
#define LITE_DETR_CPU_BUILD(f)                                           \
  (::lite_detr::cpu::avx2_kernels() ? &f<::lite_detr::cpu::Build::kAvx2> \
                                    : &f<::lite_detr::cpu::Build::kBaseline>)
#else
#define LITE_DETR_CPU_BUILD(f) \
  (::lite_detr::cpu::avx2_kernels(), &f<::lite_detr::cpu::Build::kBaseline>)
#endif
