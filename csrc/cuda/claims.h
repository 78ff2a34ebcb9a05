// The claim keys of step 7 on the GPU: a (GT, IoU) claim of an anchor packed
// into one u64 whose order is the contract's (higher IoU, then lower GT
// index), so that an integer atomicMax resolves competing claims in any order.
// Plain C++ (ATSS_HD functions), shared by resolve.cuh's kernels.
#pragma once

#include <cstdint>
#include <cstring>

#include "select_core.h"  // u64, ATSS_HD

namespace atss::cuda {

ATSS_HD uint32_t float_bits(float v) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(v);
#else
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return bits;
#endif
}

ATSS_HD float bits_float(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float v;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
#endif
}

// The ordering key of a claim of an anchor by GT g with IoU v (v >= 0, not
// NaN): higher IoU first, then lower GT index, as u64 order. Both zeros map to
// 0 so that -0.0 ties +0.0 as in the CPU's float comparison. 0 is never a
// claim key (g < 2^32 - 1), so a zeroed buffer means "no claim".
ATSS_HD u64 claim_key(float v, int64_t g) {
  const uint32_t bits = v == 0.0f ? 0u : float_bits(v);
  return (static_cast<u64>(bits) << 32) | (0xffffffffu - static_cast<uint32_t>(g));
}

// The GT of a claim key (key != 0).
ATSS_HD int64_t claim_gt(u64 key) {
  return static_cast<int64_t>(0xffffffffu - static_cast<uint32_t>(key));
}

// The IoU the CPU writes for anchor a won with claim key `key`: the key's IoU
// bits, except for a zero, whose sign the key dropped: then the bits of the
// winner's first claim of the anchor in slot order (no lower GT claimed the
// anchor, it would have won the tie; the winner's later zeros are not strictly
// greater, so its first claim stays). The row is the winner's candidates.
ATSS_HD float claim_iou(u64 key, int64_t a, const int64_t* cand, const float* cand_iou,
                        const bool* cand_positive, int64_t num_slots) {
  const uint32_t bits = static_cast<uint32_t>(key >> 32);
  if (bits != 0) return bits_float(bits);
  for (int64_t c = 0; c < num_slots; ++c) {
    if (cand[c] == a && cand_positive[c] && cand_iou[c] >= 0.0f) return cand_iou[c];
  }
  return 0.0f;  // unreachable: the claim came from such a slot
}

}  // namespace atss::cuda
