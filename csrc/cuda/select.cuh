// Step 3 on the GPU: the per-level top-k of (distance, anchor index) keys for
// every GT row, shared by topk_per_level.cu (keys from a [B, G, A] distance
// tensor) and the fused atss_assign.cu (keys computed on the fly from anchor
// centres, then steps 4-6 and the claims of step 7 for the same row).
//
// Work decomposition (one launch):
//   * Rows (b, g) are grouped in tiles of kRowsPerBlock rows: one warp per row.
//   * Each non-empty level is cut into chunks of `chunk_len` anchors. A block
//     takes one (chunk, tile) work item: every warp scans the chunk for its
//     row and writes the chunk's min(k, chunk size) smallest keys, in order,
//     to a partial list in global scratch (kEmptyKey where the chunk has fewer
//     valid anchors). In the fused kernel the block first stages the chunk's
//     anchor centres in shared memory (kTile at a time) for its 8 rows.
//   * The block that completes the last chunk of a tile (an atomic counter per
//     tile, with the threadfence pattern of the CUDA programming guide) merges
//     the partial lists of each row and level into the row's candidates
//     (nearest first), then (fused) scores the row.
// Tiles of 8 rows share every anchor read; chunks give the grid enough blocks
// when B * G is small; the merge touches only O(C * chunks per level) keys.
//
// Selection. Keys are distance_key(d, a) = distance_bits(d) << 32 | a: unique,
// and their u64 order is the contract's order ((d2, a), NaN last, -0 == +0),
// the CPU's select_level order. Each lane keeps the K smallest keys it has
// seen (TopList); the warp then takes the `want` smallest of all lanes' lists
// one by one (warp_extract). A warp-wide bound (the smallest, over lanes, of
// each lane's want-th key) filters keys early: at least `want` keys at or
// below the bound are held, so a key above it is never among the `want`
// smallest. The scan tests each anchor's 32-bit distance bits against the
// high half of its limit first (a prefilter on the float's raw bits, without
// branches) and builds the 64-bit key only for the few that can pass; the
// warp takes the bound again only when a list changed.
// When a level's k exceeds K, the chunk (and the merge) run in
// passes of K keys, each pass taking only keys above the last one taken.
// Which block merges, and in which order lanes and blocks run, never changes
// a result: the selected set is defined by the keys alone.
#pragma once

#include "cuda_common.cuh"
#include "score.cuh"
#include "work_counters.h"

namespace atss::cuda {

// The chunk length: the largest of 8192 .. 1024 anchors that still gives the
// grid about 4 work items per multiprocessor.
inline int64_t pick_chunk_len(IntArrayRef levels, int64_t rows) {
  const int64_t tiles = num_row_tiles(rows);
  const int64_t target = 4 * static_cast<int64_t>(sm_count());
  for (int64_t len : {8192, 4096, 2048}) {
    int64_t chunks = 0;
    for (int64_t n : levels) chunks += ceil_div(n, len);
    if (tiles * chunks >= target) return len;
  }
  return 1024;
}

// The level table for `levels` (which check_levels has accepted: entries >= 0,
// sum A < 2^31) and topk >= 1.
inline LevelTable make_level_table(IntArrayRef levels, int64_t topk, int64_t rows) {
  int64_t non_empty = 0;
  for (int64_t n : levels) non_empty += n > 0;
  ATSS_CHECK_VALUE(non_empty <= kMaxLevels, "num_anchors_per_level: the CUDA kernels take at most ",
                   num(kMaxLevels), " non-empty levels, got ", num(non_empty));
  return fill_level_table(levels.data(), levels.size(), topk, pick_chunk_len(levels, rows));
}

enum class Mode { kTopk, kFused };

struct SelectArgs {
  // Inputs (contiguous).
  const float* anchors;      // fused: [A, 2D]
  const float* gt_boxes;     // fused: [B, G, 2D]
  const float* distances;    // topk: [B, G, A]
  const int64_t* gt_counts;  // [B] or null (all G valid)
  const bool* anchor_valid;  // [B, A] (used when HAS_VALID)
  int64_t num_gt;
  int64_t num_anchors;
  int64_t rows;         // B * G
  int64_t num_tiles;    // ceil(rows / kRowsPerBlock)
  int anchors_aligned;  // anchors are 16-byte aligned: float4 loads (D = 2)
  int score_in_smem;    // fused: the per-warp score buffers fit in shared memory
  int center_test;      // fused: center_eps given (None: no centre test)
  float center_eps;
  uint32_t nan_bits;  // host_default_nan_bits()
  // Scratch.
  unsigned* tile_done;  // [num_tiles], zeroed before the launch
  u64* partial;         // [rows, num_part]
  // Outputs. topk: candidates [rows, C]. fused: candidates, cand_iou,
  // cand_positive [rows, C] (scratch for the claim decoding), claims [B, A]
  // (zeroed before the launch), threshold and num_positive [B, G].
  int64_t* candidates;
  float* cand_iou;
  bool* cand_positive;
  u64* claims;
  float* threshold;
  int64_t* num_positive;
};

// Dynamic shared memory of the fused kernel: the centre tile (D floats per
// anchor), or the score buffers of the kRowsPerBlock rows when they fit
// (ScoreSmem; they are used one after the other, never at once).
inline int64_t tile_bytes(int dims) {
  return kTile * static_cast<int64_t>(dims) * static_cast<int64_t>(sizeof(float));
}
inline int64_t fused_smem_bytes(int64_t num_cand, int dims) {
  const int64_t score = ScoreSmem::fits(num_cand) ? ScoreSmem::bytes(num_cand) : 0;
  return score > tile_bytes(dims) ? score : tile_bytes(dims);
}

// Anchor centres [first, first + len) into tile[0, D * len) (D floats per
// anchor), by the whole block: the CPU's AnchorCenters, center_of(lo, hi)
// per axis.
template <int D>
__device__ __forceinline__ void load_centers(const SelectArgs& p, int64_t first, int len,
                                             float* tile) {
  for (int i = threadIdx.x; i < len; i += blockDim.x) {
    const int64_t a = first + i;
    if constexpr (D == 2) {
      float x1, y1, x2, y2;
      if (p.anchors_aligned) {
        const float4 v = __ldg(reinterpret_cast<const float4*>(p.anchors) + a);
        x1 = v.x;
        y1 = v.y;
        x2 = v.z;
        y2 = v.w;
      } else {
        x1 = __ldg(p.anchors + 4 * a + 0);
        y1 = __ldg(p.anchors + 4 * a + 1);
        x2 = __ldg(p.anchors + 4 * a + 2);
        y2 = __ldg(p.anchors + 4 * a + 3);
      }
      reinterpret_cast<float2*>(tile)[i] = make_float2(center_of(x1, x2), center_of(y1, y2));
    } else {
      const float* box = p.anchors + 2 * D * a;
      for (int t = 0; t < D; ++t) tile[D * i + t] = center_of(__ldg(box + t), __ldg(box + t + D));
    }
  }
}

// Step 2 for the tile's anchor i and the GT centre g (D values): the CPU's
// level_distances, bit for bit.
template <int D>
__device__ __forceinline__ float tile_distance(const float* tile, int i, const float* g) {
  if constexpr (D == 2) {
    const float2 c = reinterpret_cast<const float2*>(tile)[i];
    return squared_distance(c.x, c.y, g[0], g[1]);
  } else {
    return squared_distance_nd<D>(tile + D * i, g);
  }
}

// The last block of a tile: merges each row's partial lists into its
// candidates, then (fused) scores the row and claims its positive anchors.
// One warp per row; nothing here synchronises more than the warp.
template <int K, Mode MODE, int D>
__device__ void finish_row(const SelectArgs& p, const LevelTable& lt, int64_t row, bool active,
                           int64_t b, int warp, int lane, unsigned char* smem) {
  if (row >= p.rows) return;
  const int64_t C = lt.num_cand;
  if (!active) {  // padding GT: no candidate, NaN threshold, no positive
    if constexpr (MODE == Mode::kTopk) {
      for (int64_t c = lane; c < C; c += kWarp) p.candidates[row * C + c] = -1;
    } else if (lane == 0) {
      p.threshold[row] = quiet_nan();
      p.num_positive[row] = 0;
    }
    return;
  }
  int64_t* cand = p.candidates + row * C;
  if constexpr (MODE == Mode::kFused) {
    if (p.score_in_smem) cand = ScoreSmem::candidates(smem, warp, C);
  }
  const u64* part = p.partial + row * lt.num_part;
  for (int l = 0; l < lt.num_levels; ++l) {
    const int k = lt.k[l];
    const int begin = lt.part_base[l];
    const int end = l + 1 < lt.num_levels ? lt.part_base[l + 1] : lt.num_part;
    int64_t* out = cand + lt.cand_base[l];
    int written = 0;
    u64 lower = 0;
    while (written < k) {  // warp-uniform
      const int want = k - written < K ? k - written : K;
      TopList<K> list;
      list.clear();
      for (int i = begin + lane; i < end; i += kWarp) {
        // Written by other blocks: read from L2, past this SM's L1.
        const u64 key = __ldcg(reinterpret_cast<const u64*>(part + i));
        if (key != kEmptyKey && key > lower && key < list.worst()) {
          list.insert(key);
          ATSS_WORK(row, kMergeKeysInserted, 1);
        }
      }
      const u64 last = warp_extract(list, want, [&](int r, u64 m) {
        if (lane == (r & (kWarp - 1))) out[written + r] = key_anchor(m);
      });
      written += want;
      if (last == kEmptyKey) break;
      lower = last;
    }
    for (int s = written + lane; s < k; s += kWarp) out[s] = -1;
  }
  __syncwarp();
  if constexpr (MODE == Mode::kFused) {
    float* iou_buf = p.score_in_smem ? ScoreSmem::ious(smem, warp, C) : p.cand_iou + row * C;
    float gt[2 * D];
    load_box<D>(p.gt_boxes + 2 * D * row, gt);
    const float thr = score_and_claim_row<D>(
        cand, iou_buf, C, p.anchors, gt, p.center_test != 0, p.center_eps, p.nan_bits, lane,
        row - b * p.num_gt, p.candidates + row * C, p.cand_iou + row * C, p.cand_positive + row * C,
        p.claims + b * p.num_anchors);
    if (lane == 0) {
      p.threshold[row] = thr;
      p.num_positive[row] = 0;  // counted by the decoding kernel
    }
  }
}

// Registers: up to 80 per thread for lists of up to 16 keys (3 blocks of 256
// threads per multiprocessor; ptxas's own choice for K = 9 was 64 registers
// with spills), up to 128 for 32 keys (2 blocks: an 80-register cap would
// spill; without a cap, the kUnroll loads the scan keeps in flight took up to
// 156 registers, 1 block). ptxas (CUDA 13.0, sm_90) spills only outside the
// scan: 12 to 16 bytes for K = 16 and K = 32 with a mask, a store and a load
// or two per work item.
template <int K>
constexpr int kMinBlocksPerSm = K <= 16 ? 3 : 2;

// D: the boxes' axes (fused; the topk mode reads distances and uses D = 2).
template <int K, bool HAS_VALID, Mode MODE, int D>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm<K>)
    select_kernel(const __grid_constant__ SelectArgs p, const __grid_constant__ LevelTable lt) {
  ATSS_DYNAMIC_SMEM(unsigned char, smem);
  ATSS_SHARED(int, s_last);
  const int warp = static_cast<int>(threadIdx.x) / kWarp;
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int64_t G = p.num_gt;
  const int64_t items = static_cast<int64_t>(lt.num_chunks) * p.num_tiles;
  float* tile_centers = reinterpret_cast<float*>(smem);

  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int chunk = static_cast<int>(item % lt.num_chunks);
    const int64_t tile = item / lt.num_chunks;
    int l = 0;
    while (l + 1 < lt.num_levels && lt.chunk_base[l + 1] <= chunk) ++l;
    const int j = chunk - lt.chunk_base[l];
    const int offset = j * lt.chunk_len;  // < N_l < 2^31
    const int64_t chunk_start = static_cast<int64_t>(lt.start[l]) + offset;
    const int clen = lt.size[l] - offset < lt.chunk_len ? lt.size[l] - offset : lt.chunk_len;
    const int k = lt.k[l];
    const int kc = k < clen ? k : clen;  // keys this chunk contributes
    const int64_t slot0 = static_cast<int64_t>(lt.part_base[l]) +
                          static_cast<int64_t>(j) * (k < lt.chunk_len ? k : lt.chunk_len);

    // This warp's row (warp-uniform state).
    const int64_t row = tile * kRowsPerBlock + warp;
    bool active = false;
    int64_t b = 0;
    if (row < p.rows) {
      b = row / G;
      active = row - b * G < valid_gt_count(p.gt_counts, b, G);
    }
    float gc[D] = {};  // the GT centre
    const float* drow = nullptr;
    if (active) {
      if constexpr (MODE == Mode::kFused) {
        const float* box = p.gt_boxes + 2 * D * row;
        for (int t = 0; t < D; ++t) gc[t] = center_of(box[t], box[t + D]);
      } else {
        drow = p.distances + row * p.num_anchors;
      }
    }
    const bool* vrow = HAS_VALID ? p.anchor_valid + b * p.num_anchors : nullptr;
    u64* part = p.partial + (active ? row * lt.num_part + slot0 : 0);
    if (active && lane == 0) ATSS_WORK(row, kChunks, 1);

    bool exhausted = !active;
    int written = 0;
    u64 lower = 0;  // every real key is > 0
    const int passes = (kc + K - 1) / K;
    for (int pass = 0; pass < passes; ++pass) {  // block-uniform
      const int want = kc - pass * K < K ? kc - pass * K : K;
      TopList<K> list;
      list.clear();
      if (!exhausted && lane == 0) ATSS_WORK(row, kPasses, 1);
      // A key enters the list only when lower < key < limit, where limit =
      // min(bound, list.worst()) and bound is the warp-wide bound. The scan
      // takes kUnroll anchors per lane at a time: first each one's distance
      // through the prefilter raw_bits(d) <= raw_limit(limit's high half)
      // (select_core.h), one comparison and no branch, marking those that
      // may pass in `hits`; then, in one loop over each lane's hits, the
      // exact test on the 64-bit key and the insert. Once a lane's list is
      // full, hits are few: keys at or below the limit's distance bits.
      u64 limit = kEmptyKey;
      int32_t raw_lim = raw_limit(key_bits(limit));
      bool inserted = false;  // this lane's list changed since the bound was taken
      for (int t0 = 0; t0 < clen; t0 += kTile) {  // block-uniform
        const int tlen = clen - t0 < kTile ? clen - t0 : kTile;
        if constexpr (MODE == Mode::kFused) {
          __syncthreads();  // the previous tile is consumed
          load_centers<D>(p, chunk_start + t0, tlen, tile_centers);
          __syncthreads();
          if (active && lane == 0) ATSS_WORK(row, kTilesStaged, 1);
        }
        if (!exhausted) {  // warp-uniform
          // The tile's first anchor index, on 32 bits (< A < 2^31).
          const uint32_t first = static_cast<uint32_t>(chunk_start + t0);
          const float* dtile = MODE == Mode::kTopk ? drow + chunk_start + t0 : nullptr;
          const bool* vtile = HAS_VALID ? vrow + chunk_start + t0 : nullptr;
          // The distance of the tile's anchor i (i < tlen).
          auto distance_at = [&](int i) -> float {
            if constexpr (MODE == Mode::kFused) {
              return tile_distance<D>(tile_centers, i, gc);
            } else {
              return dtile[i];
            }
          };
          // Whether the tile's anchor i (i < tlen) may pass: valid, and
          // through the prefilter (no short circuit: no branch).
          auto may_pass = [&](int i) -> bool {
            const bool valid = !HAS_VALID || vtile[i];
            return valid & (raw_bits(distance_at(i)) <= raw_lim);
          };
#if defined(ATSS_EMU)
          int64_t distances = 0, inserts = 0;
#endif
          for (int base = 0; base < tlen; base += kWarp * kUnroll) {
            // Bit u: anchor base + u * kWarp + lane may pass. A whole group
            // (warp-uniform test) needs no test against the tile's end.
            unsigned hits = 0;
            if (base + kWarp * kUnroll <= tlen) {
#pragma unroll
              for (int u = 0; u < kUnroll; ++u) {
                hits |= static_cast<unsigned>(may_pass(base + u * kWarp + lane)) << u;
              }
            } else {
#pragma unroll
              for (int u = 0; u < kUnroll; ++u) {
                const int i = base + u * kWarp + lane;
                if (i < tlen && may_pass(i)) hits |= 1u << u;
              }
            }
#if defined(ATSS_EMU)
            int rounds = 0;
            for (int u = 0; u < kUnroll; ++u) distances += base + u * kWarp + lane < tlen;
#endif
            while (hits != 0) {  // divergent: each lane over its own hits
              const int u = lowest_bit(hits);
              hits &= hits - 1;
              const int i = base + u * kWarp + lane;
              const u64 key =
                  key_of(distance_bits(distance_at(i)), first + static_cast<uint32_t>(i));
#if defined(ATSS_EMU)
              ++rounds;
#endif
              if (key > lower && key < limit) {
                list.insert(key);
#if defined(ATSS_EMU)
                ++inserts;
#endif
                // bound is unchanged until the next update and worst()
                // only falls: min(bound, worst()) is min(limit, worst()).
                limit = list.worst() < limit ? list.worst() : limit;
                raw_lim = raw_limit(key_bits(limit));
                inserted = true;
              }
            }
#if defined(ATSS_EMU)
            rounds = static_cast<int>(__reduce_max_sync(kFullMask, static_cast<unsigned>(rounds)));
            if (lane == 0) ATSS_WORK(row, kInsertRounds, rounds);
#endif
            // The bound is a function of the lists: taken again only when
            // one of them changed.
            if (__any_sync(kFullMask, inserted)) {  // warp-uniform
              const u64 bound = warp_min(list.nth(want));
              limit = bound < list.worst() ? bound : list.worst();
              raw_lim = raw_limit(key_bits(limit));
              inserted = false;
              if (lane == 0) ATSS_WORK(row, kBoundUpdates, 1);
            }
          }
          ATSS_WORK(row, kDistancesComputed, distances);
          ATSS_WORK(row, kKeysInserted, inserts);
        }
      }
      if (!exhausted) {
        const u64 last = warp_extract(list, want, [&](int r, u64 m) {
          if (lane == (r & (kWarp - 1))) part[written + r] = m;
        });
        written += want;
        lower = last;
        exhausted = last == kEmptyKey;  // fewer valid anchors than kc: the rest stays empty
      }
    }
    if (active) {
      for (int s = written + lane; s < kc; s += kWarp) part[s] = kEmptyKey;
    }

    // Last block of this tile? (threadfence reduction pattern)
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
      const unsigned done = atomicAdd(p.tile_done + tile, 1u);
      s_last = done == static_cast<unsigned>(lt.num_chunks - 1);
    }
    __syncthreads();
    if (s_last) {
      __threadfence();
      finish_row<K, MODE, D>(p, lt, row, active, b, warp, lane, smem);
    }
    __syncthreads();  // s_last and the shared memory are reused by the next item
  }
}

// The list size K for the largest per-level k: one pass when k <= 32.
inline int pick_list_size(int64_t k_max) {
  if (k_max <= 4) return 4;
  if (k_max <= 9) return 9;
  if (k_max <= 16) return 16;
  return 32;
}

template <int K, bool HAS_VALID, Mode MODE, int D>
void launch_select_kernel(unsigned blocks, int64_t smem_bytes, Stream stream, const SelectArgs& p,
                          const LevelTable& lt) {
  const size_t smem = static_cast<size_t>(smem_bytes);
  ATSS_LAUNCH(blocks, kThreads, smem, stream, select_kernel<K, HAS_VALID, MODE, D>)(p, lt);
  launch_check();
}

template <int K, Mode MODE>
void launch_select_k(bool has_valid, int dims, unsigned blocks, int64_t smem_bytes, Stream stream,
                     const SelectArgs& p, const LevelTable& lt) {
  if constexpr (MODE == Mode::kFused) {
    if (dims == 3) {
      has_valid ? launch_select_kernel<K, true, MODE, 3>(blocks, smem_bytes, stream, p, lt)
                : launch_select_kernel<K, false, MODE, 3>(blocks, smem_bytes, stream, p, lt);
      return;
    }
  }
  has_valid ? launch_select_kernel<K, true, MODE, 2>(blocks, smem_bytes, stream, p, lt)
            : launch_select_kernel<K, false, MODE, 2>(blocks, smem_bytes, stream, p, lt);
}

// One launch of select_kernel over every (chunk, tile) item. dims: the
// boxes' axes (fused mode; 2 for topk).
template <Mode MODE>
void launch_select(const SelectArgs& p, const LevelTable& lt, bool has_valid, int dims,
                   int64_t smem_bytes, Stream stream) {
  const int64_t items = static_cast<int64_t>(lt.num_chunks) * p.num_tiles;
  const unsigned blocks = max_grid_blocks(items, int64_t{1} << 20);  // then grid-stride
  ATSS_WORK_RESET(p.rows);
  switch (pick_list_size(lt.k_max)) {
    case 4:
      launch_select_k<4, MODE>(has_valid, dims, blocks, smem_bytes, stream, p, lt);
      break;
    case 9:
      launch_select_k<9, MODE>(has_valid, dims, blocks, smem_bytes, stream, p, lt);
      break;
    case 16:
      launch_select_k<16, MODE>(has_valid, dims, blocks, smem_bytes, stream, p, lt);
      break;
    default:
      launch_select_k<32, MODE>(has_valid, dims, blocks, smem_bytes, stream, p, lt);
      break;
  }
}

}  // namespace atss::cuda
