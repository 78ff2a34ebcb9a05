// Step 3 on the GPU for caller-given distances: the per-level top-k of
// (distance, anchor index) keys for every GT row of a [B, G, A] distance
// tensor (topk_per_level.cu). Distances from a caller bound nothing, so every
// anchor is scanned; the fused atss_assign computes its own distances and
// culls blocks of anchors instead (select_culled.cuh).
//
// Work decomposition (one launch):
//   * Rows (b, g) are grouped in tiles of kRowsPerBlock rows: one warp per row.
//   * Each non-empty level is cut into chunks of `chunk_len` anchors. A block
//     takes one (chunk, tile) work item: every warp scans the chunk for its
//     row (kTile anchors at a time) and writes the chunk's min(k, chunk size)
//     smallest keys, in order, to a partial list in global scratch (kEmptyKey
//     where the chunk has fewer valid anchors).
//   * The block that completes the last chunk of a tile (an atomic counter per
//     tile, with the threadfence pattern of the CUDA programming guide) merges
//     the partial lists of each row and level into the row's candidates
//     (nearest first).
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

// The level tables for `levels` (which check_levels has accepted: entries
// >= 0, sum A < 2^31) and topk >= 1.
inline std::vector<LevelTable> make_level_tables(IntArrayRef levels, int64_t topk, int64_t rows) {
  return fill_level_tables(levels.data(), levels.size(), topk, pick_chunk_len(levels, rows));
}

struct SelectArgs {
  // Inputs (contiguous).
  const float* distances;         // [B, G, A]
  const int64_t* gt_counts;       // [B] or null (all G valid)
  const uint32_t* anchor_usable;  // [B, usable_words(A)] bits (used when HAS_VALID)
  int64_t num_gt;
  int64_t num_anchors;
  int64_t rows;       // B * G
  int64_t num_tiles;  // ceil(rows / kRowsPerBlock)
  // Scratch.
  unsigned* tile_done;  // [num_tiles] per level table, zeroed before the launches
  u64* partial;         // [rows, num_part]
  // Output: candidates [rows, C].
  int64_t* candidates;
};

// The last block of a tile: merges each row's partial lists into its
// candidates. One warp per row; nothing here synchronises more than the warp.
template <int K>
__device__ void finish_row(const SelectArgs& p, const LevelTable& lt, int64_t row, bool active,
                           int lane) {
  if (row >= p.rows) return;
  const int64_t C = lt.num_cand;
  int64_t* cand = p.candidates + row * C;
  if (!active) {  // padding GT: no candidate (in this table's slots)
    for (int l = 0; l < lt.num_levels; ++l) {
      for (int s = lane; s < lt.k[l]; s += kWarp) cand[lt.cand_base[l] + s] = -1;
    }
    return;
  }
  const u64* part = p.partial + row * lt.num_part;
  for (int l = 0; l < lt.num_levels; ++l) {
    const int k = lt.k[l];
    const int begin = lt.part_base[l];
    const int end = l + 1 < lt.num_levels ? lt.part_base[l + 1] : lt.part_end;
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

template <int K, bool HAS_VALID>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm<K>)
    select_kernel(const __grid_constant__ SelectArgs p, const __grid_constant__ LevelTable lt) {
  ATSS_SHARED(int, s_last);
  const int warp = static_cast<int>(threadIdx.x) / kWarp;
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int64_t G = p.num_gt;
  const int64_t items = static_cast<int64_t>(lt.num_chunks) * p.num_tiles;

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
    const float* drow = active ? p.distances + row * p.num_anchors : nullptr;
    const uint32_t* vrow = HAS_VALID ? p.anchor_usable + b * usable_words(p.num_anchors) : nullptr;
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
        if (!exhausted) {  // warp-uniform
          // The tile's first anchor index, on 32 bits (< A < 2^31).
          const uint32_t first = static_cast<uint32_t>(chunk_start + t0);
          const float* dtile = drow + chunk_start + t0;
          const int64_t vfirst = chunk_start + t0;
          // The distance of the tile's anchor i (i < tlen).
          auto distance_at = [&](int i) -> float { return dtile[i]; };
          // Whether the tile's anchor i (i < tlen) may pass: valid, and
          // through the prefilter (no short circuit: no branch).
          auto may_pass = [&](int i) -> bool {
            const bool valid = !HAS_VALID || usable_bit(vrow, vfirst + i);
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
      finish_row<K>(p, lt, row, active, lane);
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

template <int K>
void launch_select_k(bool has_valid, unsigned blocks, Stream stream, const SelectArgs& p,
                     const LevelTable& lt) {
  if (has_valid) {
    ATSS_LAUNCH(blocks, kThreads, 0, stream, select_kernel<K, true>)(p, lt);
  } else {
    ATSS_LAUNCH(blocks, kThreads, 0, stream, select_kernel<K, false>)(p, lt);
  }
  launch_check();
}

// One launch of select_kernel per level table, over every (chunk, tile) item
// of its levels; each table counts its tiles in its own num_tiles counters.
inline void launch_select(const SelectArgs& p, const std::vector<LevelTable>& tables,
                          bool has_valid, Stream stream) {
  ATSS_WORK_RESET(p.rows);
  for (size_t i = 0; i < tables.size(); ++i) {
    const LevelTable& lt = tables[i];
    SelectArgs q = p;
    q.tile_done = p.tile_done + static_cast<int64_t>(i) * p.num_tiles;
    const int64_t items = static_cast<int64_t>(lt.num_chunks) * p.num_tiles;
    const unsigned blocks = max_grid_blocks(items, int64_t{1} << 20);  // then grid-stride
    switch (pick_list_size(lt.k_max)) {
      case 4:
        launch_select_k<4>(has_valid, blocks, stream, q, lt);
        break;
      case 9:
        launch_select_k<9>(has_valid, blocks, stream, q, lt);
        break;
      case 16:
        launch_select_k<16>(has_valid, blocks, stream, q, lt);
        break;
      default:
        launch_select_k<32>(has_valid, blocks, stream, q, lt);
        break;
    }
  }
}

}  // namespace atss::cuda
