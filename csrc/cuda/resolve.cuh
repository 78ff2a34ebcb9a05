// Step 7 on the GPU, shared by resolve_multi_gt.cu and the fused atss_assign.cu.
//
// Claims: every (GT g, candidate anchor a) pair that may take the anchor
// (positive, IoU >= 0 and not NaN) does atomicMax(claims[b, a], claim_key(iou, g)),
// the key ordering higher IoU first, then lower GT index: exactly the CPU's
// rule (GTs visited in increasing order, only a strictly higher IoU takes an
// anchor over). An integer atomicMax gives the same maximum in any order.
//
// Decoding (decode_claims): one thread per anchor turns its key into gt_index
// and iou, and counts the anchor for its GT with an integer atomicAdd (any
// order gives the same count). The key holds the IoU's bits, except that both
// zeros are stored as +0.0 so that they tie as floats do; when the winning IoU
// is a zero, the thread reads the winner's candidate row for the bits the CPU
// keeps, those of that GT's first claim of the anchor in slot order.
#pragma once

#include "cuda_common.cuh"

namespace atss::cuda {

// gt_index [B, A], iou [B, A] and num_positive [B, G] (zeroed beforehand) from
// claims [B, A]. cand / cand_iou / cand_positive: the [B, G, C] rows the
// claims came from (read only for zero IoUs). One launch.
void launch_decode_claims(const u64* claims, int64_t batch, int64_t num_gt, int64_t num_anchors,
                          int64_t num_slots, const int64_t* cand, const float* cand_iou,
                          const bool* cand_positive, int64_t* gt_index, float* iou,
                          int64_t* num_positive, cudaStream_t stream);

}  // namespace atss::cuda
