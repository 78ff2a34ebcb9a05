// The selection lists of step 3 on the GPU: ordering keys, the per-lane top-K
// list and the level table. Plain C++ (ATSS_HD functions, no CUDA API), shared
// by the kernels and their host-side planning.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "../common/box_math.h"

#if defined(__CUDACC__)
#define ATSS_UNROLL _Pragma("unroll")
#else
#define ATSS_UNROLL
#endif

namespace atss::cuda {

using u64 = unsigned long long;  // the type of atomicMax / __ldcg / shuffles

// A key no real candidate has: real keys hold an anchor index < 2^31 in
// their low 32 bits.
constexpr u64 kEmptyKey = ~u64{0};

// The (distance, anchor index) ordering key: distance_bits in the high half,
// the index in the low half, so that u64 order is the contract's order. Every
// real key is > 0: distance_bits is never 0 (that would be the bits of a NaN,
// which maps to 0xffffffff), so 0 can serve as "no lower bound".
ATSS_HD u64 key_of(uint32_t bits, uint32_t anchor) {
  return (static_cast<u64>(bits) << 32) | anchor;
}

ATSS_HD u64 distance_key(float d, int64_t anchor) {
  return key_of(distance_bits(d), static_cast<uint32_t>(anchor));
}

// The high half of a key: its distance bits (0xffffffff for kEmptyKey).
ATSS_HD uint32_t key_bits(u64 key) {
  return static_cast<uint32_t>(key >> 32);
}

ATSS_HD int64_t key_anchor(u64 key) {
  return key == kEmptyKey ? int64_t{-1} : static_cast<int64_t>(static_cast<uint32_t>(key));
}

// The scan's prefilter, on a distance's raw bits. For every float d and every
// hi: distance_bits(d) <= hi implies raw_bits(d) <= raw_limit(hi). So a d
// with raw_bits(d) > raw_limit(hi) has a key above every key whose high half
// is hi, and the scan rejects it with one integer comparison, before it
// computes distance_bits or a key. Proof: a d with its sign bit set
// (negative, -0, -NaN) has a negative raw_bits and always passes. A d with
// its sign bit clear (+0, positive, +NaN) has distance_bits(d) =
// raw | 0x80000000 (0xffffffff for a +NaN), which is <= hi only when hi has
// its sign bit set, and then exactly when raw <= hi & 0x7fffffff (a +NaN
// passes when hi is 0xffffffff: raw_limit is then INT32_MAX). So for
// d >= +0 and a limit at or above +0 the two tests agree; otherwise the
// prefilter may let through keys the exact test rejects, never the reverse.
ATSS_HD int32_t raw_bits(float d) {
#if defined(__CUDA_ARCH__)
  return static_cast<int32_t>(__float_as_uint(d));
#else
  int32_t bits;
  std::memcpy(&bits, &d, sizeof(bits));
  return bits;
#endif
}

ATSS_HD int32_t raw_limit(uint32_t hi) {
  return static_cast<int32_t>(hi & 0x7fffffffu);
}

// The index of the lowest set bit of h != 0.
ATSS_HD int lowest_bit(unsigned h) {
#if defined(__CUDA_ARCH__)
  return __ffs(h) - 1;
#else
  return __builtin_ctz(h);
#endif
}

// Rows (GTs) per block of the selection kernels: one warp per row.
constexpr int kRowsPerBlock = 8;
// Non-empty levels one level table holds (it is a kernel parameter, at most
// 4 KB): more levels are served by several tables, one launch each.
constexpr int kMaxLevels = 128;
// Anchors per tile of the chunked scan (select.cuh).
constexpr int kTile = 2048;
// Keys per lane between two looks at the warp-wide bound (it is recomputed
// only when a lane's list changed).
constexpr int kUnroll = 8;

inline int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

inline int64_t num_row_tiles(int64_t rows) {
  return ceil_div(rows, kRowsPerBlock);
}

// The level layout, with empty levels dropped (they have no candidate slot),
// in tables of at most kMaxLevels non-empty levels: a launch per table. Slots
// (candidates, partial lists) and chunk indices are numbered over all levels,
// so the tables of one call share the row layout.
// 32 bits suffice for every field: each is at most A (< 2^31, check_num_anchors).
struct LevelTable {
  int32_t num_levels;    // non-empty levels of this table
  int32_t num_chunks;    // chunks of this table's levels
  int32_t chunk_offset;  // chunks of the tables before this one
  int32_t chunk_len;     // anchors per chunk (the last chunk of a level may be shorter)
  int32_t num_cand;      // C = sum_l min(topk, N_l) over all levels: a row's candidate slots
  int32_t
      num_part;  // partial slots per row over all levels (sum over chunks of min(k_l, chunk size))
  int32_t part_end;                // the end of this table's last level's partial slots
  int32_t k_max;                   // max_l min(topk, N_l) over this table's levels
  int32_t start[kMaxLevels];       // first anchor of the level
  int32_t size[kMaxLevels];        // N_l
  int32_t k[kMaxLevels];           // min(topk, N_l)
  int32_t chunk_base[kMaxLevels];  // first chunk of the level, from this table's first chunk
  int32_t cand_base[kMaxLevels];   // first candidate slot of the level in a row
  int32_t part_base[kMaxLevels];   // first partial slot of the level in a row
};

// The tables of levels[0, num_levels) (entries >= 0, sum < 2^31: the caller
// checks), topk >= 1, chunk_len >= 1. No table when every level is empty.
inline std::vector<LevelTable> fill_level_tables(const int64_t* levels, size_t num_levels,
                                                 int64_t topk, int64_t chunk_len) {
  std::vector<LevelTable> tables;
  int64_t start = 0, chunks = 0, cand = 0, part = 0;
  for (size_t i = 0; i < num_levels; ++i) {
    const int64_t n = levels[i];
    if (n > 0) {
      if (tables.empty() || tables.back().num_levels == kMaxLevels) {
        tables.push_back(LevelTable{});
        tables.back().chunk_len = static_cast<int32_t>(chunk_len);
        tables.back().chunk_offset = static_cast<int32_t>(chunks);
      }
      LevelTable& t = tables.back();
      const int l = t.num_levels;
      const int64_t k = topk < n ? topk : n;
      t.start[l] = static_cast<int32_t>(start);
      t.size[l] = static_cast<int32_t>(n);
      t.k[l] = static_cast<int32_t>(k);
      t.chunk_base[l] = static_cast<int32_t>(chunks - t.chunk_offset);
      t.cand_base[l] = static_cast<int32_t>(cand);
      t.part_base[l] = static_cast<int32_t>(part);
      const int64_t level_chunks = ceil_div(n, chunk_len);
      const int64_t last_len = n - (level_chunks - 1) * chunk_len;
      part += (level_chunks - 1) * (k < chunk_len ? k : chunk_len) + (k < last_len ? k : last_len);
      chunks += level_chunks;
      cand += k;
      t.k_max = static_cast<int32_t>(k > t.k_max ? k : t.k_max);
      t.num_levels = l + 1;
      t.num_chunks = static_cast<int32_t>(chunks - t.chunk_offset);
      t.part_end = static_cast<int32_t>(part);
    }
    start += n;
  }
  for (LevelTable& t : tables) {
    t.num_cand = static_cast<int32_t>(cand);
    t.num_part = static_cast<int32_t>(part);
  }
  return tables;
}

// The K smallest keys one lane has seen, ascending, padded with kEmptyKey.
// Keys are unique (they contain the anchor index), so the order is total.
// Indexed only with compile-time constants, so it lives in registers.
template <int K>
struct TopList {
  u64 key[K];

  ATSS_HD void clear() {
    ATSS_UNROLL
    for (int j = 0; j < K; ++j) key[j] = kEmptyKey;
  }
  ATSS_HD u64 worst() const { return key[K - 1]; }
  ATSS_HD u64 head() const { return key[0]; }

  // Inserts k, which the caller has checked is < worst(): each slot takes its
  // left neighbour when that is greater than k (shift right), k itself at the
  // first slot whose old key is greater, or keeps its key. All slots are
  // computed from the old values, from the right, so no temporary is needed.
  ATSS_HD void insert(u64 k) {
    ATSS_UNROLL
    for (int j = K - 1; j > 0; --j) {
      key[j] = key[j - 1] > k ? key[j - 1] : (key[j] > k ? k : key[j]);
    }
    key[0] = key[0] > k ? k : key[0];
  }

  // Removes the head (the smallest key).
  ATSS_HD void pop() {
    ATSS_UNROLL
    for (int j = 0; j < K - 1; ++j) key[j] = key[j + 1];
    key[K - 1] = kEmptyKey;
  }

  // The n-th smallest key (1 <= n <= K), with a run-time n: the largest of
  // the first n keys. Written with masks rather than `j == n - 1 ? key[j]`,
  // which the compiler turns into key[n - 1], an indexed access that moves
  // the whole list to local memory.
  ATSS_HD u64 nth(int n) const {
    u64 r = 0;
    ATSS_UNROLL
    for (int j = 0; j < K; ++j) {
      const u64 mask = u64{0} - static_cast<u64>(j < n);
      const u64 v = key[j] & mask;
      r = v > r ? v : r;
    }
    return r;
  }
};

}  // namespace atss::cuda
