// Host simulation of select_kernel / finish_row (csrc/cuda/select.cuh): the
// same loops, lane by lane and block by block (in a random block order), with
// the shared TopList, LevelTable, distance_key of select_core.h; its candidates
// must equal the CPU's select_level (csrc/cpu/steps.h) on adversarial inputs:
// distance ties, NaN, +-inf, -0.0, negative distances, invalid anchors,
// gt_counts out of [0, G] (clamped), empty levels, topk 1..1000, chunk lengths
// 1..8192 and every list size K (multi-pass chunks and merges).
//
//   c++ -O2 -std=c++17 -ffp-contract=off select_sim.cpp -o select_sim && ./select_sim SEED TRIALS
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#include "../../cpu/steps.h"
#include "../select_core.h"

using namespace atss::cuda;
using atss::distance_bits;
constexpr int kWarp = 32;

static int64_t valid_count(const int64_t* c, int64_t b, int64_t G) {
  if (!c) return G;
  int64_t n = c[b];
  return n < 0 ? 0 : (n > G ? G : n);
}

template <int K>
struct WarpLists {
  TopList<K> l[kWarp];
  void clear() { for (auto& x : l) x.clear(); }
  u64 min_nth(int n) { u64 m = kEmptyKey; for (auto& x : l) m = std::min(m, x.nth(n)); return m; }
  // warp_extract
  template <class Out> u64 extract(int count, Out out) {
    u64 m = kEmptyKey;
    for (int r = 0; r < count; ++r) {
      m = kEmptyKey;
      for (auto& x : l) m = std::min(m, x.head());
      int pops = 0;
      for (auto& x : l) if (x.head() == m) { x.pop(); ++pops; }
      if (m != kEmptyKey && pops != 1) { printf("BUG: %d pops\n", pops); exit(1); }
      out(r, m);
    }
    return m;
  }
};

template <int K>
void sim(const std::vector<float>& dist, const bool* valid, const int64_t* counts, int64_t B, int64_t G,
         int64_t A, const std::vector<int64_t>& levels, int64_t topk, int64_t chunk_len,
         std::vector<int64_t>& out, std::mt19937& rng) {
  const LevelTable lt = fill_level_table(levels.data(), levels.size(), topk, chunk_len);
  const int64_t rows = B * G, C = lt.num_cand, tiles = num_row_tiles(rows);
  std::vector<u64> partial(std::max<int64_t>(1, rows * lt.num_part), 0x1234567ull);
  out.assign(rows * C, -99);
  const int64_t items = (int64_t)lt.num_chunks * tiles;
  std::vector<int64_t> order(items);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<int> done(tiles, 0);
  for (int64_t item : order) {
    const int chunk = (int)(item % lt.num_chunks);
    const int64_t tile = item / lt.num_chunks;
    int l = 0;
    while (l + 1 < lt.num_levels && lt.chunk_base[l + 1] <= chunk) ++l;
    const int j = chunk - lt.chunk_base[l];
    const int offset = j * lt.chunk_len;
    const int64_t chunk_start = (int64_t)lt.start[l] + offset;
    const int clen = lt.size[l] - offset < lt.chunk_len ? lt.size[l] - offset : lt.chunk_len;
    const int k = lt.k[l];
    const int kc = k < clen ? k : clen;
    const int64_t slot0 =
        (int64_t)lt.part_base[l] + (int64_t)j * (k < lt.chunk_len ? k : lt.chunk_len);
    // The chunk's partial slots lie inside its level's, and the level's chunks tile it.
    const int level_chunks =
        (l + 1 < lt.num_levels ? lt.chunk_base[l + 1] : lt.num_chunks) - lt.chunk_base[l];
    const int level_end = l + 1 < lt.num_levels ? lt.part_base[l + 1] : lt.num_part;
    if ((j + 1 < level_chunks && clen != lt.chunk_len) || slot0 + kc > level_end ||
        (j + 1 == level_chunks && slot0 + kc != level_end)) {
      printf("BUG: chunk %d of level %d: slots [%ld, %ld) in [%d, %d)\n", j, l, (long)slot0,
             (long)(slot0 + kc), lt.part_base[l], level_end);
      exit(1);
    }
    for (int warp = 0; warp < kRowsPerBlock; ++warp) {
      const int64_t row = tile * kRowsPerBlock + warp;
      bool active = false;
      int64_t b = 0;
      if (row < rows) { b = row / G; active = row - b * G < valid_count(counts, b, G); }
      const float* drow = active ? dist.data() + row * A : nullptr;
      const bool* vrow = valid ? valid + b * A : nullptr;
      u64* part = partial.data() + (active ? row * lt.num_part + slot0 : 0);
      bool exhausted = !active;
      int written = 0;
      u64 lower = 0;
      const int passes = (kc + K - 1) / K;
      for (int pass = 0; pass < passes; ++pass) {
        const int want = kc - pass * K < K ? kc - pass * K : K;
        WarpLists<K> w;
        w.clear();
        u64 bound = kEmptyKey;
        for (int t0 = 0; t0 < clen; t0 += kTile) {
          const int tlen = clen - t0 < kTile ? clen - t0 : kTile;
          if (!exhausted) {
            for (int base = 0; base < tlen; base += kWarp * kUnroll) {
              for (int u = 0; u < kUnroll; ++u)
                for (int lane = 0; lane < kWarp; ++lane) {
                  auto& list = w.l[lane];
                  const int i = base + u * kWarp + lane;
                  if (i < tlen) {
                    const int64_t a = chunk_start + t0 + i;
                    if (!vrow || vrow[a]) {
                      const u64 key = distance_key(drow[a], a);
                      const u64 limit = bound < list.worst() ? bound : list.worst();
                      if (key > lower && key < limit) list.insert(key);
                    }
                  }
                }
              bound = w.min_nth(want);
            }
          }
        }
        if (!exhausted) {
          const u64 last = w.extract(want, [&](int r, u64 m) { part[written + r] = m; });
          written += want;
          lower = last;
          exhausted = last == kEmptyKey;
        }
      }
      if (active) for (int s = written; s < kc; ++s) part[s] = kEmptyKey;
    }
    if (++done[tile] != lt.num_chunks) continue;
    // finish_row for each warp
    for (int warp = 0; warp < kRowsPerBlock; ++warp) {
      const int64_t row = tile * kRowsPerBlock + warp;
      if (row >= rows) continue;
      const int64_t b = row / G;
      const bool active = row - b * G < valid_count(counts, b, G);
      if (!active) { for (int64_t c = 0; c < C; ++c) out[row * C + c] = -1; continue; }
      int64_t* cand = out.data() + row * C;
      const u64* part = partial.data() + row * lt.num_part;
      for (int l = 0; l < lt.num_levels; ++l) {
        const int k = lt.k[l];
        const int begin = lt.part_base[l];
        const int end = l + 1 < lt.num_levels ? lt.part_base[l + 1] : lt.num_part;
        int64_t* o = cand + lt.cand_base[l];
        if (lt.cand_base[l] + k > C) { printf("BUG: cand\n"); exit(1); }
        int written = 0;
        u64 lower = 0;
        while (written < k) {
          const int want = k - written < K ? k - written : K;
          WarpLists<K> w;
          w.clear();
          for (int lane = 0; lane < kWarp; ++lane)
            for (int i = begin + lane; i < end; i += kWarp) {
              const u64 key = part[i];
              if (key == 0x1234567ull) { printf("BUG: unwritten partial\n"); exit(1); }
              auto& list = w.l[lane];
              if (key != kEmptyKey && key > lower && key < list.worst()) list.insert(key);
            }
          const u64 last = w.extract(want, [&](int r, u64 m) { o[written + r] = key_anchor(m); });
          written += want;
          if (last == kEmptyKey) break;
          lower = last;
        }
        for (int s = written; s < k; ++s) o[s] = -1;
      }
    }
  }
}

void cpu_ref(const std::vector<float>& dist, const bool* valid, const int64_t* counts, int64_t B, int64_t G,
             int64_t A, const std::vector<int64_t>& levels, int64_t topk, std::vector<int64_t>& out) {
  const int64_t C = atss::cuda::fill_level_table(levels.data(), levels.size(), topk, 1024).num_cand;
  out.assign(B * G * C, -77);
  std::vector<uint32_t> bk(topk);
  std::vector<float> bd(topk);
  for (int64_t bg = 0; bg < B * G; ++bg) {
    const int64_t b = bg / G;
    int64_t* slots = out.data() + bg * C;
    if (bg % G >= valid_count(counts, b, G)) { std::fill(slots, slots + C, -1); continue; }
    const float* row = dist.data() + bg * A;
    int64_t start = 0;
    for (int64_t n : levels) {
      const int64_t k = std::min(topk, n);
      if (k > 0) {
        atss::cpu::select_level(row + start, valid ? valid + b * A + start : nullptr, start, n, k, bk.data(), bd.data(), slots);
        slots += k;
      }
      start += n;
    }
  }
}

int main(int argc, char** argv) {
  std::mt19937 rng(argc > 1 ? atoi(argv[1]) : 1);
  int trials = argc > 2 ? atoi(argv[2]) : 300;
  const int64_t topks[] = {1, 2, 3, 4, 5, 8, 9, 10, 13, 16, 17, 27, 32, 33, 40, 64, 100, 1000};
  const int64_t chunk_lens[] = {1, 5, 31, 32, 33, 64, 100, 1024, 2048, 4096, 8192};
  long checked = 0;
  for (int t = 0; t < trials; ++t) {
    auto rnd = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
    std::vector<int64_t> levels;
    int L = rnd(1, 6);
    bool big = rnd(0, 3) == 0;
    for (int l = 0; l < L; ++l) levels.push_back(rnd(0, 4) == 0 ? 0 : rnd(1, big ? 10000 : 300));
    int64_t A = std::accumulate(levels.begin(), levels.end(), int64_t{0});
    int64_t B = rnd(1, 3), G = rnd(1, big ? 5 : 20);
    int kind = rnd(0, 4);
    std::vector<float> dist(B * G * A);
    for (auto& d : dist) {
      switch (kind) {
        case 0: d = (float)rnd(0, 3); break;
        case 1: { int r = rnd(0, 9); d = r == 0 ? NAN : r == 1 ? INFINITY : r == 2 ? -INFINITY : r == 3 ? -0.0f : (float)rnd(-3, 3); break; }
        case 2: d = std::uniform_real_distribution<float>(0, 1000)(rng); break;
        case 3: d = NAN; break;
        default: d = (float)rnd(0, 50) * 0.5f; break;
      }
    }
    std::vector<uint8_t> vstore;
    const bool* valid = nullptr;
    std::vector<bool> dummy;
    std::unique_ptr<bool[]> vb;
    if (rnd(0, 1)) {
      vb.reset(new bool[B * A]);
      int p = rnd(0, 10);
      for (int64_t i = 0; i < B * A; ++i) vb[i] = rnd(0, 9) < p;
      valid = vb.get();
    }
    std::vector<int64_t> counts;
    const int64_t* cp = nullptr;
    if (rnd(0, 1)) { for (int64_t b = 0; b < B; ++b) counts.push_back(rnd(-2, (int)G + 2)); cp = counts.data(); }
    int64_t topk = topks[rnd(0, 17)];
    int64_t chunk_len = chunk_lens[rnd(0, 10)];
    if (A == 0) continue;
    std::vector<int64_t> ref, got;
    cpu_ref(dist, valid, cp, B, G, A, levels, topk, ref);
    for (int K : {4, 9, 16, 32}) {
      if (K == 4) sim<4>(dist, valid, cp, B, G, A, levels, topk, chunk_len, got, rng);
      if (K == 9) sim<9>(dist, valid, cp, B, G, A, levels, topk, chunk_len, got, rng);
      if (K == 16) sim<16>(dist, valid, cp, B, G, A, levels, topk, chunk_len, got, rng);
      if (K == 32) sim<32>(dist, valid, cp, B, G, A, levels, topk, chunk_len, got, rng);
      if (got != ref) {
        printf("MISMATCH trial %d K %d topk %ld chunk_len %ld kind %d A %ld\n", t, K, (long)topk, (long)chunk_len, kind, (long)A);
        for (size_t i = 0; i < ref.size(); ++i) if (ref[i] != got[i]) { printf(" first at %zu: ref %ld got %ld\n", i, (long)ref[i], (long)got[i]); break; }
        return 1;
      }
      ++checked;
    }
  }
  printf("OK: %ld simulated runs equal the CPU select_level\n", checked);
  return 0;
}
