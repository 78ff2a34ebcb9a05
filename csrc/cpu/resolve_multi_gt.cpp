#include "../common/checks.h"  // first: the stable-ABI headers (common/stable.h)

#include <algorithm>
#include <vector>

#include "parallel.h"
#include "steps.h"

namespace atss::cpu {

std::tuple<Tensor, Tensor, Tensor> resolve_multi_gt_cpu(
    const Tensor& candidates, const Tensor& candidate_iou, const Tensor& is_positive,
    int64_t num_anchors, const OptionalTensor& anchor_ignore, bool ensure_positive) {
  check_resolve_multi_gt_args(candidates, candidate_iou, is_positive, num_anchors, anchor_ignore);
  const int64_t B = candidates.size(0), G = candidates.size(1);
  check_candidate_values(candidates, num_anchors);

  const int64_t A = num_anchors, C = candidates.size(2);
  if (B * G * A == 0) {
    return {unassigned_gt_index(candidates, B, A, anchor_ignore),
            new_full(candidate_iou, {B, A}, dtype::kFloat, 0.0),
            new_full(candidates, {B, G}, dtype::kLong, 0.0)};
  }
  // Filled image by image below, in the resolution's parallel region (resolve_image
  // zeroes num_positive itself), rather than by fills through the C shim.
  Tensor gt_index = new_empty(candidates, {B, A}, dtype::kLong);
  Tensor iou = new_empty(candidate_iou, {B, A}, dtype::kFloat);
  Tensor num_positive = new_empty(candidates, {B, G}, dtype::kLong);
  const OptionalTensor ignore = as_contiguous(anchor_ignore);
  const bool* ig = data<bool>(ignore);
  const Tensor cand = as_contiguous(candidates);
  const Tensor ciou = as_contiguous(candidate_iou);
  const Tensor pos = as_contiguous(is_positive);
  const int64_t* kp = data<int64_t>(cand);
  const float* cip = data<float>(ciou);
  const bool* pp = data<bool>(pos);
  int64_t* gi = data<int64_t>(gt_index);
  float* io = data<float>(iou);
  int64_t* np = data<int64_t>(num_positive);

  parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> proposal(ensure_positive ? G : 0);
    for (int64_t b = begin; b < end; ++b) {
      std::fill(gi + b * A, gi + (b + 1) * A, int64_t{-1});  // resolve_image's starting state
      std::fill(io + b * A, io + (b + 1) * A, 0.0f);
      const int64_t off = b * G * C;
      resolve_image(kp + off, cip + off, pp + off, ig ? ig + b * A : nullptr, ensure_positive, G, C,
                    A, gi + b * A, io + b * A, np + b * G, proposal.data());
    }
  });
  return {gt_index, iou, num_positive};
}

STABLE_TORCH_LIBRARY_IMPL(atss_ops, CPU, m) {
  m.impl("resolve_multi_gt", TORCH_BOX(&resolve_multi_gt_cpu));
}

}  // namespace atss::cpu
