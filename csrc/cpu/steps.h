// The per-GT and per-image steps of the contract on the CPU. The stage ops
// (center_distance.cpp, topk_per_level.cpp, iou_statistics.cpp,
// resolve_multi_gt.cpp) and the fused atss_assign.cpp are all built from these,
// so the fused path cannot drift from the stage ops.
#pragma once

#include <cstdint>
#include <vector>

#include "../common/box_math.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

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

// Step 2 for one GT over anchors [start, start + n) into d2[0, n). A plain
// loop over arrays, so the compiler vectorises it.
inline void level_distances(const AnchorCenters& centers, int64_t start, int64_t n, float gcx,
                            float gcy, float* d2) {
  const float* cx = centers.cx.data() + start;
  const float* cy = centers.cy.data() + start;
  for (int64_t i = 0; i < n; ++i) d2[i] = squared_distance(cx[i], cy[i], gcx, gcy);
}

// Step 3 for one GT and one level: the k valid anchors with the smallest
// (distance_bits(d), index), nearest first, written to out[0, k); slots left
// over (fewer than k valid anchors) get -1. `dist` covers the level; `valid`
// is the level's anchor_valid row or null (all valid). `best_keys` and
// `best_dist` are scratch of k entries.
//
// Anchors are scanned in index order, so an anchor whose key equals the
// current k-th key has a higher index and loses the tie: the test is a strict
// `key < worst`, and an insertion shifts only strictly greater keys.
//
// Once k anchors are held, whole chunks are skipped when no distance in them
// can beat the k-th: `!(d >= worst_dist)` is true for every d that beats it
// (distance_bits is monotone in d, and -0.0 >= 0.0), and also for NaN on
// either side, so the chunk test only ever lets extra anchors through to the
// exact test, never keeps one out. It compiles to a few SIMD compares.
// True when some d in dist[0, 16) has !(d >= worst_dist): it may beat the k-th.
inline bool chunk_may_beat(const float* dist, float worst_dist) {
#if defined(__SSE2__)
  const __m128 w = _mm_set1_ps(worst_dist);
  __m128 m = _mm_cmpnge_ps(_mm_loadu_ps(dist), w);
  m = _mm_or_ps(m, _mm_cmpnge_ps(_mm_loadu_ps(dist + 4), w));
  m = _mm_or_ps(m, _mm_cmpnge_ps(_mm_loadu_ps(dist + 8), w));
  m = _mm_or_ps(m, _mm_cmpnge_ps(_mm_loadu_ps(dist + 12), w));
  return _mm_movemask_ps(m) != 0;
#else
  bool may_beat = false;
  for (int j = 0; j < 16; ++j) may_beat |= !(dist[j] >= worst_dist);
  return may_beat;
#endif
}

inline void select_level(const float* dist, const bool* valid, int64_t start, int64_t n, int64_t k,
                         uint32_t* best_keys, float* best_dist, int64_t* out) {
  constexpr int64_t kChunk = 16;
  int64_t filled = 0;
  uint32_t worst = 0xffffffffu;
  float worst_dist = 0.0f;
  for (int64_t base = 0; base < n; base += kChunk) {
    const int64_t stop = base + kChunk < n ? base + kChunk : n;
    if (filled == k && stop - base == kChunk && !chunk_may_beat(dist + base, worst_dist)) continue;
    for (int64_t i = base; i < stop; ++i) {
      const uint32_t key = distance_bits(dist[i]);
      if (filled == k && key >= worst) continue;
      if (valid != nullptr && !valid[i]) continue;
      int64_t pos = filled < k ? filled++ : k - 1;
      while (pos > 0 && best_keys[pos - 1] > key) {
        best_keys[pos] = best_keys[pos - 1];
        best_dist[pos] = best_dist[pos - 1];
        out[pos] = out[pos - 1];
        --pos;
      }
      best_keys[pos] = key;
      best_dist[pos] = dist[i];
      out[pos] = start + i;
      if (filled == k) {
        worst = best_keys[k - 1];
        worst_dist = best_dist[k - 1];
      }
    }
  }
  for (int64_t j = filled; j < k; ++j) out[j] = -1;
}

// Steps 4-6 for one GT: IoU of each present candidate, the threshold and the
// positive flags. Empty slots get IoU 0 and are never positive. Returns the
// threshold rounded to float32 (NaN without candidates).
inline float score_candidates(const float* anchors, const AnchorCenters& centers, const float* gt,
                              const int64_t* candidates, int64_t num_slots, float center_eps,
                              float* iou, bool* positive) {
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
                          int64_t num_gt, int64_t num_slots, int64_t num_anchors, int64_t* gt_index,
                          float* iou, int64_t* num_positive) {
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
