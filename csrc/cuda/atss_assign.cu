// The fused atss_assign on CUDA: the whole contract in three kernel launches
// after one memset, never materialising [B, G, A]:
//
//   memset    claims [B, A] to 0.
//   (launches 1 and 2 once per 128 non-empty levels)
//   launch 1  anchor_blocks_kernel (select_culled.cuh): the anchor centres
//             and the box of the centres of every block of 256 anchors.
//   launch 2  culled_select_kernel (select_culled.cuh): one block per GT row,
//             a warp per level visits the anchor blocks nearest first and
//             skips those whose exact lower bound is above its k-th key;
//             then warp 0 computes the row's IoUs, the float64 threshold (one
//             lane, candidate order), the positives, writes threshold and
//             num_positive = 0, and claims positive anchors with atomicMax on
//             (IoU, inverted GT index) keys.
//   launch 3  decode_claims (resolve.cuh): gt_index, iou per anchor (-2 for
//             ignored anchors), and the integer-atomic count of num_positive.
//   (step 8, with ensure_positive: launches 4 and 5, propose and
//             decode_proposals, resolve.cuh)
//
// 2-D and 3-D boxes: D is a template parameter of the selection and scoring
// code. Ignored anchors are folded into the usable mask (valid and not
// ignored, one elementwise kernel) from which candidates are selected.
//
// No host sync, no allocation whose size depends on data (so it is CUDA-graph
// capturable and traceable by torch.compile), current stream, device guard.
// Memory: outputs, plus scratch of B*A*8 bytes (claims) + A*D*4 bytes
// (centres) + 8*D bytes per 256 anchors (block boxes) + B*G*13*C bytes
// (candidates, IoUs, positives): O(B*A + B*G*C).
#include <limits>

#include "resolve.cuh"
#include "select_culled.cuh"

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
  const std::vector<LevelTable> tables = make_culled_level_tables(num_anchors_per_level, topk);
  const int64_t C = tables.front().num_cand;  // A > 0: at least one non-empty level
  const int64_t num_blocks = tables.back().chunk_offset + tables.back().num_chunks;
  const int dims = static_cast<int>(a.size(1) / 2);

  Tensor gt_index = new_empty(anchors, {B, A}, dtype::kLong);
  Tensor iou = new_empty(anchors, {B, A}, dtype::kFloat);
  Tensor threshold = new_empty(anchors, {B, G}, dtype::kFloat);
  Tensor num_positive = new_empty(anchors, {B, G}, dtype::kLong);

  CulledArgs p{};
  p.anchors = data<float>(a);
  p.gt_boxes = data<float>(g);
  p.gt_counts = data<int64_t>(counts);
  p.anchor_usable = reinterpret_cast<const uint32_t*>(data<int32_t>(valid));
  p.num_gt = G;
  p.num_anchors = A;
  p.rows = rows;
  p.center_test = center_eps.has_value();
  p.center_eps = center_eps ? static_cast<float>(*center_eps) : 0.0f;
  p.nan_bits = host_default_nan_bits();
  p.threshold = data<float>(threshold);
  p.num_positive = data<int64_t>(num_positive);

  // One scratch allocation; the zeroed part (claims) comes first.
  ScratchPlan plan;
  const int64_t claims_at = plan.take(B * A * static_cast<int64_t>(sizeof(u64)));
  const int64_t zeroed_bytes = B * A * static_cast<int64_t>(sizeof(u64));
  const int64_t centers_at = plan.take(A * dims * static_cast<int64_t>(sizeof(float)));
  const int64_t boxes_at = plan.take(num_blocks * 2 * dims * static_cast<int64_t>(sizeof(float)));
  const int64_t cand_at = plan.take(rows * C * static_cast<int64_t>(sizeof(int64_t)));
  const int64_t iou_at = plan.take(rows * C * static_cast<int64_t>(sizeof(float)));
  const int64_t pos_at = plan.take(rows * C * static_cast<int64_t>(sizeof(bool)));
  Tensor scratch = new_empty(anchors, {plan.total()}, dtype::kByte);
  uint8_t* base = data<uint8_t>(scratch);
  p.claims = reinterpret_cast<u64*>(base + claims_at);
  p.centers = reinterpret_cast<float*>(base + centers_at);
  p.boxes = reinterpret_cast<float*>(base + boxes_at);
  p.candidates = reinterpret_cast<int64_t*>(base + cand_at);
  p.cand_iou = reinterpret_cast<float*>(base + iou_at);
  p.cand_positive = reinterpret_cast<bool*>(base + pos_at);

  memset_async(base, 0, zeroed_bytes, stream);
  launch_culled_select(p, tables, valid.has_value(), dims, stream);
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
