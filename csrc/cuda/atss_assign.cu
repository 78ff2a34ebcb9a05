// The fused atss_assign on CUDA: the whole contract in two kernel launches
// after one memset, never materialising [B, G, A]:
//
//   memset    claims [B, A] and the per-tile counters to 0 (one call).
//   launch 1  select_kernel<Mode::kFused> (select.cuh): per (chunk, tile of 8
//             GT rows), distances from anchor centres staged in shared memory,
//             per-level top-k keys into partial lists; the last block of each
//             tile merges them into candidates, computes IoUs, the float64
//             threshold (one lane, candidate order), the positives, writes
//             threshold and num_positive = 0, and claims positive anchors with
//             atomicMax on (IoU, inverted GT index) keys.
//   launch 2  decode_claims (resolve.cuh): gt_index, iou per anchor (-2 for
//             ignored anchors), and the integer-atomic count of num_positive.
//   (step 8, with ensure_positive: launches 3 and 4, propose and
//             decode_proposals, resolve.cuh)
//
// 2-D and 3-D boxes: D is a template parameter of the selection and scoring
// code. Ignored anchors are folded into the usable mask (valid and not
// ignored, one elementwise kernel) from which candidates are selected.
//
// No host sync, no allocation whose size depends on data (so it is CUDA-graph
// capturable and traceable by torch.compile), current stream, device guard.
// Memory: outputs, plus scratch of B*A*8 bytes (claims) + B*G*(8*P + 13*C)
// bytes (partial keys, P <= C * chunks per level; candidates, IoUs,
// positives) + 4 bytes per tile of 8 rows: O(B*A + B*G*C).
#include <limits>

#include "resolve.cuh"
#include "select.cuh"

namespace atss::cuda {
namespace {

std::tuple<Tensor, Tensor, Tensor, Tensor> atss_assign_cuda(
    const Tensor& anchors, IntArrayRef num_anchors_per_level, const Tensor& gt_boxes,
    const OptionalTensor& gt_counts, int64_t topk, const OptionalTensor& anchor_valid,
    std::optional<double> center_eps, const OptionalTensor& anchor_ignore, bool ensure_positive) {
  // The structural checks every backend runs; no value check (no sync).
  check_atss_assign_args(anchors, num_anchors_per_level, gt_boxes, gt_counts, topk, anchor_valid,
                         center_eps, anchor_ignore);
  const int64_t B = gt_boxes.size(0), G = gt_boxes.size(1), A = anchors.size(0);
  check_cuda_num_gt(G);

  const DeviceGuard guard(anchors);
  if (B * G * A == 0) return background_assignment(B, G, A, anchors, anchor_ignore);

  const Tensor a = as_contiguous(anchors);
  const Tensor g = as_contiguous(gt_boxes);
  const Stream stream = current_stream();
  const OptionalTensor counts = as_contiguous(gt_counts);
  const OptionalTensor valid = usable_mask(anchor_valid, anchor_ignore, stream);
  const OptionalTensor ignore = as_contiguous(anchor_ignore);
  const int64_t rows = B * G;
  const LevelTable lt = make_level_table(num_anchors_per_level, topk, rows);
  const int64_t C = lt.num_cand;

  Tensor gt_index = new_empty(anchors, {B, A}, dtype::kLong);
  Tensor iou = new_empty(anchors, {B, A}, dtype::kFloat);
  Tensor threshold = new_empty(anchors, {B, G}, dtype::kFloat);
  Tensor num_positive = new_empty(anchors, {B, G}, dtype::kLong);

  SelectArgs p{};
  p.anchors = data<float>(a);
  p.gt_boxes = data<float>(g);
  p.gt_counts = data<int64_t>(counts);
  p.anchor_valid = data<bool>(valid);
  p.num_gt = G;
  p.num_anchors = A;
  p.rows = rows;
  p.num_tiles = num_row_tiles(rows);
  p.anchors_aligned = reinterpret_cast<uintptr_t>(p.anchors) % 16 == 0;
  p.score_in_smem = ScoreSmem::fits(C);
  p.center_test = center_eps.has_value();
  p.center_eps = center_eps ? static_cast<float>(*center_eps) : 0.0f;
  p.nan_bits = host_default_nan_bits();
  p.threshold = data<float>(threshold);
  p.num_positive = data<int64_t>(num_positive);

  // One scratch allocation; the zeroed part (claims, counters) comes first.
  ScratchPlan plan;
  const int64_t claims_at = plan.take(B * A * static_cast<int64_t>(sizeof(u64)));
  const int64_t done_at = plan.take(p.num_tiles * static_cast<int64_t>(sizeof(unsigned)));
  const int64_t zeroed_bytes = done_at + p.num_tiles * static_cast<int64_t>(sizeof(unsigned));
  const int64_t part_at = plan.take(rows * lt.num_part * static_cast<int64_t>(sizeof(u64)));
  const int64_t cand_at = plan.take(rows * C * static_cast<int64_t>(sizeof(int64_t)));
  const int64_t iou_at = plan.take(rows * C * static_cast<int64_t>(sizeof(float)));
  const int64_t pos_at = plan.take(rows * C * static_cast<int64_t>(sizeof(bool)));
  Tensor scratch = new_empty(anchors, {plan.total()}, dtype::kByte);
  uint8_t* base = data<uint8_t>(scratch);
  p.claims = reinterpret_cast<u64*>(base + claims_at);
  p.tile_done = reinterpret_cast<unsigned*>(base + done_at);
  p.partial = reinterpret_cast<u64*>(base + part_at);
  p.candidates = reinterpret_cast<int64_t*>(base + cand_at);
  p.cand_iou = reinterpret_cast<float*>(base + iou_at);
  p.cand_positive = reinterpret_cast<bool*>(base + pos_at);

  memset_async(base, 0, zeroed_bytes, stream);
  const int dims = static_cast<int>(a.size(1) / 2);
  launch_select<Mode::kFused>(p, lt, valid.has_value(), dims, fused_smem_bytes(C, dims), stream);
  launch_decode_claims(p.claims, B, G, A, C, p.candidates, p.cand_iou, p.cand_positive,
                       data<bool>(ignore), data<int64_t>(gt_index), data<float>(iou),
                       data<int64_t>(num_positive), stream);
  if (ensure_positive) {
    launch_ensure_positive(p.candidates, p.cand_iou, p.gt_counts, B, G, C, A, p.claims,
                           data<int64_t>(gt_index), data<float>(iou), data<int64_t>(num_positive),
                           stream);
  }
  return {gt_index, iou, threshold, num_positive};
}

}  // namespace

ATSS_DEVICE_LIBRARY_IMPL(m) {
  m.impl("atss_assign", TORCH_BOX(&atss_assign_cuda));
}

}  // namespace atss::cuda
