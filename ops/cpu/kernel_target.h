// Include after every other header of a CPU kernel source (no include guard: one per source).
// In the AVX2 build of the source (cpu/avx2/, LITE_DETR_CPU_AVX2) it compiles the rest of the
// file for AVX2 and FMA; every header came first, so their inline functions keep the default
// target in both builds. LITE_DETR_CPU_NS names the namespace of the build's kernels:
// lite_detr::avx2 or lite_detr::baseline (see cpu/instruction_set.h).
#if defined(LITE_DETR_CPU_AVX2)
#pragma GCC target("avx2,fma")
#define LITE_DETR_CPU_NS avx2
#else
#define LITE_DETR_CPU_NS baseline
#endif
