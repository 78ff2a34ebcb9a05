// Shared pieces of the CUDA kernels: sizes, device helpers, warp primitives
// and host-side launch helpers (ordering keys, the per-lane top-K list and the
// level table are in select_core.h; the claim keys of step 7 in claims.h; the
// device runtime, real or emulated, in runtime.cuh).
//
// Numerics. All float arithmetic of the contract goes through the shared
// functions of ../common/box_math.h (the CPU kernels use the same ones), and
// setup.py compiles this code with -fmad=false and without fast-math (so no
// fused multiply-add, IEEE division and square root, denormals kept).
//
// NaN payloads. A CPU's invalid operation (inf - inf, 0 * inf, 0 / 0) returns
// its "default NaN" (0xffc00000 on x86, 0x7fc00000 on Arm) and NaN operands
// propagate their payload, so every NaN the CPU kernels and the reference
// compute from finite inputs is that default NaN. A GPU returns the canonical
// NaN 0x7fffffff instead. Every float the CUDA kernels write that was computed
// (not a constant) goes through `cpu_nan_bits`, with the host's default NaN
// measured at run time (host_default_nan_bits), so the bits match the CPU's.
// The constant NaN of padding rows and GTs without candidates is
// std::numeric_limits<float>::quiet_NaN() (0x7fc00000) on the CPU,
// `quiet_nan()` here.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>

#include "../common/box_math.h"
#include "../common/checks.h"
#include "runtime.cuh"
#include "select_core.h"

namespace atss::cuda {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;
// Kernels that work one warp per GT row use blocks of kRowsPerBlock warps.
constexpr int kThreads = kWarp * kRowsPerBlock;

// ----------------------------------------------------------------- device helpers

__device__ __forceinline__ float quiet_nan() {
  return __uint_as_float(0x7fc00000u);
}

// A computed float as the CPU would hold it: any NaN becomes the host CPU's
// default NaN, whose bits are `nan_bits` (host_default_nan_bits()).
__device__ __forceinline__ float cpu_nan_bits(float v, uint32_t nan_bits) {
  return v != v ? __uint_as_float(nan_bits) : v;
}

// Minimum of a u64 over the full warp; every lane gets it. Every lane of the
// warp must call it (the callers keep their control flow warp-uniform).
__device__ __forceinline__ u64 warp_min(u64 v) {
#if ATSS_ARCH >= 800
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

// Maximum of a u64 over the full warp; every lane gets it (warp_min's twin).
__device__ __forceinline__ u64 warp_max(u64 v) {
#if ATSS_ARCH >= 800
  const uint32_t hi = static_cast<uint32_t>(v >> 32);
  const uint32_t lo = static_cast<uint32_t>(v);
  const uint32_t max_hi = __reduce_max_sync(kFullMask, hi);
  const uint32_t max_lo = __reduce_max_sync(kFullMask, hi == max_hi ? lo : 0u);
  return (static_cast<u64>(max_hi) << 32) | max_lo;
#else
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const u64 other = __shfl_xor_sync(kFullMask, v, offset);
    v = other > v ? other : v;
  }
  return v;
#endif
}

// Minimum / maximum of a float over the full warp (finite values).
__device__ __forceinline__ float warp_min_float(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float other = __shfl_xor_sync(kFullMask, v, offset);
    v = other < v ? other : v;
  }
  return v;
}
__device__ __forceinline__ float warp_max_float(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float other = __shfl_xor_sync(kFullMask, v, offset);
    v = other > v ? other : v;
  }
  return v;
}

// Sum of a non-negative int over the full warp; every lane gets it.
__device__ __forceinline__ int warp_sum(int v) {
#if ATSS_ARCH >= 800
  return static_cast<int>(__reduce_add_sync(kFullMask, static_cast<unsigned>(v)));
#else
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
#endif
}

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

// ----------------------------------------------------------------- host helpers

// The bits of the NaN this CPU returns for an invalid operation (0 / 0),
// measured at run time (volatile: no constant folding by the compiler).
inline uint32_t host_default_nan_bits() {
  static const uint32_t bits = [] {
    volatile float zero = 0.0f;
    const float nan = zero / zero;
    uint32_t b;
    std::memcpy(&b, &nan, sizeof(b));
    return b;
  }();
  return bits;
}

// Blocks for a grid-stride loop over n items with `threads` per block, at
// most `max_blocks` (and ATSS_MAX_BLOCKS).
inline unsigned grid_for(int64_t n, int threads, int64_t max_blocks) {
  return max_grid_blocks((n + threads - 1) / threads, max_blocks);
}

// The usable anchors (contract: valid and not ignored), packed to bits once per
// call for the selection kernels: row b of the image's anchors is
// usable_words(A) 32-bit words, anchor a at bit a % 32 of word a / 32 (a word
// past A's end holds zeros). B * A / 8 bytes for the kernels to read instead of
// B * A; nullopt when neither mask is given (every anchor usable).
__host__ __device__ inline int64_t usable_words(int64_t num_anchors) {
  return (num_anchors + 31) / 32;
}

__device__ __forceinline__ bool usable_bit(const uint32_t* row_words, int64_t a) {
  return (row_words[a >> 5] >> (a & 31)) & 1u;
}

// One thread per word.
static __global__ void usable_bits_kernel(const bool* valid, const bool* ignore, int64_t batch,
                                          int64_t num_anchors, uint32_t* usable) {
  const int64_t words = usable_words(num_anchors);
  const int64_t count = batch * words;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    const int64_t b = i / words, first = (i - b * words) * 32;
    const int64_t n = num_anchors - first < 32 ? num_anchors - first : 32;
    const int64_t at = b * num_anchors + first;
    uint32_t word = 0;
    for (int64_t j = 0; j < n; ++j) {
      const bool ok = (valid == nullptr || valid[at + j]) && (ignore == nullptr || !ignore[at + j]);
      word |= static_cast<uint32_t>(ok) << j;
    }
    usable[i] = word;
  }
}

static OptionalTensor usable_mask(const OptionalTensor& anchor_valid,
                                  const OptionalTensor& anchor_ignore, Stream stream) {
  if (!anchor_valid.has_value() && !anchor_ignore.has_value()) return std::nullopt;
  const OptionalTensor valid = as_contiguous(anchor_valid);
  const OptionalTensor ignore = as_contiguous(anchor_ignore);
  const Tensor& like = valid.has_value() ? *valid : *ignore;
  const int64_t batch = like.size(0), num_anchors = like.size(1);
  const int64_t count = batch * usable_words(num_anchors);
  Tensor usable = new_empty(like, {count}, dtype::kInt);
  if (count == 0) return usable;
  constexpr int kMaskThreads = 256;
  ATSS_LAUNCH(grid_for(count, kMaskThreads, 4096), kMaskThreads, 0, stream, usable_bits_kernel)(
      data<bool>(valid), data<bool>(ignore), batch, num_anchors,
      reinterpret_cast<uint32_t*>(data<int32_t>(usable)));
  launch_check();
  return usable;
}

// The structural limits of the CUDA kernels beyond the shared checks.
inline void check_cuda_num_gt(int64_t num_gt) {
  // GT indices travel as 32 bits inside the claim keys.
  ATSS_CHECK_VALUE(
      num_gt < std::numeric_limits<int32_t>::max(),
      "gt_boxes must hold fewer than 2^31 - 1 boxes per image on CUDA, got G = ", num(num_gt));
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
