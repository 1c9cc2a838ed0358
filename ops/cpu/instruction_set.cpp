#include "cpu/instruction_set.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <string>

namespace lite_detr {
namespace cpu {
namespace {

bool cpu_has_avx2_fma() {
#if LITE_DETR_HAVE_AVX2_KERNELS
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

// The choice of LITE_DETR_CPU_KERNELS, or the reason it cannot be honoured.
struct Choice {
  bool avx2;
  std::string error;
};

Choice choose() {
  const char* env = std::getenv("LITE_DETR_CPU_KERNELS");
  const std::string wanted = env ? env : "auto";
  const bool available = LITE_DETR_HAVE_AVX2_KERNELS && cpu_has_avx2_fma();
  if (wanted == "auto" || wanted.empty()) {
    return {available, ""};
  }
  if (wanted == "baseline") {
    return {false, ""};
  }
  if (wanted == "avx2") {
    if (available) {
      return {true, ""};
    }
    return {false, LITE_DETR_HAVE_AVX2_KERNELS
                       ? "LITE_DETR_CPU_KERNELS=avx2, but this CPU lacks AVX2 or FMA; unset it "
                         "or set it to baseline"
                       : "LITE_DETR_CPU_KERNELS=avx2, but lite_detr._C was built without AVX2 "
                         "kernels (they need GCC on x86-64); unset it or set it to baseline"};
  }
  return {false, "LITE_DETR_CPU_KERNELS=" + wanted +
                     " is not one of auto, baseline, avx2; unset it or set one of those"};
}

const Choice& choice() {
  static const Choice c = choose();
  return c;
}

}  // namespace

bool avx2_kernels() {
  const Choice& c = choice();
  TORCH_CHECK(c.error.empty(), "lite_detr: ", c.error);
  return c.avx2;
}

const char* kernels_name() { return avx2_kernels() ? "avx2" : "baseline"; }

}  // namespace cpu
}  // namespace lite_detr
