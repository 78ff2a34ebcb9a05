// The per-GT and per-image steps of the contract on the CPU. The stage ops
// (center_distance.cpp, topk_per_level.cpp, iou_statistics.cpp,
// resolve_multi_gt.cpp) and the fused atss_assign.cpp are all built from these,
// so the fused path cannot drift from the stage ops.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "../common/box_math.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace atss::cpu {

// Anchor centres of [A, 2D] boxes, one array per axis (D = 2 or 3), computed
// once per call and shared by the whole batch.
struct AnchorCenters {
  int dims;
  std::array<std::vector<float>, 3> axis;
  AnchorCenters(const float* anchors, int64_t num_anchors, int num_dims) : dims(num_dims) {
    for (int t = 0; t < dims; ++t) {
      std::vector<float>& c = axis[t];
      c.resize(num_anchors);
      for (int64_t a = 0; a < num_anchors; ++a)
        c[a] = center_of(anchors[2 * dims * a + t], anchors[2 * dims * a + dims + t]);
    }
  }
};

// The usable anchors of a batch (contract: valid and not ignored), [B * A]
// flags, or null when neither mask is given. A plain serial loop: B * A bytes
// cost less than waking ATen's thread pool for logical_not / logical_and,
// which on a loaded machine stalls for milliseconds.
class UsableAnchors {
 public:
  UsableAnchors(const bool* valid, const bool* ignore, int64_t count) {
    if (ignore == nullptr) {
      flags_ = valid;
      return;
    }
    owned_.reset(new bool[count]);
    for (int64_t i = 0; i < count; ++i) owned_[i] = (valid == nullptr || valid[i]) && !ignore[i];
    flags_ = owned_.get();
  }
  const bool* get() const { return flags_; }

 private:
  std::unique_ptr<bool[]> owned_;
  const bool* flags_ = nullptr;
};

// Centre of a [2D] box (step 1), D values into c.
template <int D>
inline void box_center(const float* box, float* c) {
  for (int t = 0; t < D; ++t) c[t] = center_of(box[t], box[t + D]);
}

// Step 2 for one GT (centre g, D values) over anchors [start, start + n) into
// d2[0, n). A plain loop over arrays per D, so the compiler vectorises it.
template <int D>
inline void level_distances(const AnchorCenters& centers, int64_t start, int64_t n, const float* g,
                            float* d2) {
  const float* cx = centers.axis[0].data() + start;
  const float* cy = centers.axis[1].data() + start;
  if constexpr (D == 2) {
    for (int64_t i = 0; i < n; ++i) d2[i] = squared_distance(cx[i], cy[i], g[0], g[1]);
  } else {
    const float* cz = centers.axis[2].data() + start;
    for (int64_t i = 0; i < n; ++i) {
      const float c[3] = {cx[i], cy[i], cz[i]};
      d2[i] = squared_distance_nd<3>(c, g);
    }
  }
}

// Step 3 for one GT and one level: the k usable anchors with the smallest
// (distance_bits(d), index), nearest first, written to out[0, k); slots left
// over (fewer than k usable anchors) get -1. `dist` covers the level; `valid`
// is the level's row of usable flags or null (all usable). Scratch:
// `best_keys` of k entries, `chunk_min` of select_chunks(n) + k entries (the
// minima, then the bound's scratch).
//
// Two passes, both in anchor order.
//  1. A bound: the smallest distance of each chunk of 16 anchors (usable ones,
//     NaN left out; +inf when none), and the k-th smallest of those minima.
//     The k chunks it comes from hold k usable anchors no farther than it, so
//     no anchor beyond the bound (nor a NaN) can be among the k nearest.
//  2. The exact choice among the anchors within the bound (SmallestK, offered
//     in index order).
// Pass 2 looks at the few chunks whose minimum is within the bound, so the
// insertions (the costly, branchy part) number about k, not one per anchor
// that beats the k-th seen so far. Without a finite bound (fewer than k
// chunks, or fewer than k chunks with a finite usable distance) every anchor
// is offered, with chunks skipped once k anchors are held and no distance in
// them can beat the k-th (select_level_all).
inline constexpr int64_t kSelectChunk = 16;

inline int64_t select_chunks(int64_t n) {
  return (n + kSelectChunk - 1) / kSelectChunk;
}

// The k smallest keys offered so far, ascending, with their indices, in
// caller scratch of k entries each. Offered in index order, an anchor whose
// key equals the current k-th key has a higher index and loses the tie: the
// test is a strict `key < worst`, and an insertion shifts only strictly
// greater keys, so the order is (key, index).
class SmallestK {
 public:
  SmallestK(uint32_t* keys, int64_t* index, int64_t k) : keys_(keys), index_(index), k_(k) {}
  bool full() const { return filled_ == k_; }
  int64_t size() const { return filled_; }
  // The k-th key once full (0xffffffff before: every key may enter).
  uint32_t worst() const { return worst_; }
  void offer(uint32_t key, int64_t index) {
    if (filled_ == k_ && key >= worst_) return;
    int64_t pos = filled_ < k_ ? filled_++ : k_ - 1;
    while (pos > 0 && keys_[pos - 1] > key) {
      keys_[pos] = keys_[pos - 1];
      index_[pos] = index_[pos - 1];
      --pos;
    }
    keys_[pos] = key;
    index_[pos] = index;
    if (filled_ == k_) worst_ = keys_[k_ - 1];
  }

 private:
  uint32_t* keys_;
  int64_t* index_;
  int64_t k_, filled_ = 0;
  uint32_t worst_ = 0xffffffffu;
};

// The distance whose distance_bits is `key` (+0.0 for the key of both zeros,
// NaN for NaN's).
inline float distance_of_key(uint32_t key) {
  const uint32_t bits = (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
  float d;
  std::memcpy(&d, &bits, sizeof(d));
  return d;
}

// The smallest of dist[0, 16), NaN left out (+inf when all are NaN).
inline float chunk_min16(const float* dist) {
#if defined(__SSE2__)
  // minps returns its second operand when either is NaN: a NaN distance (the
  // first operand) leaves the running minimum as it is.
  __m128 m = _mm_min_ps(_mm_loadu_ps(dist), _mm_set1_ps(INFINITY));
  m = _mm_min_ps(_mm_loadu_ps(dist + 4), m);
  m = _mm_min_ps(_mm_loadu_ps(dist + 8), m);
  m = _mm_min_ps(_mm_loadu_ps(dist + 12), m);
  m = _mm_min_ps(m, _mm_movehl_ps(m, m));
  m = _mm_min_ps(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
#else
  float m = INFINITY;
  for (int j = 0; j < 16; ++j) m = dist[j] < m ? dist[j] : m;
  return m;
#endif
}

// Pass 1's minima: chunk_min[c] for each chunk c of dist[0, n).
inline void chunk_minima(const float* dist, const bool* valid, int64_t n, float* chunk_min) {
  const int64_t full = n / kSelectChunk;
  if (valid == nullptr) {
    for (int64_t c = 0; c < full; ++c) chunk_min[c] = chunk_min16(dist + c * kSelectChunk);
  }
  for (int64_t c = valid == nullptr ? full : 0; c < select_chunks(n); ++c) {
    const int64_t stop = std::min(n, (c + 1) * kSelectChunk);
    float m = INFINITY;
    for (int64_t i = c * kSelectChunk; i < stop; ++i) {
      const float d = valid == nullptr || valid[i] ? dist[i] : INFINITY;
      m = d < m ? d : m;
    }
    chunk_min[c] = m;
  }
}

// The k-th smallest of v[0, m) (1 <= k <= m, no NaN), with `held` scratch of
// k. On floats rather than through SmallestK's keys: this runs over every
// chunk of every scanned level.
inline float kth_smallest(const float* v, int64_t m, int64_t k, float* held) {
  int64_t filled = 0;
  for (int64_t i = 0; i < m; ++i) {
    const float x = v[i];
    if (filled == k && !(x < held[k - 1])) continue;
    int64_t pos = filled < k ? filled++ : k - 1;
    while (pos > 0 && held[pos - 1] > x) {
      held[pos] = held[pos - 1];
      --pos;
    }
    held[pos] = x;
  }
  return held[k - 1];
}

// True when some d in dist[0, 16) has !(d >= worst_dist): it may beat the
// k-th. `!(d >= worst_dist)` is true for every d that beats it (distance_bits
// is monotone in d, and -0.0 >= 0.0), and also for NaN on either side, so the
// test only ever lets extra anchors through to the exact test, never keeps
// one out.
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

// Step 3 without a bound: every usable anchor of the level offered.
inline void select_level_all(const float* dist, const bool* valid, int64_t start, int64_t n,
                             int64_t k, uint32_t* best_keys, int64_t* out) {
  SmallestK best(best_keys, out, k);
  for (int64_t base = 0; base < n; base += kSelectChunk) {
    const int64_t stop = base + kSelectChunk < n ? base + kSelectChunk : n;
    if (best.full() && stop - base == kSelectChunk &&
        !chunk_may_beat(dist + base, distance_of_key(best.worst())))
      continue;
    for (int64_t i = base; i < stop; ++i) {
      if (valid != nullptr && !valid[i]) continue;
      best.offer(distance_bits(dist[i]), start + i);
    }
  }
  for (int64_t j = best.size(); j < k; ++j) out[j] = -1;
}

inline void select_level(const float* dist, const bool* valid, int64_t start, int64_t n, int64_t k,
                         uint32_t* best_keys, float* chunk_min, int64_t* out) {
  const int64_t chunks = select_chunks(n);
  if (chunks < k) {
    select_level_all(dist, valid, start, n, k, best_keys, out);
    return;
  }
  chunk_minima(dist, valid, n, chunk_min);
  // The bound: the k-th smallest minimum (minima are never NaN).
  const float bound = kth_smallest(chunk_min, chunks, k, chunk_min + chunks);
  if (!(bound < INFINITY)) {
    select_level_all(dist, valid, start, n, k, best_keys, out);
    return;
  }
  // k usable anchors lie within the bound: all k slots get filled.
  SmallestK best(best_keys, out, k);
  for (int64_t c = 0; c < chunks; ++c) {
    if (!(chunk_min[c] <= bound)) continue;
    const int64_t stop = std::min(n, (c + 1) * kSelectChunk);
    for (int64_t i = c * kSelectChunk; i < stop; ++i) {
      const float d = dist[i];
      if (!(d <= bound)) continue;  // beyond the bound, or NaN
      if (valid != nullptr && !valid[i]) continue;
      best.offer(distance_bits(d), start + i);
    }
  }
}

// Steps 4-6 for one GT: IoU of each present candidate, the threshold and the
// positive flags. Empty slots get IoU 0 and are never positive. Without
// center_test (center_eps=None) the centre test is skipped. Returns the
// threshold rounded to float32 (NaN without candidates).
template <int D>
inline float score_candidates(const float* anchors, const float* gt, const int64_t* candidates,
                              int64_t num_slots, bool center_test, float center_eps, float* iou,
                              bool* positive) {
  for (int64_t c = 0; c < num_slots; ++c) {
    const int64_t a = candidates[c];
    iou[c] = a >= 0 ? box_iou_nd<D>(anchors + 2 * D * a, gt) : 0.0f;
  }
  int64_t count = 0;
  const double thr = iou_threshold(iou, candidates, num_slots, &count);
  for (int64_t c = 0; c < num_slots; ++c) {
    const int64_t a = candidates[c];
    bool pos = a >= 0 && static_cast<double>(iou[c]) >= thr;
    if (pos && center_test) {
      float center[D];  // the anchor's centre, as step 1 computes it
      box_center<D>(anchors + 2 * D * a, center);
      pos = center_inside_nd<D>(center, gt, center_eps);
    }
    positive[c] = pos;
  }
  return count > 0 ? static_cast<float>(thr) : static_cast<float>(NAN);
}

// Steps 7 and 8 for one image. Step 7: each anchor goes to the positive GT
// with the highest IoU, the lowest GT index on equal IoU (GTs are visited in
// increasing order and only a strictly higher IoU takes an anchor over).
// Step 8 (ensure_positive): each GT with a candidate and no anchor proposes
// its candidate of highest IoU (> 0; the earliest slot on equal IoU) whose
// anchor is still unassigned; proposals are resolved by step 7's rule, in one
// round. Anchors with ignore[a] (null: none) claim nothing and end as -2.
// gt_index must hold -1 and iou 0 on entry; num_positive receives the number
// of anchors each GT finally holds (a candidate listed twice by one GT counts
// once). `proposal` is scratch of num_gt entries (used with ensure_positive).
inline void resolve_image(const int64_t* candidates, const float* cand_iou, const bool* positive,
                          const bool* ignore, bool ensure_positive, int64_t num_gt,
                          int64_t num_slots, int64_t num_anchors, int64_t* gt_index, float* iou,
                          int64_t* num_positive, int64_t* proposal) {
  // num_positive follows the claims as they are made (a claim taken over moves
  // one anchor from its holder to the new GT), rather than by a count over
  // all anchors afterwards.
  for (int64_t g = 0; g < num_gt; ++g) num_positive[g] = 0;
  for (int64_t g = 0; g < num_gt; ++g) {
    for (int64_t c = 0; c < num_slots; ++c) {
      const int64_t i = g * num_slots + c;
      const int64_t a = candidates[i];
      // Only a real IoU (>= 0; never NaN) claims an anchor.
      if (!positive[i] || a < 0 || !(cand_iou[i] >= 0.0f)) continue;
      if (ignore != nullptr && ignore[a]) continue;
      const int64_t holder = gt_index[a];
      if (holder < 0 || cand_iou[i] > iou[a]) {
        if (holder >= 0) --num_positive[holder];
        ++num_positive[g];
        gt_index[a] = g;
        iou[a] = cand_iou[i];
      }
    }
  }
  if (ensure_positive) {
    // Every proposal is chosen against the state after step 7, then applied.
    for (int64_t g = 0; g < num_gt; ++g) {
      proposal[g] = -1;
      if (num_positive[g] != 0) continue;
      float best = 0.0f;
      for (int64_t c = 0; c < num_slots; ++c) {
        const int64_t i = g * num_slots + c;
        const int64_t a = candidates[i];
        if (a < 0 || gt_index[a] != -1 || (ignore != nullptr && ignore[a])) continue;
        if (cand_iou[i] > best) {  // > 0, and only a strictly higher IoU replaces
          best = cand_iou[i];
          proposal[g] = i;
        }
      }
    }
    for (int64_t g = 0; g < num_gt; ++g) {
      if (proposal[g] < 0) continue;
      const int64_t i = proposal[g];
      const int64_t a = candidates[i];
      // gt_index[a] >= num_gt marks "proposed" until the end of this pass;
      // a proposal by a lower GT with an equal IoU keeps the anchor.
      if (gt_index[a] == -1 || cand_iou[i] > iou[a]) {
        gt_index[a] = num_gt + g;
        iou[a] = cand_iou[i];
      }
    }
    for (int64_t g = 0; g < num_gt; ++g) {
      if (proposal[g] < 0) continue;
      const int64_t a = candidates[proposal[g]];
      if (gt_index[a] >= num_gt) {
        gt_index[a] -= num_gt;
        ++num_positive[gt_index[a]];
      }
    }
  }
  if (ignore != nullptr) {
    for (int64_t a = 0; a < num_anchors; ++a) {
      if (ignore[a]) gt_index[a] = -2;
    }
  }
}

}  // namespace atss::cpu
