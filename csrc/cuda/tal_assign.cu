// Task-aligned assignment (the TAL contract, version 1, docs/contract.md) on
// CUDA: the same bits as the reference and the CPU kernel, visiting per GT only
// the blocks of 32 anchor points that can hold a point inside its test box, and
// never materialising [B, G, A] or [B, A, C]. Five launches after one memset:
//
//   memset    best, pick_count, picker [B, A] to 0.
//   launch 1  point_blocks_kernel: the box of the points of every block of 32
//             anchors (a block holding a non-finite point covers all space).
//   launch 2  tal_select_kernel (one warp per GT row): for each block whose box
//             can hold an inside point, each lane tests one point; an inside
//             anchor gets its overlap and metric (steps 1 and 2), claims the
//             anchor with atomicMax of (overlap, inverted GT index) (step 4's
//             "highest overlap among every GT it is inside, then the lower GT
//             index"), and its (metric, inverted anchor index) key enters the
//             row's top-K list (step 3). The K picks then count themselves on
//             their anchors (atomicAdd) and leave their GT index (atomicMax).
//   launch 3  tal_owner_kernel (one thread per anchor): no pick: background;
//             one pick: that GT; several: the claim's GT (step 4). The owner's
//             overlap and metric are recomputed (the same function, the same bits).
//   launch 4  tal_gt_kernel (one warp per GT row): over the anchors it owns,
//             the GT's topk2 best by metric (step 4b: a second top-K list, its
//             last key the cut), then M_g, O_g and the count (step 5).
//   launch 5  tal_target_kernel (one thread per anchor): anchors below their
//             GT's cut become background; the rest get metric * O_g / (M_g + eps).
//
// Every metric and overlap is >= 0 and not NaN for inputs the CPU accepts
// (pos_of, clamp01), so their float bits order like their values and the keys
// below are exact. The CUDA path runs no value check (no host sync): a label
// outside [0, C) scores 0 instead of reading out of bounds, and other input the
// CPU rejects gives unspecified values, never an out-of-bounds access.
//
// No host sync, no allocation whose size depends on data (CUDA-graph
// capturable), current stream, device guard. Memory: the outputs, plus scratch
// of 16 bytes per anchor of the batch (claims, counts, pickers) + 4 (metrics),
// 16 bytes per 32 anchor points (block boxes), 8 * min(topk, A) bytes per GT
// row (the lists; as much again for topk2) + 16 per GT row: O(B * A + B * G * topk).
#include "cuda_common.cuh"

#include "../common/tal_math.h"
#include "work_counters.h"

namespace atss::cuda {
namespace {

constexpr int kPointBlock = kWarp;  // anchor points per culling block: one per lane
constexpr int kAnchorThreads = 256;

struct TalArgs {
  // Inputs (contiguous).
  const float* scores;       // [B, A, C]
  const float* pred;         // [B, A, 4]
  const float* points;       // [A, 2]
  const float* gt;           // [B, G, 4]
  const int64_t* labels;     // [B, G]
  const int64_t* gt_counts;  // [B] or nullptr
  int64_t batch, num_anchors, num_classes, num_gt;
  int64_t list_len;   // min(topk, A)
  int64_t list2_len;  // min(topk2, A), 0 without topk2
  int64_t alpha_n, beta_n;
  bool alpha_half, beta_half, ciou, widen;
  float min_side, eps;
  uint32_t nan_bits;
  int64_t num_blocks;  // ceil(A / kPointBlock)
  // Scratch.
  float* blocks;        // [num_blocks, 4]: lowest x, lowest y, highest x, highest y
  u64* best;            // [B, A] claim keys (0: inside no GT)
  int32_t* pick_count;  // [B, A]
  int32_t* picker;      // [B, A] the highest GT index that picked the anchor
  float* metric;        // [B, A] the owner's metric
  u64* lists;           // [B * G, list_len]
  u64* lists2;          // [B * G, list2_len]
  u64* cut;             // [B * G] the lowest key a GT keeps (0: all)
  float* gt_metric;     // [B * G] M_g
  float* gt_overlap;    // [B * G] O_g
  // Outputs.
  int64_t* gt_index;
  float* target;
  float* overlap;
  int64_t* num_positive;
};

// The float bits of a value >= 0 as the high half of a key, + 1 so that every
// real key is > 0 (0: no key). A NaN (only from input the CPU rejects) loses
// its sign bit and stays below 2^31.
__device__ __forceinline__ u64 value_key(float v, uint32_t low) {
  return ((static_cast<u64>(__float_as_uint(v) & 0x7fffffffu) + 1) << 32) | low;
}

// Steps 3 and 4b's order: metric descending, then anchor index ascending.
__device__ __forceinline__ u64 metric_key(float metric, int64_t anchor) {
  return value_key(metric, ~static_cast<uint32_t>(anchor));
}
__device__ __forceinline__ int64_t metric_key_anchor(u64 key) {
  return static_cast<int64_t>(~static_cast<uint32_t>(key));
}

// Step 4's order: overlap descending, then GT index ascending.
__device__ __forceinline__ u64 claim_key_of(float overlap, int64_t g) {
  return value_key(overlap, ~static_cast<uint32_t>(g));
}
__device__ __forceinline__ int64_t claim_key_gt(u64 key) {
  return static_cast<int64_t>(~static_cast<uint32_t>(key));
}

// The overlap and metric of anchor a for GT row (b, g): step 2, in the order of
// tal_math.h (the CPU kernel's Inputs::score).
struct Score {
  float overlap, metric;
};

__device__ __forceinline__ Score score_pair(const TalArgs& p, int64_t row, int64_t b, int64_t a,
                                            float aspect) {
  const float* gbox = p.gt + 4 * row;
  const int64_t ba = b * p.num_anchors + a;
  const float o = tal_overlap(gbox, p.pred + 4 * ba, p.ciou, aspect);
  const int64_t label = p.labels[row];
  const float s =
      (label >= 0 && label < p.num_classes) ? clamp01(p.scores[ba * p.num_classes + label]) : 0.0f;
  return {o, power_c(s, p.alpha_n, p.alpha_half) * power_c(o, p.beta_n, p.beta_half)};
}

// One warp per block of kPointBlock points (grid-stride): its box.
__global__ void __launch_bounds__(kThreads) point_blocks_kernel(const __grid_constant__ TalArgs p) {
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kRowsPerBlock;
  const float inf = __uint_as_float(0x7f800000u);
  for (int64_t blk = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
       blk < p.num_blocks; blk += warps) {  // warp-uniform
    const int64_t a = blk * kPointBlock + lane;
    float x = 0.0f, y = 0.0f;
    bool present = a < p.num_anchors;
    if (present) {
      x = p.points[2 * a];
      y = p.points[2 * a + 1];
    }
    // v - v is 0 for a finite v, NaN for +-inf and NaN.
    const bool finite = __all_sync(kFullMask, !present || ((x - x) == 0.0f && (y - y) == 0.0f));
    const float lo_x = warp_min_float(present ? x : inf), hi_x = warp_max_float(present ? x : -inf);
    const float lo_y = warp_min_float(present ? y : inf), hi_y = warp_max_float(present ? y : -inf);
    if (lane == 0) {
      float* out = p.blocks + 4 * blk;
      out[0] = finite ? lo_x : -inf;
      out[1] = finite ? lo_y : -inf;
      out[2] = finite ? hi_x : inf;
      out[3] = finite ? hi_y : inf;
    }
  }
}

// False only when no point of the block (box: lowest x, y, highest x, y) can pass
// step 1's test against t. Float subtraction is monotone, so a point px <= hi_x
// has fl(px - x1) <= fl(hi_x - x1): if the latter is not > eps, no point's is
// (the NaN cases, an infinite or NaN side, hold no inside point either).
__device__ __forceinline__ bool block_may_hold(const float* box, const TestBox& t, float eps) {
  return (box[2] - t.x1) > eps && (box[3] - t.y1) > eps && (t.x2 - box[0]) > eps &&
         (t.y2 - box[1]) > eps;
}

// Calls visit(a) on every lane for each block of 32 anchors that may hold a point
// inside t, with a the lane's anchor (>= A past the last: the callee checks).
// Warp-uniform; every lane must call it.
template <class Visit>
__device__ __forceinline__ void for_each_candidate_block(const TalArgs& p, const TestBox& t,
                                                         int lane, Visit&& visit) {
  for (int64_t base = 0; base < p.num_blocks; base += kWarp) {  // warp-uniform
    const int64_t j = base + lane;
    unsigned hits =
        __ballot_sync(kFullMask, j < p.num_blocks && block_may_hold(p.blocks + 4 * j, t, p.eps));
    while (hits != 0) {  // warp-uniform
      const int bit = lowest_bit(hits);
      hits &= hits - 1;
      visit((base + bit) * kPointBlock + lane);
    }
  }
}

// A warp's top-K list of keys (descending, in global scratch, len of K filled):
// offers every lane's key (0: none) and keeps the K largest. Warp-uniform; every
// lane must call it. The list's smallest key once full is `floor`: keys at or
// below it cannot enter.
struct WarpList {
  u64* keys;
  int64_t capacity;
  int64_t row = -1;  // the GT row whose work counters count the inserts (emulation only; -1: none)
  int64_t len = 0;
  u64 floor = 0;

  __device__ __forceinline__ void offer(u64 key, int lane) {
    unsigned pending = __ballot_sync(kFullMask, key > floor);
    while (pending != 0) {  // warp-uniform
      const int src = lowest_bit(pending);
      pending &= pending - 1;
      const u64 k = __shfl_sync(kFullMask, key, src);
      if (k <= floor) continue;  // the floor rose since the ballot
      // Its place: the number of kept keys above it (keys are unique).
      int above = 0;
      for (int64_t i = lane; i < len; i += kWarp) above += keys[i] > k ? 1 : 0;
      const int64_t at = warp_sum(above);
      // Keys [at, last) move one place down (the last one falls off a full list),
      // 32 at a time from the end: each group reads before any lane writes.
      const int64_t last = len < capacity ? len : capacity - 1;
      for (int64_t end = last; end > at; end -= kWarp) {
        const int64_t start = end - kWarp > at ? end - kWarp : at;
        const int64_t i = start + lane;
        const u64 v = i < end ? keys[i] : 0;
        __syncwarp();
        if (i < end) keys[i + 1] = v;
        __syncwarp();
      }
      // When no group moved (the key replaces the last of a full list), no barrier yet
      // separates every lane's reads of the list (its place, the floor) from this write.
      __syncwarp();
      if (lane == 0) {
        keys[at] = k;
        ATSS_WORK(row, kKeysInserted, 1);
      }
      __syncwarp();
      if (len < capacity) ++len;
      floor = len == capacity ? keys[capacity - 1] : 0;
    }
  }
};

// Calls f(row, b, g, valid) on every lane of a warp for each GT row the warp serves
// (one warp per row, grid-stride over the B * G rows; valid: g < gt_counts[b], clamped).
// Warp-uniform.
template <class F>
__device__ __forceinline__ void for_each_gt_row(const TalArgs& p, F&& f) {
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kRowsPerBlock;
  const int64_t G = p.num_gt;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
       row < p.batch * G; row += warps) {
    const int64_t b = row / G, g = row - b * G;
    f(row, b, g, g < valid_gt_count(p.gt_counts, b, G));
  }
}

// Steps 1 to 3 and step 4's claims: one warp per GT row (grid-stride).
__global__ void __launch_bounds__(kThreads) tal_select_kernel(const __grid_constant__ TalArgs p) {
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int64_t A = p.num_anchors;
  for_each_gt_row(p, [&](int64_t row, int64_t b, int64_t g, bool valid) {
    if (!valid) return;  // padding: never read
    const float* gbox = p.gt + 4 * row;
    const TestBox t = tal_test_box(gbox, p.widen, p.min_side);
    const float aspect = tal_gt_aspect(gbox);
    WarpList list{p.lists + row * p.list_len, p.list_len, row};
    if (lane == 0) ATSS_WORK(row, kBlockBounds, p.num_blocks);
    for_each_candidate_block(p, t, lane, [&](int64_t a) {
      if (lane == 0) ATSS_WORK(row, kBlocksVisited, 1);
      u64 key = 0;
      if (a < A) ATSS_WORK(row, kPointsTested, 1);
      if (a < A && tal_inside(p.points[2 * a], p.points[2 * a + 1], t, p.eps)) {
        ATSS_WORK(row, kPointsInside, 1);
        const Score s = score_pair(p, row, b, a, aspect);
        atomicMax(p.best + b * A + a, claim_key_of(s.overlap, g));
        key = metric_key(s.metric, a);
      }
      list.offer(key, lane);
    });
    for (int64_t i = lane; i < list.len; i += kWarp) {
      const int64_t a = metric_key_anchor(list.keys[i]);
      atomicAdd(p.pick_count + b * A + a, 1);
      atomicMax(p.picker + b * A + a, static_cast<int32_t>(g));
    }
  });
}

// Step 4: each anchor's owner, its overlap and its metric (one thread per anchor).
__global__ void __launch_bounds__(kAnchorThreads)
    tal_owner_kernel(const __grid_constant__ TalArgs p) {
  const int64_t A = p.num_anchors, n = p.batch * A;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t ba = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; ba < n;
       ba += stride) {
    const int32_t picks = p.pick_count[ba];
    if (picks == 0) {
      p.gt_index[ba] = -1;
      p.overlap[ba] = 0.0f;
      p.metric[ba] = 0.0f;
      continue;
    }
    const int64_t b = ba / A, a = ba - b * A;
    // Several picks: the claim's GT, which is a GT the anchor is inside.
    const int64_t g = picks == 1 ? static_cast<int64_t>(p.picker[ba]) : claim_key_gt(p.best[ba]);
    const int64_t row = b * p.num_gt + g;
    const Score s = score_pair(p, row, b, a, tal_gt_aspect(p.gt + 4 * row));
    p.gt_index[ba] = g;
    p.overlap[ba] = s.overlap;
    p.metric[ba] = s.metric;
  }
}

// Steps 4b and 5 per GT row (one warp per row, grid-stride): the anchors it owns
// all lie inside it, so the blocks step 1 visits hold them all.
__global__ void __launch_bounds__(kThreads) tal_gt_kernel(const __grid_constant__ TalArgs p) {
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int64_t A = p.num_anchors;
  for_each_gt_row(p, [&](int64_t row, int64_t b, int64_t g, bool valid) {
    if (!valid) {
      if (lane == 0) p.num_positive[row] = 0;
      return;
    }
    const TestBox t = tal_test_box(p.gt + 4 * row, p.widen, p.min_side);
    const int64_t* owner = p.gt_index + b * A;
    const float* metric = p.metric + b * A;
    const float* overlap = p.overlap + b * A;
    float largest_metric = 0.0f, largest_overlap = 0.0f;
    int64_t count = 0;
    u64 cut = 0;
    if (p.list2_len > 0) {  // step 4b: the kept anchors are the list's
      WarpList list{p.lists2 + row * p.list2_len, p.list2_len};
      for_each_candidate_block(p, t, lane, [&](int64_t a) {
        list.offer(a < A && owner[a] == g ? metric_key(metric[a], a) : 0, lane);
      });
      for (int64_t i = lane; i < list.len; i += kWarp) {
        const int64_t a = metric_key_anchor(list.keys[i]);
        largest_metric = max_of(largest_metric, metric[a]);
        largest_overlap = max_of(largest_overlap, overlap[a]);
      }
      count = list.len;
      cut = list.len == list.capacity ? list.floor : 0;
    } else {
      int mine = 0;
      for_each_candidate_block(p, t, lane, [&](int64_t a) {
        if (a < A && owner[a] == g) {
          largest_metric = max_of(largest_metric, metric[a]);
          largest_overlap = max_of(largest_overlap, overlap[a]);
          ++mine;
        }
      });
      count = warp_sum(mine);
    }
    largest_metric = warp_max_float(largest_metric);
    largest_overlap = warp_max_float(largest_overlap);
    if (lane == 0) {
      p.gt_metric[row] = largest_metric;
      p.gt_overlap[row] = largest_overlap;
      p.cut[row] = cut;
      p.num_positive[row] = count;
    }
  });
}

// Step 4b's cut and step 5's target score (one thread per anchor).
__global__ void __launch_bounds__(kAnchorThreads)
    tal_target_kernel(const __grid_constant__ TalArgs p) {
  const int64_t A = p.num_anchors, n = p.batch * A;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const float eps = p.eps;
  for (int64_t ba = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; ba < n;
       ba += stride) {
    const int64_t g = p.gt_index[ba];
    if (g < 0) {
      p.target[ba] = 0.0f;
      continue;
    }
    const int64_t b = ba / A, row = b * p.num_gt + g;
    const float m = p.metric[ba];
    if (metric_key(m, ba - b * A) < p.cut[row]) {  // dropped by step 4b
      p.gt_index[ba] = -1;
      p.overlap[ba] = 0.0f;
      p.target[ba] = 0.0f;
      continue;
    }
    const float denominator = p.gt_metric[row] + eps;
    p.target[ba] = cpu_nan_bits((m * p.gt_overlap[row]) / denominator, p.nan_bits);
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor> tal_assign_cuda(
    const Tensor& pred_scores, const Tensor& pred_boxes, const Tensor& anchor_points,
    const Tensor& gt_boxes, const Tensor& gt_labels, const OptionalTensor& gt_counts, int64_t topk,
    double alpha, double beta, bool ciou, std::optional<double> min_side,
    std::optional<int64_t> topk2, double eps) {
  // The structural checks every backend runs; no value check (no sync).
  check_tal_assign_args(pred_scores, pred_boxes, anchor_points, gt_boxes, gt_labels, gt_counts,
                        topk, alpha, beta, min_side, topk2, eps);
  const int64_t B = pred_scores.size(0), A = pred_scores.size(1), C = pred_scores.size(2);
  const int64_t G = gt_boxes.size(1);
  check_cuda_num_gt(G);

  const DeviceGuard guard(pred_scores);
  if (B * G * A == 0) {
    return {new_full(pred_scores, {B, A}, dtype::kLong, -1.0),
            new_full(pred_scores, {B, A}, dtype::kFloat, 0.0),
            new_full(pred_scores, {B, A}, dtype::kFloat, 0.0),
            new_full(pred_scores, {B, G}, dtype::kLong, 0.0)};
  }
  const Tensor scores = as_contiguous(pred_scores), pred = as_contiguous(pred_boxes);
  const Tensor points = as_contiguous(anchor_points), gt = as_contiguous(gt_boxes);
  const Tensor labels = as_contiguous(gt_labels);
  const OptionalTensor counts = as_contiguous(gt_counts);
  const Stream stream = current_stream();

  Tensor gt_index = new_empty(pred_scores, {B, A}, dtype::kLong);
  Tensor target = new_empty(pred_scores, {B, A}, dtype::kFloat);
  Tensor overlap = new_empty(pred_scores, {B, A}, dtype::kFloat);
  Tensor num_positive = new_empty(pred_scores, {B, G}, dtype::kLong);

  TalArgs p{};
  p.scores = data<float>(scores);
  p.pred = data<float>(pred);
  p.points = data<float>(points);
  p.gt = data<float>(gt);
  p.labels = data<int64_t>(labels);
  p.gt_counts = data<int64_t>(counts);
  p.batch = B;
  p.num_anchors = A;
  p.num_classes = C;
  p.num_gt = G;
  p.list_len = topk < A ? topk : A;
  p.list2_len = topk2 ? (*topk2 < A ? *topk2 : A) : 0;
  const Exponent a_exp = exponent_of(alpha), b_exp = exponent_of(beta);
  p.alpha_n = a_exp.n;
  p.alpha_half = a_exp.half;
  p.beta_n = b_exp.n;
  p.beta_half = b_exp.half;
  p.ciou = ciou;
  p.widen = min_side.has_value();
  p.min_side = min_side ? static_cast<float>(*min_side) : 0.0f;
  p.eps = static_cast<float>(eps);
  p.nan_bits = host_default_nan_bits();
  p.num_blocks = ceil_div(A, kPointBlock);
  p.gt_index = data<int64_t>(gt_index);
  p.target = data<float>(target);
  p.overlap = data<float>(overlap);
  p.num_positive = data<int64_t>(num_positive);

  // One scratch allocation; the zeroed part (claims, counts, pickers) comes first.
  const int64_t BA = B * A, rows = B * G;
  ScratchPlan plan;
  const int64_t best_at = plan.take(BA * static_cast<int64_t>(sizeof(u64)));
  const int64_t count_at = plan.take(BA * static_cast<int64_t>(sizeof(int32_t)));
  const int64_t picker_at = plan.take(BA * static_cast<int64_t>(sizeof(int32_t)));
  const int64_t zeroed_bytes = plan.total();
  const int64_t blocks_at = plan.take(p.num_blocks * 4 * static_cast<int64_t>(sizeof(float)));
  const int64_t metric_at = plan.take(BA * static_cast<int64_t>(sizeof(float)));
  const int64_t lists_at = plan.take(rows * p.list_len * static_cast<int64_t>(sizeof(u64)));
  const int64_t lists2_at = plan.take(rows * p.list2_len * static_cast<int64_t>(sizeof(u64)));
  const int64_t cut_at = plan.take(rows * static_cast<int64_t>(sizeof(u64)));
  const int64_t gt_metric_at = plan.take(rows * static_cast<int64_t>(sizeof(float)));
  const int64_t gt_overlap_at = plan.take(rows * static_cast<int64_t>(sizeof(float)));
  Tensor scratch = new_empty(pred_scores, {plan.total()}, dtype::kByte);
  uint8_t* base = data<uint8_t>(scratch);
  p.best = reinterpret_cast<u64*>(base + best_at);
  p.pick_count = reinterpret_cast<int32_t*>(base + count_at);
  p.picker = reinterpret_cast<int32_t*>(base + picker_at);
  p.blocks = reinterpret_cast<float*>(base + blocks_at);
  p.metric = reinterpret_cast<float*>(base + metric_at);
  p.lists = reinterpret_cast<u64*>(base + lists_at);
  p.lists2 = reinterpret_cast<u64*>(base + lists2_at);
  p.cut = reinterpret_cast<u64*>(base + cut_at);
  p.gt_metric = reinterpret_cast<float*>(base + gt_metric_at);
  p.gt_overlap = reinterpret_cast<float*>(base + gt_overlap_at);

  memset_async(base, 0, zeroed_bytes, stream);
  ATSS_WORK_RESET(rows);
  const int64_t max_grid = int64_t{1} << 20;
  ATSS_LAUNCH(max_grid_blocks(ceil_div(p.num_blocks, kRowsPerBlock), max_grid), kThreads, 0, stream,
              point_blocks_kernel)(p);
  launch_check();
  ATSS_LAUNCH(max_grid_blocks(ceil_div(rows, kRowsPerBlock), max_grid), kThreads, 0, stream,
              tal_select_kernel)(p);
  launch_check();
  ATSS_LAUNCH(grid_for(BA, kAnchorThreads, 4096), kAnchorThreads, 0, stream, tal_owner_kernel)(p);
  launch_check();
  ATSS_LAUNCH(max_grid_blocks(ceil_div(rows, kRowsPerBlock), max_grid), kThreads, 0, stream,
              tal_gt_kernel)(p);
  launch_check();
  ATSS_LAUNCH(grid_for(BA, kAnchorThreads, 4096), kAnchorThreads, 0, stream, tal_target_kernel)(p);
  launch_check();
  return {gt_index, target, overlap, num_positive};
}

}  // namespace

ATSS_DEVICE_LIBRARY_IMPL(m) {
  m.impl("tal_assign", TORCH_BOX(&tal_assign_cuda));
}

}  // namespace atss::cuda
