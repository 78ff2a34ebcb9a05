// What the CUDA sources need from the device runtime, in one place, so that
// the same sources compile for the GPU (nvcc) and for the host execution model
// of csrc/cuda/emu/ (-DATSS_EMU: the test-only library atss_ops_emu, which
// registers the same ops under the namespace atss_ops_emu for CPU tensors).
//
// Kernel side: ATSS_LAUNCH(grid, block, smem, stream, kernel)(args...) for the
// triple-chevron launch (each followed by launch_check(), which turns
// cudaGetLastError() into a RuntimeError on the GPU); ATSS_DYNAMIC_SMEM(type, name)
// for `extern __shared__ type name[]`; ATSS_SHARED(type, name) for a static
// `__shared__ type name`; ATSS_ARCH, the architecture the device code is
// compiled for (the emulation models sm_90).
//
// Host side: DeviceGuard, Stream / current_stream(), memset_async(),
// launch_check(), sm_count() and max_grid_blocks(). On the GPU these use the
// LibTorch stable ABI alone: torch::stable::accelerator::DeviceGuard and the
// C shim's current CUDA stream (aoti_torch_get_current_cuda_stream, in
// libtorch_cuda), the CUDA runtime for the rest.
//
// Knobs (environment variables, read at every call, on the GPU and in the
// emulation alike): ATSS_MAX_BLOCKS caps every grid (so grid-stride loops and
// the reuse of shared memory across work items run); ATSS_NUM_SMS sets the
// multiprocessor count the launch heuristics see (the emulation's default is
// an H100's 132).
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "../common/tensor.h"  // first: the stable-ABI headers (common/stable.h)
#include "../common/text.h"

#if defined(ATSS_EMU)
#include "emu/cuda_emu.h"
#else
#include <cuda_runtime.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>
#endif

#if defined(ATSS_EMU)
#define ATSS_ARCH 900
#elif defined(__CUDA_ARCH__)
#define ATSS_ARCH __CUDA_ARCH__
#else
#define ATSS_ARCH 0  // nvcc's host pass
#endif

#if defined(ATSS_EMU)
#define ATSS_LAUNCH(grid, block, smem, stream, ...) ATSS_EMU_LAUNCH(grid, block, smem, __VA_ARGS__)
#define ATSS_DYNAMIC_SMEM(type, name) ATSS_EMU_DYNAMIC_SMEM(type, name)
#define ATSS_SHARED(type, name) ATSS_EMU_SHARED(type, name)
// The emulated kernels take CPU tensors, under their own namespace.
#define ATSS_DEVICE_LIBRARY_IMPL(m) STABLE_TORCH_LIBRARY_IMPL(atss_ops_emu, CPU, m)
#else
#define ATSS_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#define ATSS_DYNAMIC_SMEM(type, name) extern __shared__ __align__(16) type name[]
#define ATSS_SHARED(type, name) __shared__ type name
#define ATSS_DEVICE_LIBRARY_IMPL(m) STABLE_TORCH_LIBRARY_IMPL(atss_ops, CUDA, m)
#endif

namespace atss::cuda {

// A positive integer from the environment, or 0 when unset.
inline int64_t env_positive(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return 0;
  char* end = nullptr;
  const long long n = std::strtoll(v, &end, 10);
  ATSS_CHECK_VALUE(end != v && *end == '\0' && n > 0, "environment variable ", name, "=", v,
                   " must be a positive integer");
  return n;
}

#if defined(ATSS_EMU)

struct DeviceGuard {
  explicit DeviceGuard(const Tensor&) {}
};
using Stream = int;
inline Stream current_stream() {
  return 0;
}
inline void memset_async(void* ptr, int value, int64_t bytes, Stream) {
  if (bytes > 0) std::memset(ptr, value, static_cast<size_t>(bytes));
}
inline void launch_check() {}  // a failed emulated launch throws

// Multiprocessors the launch heuristics see: ATSS_NUM_SMS, else an H100's.
inline int sm_count() {
  const int64_t forced = env_positive("ATSS_NUM_SMS");
  return forced > 0 ? static_cast<int>(forced) : 132;
}

#else

// A CUDA error as a RuntimeError naming the call and the error.
inline void cuda_check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    fail_runtime(text({"CUDA error in ", what, ": ", cudaGetErrorName(status), " (",
                       cudaGetErrorString(status), ")"}));
  }
}

// The device of the op's tensors made current for the call.
class DeviceGuard {
 public:
  explicit DeviceGuard(const Tensor& t) : guard_(t.get_device_index()) {}

 private:
  torch::stable::accelerator::DeviceGuard guard_;
};

using Stream = cudaStream_t;
// torch's current stream on the current device (set by DeviceGuard).
inline Stream current_stream() {
  void* stream = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_current_cuda_stream(
      static_cast<int32_t>(torch::stable::accelerator::getCurrentDeviceIndex()), &stream));
  return static_cast<Stream>(stream);
}
inline void memset_async(void* ptr, int value, int64_t bytes, Stream stream) {
  if (bytes > 0) {
    cuda_check(cudaMemsetAsync(ptr, value, static_cast<size_t>(bytes), stream), "cudaMemsetAsync");
  }
}
inline void launch_check() {
  cuda_check(cudaGetLastError(), "a kernel launch");
}

// Multiprocessor count of the current device (cached per device; a plain
// attribute query: no sync, allowed during CUDA graph capture), or ATSS_NUM_SMS.
inline int sm_count() {
  const int64_t forced = env_positive("ATSS_NUM_SMS");
  if (forced > 0) return static_cast<int>(forced);
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices] = {};
  int device = 0;
  cuda_check(cudaGetDevice(&device), "cudaGetDevice");
  if (device >= 0 && device < kMaxDevices) {
    const int cached = cache[device].load(std::memory_order_relaxed);
    if (cached > 0) return cached;
  }
  int n = 0;
  cuda_check(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device),
             "cudaDeviceGetAttribute");
  if (n < 1) n = 1;
  if (device >= 0 && device < kMaxDevices) cache[device].store(n, std::memory_order_relaxed);
  return n;
}

#endif

// The grid size for `wanted` blocks: at most `limit`, at most ATSS_MAX_BLOCKS,
// at least 1.
inline unsigned max_grid_blocks(int64_t wanted, int64_t limit) {
  int64_t blocks = wanted < limit ? wanted : limit;
  const int64_t cap = env_positive("ATSS_MAX_BLOCKS");
  if (cap > 0 && blocks > cap) blocks = cap;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks);
}

}  // namespace atss::cuda
