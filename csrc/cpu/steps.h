// The per-GT and per-image steps of the contract on the CPU. The stage ops
// (center_distance.cpp, topk_per_level.cpp, iou_statistics.cpp,
// resolve_multi_gt.cpp) and the fused atss_assign.cpp are all built from these,
// so the fused path cannot drift from the stage ops.
#pragma once

#include <cstdint>
#include <vector>

#include "../common/box_math.h"

namespace atss::cpu {

// Anchor centres, computed once per call and shared by the whole batch.
struct AnchorCenters {
  std::vector<float> cx, cy;
  AnchorCenters(const float* anchors, int64_t num_anchors) : cx(num_anchors), cy(num_anchors) {
    for (int64_t a = 0; a < num_anchors; ++a) {
      cx[a] = center_of(anchors[4 * a + 0], anchors[4 * a + 2]);
      cy[a] = center_of(anchors[4 * a + 1], anchors[4 * a + 3]);
    }
  }
};

// Step 2 for one GT over anchors [start, start + n): keys[i] = distance_bits(d2).
// A plain loop over arrays, so the compiler vectorises it.
inline void level_distance_bits(const AnchorCenters& centers, int64_t start, int64_t n, float gcx,
                                float gcy, uint32_t* keys) {
  const float* cx = centers.cx.data() + start;
  const float* cy = centers.cy.data() + start;
  for (int64_t i = 0; i < n; ++i) keys[i] = distance_bits(squared_distance(cx[i], cy[i], gcx, gcy));
}

// Step 3 for one GT and one level: the k valid anchors with the smallest
// (key, index), nearest first, written to out[0, k); slots left over (fewer
// than k valid anchors) get -1. `keys` covers the level; `valid` is the
// level's anchor_valid row or null (all valid).
//
// Anchors are scanned in index order, so an anchor whose key equals the
// current k-th key has a higher index and loses the tie: the test is a strict
// `key < worst`, and an insertion shifts only strictly greater keys.
inline void select_level(const uint32_t* keys, const bool* valid, int64_t start, int64_t n,
                         int64_t k, uint32_t* best_keys, int64_t* out) {
  int64_t filled = 0;
  uint32_t worst = 0xffffffffu;  // key of out[k-1] once full
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t key = keys[i];
    if (filled == k && key >= worst) continue;
    if (valid != nullptr && !valid[i]) continue;
    int64_t pos = filled < k ? filled++ : k - 1;
    while (pos > 0 && best_keys[pos - 1] > key) {
      best_keys[pos] = best_keys[pos - 1];
      out[pos] = out[pos - 1];
      --pos;
    }
    best_keys[pos] = key;
    out[pos] = start + i;
    if (filled == k) worst = best_keys[k - 1];
  }
  for (int64_t j = filled; j < k; ++j) out[j] = -1;
}

// Steps 4-6 for one GT: IoU of each present candidate, the threshold and the
// positive flags. Empty slots get IoU 0 and are never positive. Returns the
// threshold rounded to float32 (NaN without candidates).
inline float score_candidates(const float* anchors, const AnchorCenters& centers,
                              const float* gt, const int64_t* candidates, int64_t num_slots,
                              float center_eps, float* iou, bool* positive) {
  for (int64_t c = 0; c < num_slots; ++c) {
    const int64_t a = candidates[c];
    iou[c] = a >= 0 ? box_iou(anchors + 4 * a, gt) : 0.0f;
  }
  int64_t count = 0;
  const double thr = iou_threshold(iou, candidates, num_slots, &count);
  for (int64_t c = 0; c < num_slots; ++c) {
    const int64_t a = candidates[c];
    positive[c] = a >= 0 && static_cast<double>(iou[c]) >= thr &&
                  center_inside(centers.cx[a], centers.cy[a], gt, center_eps);
  }
  return count > 0 ? static_cast<float>(thr) : static_cast<float>(NAN);
}

// Step 7 for one image: each anchor goes to the positive GT with the highest
// IoU, the lowest GT index on equal IoU (GTs are visited in increasing order
// and only a strictly higher IoU takes an anchor over). gt_index must hold -1
// and iou 0 on entry; num_positive receives the number of anchors each GT
// finally holds (a candidate listed twice by one GT counts once).
inline void resolve_image(const int64_t* candidates, const float* cand_iou, const bool* positive,
                          int64_t num_gt, int64_t num_slots, int64_t num_anchors,
                          int64_t* gt_index, float* iou, int64_t* num_positive) {
  for (int64_t g = 0; g < num_gt; ++g) {
    for (int64_t c = 0; c < num_slots; ++c) {
      const int64_t i = g * num_slots + c;
      const int64_t a = candidates[i];
      // Only a real IoU (>= 0; never NaN) claims an anchor.
      if (!positive[i] || a < 0 || !(cand_iou[i] >= 0.0f)) continue;
      if (gt_index[a] < 0 || cand_iou[i] > iou[a]) {
        gt_index[a] = g;
        iou[a] = cand_iou[i];
      }
    }
  }
  for (int64_t g = 0; g < num_gt; ++g) num_positive[g] = 0;
  for (int64_t a = 0; a < num_anchors; ++a) {
    if (gt_index[a] >= 0) ++num_positive[gt_index[a]];
  }
}

}  // namespace atss::cpu
