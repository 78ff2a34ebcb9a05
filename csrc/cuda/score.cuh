// Steps 4-6 of the contract for one GT row, computed by one warp. Shared by
// iou_statistics.cu and the fused atss_assign.cu, so both score candidates
// with the same code, which is the CPU's score_candidates (csrc/cpu/steps.h)
// spread over the lanes of a warp, with the statistics taken by one lane.
#pragma once

#include "cuda_common.cuh"

namespace atss::cuda {

// `cand` holds the row's C candidate anchors (-1 = empty slot; every other
// value in [0, A)), written and made visible to the warp (__syncwarp) by the
// caller. `iou_buf` is C floats of scratch (shared or global memory). `gt` is
// the GT box, `nan_bits` the host's default NaN. For every slot c, the lane
// that owns it (c % 32) calls on_slot(c, anchor, iou, positive). Returns the
// threshold as the CPU writes it: quiet NaN without candidates, else
// mean + std rounded to float32.
//
// Bit-exactness: the IoU is box_iou and the positive test the CPU's
// expression, element by element; the float64 statistics are
// atss::iou_threshold itself, run by lane 0 over the slots in order (one
// thread, the CPU's sequence of additions), its result broadcast by shuffles.
template <class OnSlot>
__device__ __forceinline__ float score_row(const int64_t* cand, float* iou_buf, int64_t num_slots,
                                           const float* anchors, const float* gt, float center_eps,
                                           uint32_t nan_bits, int lane, OnSlot&& on_slot) {
  for (int64_t c = lane; c < num_slots; c += kWarp) {
    const int64_t a = cand[c];
    iou_buf[c] = a >= 0 ? box_iou(anchors + 4 * a, gt) : 0.0f;
  }
  __syncwarp();
  double thr = 0.0;
  long long count = 0;
  if (lane == 0) {
    int64_t n = 0;
    thr = iou_threshold(iou_buf, cand, num_slots, &n);
    count = n;
  }
  thr = __shfl_sync(kFullMask, thr, 0);
  count = __shfl_sync(kFullMask, count, 0);
  for (int64_t c = lane; c < num_slots; c += kWarp) {
    const int64_t a = cand[c];
    const float v = iou_buf[c];
    bool positive = false;
    if (a >= 0) {
      const float* box = anchors + 4 * a;
      positive = static_cast<double>(v) >= thr &&
                 center_inside(center_of(box[0], box[2]), center_of(box[1], box[3]), gt,
                               center_eps);
    }
    on_slot(c, a, v, positive);
  }
  __syncwarp();
  return count > 0 ? cpu_nan_bits(static_cast<float>(thr), nan_bits) : quiet_nan();
}

// Loads a GT box into registers.
__device__ __forceinline__ void load_box(const float* src, float* dst) {
  dst[0] = src[0];
  dst[1] = src[1];
  dst[2] = src[2];
  dst[3] = src[3];
}

}  // namespace atss::cuda
