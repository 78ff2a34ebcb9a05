// Steps 4-6 of the contract for one GT row, computed by one warp. Shared by
// iou_statistics.cu and the fused atss_assign.cu, so both score candidates
// with the same code, which is the CPU's score_candidates (csrc/cpu/steps.h)
// spread over the lanes of a warp, with the statistics taken by one lane; and
// the fused kernel's scoring-and-claim of a row (steps 4-7's claims).
#pragma once

#include "claims.h"
#include "cuda_common.cuh"

namespace atss::cuda {

// The per-warp score buffers of a block of kRowsPerBlock rows: C candidate
// indices per warp, then C IoUs per warp. They live in dynamic shared memory
// when they take at most kMaxScoreSmemBytes, else in global scratch.
constexpr int64_t kMaxScoreSmemBytes = 40 * 1024;

struct ScoreSmem {
  static int64_t bytes(int64_t num_cand) {
    return kRowsPerBlock * num_cand * static_cast<int64_t>(sizeof(int64_t) + sizeof(float));
  }
  static bool fits(int64_t num_cand) { return bytes(num_cand) <= kMaxScoreSmemBytes; }
  __device__ static int64_t* candidates(unsigned char* smem, int warp, int64_t num_cand) {
    return reinterpret_cast<int64_t*>(smem) + warp * num_cand;
  }
  __device__ static float* ious(unsigned char* smem, int warp, int64_t num_cand) {
    return reinterpret_cast<float*>(reinterpret_cast<int64_t*>(smem) + kRowsPerBlock * num_cand) +
           warp * num_cand;
  }
};

// D (2 or 3) is the number of axes: boxes are [2D] floats, lower corner then
// upper corner. `cand` holds the row's C candidate anchors (-1 = empty slot; every other
// value in [0, A)), written and made visible to the warp (__syncwarp) by the
// caller. `iou_buf` is C floats of scratch (shared or global memory). `gt` is
// the GT box, `nan_bits` the host's default NaN. For every slot c, the lane
// that owns it (c % 32) calls on_slot(c, anchor, iou, positive). Returns the
// threshold as the CPU writes it: quiet NaN without candidates, else
// mean + std rounded to float32.
//
// Bit-exactness: the IoU is box_iou_nd and the positive test the CPU's
// expression (center_inside_nd, skipped without center_test), element by element; the float64
// statistics are atss::iou_threshold itself, run by lane 0 over the slots in order (one thread, the
// CPU's sequence of additions), its result broadcast by shuffles.
template <int D, class OnSlot>
__device__ __forceinline__ float score_row(const int64_t* cand, float* iou_buf, int64_t num_slots,
                                           const float* anchors, const float* gt, bool center_test,
                                           float center_eps, uint32_t nan_bits, int lane,
                                           OnSlot&& on_slot) {
  for (int64_t c = lane; c < num_slots; c += kWarp) {
    const int64_t a = cand[c];
    iou_buf[c] = a >= 0 ? box_iou_nd<D>(anchors + 2 * D * a, gt) : 0.0f;
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
  // A shuffle orders no memory: lane 0's reads of iou_buf and cand above must
  // happen before the callers' writes below (where iou_buf or cand is also the
  // row's output, the global-buffer paths), so the warp meets once more.
  __syncwarp();
  for (int64_t c = lane; c < num_slots; c += kWarp) {
    const int64_t a = cand[c];
    const float v = iou_buf[c];
    bool positive = false;
    if (a >= 0) {
      positive = static_cast<double>(v) >= thr;
      if (positive && center_test) {
        const float* box = anchors + 2 * D * a;
        float center[D];
        for (int t = 0; t < D; ++t) center[t] = center_of(box[t], box[t + D]);
        positive = center_inside_nd<D>(center, gt, center_eps);
      }
    }
    on_slot(c, a, v, positive);
  }
  __syncwarp();
  return count > 0 ? cpu_nan_bits(static_cast<float>(thr), nan_bits) : quiet_nan();
}

// The fused kernel's steps 4-6 and step 7's claims for GT g's row, by one warp:
// scores the row's candidates `cand` into `row_iou` (score_row; the row's
// scratch in global memory, which the claim decoding reads back with `cand`
// and `row_positive` for a zero IoU), and claims every positive anchor in
// `image_claims` ([A] keys of the row's image) with an atomicMax. Returns the
// threshold.
template <int D>
__device__ __forceinline__ float score_and_claim_row(const int64_t* cand, float* row_iou,
                                                     int64_t num_slots, const float* anchors,
                                                     const float* gt, bool center_test,
                                                     float center_eps, uint32_t nan_bits, int lane,
                                                     int64_t g, bool* row_positive,
                                                     u64* image_claims) {
  return score_row<D>(cand, row_iou, num_slots, anchors, gt, center_test, center_eps, nan_bits,
                      lane, [&](int64_t c, int64_t a, float v, bool positive) {
                        row_positive[c] = positive;
                        // Only a real IoU (>= 0; never NaN) claims an anchor.
                        if (positive && v >= 0.0f) atomicMax(image_claims + a, claim_key(v, g));
                      });
}

// Loads a GT box of 2D floats into registers.
template <int D>
__device__ __forceinline__ void load_box(const float* src, float* dst) {
  for (int i = 0; i < 2 * D; ++i) dst[i] = src[i];
}

}  // namespace atss::cuda
