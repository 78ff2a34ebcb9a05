// Host simulation of claim_kernel + decode_claims_kernel (csrc/cuda/resolve_multi_gt.cu,
// also the fused atss_assign's step 7): claims applied as u64 maxima in a random
// order with the shared claim_key / claim_gt / claim_iou of select_core.h; the
// result must equal the CPU's resolve_image bit for bit, with IoU ties, +-0.0,
// NaN, negative and infinite IoUs, repeated anchors and empty slots.
//
//   c++ -O2 -std=c++17 -ffp-contract=off resolve_sim.cpp -o resolve_sim && ./resolve_sim SEED TRIALS
#include <cstring>
#include <memory>
#include <cstdio>
#include <random>
#include <vector>
#include <algorithm>
#include <cmath>
#include "../../cpu/steps.h"
#include "../select_core.h"
using namespace atss::cuda;
static uint32_t fbits(float v) { return float_bits(v); }
int main(int argc, char** argv) {
  std::mt19937 rng(argc > 1 ? atoi(argv[1]) : 1);
  auto rnd = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  long checked = 0;
  const int trials = argc > 2 ? atoi(argv[2]) : 20000;
  for (int t = 0; t < trials; ++t) {
    int64_t B = rnd(1, 3), G = rnd(1, 6), C = rnd(0, 8), A = rnd(1, 12);
    std::vector<int64_t> cand(B * G * C);
    std::vector<float> iou(B * G * C);
    std::unique_ptr<bool[]> pos(new bool[B * G * C]);
    for (int64_t i = 0; i < B * G * C; ++i) {
      cand[i] = rnd(-1, (int)A - 1);
      int r = rnd(0, 11);
      iou[i] = r == 0 ? NAN : r == 1 ? -0.5f : r == 2 ? -0.0f : r == 3 ? 0.0f : r == 4 ? INFINITY : rnd(0, 3) / 4.0f;
      pos[i] = rnd(0, 9) < 7;
    }
    // CPU
    std::vector<int64_t> gi_ref(B * A, -1), np_ref(B * G, 0);
    std::vector<float> io_ref(B * A, 0.0f);
    for (int64_t b = 0; b < B; ++b)
      atss::cpu::resolve_image(cand.data() + b * G * C, iou.data() + b * G * C, pos.get() + b * G * C, G, C, A,
                               gi_ref.data() + b * A, io_ref.data() + b * A, np_ref.data() + b * G);
    // GPU logic: claims in a random order
    std::vector<u64> claims(B * A, 0);
    std::vector<int64_t> order(B * G * C);
    for (int64_t i = 0; i < (int64_t)order.size(); ++i) order[i] = i;
    std::shuffle(order.begin(), order.end(), rng);
    for (int64_t i : order) {
      if (!pos[i]) continue;
      const int64_t a = cand[i];
      if (a < 0 || a >= A) continue;
      const float v = iou[i];
      if (!(v >= 0.0f)) continue;
      const int64_t bg = i / C, b = bg / G;
      claims[b * A + a] = std::max(claims[b * A + a], claim_key(v, bg - b * G));
    }
    std::vector<int64_t> gi(B * A), np(B * G, 0);
    std::vector<float> io(B * A);
    for (int64_t i = 0; i < B * A; ++i) {
      const u64 key = claims[i];
      if (key == 0) { gi[i] = -1; io[i] = 0.0f; continue; }
      const int64_t b = i / A, a = i - b * A;
      const int64_t g = claim_gt(key);
      const int64_t row = (b * G + g) * C;
      const float v = claim_iou(key, a, cand.data() + row, iou.data() + row, pos.get() + row, C);
      gi[i] = g; io[i] = v; np[b * G + g]++;
    }
    bool same = gi == gi_ref && np == np_ref;
    for (int64_t i = 0; i < B * A; ++i) same = same && fbits(io[i]) == fbits(io_ref[i]);
    if (!same) { printf("MISMATCH trial %d\n", t); return 1; }
    ++checked;
  }
  printf("OK: %ld resolve simulations equal the CPU resolve_image (bits)\n", checked);
}
