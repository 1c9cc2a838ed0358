// The build that a CPU kernel source is compiled for (cpu/instruction_set.h): its target, kBuild,
// and the channel loops its kernels run (with_channel_loops). Include after every other header of
// the source (no include guard: one per source). In the AVX2 build (cpu/avx2/, LITE_DETR_CPU_AVX2)
// it compiles the rest of the file for AVX2 and FMA; every header came first, so their inline
// functions keep the default target in both builds.
#include <cstdint>
#include <type_traits>

#include "cpu/channel_loops.h"
#include "cpu/instruction_set.h"

#if defined(LITE_DETR_CPU_AVX2)
#include "cpu/avx2/channel_loops_32.h"
#pragma GCC target("avx2,fma")
#endif

namespace lite_detr {
namespace cpu {
namespace {

#if defined(LITE_DETR_CPU_AVX2)
constexpr Build kBuild = Build::kAvx2;
// the build's own loops for 32 channels of scalar_t, or void
template <typename scalar_t>
using Loops32 = std::conditional_t<std::is_same_v<scalar_t, float>, avx2::ChannelLoops32, void>;
#else
constexpr Build kBuild = Build::kBaseline;
template <typename scalar_t>
using Loops32 = void;
#endif

// Calls f(std::type_identity<Loops>{}) with the channel loops for scalar_t and D: the build's own
// 32-channel loops where it has them (the AVX2 build, float), else ChannelLoops<scalar_t, kD> with
// kD = 32 when D is (see with_head_dim; kFixedD = false: always the run-time D) or 0. Kernels take
// the loops as a template argument, so the choice is made once per call.
template <typename scalar_t, bool kFixedD = true, typename F>
void with_channel_loops(int64_t D, F&& f) {
  if constexpr (!std::is_void_v<Loops32<scalar_t>>) {
    if (D == 32) {
      f(std::type_identity<Loops32<scalar_t>>{});
      return;
    }
  }
  if constexpr (kFixedD) {
    with_head_dim(
        D, [&](auto kD) { f(std::type_identity<ChannelLoops<scalar_t, decltype(kD)::value>>{}); });
  } else {
    f(std::type_identity<ChannelLoops<scalar_t, 0>>{});
  }
}

}  // namespace
}  // namespace cpu
}  // namespace lite_detr
