// topk_per_level on CUDA (contract step 3) for caller-given distances
// [B, G, A]: one launch of the chunked selection kernel (select.cuh) after one
// memset of its per-tile counters. Keys are distance_key(distances[b, g, a], a):
// the CPU's (distance_bits, index) order, NaN last, -0 == +0, negative values
// allowed. gt_counts out of [0, G] is clamped (the CPU rejects it; without a
// value check there is no sync here).
#include "select.cuh"

namespace atss::cuda {
namespace {

at::Tensor topk_per_level_cuda(const at::Tensor& distances, at::IntArrayRef num_anchors_per_level,
                               int64_t topk, const std::optional<at::Tensor>& gt_counts,
                               const std::optional<at::Tensor>& anchor_valid,
                               const std::optional<at::Tensor>& anchor_ignore) {
  // The structural checks every backend runs; no value check (no sync).
  check_topk_per_level_args(distances, num_anchors_per_level, topk, gt_counts, anchor_valid,
                            anchor_ignore);
  const int64_t B = distances.size(0), G = distances.size(1), A = distances.size(2);

  const DeviceGuard guard(distances.device());
  const int64_t C = num_candidate_slots(num_anchors_per_level, topk);
  at::Tensor out = at::empty({B, G, C}, distances.options().dtype(at::kLong));
  if (out.numel() == 0) return out;  // B * G == 0 or A == 0

  const at::Tensor d = distances.contiguous();
  std::optional<at::Tensor> counts, valid;
  if (gt_counts) counts = gt_counts->contiguous();
  // Candidates come from the usable anchors: valid and not ignored (one
  // elementwise kernel when anchor_ignore is given).
  if (const auto usable = usable_mask(anchor_valid, anchor_ignore)) valid = usable->contiguous();
  const int64_t rows = B * G;
  const LevelTable lt = make_level_table(num_anchors_per_level, topk, rows);
  TORCH_INTERNAL_ASSERT(lt.num_cand == C);

  SelectArgs p{};
  p.distances = d.data_ptr<float>();
  p.gt_counts = optional_ptr<int64_t>(counts);
  p.anchor_valid = optional_ptr<bool>(valid);
  p.num_gt = G;
  p.num_anchors = A;
  p.rows = rows;
  p.num_tiles = num_row_tiles(rows);
  p.candidates = out.data_ptr<int64_t>();

  ScratchPlan plan;
  const int64_t done_at = plan.take(p.num_tiles * static_cast<int64_t>(sizeof(unsigned)));
  const int64_t part_at = plan.take(rows * lt.num_part * static_cast<int64_t>(sizeof(u64)));
  at::Tensor scratch = at::empty({plan.total()}, distances.options().dtype(at::kByte));
  uint8_t* base = scratch.data_ptr<uint8_t>();
  p.tile_done = reinterpret_cast<unsigned*>(base + done_at);
  p.partial = reinterpret_cast<u64*>(base + part_at);

  const Stream stream = current_stream();
  memset_async(p.tile_done, 0, p.num_tiles * static_cast<int64_t>(sizeof(unsigned)), stream);
  launch_select<Mode::kTopk>(p, lt, valid.has_value(), 2, 0, stream);
  return out;
}

}  // namespace

ATSS_DEVICE_LIBRARY_IMPL(m) {
  m.impl("topk_per_level", &topk_per_level_cuda);
}

}  // namespace atss::cuda
