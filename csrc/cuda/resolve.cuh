// Step 7 on the GPU: the claim and decoding kernels, shared by
// resolve_multi_gt.cu (claims from caller-given candidates) and the fused
// atss_assign.cu (claims made while scoring, then the same decoding).
//
// Claims: every (GT g, candidate anchor a) pair that may take the anchor
// (positive, IoU >= 0 and not NaN) does atomicMax(claims[b, a], claim_key(iou, g)),
// the key ordering higher IoU first, then lower GT index (claims.h): exactly
// the CPU's rule (GTs visited in increasing order, only a strictly higher IoU
// takes an anchor over). An integer atomicMax gives the same maximum in any order.
//
// Decoding: one thread per anchor turns its key into gt_index and iou, and
// counts the anchor for its GT with an integer atomicAdd (any order gives the
// same count). The key holds the IoU's bits, except that both zeros are stored
// as +0.0 so that they tie as floats do; when the winning IoU is a zero, the
// thread reads the winner's candidate row for the bits the CPU keeps, those of
// that GT's first claim of the anchor in slot order.
#pragma once

#include "claims.h"
#include "cuda_common.cuh"

namespace atss::cuda {
namespace {

constexpr int kResolveThreads = 256;

// Candidate indices outside [0, A) are empty slots (the CPU rejects them in
// its value checks; here they must never be read or written through).
__global__ void __launch_bounds__(kResolveThreads)
    claim_kernel(const int64_t* cand, const float* cand_iou, const bool* cand_positive,
                 int64_t num_gt, int64_t num_slots, int64_t num_anchors, int64_t total,
                 u64* claims) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    if (!cand_positive[i]) continue;
    const int64_t a = cand[i];
    if (a < 0 || a >= num_anchors) continue;
    const float v = cand_iou[i];
    if (!(v >= 0.0f)) continue;  // only a real IoU (>= 0; never NaN) claims an anchor
    const int64_t bg = i / num_slots;
    const int64_t b = bg / num_gt;
    atomicMax(claims + b * num_anchors + a, claim_key(v, bg - b * num_gt));
  }
}

__global__ void __launch_bounds__(kResolveThreads)
    decode_claims_kernel(const u64* claims, int64_t num_gt, int64_t num_anchors, int64_t num_slots,
                         int64_t total, const int64_t* cand, const float* cand_iou,
                         const bool* cand_positive, int64_t* gt_index, float* iou,
                         int64_t* num_positive) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const u64 key = claims[i];
    if (key == 0) {  // no claim: background
      gt_index[i] = -1;
      iou[i] = 0.0f;
      continue;
    }
    const int64_t b = i / num_anchors;
    const int64_t a = i - b * num_anchors;
    const int64_t g = claim_gt(key);
    // The winning IoU's bits; for a zero (a positive anchor with no overlap:
    // degenerate boxes, a negative center_eps) the sign is read back from the
    // winner's candidate row.
    const int64_t row = (b * num_gt + g) * num_slots;
    const float v = claim_iou(key, a, cand + row, cand_iou + row, cand_positive + row, num_slots);
    gt_index[i] = g;
    iou[i] = v;
    atomicAdd(reinterpret_cast<u64*>(num_positive + b * num_gt + g), u64{1});
  }
}

// Claims of the [B, G, C] rows into claims [B, A] (zeroed beforehand).
inline void launch_claims(const int64_t* cand, const float* cand_iou, const bool* cand_positive,
                          int64_t batch, int64_t num_gt, int64_t num_slots, int64_t num_anchors,
                          u64* claims, Stream stream) {
  const int64_t total = batch * num_gt * num_slots;
  if (total == 0) return;
  const unsigned blocks = grid_for(total, kResolveThreads, int64_t{32} * sm_count());
  ATSS_LAUNCH(blocks, kResolveThreads, 0, stream, claim_kernel)(
      cand, cand_iou, cand_positive, num_gt, num_slots, num_anchors, total, claims);
  launch_check();
}

// gt_index [B, A], iou [B, A] and num_positive [B, G] (zeroed beforehand) from
// claims [B, A]. cand / cand_iou / cand_positive: the [B, G, C] rows the
// claims came from (read only for zero IoUs).
inline void launch_decode_claims(const u64* claims, int64_t batch, int64_t num_gt,
                                 int64_t num_anchors, int64_t num_slots, const int64_t* cand,
                                 const float* cand_iou, const bool* cand_positive,
                                 int64_t* gt_index, float* iou, int64_t* num_positive,
                                 Stream stream) {
  const int64_t total = batch * num_anchors;
  if (total == 0) return;
  const unsigned blocks = grid_for(total, kResolveThreads, int64_t{32} * sm_count());
  ATSS_LAUNCH(blocks, kResolveThreads, 0, stream, decode_claims_kernel)(
      claims, num_gt, num_anchors, num_slots, total, cand, cand_iou, cand_positive, gt_index, iou,
      num_positive);
  launch_check();
}

}  // namespace
}  // namespace atss::cuda
