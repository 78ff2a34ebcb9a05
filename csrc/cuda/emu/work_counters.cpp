// torch.ops.atss_ops_emu._work_counters(name): one work counter of the last
// selection launch (../work_counters.h), per GT row, as a [rows] int64 CPU
// tensor. Part of the test-only library atss_ops_emu only.
#include <string_view>

#include "../../common/tensor.h"
#include "../../common/text.h"
#include "../work_counters.h"

namespace atss::cuda {
namespace {

Tensor work_counters(std::string_view name) {
  int counter = -1;
  for (int c = 0; c < kNumWorkCounters; ++c) {
    if (name == kWorkCounterNames[c]) counter = c;
  }
  ATSS_CHECK_VALUE(counter >= 0, "_work_counters: unknown counter ", name,
                   " (see work_counters.h)");
  const WorkCounters& counters = WorkCounters::get();
  const int64_t rows = counters.rows();
  Tensor out = torch::stable::empty({rows}, dtype::kLong, std::nullopt,
                                    torch::stable::Device(torch::headeronly::DeviceType::CPU));
  int64_t* v = data<int64_t>(out);
  for (int64_t r = 0; r < rows; ++r) v[r] = counters.value(r, counter);
  return out;
}

}  // namespace

STABLE_TORCH_LIBRARY_FRAGMENT(atss_ops_emu, m) {
  m.def("_work_counters(str name) -> Tensor");
}
STABLE_TORCH_LIBRARY_IMPL(atss_ops_emu, CompositeExplicitAutograd, m) {
  m.impl("_work_counters", TORCH_BOX(&work_counters));
}

}  // namespace atss::cuda
