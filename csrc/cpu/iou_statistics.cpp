#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <limits>

#include "../common/checks.h"
#include "steps.h"

namespace atss::cpu {

std::tuple<at::Tensor, at::Tensor, at::Tensor> iou_statistics_cpu(
    const at::Tensor& anchors, const at::Tensor& gt_boxes, const at::Tensor& candidates,
    const std::optional<at::Tensor>& gt_counts, std::optional<double> center_eps) {
  check_iou_statistics_args(anchors, gt_boxes, candidates, gt_counts, center_eps);
  const int64_t B = gt_boxes.size(0), G = gt_boxes.size(1), A = anchors.size(0);
  check_box_values(anchors, gt_boxes, gt_counts);
  check_candidate_values(candidates, A);

  const int64_t C = candidates.size(2);
  at::Tensor cand_iou = at::zeros({B, G, C}, anchors.options());
  at::Tensor threshold =
      at::full({B, G}, std::numeric_limits<float>::quiet_NaN(), anchors.options());
  at::Tensor is_positive = at::zeros({B, G, C}, anchors.options().dtype(at::kBool));
  if (B * G == 0) return {cand_iou, threshold, is_positive};
  const at::Tensor a = anchors.contiguous();
  const at::Tensor g = gt_boxes.contiguous();
  const at::Tensor cand = candidates.contiguous();
  std::optional<at::Tensor> counts;
  if (gt_counts) counts = gt_counts->contiguous();
  const int64_t* cp = counts ? counts->data_ptr<int64_t>() : nullptr;
  const int dims = static_cast<int>(a.size(1) / 2);
  const AnchorCenters centers(a.data_ptr<float>(), A, dims);
  const bool center_test = center_eps.has_value();
  const float eps = center_test ? static_cast<float>(*center_eps) : 0.0f;
  const float* ap = a.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  const int64_t* kp = cand.data_ptr<int64_t>();
  float* iou_p = cand_iou.data_ptr<float>();
  float* thr_p = threshold.data_ptr<float>();
  bool* pos_p = is_positive.data_ptr<bool>();

  at::parallel_for(0, B * G, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bg = begin; bg < end; ++bg) {
      if (bg % G >= valid_gt_count(cp, bg / G, G)) continue;  // padding: IoU 0, NaN, false
      const float* box = gp + 2 * dims * bg;
      thr_p[bg] = dims == 2 ? score_candidates<2>(ap, centers, box, kp + bg * C, C, center_test,
                                                  eps, iou_p + bg * C, pos_p + bg * C)
                            : score_candidates<3>(ap, centers, box, kp + bg * C, C, center_test,
                                                  eps, iou_p + bg * C, pos_p + bg * C);
    }
  });
  return {cand_iou, threshold, is_positive};
}

TORCH_LIBRARY_IMPL(atss_ops, CPU, m) {
  m.impl("iou_statistics", &iou_statistics_cpu);
}

}  // namespace atss::cpu
