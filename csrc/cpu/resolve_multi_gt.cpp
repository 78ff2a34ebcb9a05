#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <torch/library.h>
#include <vector>

#include "../common/checks.h"
#include "steps.h"

namespace atss::cpu {

std::tuple<at::Tensor, at::Tensor, at::Tensor> resolve_multi_gt_cpu(
    const at::Tensor& candidates, const at::Tensor& candidate_iou, const at::Tensor& is_positive,
    int64_t num_anchors, const std::optional<at::Tensor>& anchor_ignore, bool ensure_positive) {
  check_resolve_multi_gt_args(candidates, candidate_iou, is_positive, num_anchors, anchor_ignore);
  const int64_t B = candidates.size(0), G = candidates.size(1);
  check_candidate_values(candidates, num_anchors);

  const int64_t A = num_anchors, C = candidates.size(2);
  at::Tensor gt_index = at::full({B, A}, -1, candidates.options());
  at::Tensor iou = at::zeros({B, A}, candidate_iou.options());
  at::Tensor num_positive = at::zeros({B, G}, candidates.options());
  if (B * G * A == 0) {
    if (anchor_ignore && B * A > 0) gt_index.masked_fill_(*anchor_ignore, -2);
    return {gt_index, iou, num_positive};
  }
  std::optional<at::Tensor> ignore;
  if (anchor_ignore) ignore = anchor_ignore->contiguous();
  const bool* ig = ignore ? ignore->data_ptr<bool>() : nullptr;
  const at::Tensor cand = candidates.contiguous();
  const at::Tensor ciou = candidate_iou.contiguous();
  const at::Tensor pos = is_positive.contiguous();
  const int64_t* kp = cand.data_ptr<int64_t>();
  const float* cip = ciou.data_ptr<float>();
  const bool* pp = pos.data_ptr<bool>();
  int64_t* gi = gt_index.data_ptr<int64_t>();
  float* io = iou.data_ptr<float>();
  int64_t* np = num_positive.data_ptr<int64_t>();

  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> proposal(ensure_positive ? G : 0);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t off = b * G * C;
      resolve_image(kp + off, cip + off, pp + off, ig ? ig + b * A : nullptr, ensure_positive, G, C,
                    A, gi + b * A, io + b * A, np + b * G, proposal.data());
    }
  });
  return {gt_index, iou, num_positive};
}

TORCH_LIBRARY_IMPL(atss_ops, CPU, m) {
  m.impl("resolve_multi_gt", &resolve_multi_gt_cpu);
}

}  // namespace atss::cpu
