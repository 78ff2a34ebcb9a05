#include "../common/checks.h"  // first: the stable-ABI headers (common/stable.h)

#include <algorithm>
#include <limits>

#include "parallel.h"
#include "steps.h"

namespace atss::cpu {

std::tuple<Tensor, Tensor, Tensor> iou_statistics_cpu(const Tensor& anchors, const Tensor& gt_boxes,
                                                      const Tensor& candidates,
                                                      const OptionalTensor& gt_counts,
                                                      std::optional<double> center_eps) {
  check_iou_statistics_args(anchors, gt_boxes, candidates, gt_counts, center_eps);
  const int64_t B = gt_boxes.size(0), G = gt_boxes.size(1), A = anchors.size(0);
  check_box_values(anchors, gt_boxes, gt_counts);
  check_candidate_values(candidates, A);

  const int64_t C = candidates.size(2);
  // Uninitialised: every row is written below (a fill through the C shim per
  // output would cost more than this op takes on a small batch).
  Tensor cand_iou = new_empty(anchors, {B, G, C}, dtype::kFloat);
  Tensor threshold = new_empty(anchors, {B, G}, dtype::kFloat);
  Tensor is_positive = new_empty(anchors, {B, G, C}, dtype::kBool);
  if (B * G == 0) return {cand_iou, threshold, is_positive};
  const Tensor a = as_contiguous(anchors);
  const Tensor g = as_contiguous(gt_boxes);
  const Tensor cand = as_contiguous(candidates);
  const OptionalTensor counts = as_contiguous(gt_counts);
  const int64_t* cp = data<int64_t>(counts);
  const int dims = static_cast<int>(a.size(1) / 2);
  const bool center_test = center_eps.has_value();
  const float eps = center_test ? static_cast<float>(*center_eps) : 0.0f;
  const float* ap = data<float>(a);
  const float* gp = data<float>(g);
  const int64_t* kp = data<int64_t>(cand);
  float* iou_p = data<float>(cand_iou);
  float* thr_p = data<float>(threshold);
  bool* pos_p = data<bool>(is_positive);

  parallel_for(0, B * G, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bg = begin; bg < end; ++bg) {
      if (bg % G >= valid_gt_count(cp, bg / G, G)) {  // padding: IoU 0, NaN, false
        std::fill(iou_p + bg * C, iou_p + (bg + 1) * C, 0.0f);
        std::fill(pos_p + bg * C, pos_p + (bg + 1) * C, false);
        thr_p[bg] = std::numeric_limits<float>::quiet_NaN();
        continue;
      }
      const float* box = gp + 2 * dims * bg;
      thr_p[bg] = dims == 2 ? score_candidates<2>(ap, box, kp + bg * C, C, center_test, eps,
                                                  iou_p + bg * C, pos_p + bg * C)
                            : score_candidates<3>(ap, box, kp + bg * C, C, center_test, eps,
                                                  iou_p + bg * C, pos_p + bg * C);
    }
  });
  return {cand_iou, threshold, is_positive};
}

STABLE_TORCH_LIBRARY_IMPL(atss_ops, CPU, m) {
  m.impl("iou_statistics", TORCH_BOX(&iou_statistics_cpu));
}

}  // namespace atss::cpu
