// Step 3 of the fused atss_assign on the GPU: the per-level top-k of
// (distance, anchor index) keys of every GT row, found by visiting blocks of
// anchors nearest first and skipping every block that provably holds no
// candidate; then steps 4-6 and the claims of step 7 for the row.
//
// Work decomposition:
//   * anchor_blocks_kernel, once per call: the anchor centres ([A, D] floats,
//     so no row recomputes them) and, for every block of kCullBlock
//     consecutive anchors of a level (in the stored order; the last block of
//     a level may be shorter, no block straddles two levels), the box of its
//     members' centres: the smallest and largest centre per axis.
//   * culled_select_kernel: one block of threads per GT row, one warp per
//     level (levels l, l + 8, ... for warp l); each warp writes its level's
//     candidates into the row's slots, then warp 0 scores the row and claims
//     its positives (score.cuh). No partial lists, no merge, no counters
//     between blocks.
//
// Selection within a level (one warp, passes of at most 32 keys when
// k > 32). The warp holds the `want` smallest keys seen so far, one per lane
// in increasing order (`held`, lanes >= want hold kEmptyKey), and their
// largest, the exact want-th key `T`, known to every lane: the warp's
// threshold, not one lane's. Blocks are visited nearest first: the block with
// the smallest lower bound (below) not yet visited, again and again, up to
// kNearestVisits blocks, then the rest in the stored order; before each visit
// the block's bound is compared with T. A visit computes its anchors'
// distances (kUnroll per lane, kept in registers), keeps the keys below T,
// then either inserts them into `held` one at a time, smallest first (fewer
// than `want` keys), or takes the `want` smallest of `held` and the new keys
// in `want` rounds of a warp minimum (an exact warp-wide selection; the first
// block visited seeds T this way). No per-lane list, no divergent insert loop.
//
// Exactness of the culling (the CPU index's argument, csrc/cpu/spatial_index.h):
//   * Keys are (distance_bits(d2), anchor index), d2 = squared_distance_nd of
//     box_math.h, every operation rounded to float32: the scan's keys.
//   * A block's box holds its members' extreme centres, per axis. For a GT
//     centre g, clamp g into the box: p_t = min(max(g_t, lo_t), hi_t). For a
//     member c and axis t, c_t - g_t lies on the same side of 0 as p_t - g_t
//     and is at least as far from it (exactly), and rounding to float32 is
//     monotone, so |fl(c_t - g_t)| >= |fl(p_t - g_t)|; squaring and adding
//     non-negative floats are monotone too. So squared_distance_nd(p, g) <= d2
//     of every member, in float32: distance_bits(bound) <= distance_bits(d2)
//     (distance_bits is monotone on non-negative floats), and every member's
//     key is >= bound_bits << 32.
//   * A block is skipped only when bound_bits > key_bits(T): then each member's
//     key is > T, the want-th smallest key already held, so it is not among
//     the want smallest. An equal bound is visited (a member at an equal
//     distance with a lower index must win). T only falls as keys are added,
//     so a skip stays right. Blocks are taken in increasing (bound_bits, block)
//     order while nearest first, so when the next one's bound is above T every
//     block not yet visited is.
//   * The argument needs finite centres (inf - inf is NaN, which bounds
//     nothing): a block holding a non-finite centre gets the box
//     [-inf, +inf]^D, whose bound from a finite g is +0, so it is never
//     skipped; a GT whose centre is not finite skips nothing (its bounds are
//     taken as +0). Finite but huge coordinates are fine: bound and d2
//     overflow to +inf together, and equal bounds are visited.
//   * Masks (anchor_valid, anchor_ignore) are per image: boxes cover every
//     anchor of a block, usable or not, so the bound covers the usable ones.
//   * Visiting order changes only the work, never the keys selected: every
//     key not skipped is compared with the full 64-bit key, and the want
//     smallest of a set of unique keys do not depend on the order they come in.
// Anchors in a random order give boxes that cover most of the image: the
// bounds are then ~0 and every block is visited (a scan, never a wrong answer).
#pragma once

#include "cuda_common.cuh"
#include "score.cuh"
#include "work_counters.h"

namespace atss::cuda {

// Anchors per culling block: kUnroll per lane of a warp.
constexpr int kCullBlock = kWarp * kUnroll;
// Blocks a level's scan visits nearest first before it sweeps the rest in
// the stored order (each nearest-first step computes the bounds of every block
// of the level: a sweep's bounds are computed once).
constexpr int kNearestVisits = 8;
// The most keys the warp holds at once: one per lane.
constexpr int kMaxWant = kWarp;

// The level tables of the culled selection: the "chunks" are the culling blocks.
inline std::vector<LevelTable> make_culled_level_tables(IntArrayRef levels, int64_t topk) {
  return fill_level_tables(levels.data(), levels.size(), topk, kCullBlock);
}

struct CulledArgs {
  const float* anchors;           // [A, 2D]
  const float* gt_boxes;          // [B, G, 2D]
  const int64_t* gt_counts;       // [B] or null (all G valid)
  const uint32_t* anchor_usable;  // [B, usable_words(A)] bits (used when HAS_VALID)
  int64_t num_gt;
  int64_t num_anchors;
  int64_t rows;  // B * G
  int center_test;
  float center_eps;
  uint32_t nan_bits;
  int score;  // this launch's levels are the last: score the rows (steps 4-7)
  // Scratch written by anchor_blocks_kernel.
  float* centers;  // [A, D]
  float* boxes;    // [blocks of all levels, 2D]: lower corner, upper corner of the members' centres
  // Outputs: candidates, cand_iou, cand_positive [rows, C] (scratch for the
  // claim decoding), claims [B, A] (zeroed before the launches), threshold
  // and num_positive [B, G].
  int64_t* candidates;
  float* cand_iou;
  bool* cand_positive;
  u64* claims;
  float* threshold;
  int64_t* num_positive;
};

// One warp per culling block (grid-stride): its anchors' centres, and its box.
template <int D>
__global__ void __launch_bounds__(kThreads)
    anchor_blocks_kernel(const __grid_constant__ CulledArgs p,
                         const __grid_constant__ LevelTable lt) {
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kRowsPerBlock;
  for (int64_t blk = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
       blk < lt.num_chunks; blk += warps) {
    int l = 0;
    while (l + 1 < lt.num_levels && lt.chunk_base[l + 1] <= blk) ++l;
    const int j = static_cast<int>(blk) - lt.chunk_base[l];
    const int64_t first = static_cast<int64_t>(lt.start[l]) + static_cast<int64_t>(j) * kCullBlock;
    const int rest = lt.size[l] - j * kCullBlock;
    const int len = rest < kCullBlock ? rest : kCullBlock;
    const float inf = __uint_as_float(0x7f800000u);
    float lo[D], hi[D];
    bool finite = true;
    for (int t = 0; t < D; ++t) {
      lo[t] = inf;
      hi[t] = -inf;
    }
    for (int i = lane; i < len; i += kWarp) {
      const int64_t a = first + i;
      const float* box = p.anchors + 2 * D * a;
      for (int t = 0; t < D; ++t) {
        const float c = center_of(box[t], box[t + D]);
        p.centers[D * a + t] = c;
        // c - c is 0 for a finite c, NaN for +-inf and NaN.
        finite &= (c - c) == 0.0f;
        lo[t] = c < lo[t] ? c : lo[t];
        hi[t] = c > hi[t] ? c : hi[t];
      }
    }
    finite = __all_sync(kFullMask, finite);
    float* out = p.boxes + 2 * D * (lt.chunk_offset + blk);
    for (int t = 0; t < D; ++t) {
      // A block with a non-finite centre covers all space: its bound is +0.
      const float block_lo = finite ? warp_min_float(lo[t]) : -inf;
      const float block_hi = finite ? warp_max_float(hi[t]) : inf;
      if (lane == 0) {
        out[t] = block_lo;
        out[t + D] = block_hi;
      }
    }
  }
}

// The lower bound of the keys of a block (box: its 2D floats) for the GT
// centre g, as the high half of a key: distance_bits of the squared distance
// from g to g clamped into the box (see the top). `cull` false (a GT centre
// that is not finite): +0's bits, the smallest of any squared distance.
template <int D>
__device__ __forceinline__ uint32_t block_bound_bits(const float* box, const float* g, bool cull) {
  if (!cull) return distance_bits(0.0f);
  float q[D];
  for (int t = 0; t < D; ++t) {
    const float lo = box[t], hi = box[t + D];
    q[t] = g[t] < lo ? lo : (g[t] > hi ? hi : g[t]);
  }
  return distance_bits(squared_distance_nd<D>(q, g));
}

// Step 2 for anchor a and the GT centre g: the CPU's level_distances, bit for bit.
template <int D>
__device__ __forceinline__ float center_distance_at(const float* centers, int64_t a,
                                                    const float* g) {
  if constexpr (D == 2) {
    const float2 c = reinterpret_cast<const float2*>(centers)[a];
    return squared_distance(c.x, c.y, g[0], g[1]);
  } else {
    return squared_distance_nd<D>(centers + D * a, g);
  }
}

// The selection of one level for one row by one warp: writes the level's k
// candidates (nearest first, -1 past the usable anchors) to out[0, k).
template <bool HAS_VALID, int D>
__device__ void select_level_culled(const CulledArgs& p, const LevelTable& lt, int l,
                                    const float* gc, bool cull, const uint32_t* vrow, int64_t row,
                                    int lane, int64_t* out) {
  const int k = lt.k[l];
  const int64_t level_start = lt.start[l];
  const int level_size = lt.size[l];
  const int nb = (level_size + kCullBlock - 1) / kCullBlock;
  const float* level_boxes =
      p.boxes + 2 * D * (static_cast<int64_t>(lt.chunk_offset) + lt.chunk_base[l]);
  if (lane == 0) ATSS_WORK(row, kChunks, 1);

  int written = 0;
  u64 lower = 0;         // every real key is > 0
  while (written < k) {  // warp-uniform
    const int want = k - written < kMaxWant ? k - written : kMaxWant;
    if (lane == 0) ATSS_WORK(row, kPasses, 1);
    u64 held = kEmptyKey;       // lane r < want: the r-th smallest key so far
    u64 threshold = kEmptyKey;  // the want-th smallest key so far (held of lane want - 1)
#if defined(ATSS_EMU)
    int64_t bounds = 0, visited = 0, skipped = 0, rounds = 0, inserted = 0, updates = 0;
    int64_t considered = 0;
#endif

    // Visits block jb (warp-uniform): its keys in (lower, threshold) join `held`.
    auto visit = [&](int jb) {
      const int first = jb * kCullBlock;
      const int len = level_size - first < kCullBlock ? level_size - first : kCullBlock;
      const int32_t raw_lim = raw_limit(key_bits(threshold));
      u64 fresh[kUnroll];  // this lane's keys in (lower, threshold), else kEmptyKey
      int count = 0;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        fresh[u] = kEmptyKey;
        const int i = u * kWarp + lane;
        if (i < len) {
          const int64_t a = level_start + first + i;
          const float d = center_distance_at<D>(p.centers, a, gc);
          const bool usable = !HAS_VALID || usable_bit(vrow, a);
          // The prefilter on the distance's raw bits (select_core.h), then the full key.
          if (usable & (raw_bits(d) <= raw_lim)) {
            const u64 key = key_of(distance_bits(d), static_cast<uint32_t>(a));  // a < A < 2^31
            if (key > lower && key < threshold) {
              fresh[u] = key;
              ++count;
            }
          }
        }
      }
#if defined(ATSS_EMU)
      ++visited;
      if (lane == 0) ATSS_WORK(row, kDistancesComputed, len);
#endif
      const int total = warp_sum(count);
      if (total == 0) return;  // warp-uniform
#if defined(ATSS_EMU)
      considered += total;
#endif
      // The smallest of this lane's keys not taken yet; taking a key (unique:
      // one lane holds it) empties its register. No list is kept per lane.
      auto lane_min = [&]() {
        u64 m = kEmptyKey;
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) m = fresh[u] < m ? fresh[u] : m;
        return m;
      };
      auto take = [&](u64 x) {
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) fresh[u] = fresh[u] == x ? kEmptyKey : fresh[u];
      };
      if (total < want) {
        // A few keys: each into `held` (a sorted insert across the lanes), smallest first.
        for (int r = 0; r < total; ++r) {  // warp-uniform
          const u64 x = warp_min(lane_min());
          take(x);
          if (x < threshold) {
            const u64 prev = __shfl_up_sync(kFullMask, held, 1);
            if (lane < want) held = lane > 0 && prev > x ? prev : (held > x ? x : held);
            threshold = __shfl_sync(kFullMask, held, want - 1);
#if defined(ATSS_EMU)
            ++inserted;
            ++updates;
#endif
          }
#if defined(ATSS_EMU)
          ++rounds;
#endif
        }
      } else {
        // Many keys (the first block visited, usually): the want smallest of
        // `held` and the new keys, exactly, in want rounds of a warp minimum.
        u64 old = held;
        u64 taken = kEmptyKey;
        for (int r = 0; r < want; ++r) {  // warp-uniform
          const u64 mine = lane_min();
          const u64 m = warp_min(old < mine ? old : mine);
#if defined(ATSS_EMU)
          if (m != kEmptyKey && !__any_sync(kFullMask, old == m)) ++inserted;
#endif
          if (old == m) {
            old = kEmptyKey;
          } else {
            take(m);
          }
          if (lane == r) taken = m;
          threshold = m;  // the last one: the want-th smallest
        }
        held = taken;
#if defined(ATSS_EMU)
        rounds += want;
        ++updates;
#endif
      }
    };

    // Nearest first: the block with the smallest (bound, block) key above the
    // last one visited, while its bound is not above the threshold.
    u64 last = 0;  // the (bound, block) key of the last block visited; every one is > 0
    bool done = false;
    for (int step = 0; step < kNearestVisits && !done; ++step) {
      u64 next = kEmptyKey;
      for (int jb = lane; jb < nb; jb += kWarp) {
        const u64 bkey = key_of(block_bound_bits<D>(level_boxes + 2 * D * jb, gc, cull),
                                static_cast<uint32_t>(jb));
        next = bkey > last && bkey < next ? bkey : next;
#if defined(ATSS_EMU)
        ++bounds;
#endif
      }
      next = warp_min(next);
      if (next == kEmptyKey) {
        done = true;  // every block visited
      } else if (key_bits(next) > key_bits(threshold)) {
        done = true;  // this block and every one not visited yet: bounds above the threshold
#if defined(ATSS_EMU)
        skipped = nb - visited;
#endif
      } else {
        visit(static_cast<int>(static_cast<uint32_t>(next)));
        last = next;
      }
    }
    if (!done) {
      // The rest in the stored order, 32 bounds at a time.
      for (int j0 = 0; j0 < nb; j0 += kWarp) {  // warp-uniform
        const int jb = j0 + lane;
        u64 bkey = 0;
        if (jb < nb) {
          bkey = key_of(block_bound_bits<D>(level_boxes + 2 * D * jb, gc, cull),
                        static_cast<uint32_t>(jb));
#if defined(ATSS_EMU)
          ++bounds;
#endif
        }
        unsigned pending = __ballot_sync(kFullMask, bkey > last);
        while (pending != 0) {
          const int src = lowest_bit(pending);
          pending &= pending - 1;
          const u64 b = __shfl_sync(kFullMask, bkey, src);
          if (key_bits(b) > key_bits(threshold)) {
#if defined(ATSS_EMU)
            ++skipped;
#endif
          } else {
            visit(j0 + src);
          }
        }
      }
    }
#if defined(ATSS_EMU)
    ATSS_WORK(row, kBlockBounds, bounds);
    if (lane == 0) {
      ATSS_WORK(row, kBlocksVisited, visited);
      ATSS_WORK(row, kBlocksSkipped, skipped);
      ATSS_WORK(row, kInsertRounds, rounds);
      ATSS_WORK(row, kKeysInserted, inserted);
      ATSS_WORK(row, kKeysConsidered, considered);
      ATSS_WORK(row, kBoundUpdates, updates);
    }
#endif
    if (lane < want) out[written + lane] = key_anchor(held);
    written += want;
    if (threshold == kEmptyKey) break;  // fewer usable anchors than k: the rest stays -1
    lower = threshold;
  }
  for (int s = written + lane; s < k; s += kWarp) out[s] = -1;
}

// One block per GT row (grid-stride), one warp per level of the table, then
// (the last table's launch) warp 0 scores the row. The other warps go on to
// their next row: its slots are others.
template <bool HAS_VALID, int D>
__global__ void __launch_bounds__(kThreads)
    culled_select_kernel(const __grid_constant__ CulledArgs p,
                         const __grid_constant__ LevelTable lt) {
  const int warp = static_cast<int>(threadIdx.x) / kWarp;
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int64_t G = p.num_gt;
  const int64_t C = lt.num_cand;
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {  // block-uniform
    const int64_t b = row / G;
    if (row - b * G >= valid_gt_count(p.gt_counts, b, G)) {
      // Padding GT: no candidate, NaN threshold, no positive.
      if (p.score && threadIdx.x == 0) {
        p.threshold[row] = quiet_nan();
        p.num_positive[row] = 0;
      }
      continue;
    }
    const float* box = p.gt_boxes + 2 * D * row;
    float gc[D];
    bool cull = true;
    for (int t = 0; t < D; ++t) {
      gc[t] = center_of(box[t], box[t + D]);
      cull &= (gc[t] - gc[t]) == 0.0f;  // finite
    }
    const uint32_t* vrow = HAS_VALID ? p.anchor_usable + b * usable_words(p.num_anchors) : nullptr;
    int64_t* cand = p.candidates + row * C;
    for (int l = warp; l < lt.num_levels; l += kRowsPerBlock) {  // warp-uniform
      select_level_culled<HAS_VALID, D>(p, lt, l, gc, cull, vrow, row, lane,
                                        cand + lt.cand_base[l]);
    }
    if (!p.score) continue;  // block-uniform: the last table's launch scores the rows
    __syncthreads();         // every level's candidates are written
    if (warp == 0) {
      float gt[2 * D];
      load_box<D>(box, gt);
      const float thr = score_and_claim_row<D>(
          cand, p.cand_iou + row * C, C, p.anchors, gt, p.center_test != 0, p.center_eps,
          p.nan_bits, lane, row - b * G, p.cand_positive + row * C, p.claims + b * p.num_anchors);
      if (lane == 0) {
        p.threshold[row] = thr;
        p.num_positive[row] = 0;  // counted by the decoding kernel
      }
    }
  }
}

template <bool HAS_VALID, int D>
void launch_culled_kernels(const CulledArgs& p, const std::vector<LevelTable>& tables,
                           Stream stream) {
  for (size_t i = 0; i < tables.size(); ++i) {
    const LevelTable& lt = tables[i];
    CulledArgs q = p;
    q.score = i + 1 == tables.size();
    ATSS_LAUNCH(max_grid_blocks(ceil_div(lt.num_chunks, kRowsPerBlock), int64_t{1} << 20), kThreads,
                0, stream, anchor_blocks_kernel<D>)(q, lt);
    launch_check();
    ATSS_LAUNCH(max_grid_blocks(p.rows, int64_t{1} << 20), kThreads, 0, stream,
                culled_select_kernel<HAS_VALID, D>)(q, lt);
    launch_check();
  }
}

// The launches of the culled selection, two per table of at most kMaxLevels
// non-empty levels (dims: the boxes' axes).
inline void launch_culled_select(const CulledArgs& p, const std::vector<LevelTable>& tables,
                                 bool has_valid, int dims, Stream stream) {
  ATSS_WORK_RESET(p.rows);
  if (dims == 3) {
    has_valid ? launch_culled_kernels<true, 3>(p, tables, stream)
              : launch_culled_kernels<false, 3>(p, tables, stream);
  } else {
    has_valid ? launch_culled_kernels<true, 2>(p, tables, stream)
              : launch_culled_kernels<false, 2>(p, tables, stream);
  }
}

}  // namespace atss::cuda
