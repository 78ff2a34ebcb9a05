// The test-only library atss_ops_emu: the atss_ops schemas under another
// namespace, implemented for CPU tensors by the CUDA kernel sources run
// through the host execution model (cuda_emu.h). The kernels register
// themselves from csrc/cuda/<op>.cu compiled with -DATSS_EMU. Load it with
// torch.ops.load_library after `import atss_ops`; never shipped in the wheel.
#include "../../schemas.h"

STABLE_TORCH_LIBRARY(atss_ops_emu, m) {
  atss::define_schemas(m);
}
