// iou_statistics on CUDA (contract steps 4-6) for caller-given candidates
// [B, G, C]: one launch, one warp per GT row (score_row in score.cuh, the code
// the fused atss_assign scores with). Candidate indices outside [-1, A) are
// empty slots (the CPU rejects them in its value checks; here they are never
// read through). gt_counts out of [0, G] is clamped.
#include "score.cuh"

namespace atss::cuda {
namespace {

struct IouArgs {
  const float* anchors;       // [A, 2D]
  const float* gt_boxes;      // [B, G, 2D]
  const int64_t* candidates;  // [B, G, C]
  const int64_t* gt_counts;   // [B] or null
  int64_t num_gt, num_anchors, num_slots, rows, num_tiles;
  int center_test;  // center_eps given (else no centre test)
  float center_eps;
  uint32_t nan_bits;  // host_default_nan_bits()
  int in_smem;
  int64_t* cand_buf;  // [rows, C] when !in_smem
  float* cand_iou;    // [B, G, C]
  float* threshold;   // [B, G]
  bool* is_positive;  // [B, G, C]
};

// The per-warp buffers (C sanitised candidate indices, C IoUs) are ScoreSmem's
// when they fit, else global scratch.
template <int D>
__global__ void __launch_bounds__(kThreads) iou_statistics_kernel(const IouArgs p) {
  ATSS_DYNAMIC_SMEM(unsigned char, smem);
  const int warp = static_cast<int>(threadIdx.x) / kWarp;
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int64_t C = p.num_slots, G = p.num_gt;
  for (int64_t tile = blockIdx.x; tile < p.num_tiles; tile += gridDim.x) {
    const int64_t row = tile * kRowsPerBlock + warp;  // warp-uniform from here on
    if (row >= p.rows) continue;
    const int64_t b = row / G;
    float* iou_out = p.cand_iou + row * C;
    bool* pos_out = p.is_positive + row * C;
    if (row - b * G >= valid_gt_count(p.gt_counts, b, G)) {  // padding: IoU 0, NaN, false
      for (int64_t c = lane; c < C; c += kWarp) {
        iou_out[c] = 0.0f;
        pos_out[c] = false;
      }
      if (lane == 0) p.threshold[row] = quiet_nan();
      continue;
    }
    int64_t* cand = p.cand_buf + row * C;
    float* iou_buf = iou_out;
    if (p.in_smem) {
      cand = ScoreSmem::candidates(smem, warp, C);
      iou_buf = ScoreSmem::ious(smem, warp, C);
    }
    const int64_t* cand_in = p.candidates + row * C;
    for (int64_t c = lane; c < C; c += kWarp) {
      const int64_t a = cand_in[c];
      cand[c] = a >= 0 && a < p.num_anchors ? a : -1;
    }
    __syncwarp();
    float gt[2 * D];
    load_box<D>(p.gt_boxes + 2 * D * row, gt);
    const float thr =
        score_row<D>(cand, iou_buf, C, p.anchors, gt, p.center_test != 0, p.center_eps, p.nan_bits,
                     lane, [&](int64_t c, int64_t, float v, bool positive) {
                       iou_out[c] = cpu_nan_bits(v, p.nan_bits);
                       pos_out[c] = positive;
                     });
    if (lane == 0) p.threshold[row] = thr;
  }
}

std::tuple<Tensor, Tensor, Tensor> iou_statistics_cuda(const Tensor& anchors,
                                                       const Tensor& gt_boxes,
                                                       const Tensor& candidates,
                                                       const OptionalTensor& gt_counts,
                                                       std::optional<double> center_eps) {
  // The structural checks every backend runs; no value check (no sync).
  check_iou_statistics_args(anchors, gt_boxes, candidates, gt_counts, center_eps);
  const int64_t B = gt_boxes.size(0), G = gt_boxes.size(1), A = anchors.size(0);

  const DeviceGuard guard(anchors);
  const int64_t C = candidates.size(2);
  Tensor cand_iou = new_empty(anchors, {B, G, C}, dtype::kFloat);
  Tensor threshold = new_empty(anchors, {B, G}, dtype::kFloat);
  Tensor is_positive = new_empty(anchors, {B, G, C}, dtype::kBool);
  if (B * G == 0) return {cand_iou, threshold, is_positive};

  const Tensor a = as_contiguous(anchors);
  const Tensor g = as_contiguous(gt_boxes);
  const Tensor cand = as_contiguous(candidates);
  const OptionalTensor counts = as_contiguous(gt_counts);
  const int64_t rows = B * G;

  IouArgs p{};
  p.anchors = data<float>(a);
  p.gt_boxes = data<float>(g);
  p.candidates = data<int64_t>(cand);
  p.gt_counts = data<int64_t>(counts);
  p.num_gt = G;
  p.num_anchors = A;
  p.num_slots = C;
  p.rows = rows;
  p.num_tiles = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  p.center_test = center_eps.has_value();
  p.center_eps = center_eps ? static_cast<float>(*center_eps) : 0.0f;
  p.nan_bits = host_default_nan_bits();
  p.in_smem = ScoreSmem::fits(C);
  Tensor cand_buf;
  if (!p.in_smem) {
    cand_buf = new_empty(cand, {rows * C}, dtype::kLong);
    p.cand_buf = data<int64_t>(cand_buf);
  }
  p.cand_iou = data<float>(cand_iou);
  p.threshold = data<float>(threshold);
  p.is_positive = data<bool>(is_positive);

  const unsigned blocks = max_grid_blocks(p.num_tiles, int64_t{1} << 20);  // then grid-stride
  const size_t dynamic_smem = p.in_smem ? static_cast<size_t>(ScoreSmem::bytes(C)) : 0;
  if (a.size(1) == 4) {
    ATSS_LAUNCH(blocks, kThreads, dynamic_smem, current_stream(), iou_statistics_kernel<2>)(p);
  } else {
    ATSS_LAUNCH(blocks, kThreads, dynamic_smem, current_stream(), iou_statistics_kernel<3>)(p);
  }
  launch_check();
  return {cand_iou, threshold, is_positive};
}

}  // namespace

ATSS_DEVICE_LIBRARY_IMPL(m) {
  m.impl("iou_statistics", TORCH_BOX(&iou_statistics_cuda));
}

}  // namespace atss::cuda
