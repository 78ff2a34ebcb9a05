// topk_per_level on CUDA (contract step 3) for caller-given distances
// [B, G, A]: one launch of the chunked selection kernel (select.cuh) per 128
// non-empty levels after one memset of its per-tile counters. Keys are distance_key(distances[b, g,
// a], a): the CPU's (distance_bits, index) order, NaN last, -0 == +0, negative values allowed.
// gt_counts out of [0, G] is clamped (the CPU rejects it; without a value check there is no sync
// here).
#include "select.cuh"

namespace atss::cuda {
namespace {

Tensor topk_per_level_cuda(const Tensor& distances, IntArrayRef num_anchors_per_level, int64_t topk,
                           const OptionalTensor& gt_counts, const OptionalTensor& anchor_valid,
                           const OptionalTensor& anchor_ignore) {
  // The structural checks every backend runs; no value check (no sync).
  check_topk_per_level_args(distances, num_anchors_per_level, topk, gt_counts, anchor_valid,
                            anchor_ignore);
  const int64_t B = distances.size(0), G = distances.size(1), A = distances.size(2);

  const DeviceGuard guard(distances);
  const int64_t C = num_candidate_slots(num_anchors_per_level, topk);
  Tensor out = new_empty(distances, {B, G, C}, dtype::kLong);
  if (out.numel() == 0) return out;  // B * G == 0 or A == 0

  const Tensor d = as_contiguous(distances);
  const Stream stream = current_stream();
  const OptionalTensor counts = as_contiguous(gt_counts);
  // Candidates come from the usable anchors: valid and not ignored (one
  // elementwise kernel when anchor_ignore is given).
  const OptionalTensor valid = usable_mask(anchor_valid, anchor_ignore, stream);
  const int64_t rows = B * G;
  const std::vector<LevelTable> tables = make_level_tables(num_anchors_per_level, topk, rows);
  const int64_t counters = static_cast<int64_t>(tables.size()) * num_row_tiles(rows);

  SelectArgs p{};
  p.distances = data<float>(d);
  p.gt_counts = data<int64_t>(counts);
  p.anchor_usable = reinterpret_cast<const uint32_t*>(data<int32_t>(valid));
  p.num_gt = G;
  p.num_anchors = A;
  p.rows = rows;
  p.num_tiles = num_row_tiles(rows);
  p.candidates = data<int64_t>(out);

  ScratchPlan plan;
  const int64_t done_at = plan.take(counters * static_cast<int64_t>(sizeof(unsigned)));
  const int64_t part_at =
      plan.take(rows * tables.front().num_part * static_cast<int64_t>(sizeof(u64)));
  Tensor scratch = new_empty(distances, {plan.total()}, dtype::kByte);
  uint8_t* base = data<uint8_t>(scratch);
  p.tile_done = reinterpret_cast<unsigned*>(base + done_at);
  p.partial = reinterpret_cast<u64*>(base + part_at);

  memset_async(p.tile_done, 0, counters * static_cast<int64_t>(sizeof(unsigned)), stream);
  launch_select(p, tables, valid.has_value(), stream);
  return out;
}

}  // namespace

ATSS_DEVICE_LIBRARY_IMPL(m) {
  m.impl("topk_per_level", TORCH_BOX(&topk_per_level_cuda));
}

}  // namespace atss::cuda
