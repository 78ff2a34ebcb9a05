// Shared pieces of the CUDA kernels: sizes, device helpers, warp primitives,
// the per-lane top-K list, the IoU claim key, and host-side launch helpers.
//
// Numerics. All float arithmetic of the contract goes through the shared
// functions of ../common/box_math.h (the CPU kernels use the same ones), and
// setup.py compiles this code with -fmad=false and without fast-math (so no
// fused multiply-add, IEEE division and square root, denormals kept).
//
// NaN payloads. On x86 an invalid operation (inf - inf, 0 * inf, 0 / 0)
// returns the "default NaN" 0xffc00000 and NaN operands propagate their
// payload, so every NaN the CPU computes from finite inputs is 0xffc00000. A
// GPU returns the canonical NaN 0x7fffffff instead. Every float the CUDA
// kernels write that was computed (not a constant) goes through
// `cpu_nan_bits`, so the bits match the CPU's. The constant NaN of padding
// rows and GTs without candidates is std::numeric_limits<float>::quiet_NaN()
// (0x7fc00000) on the CPU, `quiet_nan()` here.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <limits>
#include <optional>

#include "../common/box_math.h"
#include "../common/checks.h"

namespace atss::cuda {

using u64 = unsigned long long;  // the type of atomicMax / __ldcg / shuffles

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;
// Kernels that work one warp per GT row use blocks of kRowsPerBlock warps.
constexpr int kRowsPerBlock = 8;
constexpr int kThreads = kWarp * kRowsPerBlock;
// A key no real candidate has: real keys hold an anchor index < 2^31 in
// their low 32 bits.
constexpr u64 kEmptyKey = ~u64{0};

// ----------------------------------------------------------------- device helpers

// valid_gt_count of checks.h, on the device: gt_counts[b] clamped to [0, G].
__device__ __forceinline__ int64_t valid_gt_count_dev(const int64_t* gt_counts, int64_t b,
                                                      int64_t num_gt) {
  if (gt_counts == nullptr) return num_gt;
  const int64_t n = gt_counts[b];
  return n < 0 ? 0 : (n > num_gt ? num_gt : n);
}

__device__ __forceinline__ float quiet_nan() { return __uint_as_float(0x7fc00000u); }

// A computed float as the CPU would hold it: any NaN becomes x86's default NaN.
__device__ __forceinline__ float cpu_nan_bits(float v) {
  return v != v ? __uint_as_float(0xffc00000u) : v;
}

// The (distance, anchor index) ordering key: distance_bits in the high half,
// the index in the low half, so that u64 order is the contract's order. Every
// real key is > 0: distance_bits is never 0 (that would be the bits of a NaN,
// which maps to 0xffffffff), so 0 can serve as "no lower bound".
__device__ __forceinline__ u64 distance_key(float d, int64_t anchor) {
  return (static_cast<u64>(distance_bits(d)) << 32) | static_cast<uint32_t>(anchor);
}

__device__ __forceinline__ int64_t key_anchor(u64 key) {
  return key == kEmptyKey ? int64_t{-1} : static_cast<int64_t>(static_cast<uint32_t>(key));
}

// Minimum of a u64 over the full warp; every lane gets it. Every lane of the
// warp must call it (the callers keep their control flow warp-uniform).
__device__ __forceinline__ u64 warp_min(u64 v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const uint32_t hi = static_cast<uint32_t>(v >> 32);
  const uint32_t lo = static_cast<uint32_t>(v);
  const uint32_t min_hi = __reduce_min_sync(kFullMask, hi);
  const uint32_t min_lo = __reduce_min_sync(kFullMask, hi == min_hi ? lo : 0xffffffffu);
  return (static_cast<u64>(min_hi) << 32) | min_lo;
#else
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const u64 other = __shfl_xor_sync(kFullMask, v, offset);
    v = other < v ? other : v;
  }
  return v;
#endif
}

// The K smallest keys one lane has seen, ascending, padded with kEmptyKey.
// Keys are unique (they contain the anchor index), so the order is total.
// Indexed only with compile-time constants, so it lives in registers.
template <int K>
struct TopList {
  u64 key[K];

  __device__ __forceinline__ void clear() {
#pragma unroll
    for (int j = 0; j < K; ++j) key[j] = kEmptyKey;
  }
  __device__ __forceinline__ u64 worst() const { return key[K - 1]; }
  __device__ __forceinline__ u64 head() const { return key[0]; }

  // Inserts k, which the caller has checked is < worst(): each slot takes its
  // left neighbour when that is greater than k (shift right), k itself at the
  // first slot whose old key is greater, or keeps its key. All slots are
  // computed from the old values, from the right, so no temporary is needed.
  __device__ __forceinline__ void insert(u64 k) {
#pragma unroll
    for (int j = K - 1; j > 0; --j) {
      key[j] = key[j - 1] > k ? key[j - 1] : (key[j] > k ? k : key[j]);
    }
    key[0] = key[0] > k ? k : key[0];
  }

  // Removes the head (the smallest key).
  __device__ __forceinline__ void pop() {
#pragma unroll
    for (int j = 0; j < K - 1; ++j) key[j] = key[j + 1];
    key[K - 1] = kEmptyKey;
  }

  // The n-th smallest key (1 <= n <= K), with a run-time n.
  __device__ __forceinline__ u64 nth(int n) const {
    u64 r = key[0];
#pragma unroll
    for (int j = 1; j < K; ++j) r = (j == n - 1) ? key[j] : r;
    return r;
  }
};

// Takes the `count` smallest keys of the warp's lists, in increasing order:
// out(r, key) is called by every lane for r = 0 .. count-1 (kEmptyKey once the
// lists run dry). Returns the last key taken. Warp-uniform.
template <int K, class Out>
__device__ __forceinline__ u64 warp_extract(TopList<K>& list, int count, Out&& out) {
  u64 m = kEmptyKey;
  for (int r = 0; r < count; ++r) {
    const u64 head = list.head();
    m = warp_min(head);
    // Keys are unique: exactly one lane holds m (or every list is empty, and
    // popping an empty list changes nothing).
    if (head == m) list.pop();
    out(r, m);
  }
  return m;
}

// Step 7's ordering key of a claim of anchor a by GT g with IoU v (v >= 0,
// not NaN): higher IoU first, then lower GT index. Both zeros map to 0 so that
// -0.0 ties +0.0 as in the CPU's float comparison. 0 is never a claim key
// (g < 2^32 - 1), so a zeroed buffer means "no claim".
__device__ __forceinline__ u64 claim_key(float v, int64_t g) {
  const uint32_t bits = v == 0.0f ? 0u : __float_as_uint(v);
  return (static_cast<u64>(bits) << 32) | (0xffffffffu - static_cast<uint32_t>(g));
}

// ----------------------------------------------------------------- host helpers

// Multiprocessor count of the current device (cached per device; a plain
// attribute query: no sync, allowed during CUDA graph capture).
inline int num_sms() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices] = {};
  const int device = c10::cuda::current_device();
  if (device >= 0 && device < kMaxDevices) {
    const int cached = cache[device].load(std::memory_order_relaxed);
    if (cached > 0) return cached;
  }
  int n = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  if (n < 1) n = 1;
  if (device >= 0 && device < kMaxDevices) cache[device].store(n, std::memory_order_relaxed);
  return n;
}

// Blocks for a grid-stride loop over n items with `threads` per block.
inline unsigned grid_for(int64_t n, int threads, int64_t max_blocks) {
  int64_t blocks = (n + threads - 1) / threads;
  if (blocks > max_blocks) blocks = max_blocks;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks);
}

// Data pointer of an optional tensor, or null.
template <class T>
const T* optional_ptr(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

// The structural limits of the CUDA kernels beyond the shared checks.
inline void check_cuda_num_gt(int64_t num_gt) {
  // GT indices travel as 32 bits inside the claim keys.
  TORCH_CHECK_VALUE(num_gt < std::numeric_limits<int32_t>::max(),
                    "gt_boxes must hold fewer than 2^31 - 1 boxes per image on CUDA, got G = ",
                    num_gt);
}

// Bytes of scratch, carved out of one allocation in 256-byte-aligned pieces.
class ScratchPlan {
 public:
  // Reserves `bytes` and returns the offset.
  int64_t take(int64_t bytes) {
    const int64_t at = total_;
    total_ += (bytes + 255) / 256 * 256;
    return at;
  }
  int64_t total() const { return total_ < 256 ? 256 : total_; }

 private:
  int64_t total_ = 0;
};

}  // namespace atss::cuda
