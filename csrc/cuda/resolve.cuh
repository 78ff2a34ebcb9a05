// Steps 7 and 8 on the GPU: the claim and decoding kernels, shared by
// resolve_multi_gt.cu (claims from caller-given candidates) and the fused
// atss_assign.cu (claims made while scoring, then the same decoding).
//
// Ignored anchors ([B, A] mask, or null): never claimed (the fused kernel never
// makes them candidates; claim_kernel skips them), decoded as -2 with IoU 0.
//
// Step 8 (ensure_positive), two more launches after the decoding, reusing the
// claim buffer: every row (GT) left with num_positive 0 proposes its best
// candidate among the anchors still unassigned (gt_index -1, so claims == 0
// there) with IoU > 0 (propose_kernel: one thread per row, slots in order,
// only a strictly higher IoU replaces: the earliest on equal IoU), as an
// atomicMax of the same claim key; then decode_proposals_kernel assigns each
// proposed anchor to the key's GT and counts it. Every proposal is chosen
// from the state after step 7 (the launches are ordered on the stream), as
// the CPU's two passes do.
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
                 const bool* ignore, int64_t num_gt, int64_t num_slots, int64_t num_anchors,
                 int64_t total, u64* claims) {
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
    if (ignore != nullptr && ignore[b * num_anchors + a]) continue;  // ignored: claims nothing
    atomicMax(claims + b * num_anchors + a, claim_key(v, bg - b * num_gt));
  }
}

__global__ void __launch_bounds__(kResolveThreads)
    decode_claims_kernel(const u64* claims, int64_t num_gt, int64_t num_anchors, int64_t num_slots,
                         int64_t total, const int64_t* cand, const float* cand_iou,
                         const bool* cand_positive, const bool* ignore, int64_t* gt_index,
                         float* iou, int64_t* num_positive) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const u64 key = claims[i];
    if (ignore != nullptr && ignore[i]) {  // ignored: never claimed
      gt_index[i] = -2;
      iou[i] = 0.0f;
      continue;
    }
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

// Step 8's proposals: one warp per row, its lanes over the row's slots. A row
// of a padding GT (beyond gt_counts, null: none) or with an anchor already
// proposes nothing. The proposal is the free slot with the highest IoU > 0,
// the earliest on equal IoU: each lane keeps its own best (slots in
// increasing order, strict >), then the warp takes the largest
// (IoU bits, ~slot) key: a positive float's bits order as the float.
__global__ void __launch_bounds__(kResolveThreads)
    propose_kernel(const int64_t* cand, const float* cand_iou, const int64_t* gt_counts,
                   const int64_t* gt_index, const int64_t* num_positive, int64_t num_gt,
                   int64_t num_slots, int64_t num_anchors, int64_t rows, u64* claims) {
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (kResolveThreads / kWarp);
  for (int64_t row =
           static_cast<int64_t>(blockIdx.x) * (kResolveThreads / kWarp) + threadIdx.x / kWarp;
       row < rows; row += warps) {  // warp-uniform
    const int64_t b = row / num_gt;
    const int64_t g = row - b * num_gt;
    if (g >= valid_gt_count(gt_counts, b, num_gt) || num_positive[row] != 0) continue;
    const int64_t* row_cand = cand + row * num_slots;
    const float* row_iou = cand_iou + row * num_slots;
    const int64_t* image_index = gt_index + b * num_anchors;
    float best = 0.0f;
    int64_t best_slot = -1;
    for (int64_t c = lane; c < num_slots; c += kWarp) {
      const int64_t a = row_cand[c];
      // Free: unassigned after step 7 (an ignored anchor is -2, an empty slot < 0).
      if (a < 0 || a >= num_anchors || image_index[a] != -1) continue;
      if (row_iou[c] > best) {  // > 0 (never NaN); the earliest slot on equal IoU
        best = row_iou[c];
        best_slot = c;
      }
    }
    // Slots < C < 2^31 (a row's candidates): ~slot fits the low half.
    const u64 key =
        warp_max(best_slot < 0 ? u64{0}
                               : (static_cast<u64>(float_bits(best)) << 32) |
                                     static_cast<uint32_t>(~static_cast<uint32_t>(best_slot)));
    if (lane == 0 && key != 0) {
      const int64_t slot = ~static_cast<uint32_t>(key);
      const float v = bits_float(static_cast<uint32_t>(key >> 32));
      atomicMax(claims + b * num_anchors + row_cand[slot], claim_key(v, g));
    }
  }
}

// Step 8's outcome: a still unassigned anchor with a claim was proposed; it
// goes to the claim's GT (the highest IoU, then the lowest GT index).
__global__ void __launch_bounds__(kResolveThreads)
    decode_proposals_kernel(const u64* claims, int64_t num_gt, int64_t num_anchors, int64_t total,
                            int64_t* gt_index, float* iou, int64_t* num_positive) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const u64 key = claims[i];
    if (key == 0 || gt_index[i] != -1) continue;
    const int64_t b = i / num_anchors;
    const int64_t g = claim_gt(key);
    gt_index[i] = g;
    iou[i] = bits_float(static_cast<uint32_t>(key >> 32));  // > 0: the key kept its bits
    atomicAdd(reinterpret_cast<u64*>(num_positive + b * num_gt + g), u64{1});
  }
}

// Claims of the [B, G, C] rows into claims [B, A] (zeroed beforehand);
// `ignore` ([B, A] or null): anchors that claim nothing.
inline void launch_claims(const int64_t* cand, const float* cand_iou, const bool* cand_positive,
                          const bool* ignore, int64_t batch, int64_t num_gt, int64_t num_slots,
                          int64_t num_anchors, u64* claims, Stream stream) {
  const int64_t total = batch * num_gt * num_slots;
  if (total == 0) return;
  const unsigned blocks = grid_for(total, kResolveThreads, int64_t{32} * sm_count());
  ATSS_LAUNCH(blocks, kResolveThreads, 0, stream, claim_kernel)(
      cand, cand_iou, cand_positive, ignore, num_gt, num_slots, num_anchors, total, claims);
  launch_check();
}

// Step 8 after launch_decode_claims, on the same claim buffer and outputs.
inline void launch_ensure_positive(const int64_t* cand, const float* cand_iou,
                                   const int64_t* gt_counts, int64_t batch, int64_t num_gt,
                                   int64_t num_slots, int64_t num_anchors, u64* claims,
                                   int64_t* gt_index, float* iou, int64_t* num_positive,
                                   Stream stream) {
  const int64_t rows = batch * num_gt;
  if (rows == 0 || num_anchors == 0) return;
  const unsigned row_blocks =
      grid_for(rows * kWarp, kResolveThreads, int64_t{32} * sm_count());  // a warp per row
  ATSS_LAUNCH(row_blocks, kResolveThreads, 0, stream, propose_kernel)(
      cand, cand_iou, gt_counts, gt_index, num_positive, num_gt, num_slots, num_anchors, rows,
      claims);
  launch_check();
  const int64_t total = batch * num_anchors;
  const unsigned blocks = grid_for(total, kResolveThreads, int64_t{32} * sm_count());
  ATSS_LAUNCH(blocks, kResolveThreads, 0, stream, decode_proposals_kernel)(
      claims, num_gt, num_anchors, total, gt_index, iou, num_positive);
  launch_check();
}

// gt_index [B, A], iou [B, A] and num_positive [B, G] (zeroed beforehand) from
// claims [B, A]. cand / cand_iou / cand_positive: the [B, G, C] rows the
// claims came from (read only for zero IoUs). `ignore` ([B, A] or null):
// anchors decoded as -2.
inline void launch_decode_claims(const u64* claims, int64_t batch, int64_t num_gt,
                                 int64_t num_anchors, int64_t num_slots, const int64_t* cand,
                                 const float* cand_iou, const bool* cand_positive,
                                 const bool* ignore, int64_t* gt_index, float* iou,
                                 int64_t* num_positive, Stream stream) {
  const int64_t total = batch * num_anchors;
  if (total == 0) return;
  const unsigned blocks = grid_for(total, kResolveThreads, int64_t{32} * sm_count());
  ATSS_LAUNCH(blocks, kResolveThreads, 0, stream, decode_claims_kernel)(
      claims, num_gt, num_anchors, num_slots, total, cand, cand_iou, cand_positive, ignore,
      gt_index, iou, num_positive);
  launch_check();
}

}  // namespace
}  // namespace atss::cuda
