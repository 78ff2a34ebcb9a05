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

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> atss_assign_cuda(
    const at::Tensor& anchors, at::IntArrayRef num_anchors_per_level, const at::Tensor& gt_boxes,
    const std::optional<at::Tensor>& gt_counts, int64_t topk,
    const std::optional<at::Tensor>& anchor_valid, std::optional<double> center_eps,
    const std::optional<at::Tensor>& anchor_ignore, bool ensure_positive) {
  // The structural checks every backend runs; no value check (no sync).
  check_atss_assign_args(anchors, num_anchors_per_level, gt_boxes, gt_counts, topk, anchor_valid,
                         center_eps, anchor_ignore);
  const int64_t B = gt_boxes.size(0), G = gt_boxes.size(1), A = anchors.size(0);
  check_cuda_num_gt(G);

  const DeviceGuard guard(anchors.device());
  const auto f32 = anchors.options();
  const auto i64 = f32.dtype(at::kLong);
  if (B * G * A == 0) return background_assignment(B, G, A, f32, anchor_ignore);

  const at::Tensor a = anchors.contiguous();
  const at::Tensor g = gt_boxes.contiguous();
  std::optional<at::Tensor> counts, valid, ignore;
  if (gt_counts) counts = gt_counts->contiguous();
  if (const auto usable = usable_mask(anchor_valid, anchor_ignore)) valid = usable->contiguous();
  if (anchor_ignore) ignore = anchor_ignore->contiguous();
  const int64_t rows = B * G;
  const LevelTable lt = make_level_table(num_anchors_per_level, topk, rows);
  const int64_t C = lt.num_cand;

  at::Tensor gt_index = at::empty({B, A}, i64);
  at::Tensor iou = at::empty({B, A}, f32);
  at::Tensor threshold = at::empty({B, G}, f32);
  at::Tensor num_positive = at::empty({B, G}, i64);

  SelectArgs p{};
  p.anchors = a.data_ptr<float>();
  p.gt_boxes = g.data_ptr<float>();
  p.gt_counts = optional_ptr<int64_t>(counts);
  p.anchor_valid = optional_ptr<bool>(valid);
  p.num_gt = G;
  p.num_anchors = A;
  p.rows = rows;
  p.num_tiles = num_row_tiles(rows);
  p.anchors_aligned = reinterpret_cast<uintptr_t>(p.anchors) % 16 == 0;
  p.score_in_smem = ScoreSmem::fits(C);
  p.center_test = center_eps.has_value();
  p.center_eps = center_eps ? static_cast<float>(*center_eps) : 0.0f;
  p.nan_bits = host_default_nan_bits();
  p.threshold = threshold.data_ptr<float>();
  p.num_positive = num_positive.data_ptr<int64_t>();

  // One scratch allocation; the zeroed part (claims, counters) comes first.
  ScratchPlan plan;
  const int64_t claims_at = plan.take(B * A * static_cast<int64_t>(sizeof(u64)));
  const int64_t done_at = plan.take(p.num_tiles * static_cast<int64_t>(sizeof(unsigned)));
  const int64_t zeroed_bytes = done_at + p.num_tiles * static_cast<int64_t>(sizeof(unsigned));
  const int64_t part_at = plan.take(rows * lt.num_part * static_cast<int64_t>(sizeof(u64)));
  const int64_t cand_at = plan.take(rows * C * static_cast<int64_t>(sizeof(int64_t)));
  const int64_t iou_at = plan.take(rows * C * static_cast<int64_t>(sizeof(float)));
  const int64_t pos_at = plan.take(rows * C * static_cast<int64_t>(sizeof(bool)));
  at::Tensor scratch = at::empty({plan.total()}, f32.dtype(at::kByte));
  uint8_t* base = scratch.data_ptr<uint8_t>();
  p.claims = reinterpret_cast<u64*>(base + claims_at);
  p.tile_done = reinterpret_cast<unsigned*>(base + done_at);
  p.partial = reinterpret_cast<u64*>(base + part_at);
  p.candidates = reinterpret_cast<int64_t*>(base + cand_at);
  p.cand_iou = reinterpret_cast<float*>(base + iou_at);
  p.cand_positive = reinterpret_cast<bool*>(base + pos_at);

  const Stream stream = current_stream();
  memset_async(base, 0, zeroed_bytes, stream);
  const int dims = static_cast<int>(a.size(1) / 2);
  launch_select<Mode::kFused>(p, lt, valid.has_value(), dims, fused_smem_bytes(C, dims), stream);
  launch_decode_claims(p.claims, B, G, A, C, p.candidates, p.cand_iou, p.cand_positive,
                       optional_ptr<bool>(ignore), gt_index.data_ptr<int64_t>(),
                       iou.data_ptr<float>(), num_positive.data_ptr<int64_t>(), stream);
  if (ensure_positive) {
    launch_ensure_positive(p.candidates, p.cand_iou, p.gt_counts, B, G, C, A, p.claims,
                           gt_index.data_ptr<int64_t>(), iou.data_ptr<float>(),
                           num_positive.data_ptr<int64_t>(), stream);
  }
  return {gt_index, iou, threshold, num_positive};
}

}  // namespace

ATSS_DEVICE_LIBRARY_IMPL(m) {
  m.impl("atss_assign", &atss_assign_cuda);
}

}  // namespace atss::cuda
