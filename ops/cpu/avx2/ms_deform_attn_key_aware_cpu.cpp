// The AVX2 + FMA build of ops/cpu/ms_deform_attn_key_aware_cpu.cpp (see cpu/instruction_set.h).
#include "cpu/instruction_set.h"

#if LITE_DETR_HAVE_AVX2_KERNELS
#define LITE_DETR_CPU_AVX2 1
#include "cpu/ms_deform_attn_key_aware_cpu.cpp"
#endif
