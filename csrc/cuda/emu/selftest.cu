// Small kernels that exercise the execution model itself (cuda_emu.h), for
// tests/test_emulated_cuda.py: correct collectives, and each misuse it must
// turn into a failed launch instead of a hang or a silent result. Part of the
// test-only library atss_ops_emu only: torch.ops.atss_ops_emu._selftest(name).
#include <string_view>

#include "../cuda_common.cuh"

namespace atss::cuda {
namespace {

// Every collective once, checked against what the device computes; returns
// per block: [block start order, static shared value seen, reduce_min, shfl,
// ballot popcount, atomicAdd total] in out[6 * block ...].
__global__ void collectives_kernel(int64_t* out, unsigned* counter) {
  ATSS_SHARED(int, s_block);
  ATSS_SHARED(unsigned, s_order);
  const int lane = static_cast<int>(threadIdx.x) % 32;
  if (threadIdx.x == 0) {
    s_block = static_cast<int>(blockIdx.x);
    s_order = atomicAdd(counter, 1u);
  }
  __syncthreads();
  const unsigned v = 100u - static_cast<unsigned>(threadIdx.x);
  const unsigned m = __reduce_min_sync(0xffffffffu, v);
  const unsigned long long from_lane_3 =
      __shfl_sync(0xffffffffu, static_cast<unsigned long long>(v) << 33, 3);
  const unsigned long long x =
      __shfl_xor_sync(0xffffffffu, static_cast<unsigned long long>(lane), 1);
  const unsigned ballot = __ballot_sync(0xffffffffu, lane % 3 == 0);
  __syncwarp();
  const int half = __shfl_sync(0x0000ffffu << (lane < 16 ? 0 : 16), lane, lane < 16 ? 5 : 21);
  ATSS_SHARED(unsigned, s_total);
  if (threadIdx.x == 0) s_total = 0;
  __syncthreads();
  atomicAdd(&s_total, static_cast<unsigned>(x) == static_cast<unsigned>(lane ^ 1) &&
                          half == (lane < 16 ? 5 : 21));
  __syncthreads();
  if (threadIdx.x == 0) {
    int64_t* o = out + 6 * blockIdx.x;
    o[0] = s_order;
    o[1] = s_block;
    o[2] = m;
    o[3] = static_cast<int64_t>(from_lane_3 >> 33);
    o[4] = __builtin_popcount(ballot);
    o[5] = s_total;
  }
}

__global__ void divergent_barrier_kernel() {
  if (threadIdx.x < 32) __syncthreads();
}

__global__ void divergent_sites_kernel() {
  if (threadIdx.x < 32) {
    __syncthreads();
  } else {
    __syncthreads();
  }
}

__global__ void mask_leaves_lane_out_kernel(int* out) {
  out[threadIdx.x] = __shfl_sync(0x0000ffffu, static_cast<int>(threadIdx.x), 0);
}

__global__ void missing_lanes_kernel(int* out) {
  if (threadIdx.x % 32 < 16)
    out[threadIdx.x] = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x), 0);
}

__global__ void source_outside_mask_kernel(int* out) {
  if (threadIdx.x % 32 < 16)
    out[threadIdx.x] = __shfl_sync(0x0000ffffu, static_cast<int>(threadIdx.x), 20);
}

__global__ void mismatched_masks_kernel() {
  __syncwarp(threadIdx.x % 32 < 8 ? 0x000000ffu : 0xffffffffu);
}

__global__ void different_collectives_kernel(int* out) {
  if (threadIdx.x % 2 == 0) {
    out[threadIdx.x] =
        static_cast<int>(__reduce_min_sync(0xffffffffu, static_cast<unsigned>(threadIdx.x)));
  } else {
    out[threadIdx.x] = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x), 0);
  }
}

__global__ void smem_kernel(int* out) {
  ATSS_DYNAMIC_SMEM(int, buf);
  buf[threadIdx.x] = static_cast<int>(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = buf[blockDim.x - 1 - threadIdx.x];
}

Tensor cpu_zeros(int64_t n, ScalarType scalar_type) {
  Tensor t = torch::stable::empty({n}, scalar_type, std::nullopt,
                                  torch::stable::Device(torch::headeronly::DeviceType::CPU));
  torch::stable::zero_(t);
  return t;
}

Tensor selftest(std::string_view name) {
  Tensor out = cpu_zeros(4096, dtype::kLong);
  Tensor ints = cpu_zeros(4096, dtype::kInt);
  int* ip = data<int>(ints);
  const Stream s = current_stream();
  if (name == "collectives") {
    Tensor counter = cpu_zeros(1, dtype::kInt);
    ATSS_LAUNCH(8, 64, 0, s, collectives_kernel)(data<int64_t>(out),
                                                 reinterpret_cast<unsigned*>(data<int>(counter)));
    return torch::stable::view(torch::stable::narrow(out, 0, 0, 48), {8, 6});
  } else if (name == "divergent_barrier") {
    ATSS_LAUNCH(2, 64, 0, s, divergent_barrier_kernel)();
  } else if (name == "divergent_sites") {
    ATSS_LAUNCH(1, 64, 0, s, divergent_sites_kernel)();
  } else if (name == "mask_leaves_lane_out") {
    ATSS_LAUNCH(1, 32, 0, s, mask_leaves_lane_out_kernel)(ip);
  } else if (name == "missing_lanes") {
    ATSS_LAUNCH(1, 64, 0, s, missing_lanes_kernel)(ip);
  } else if (name == "source_outside_mask") {
    ATSS_LAUNCH(1, 32, 0, s, source_outside_mask_kernel)(ip);
  } else if (name == "mismatched_masks") {
    ATSS_LAUNCH(1, 32, 0, s, mismatched_masks_kernel)();
  } else if (name == "different_collectives") {
    ATSS_LAUNCH(1, 32, 0, s, different_collectives_kernel)(ip);
  } else if (name == "smem") {
    ATSS_LAUNCH(3, 128, 128 * sizeof(int), s, smem_kernel)(ip);
    return torch::stable::to(torch::stable::narrow(ints, 0, 0, 128), dtype::kLong);
  } else if (name == "block_too_large") {
    ATSS_LAUNCH(1, 1025, 0, s, smem_kernel)(ip);
  } else if (name == "block_z_too_large") {
    ATSS_LAUNCH(1, dim3(1, 1, 65), 0, s, smem_kernel)(ip);
  } else if (name == "grid_y_too_large") {
    ATSS_LAUNCH(dim3(1, 65536), 32, 0, s, smem_kernel)(ip);
  } else if (name == "empty_grid") {
    ATSS_LAUNCH(0, 32, 0, s, smem_kernel)(ip);
  } else if (name == "smem_over_default_limit") {
    ATSS_LAUNCH(1, 32, 48 * 1024 + 4, s, smem_kernel)(ip);
  } else if (name == "smem_opt_in") {
    cudaFuncSetAttribute(smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 100 * 1024);
    ATSS_LAUNCH(1, 32, 100 * 1024, s, smem_kernel)(ip);
    return torch::stable::to(torch::stable::narrow(ints, 0, 0, 32), dtype::kLong);
  } else if (name == "smem_opt_in_over_device_limit") {
    cudaFuncSetAttribute(smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 228 * 1024);
  } else {
    ATSS_CHECK_VALUE(false, "unknown self-test ", name);
  }
  return out;
}

}  // namespace

STABLE_TORCH_LIBRARY_FRAGMENT(atss_ops_emu, m) {
  m.def("_selftest(str name) -> Tensor");
}
STABLE_TORCH_LIBRARY_IMPL(atss_ops_emu, CompositeExplicitAutograd, m) {
  m.impl("_selftest", TORCH_BOX(&selftest));
}

}  // namespace atss::cuda
