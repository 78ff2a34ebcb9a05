// torch's intra-op parallel_for through the stable ABI, with ATen's serial
// shortcut kept inline: a range one thread does anyway (shorter than the grain,
// or a single intra-op thread) runs `f` here, directly. Through the C shim's
// callback the work is compiled as a separate function reached by pointer,
// which cost the scan path about 7% on one thread (benchmarks/compare_builds.py).
// No nesting: the kernels call nothing of torch inside `f`.
#pragma once

#include "../common/tensor.h"  // first: the stable-ABI headers (common/stable.h)

#include <cstdint>

namespace atss::cpu {

template <class F>
inline void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  if (begin >= end) return;
  if (end - begin < grain || torch::stable::get_num_threads() == 1) {
    f(begin, end);
    return;
  }
  torch::stable::parallel_for(begin, end, grain, f);
}

}  // namespace atss::cpu
