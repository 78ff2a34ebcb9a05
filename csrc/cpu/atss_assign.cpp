// The whole contract in one call on the CPU. Distances are computed one level
// at a time into a per-thread buffer and reduced to candidates at once, so no
// [B, G, A] tensor exists: time O(B * G * A), memory O(B * A + B * G * C).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <memory>
#include <vector>

#include "../common/checks.h"
#include "steps.h"

namespace atss::cpu {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> atss_assign_cpu(
    const at::Tensor& anchors, at::IntArrayRef num_anchors_per_level, const at::Tensor& gt_boxes,
    const std::optional<at::Tensor>& gt_counts, int64_t topk,
    const std::optional<at::Tensor>& anchor_valid, double center_eps) {
  check_atss_assign_args(anchors, num_anchors_per_level, gt_boxes, gt_counts, topk, anchor_valid,
                         center_eps);
  const int64_t B = gt_boxes.size(0), G = gt_boxes.size(1), A = anchors.size(0);
  check_box_values(anchors, gt_boxes, gt_counts);

  const auto f32 = anchors.options();
  at::Tensor gt_index = at::full({B, A}, -1, f32.dtype(at::kLong));
  at::Tensor iou = at::zeros({B, A}, f32);
  at::Tensor threshold = at::full({B, G}, std::numeric_limits<float>::quiet_NaN(), f32);
  at::Tensor num_positive = at::zeros({B, G}, f32.dtype(at::kLong));
  const int64_t C = num_candidate_slots(num_anchors_per_level, topk);
  if (B * G * A == 0) return {gt_index, iou, threshold, num_positive};

  const at::Tensor a = anchors.contiguous();
  const at::Tensor g = gt_boxes.contiguous();
  std::optional<at::Tensor> counts, valid;
  if (gt_counts) counts = gt_counts->contiguous();
  if (anchor_valid) valid = anchor_valid->contiguous();
  const int64_t* cp = counts ? counts->data_ptr<int64_t>() : nullptr;
  const bool* vp = valid ? valid->data_ptr<bool>() : nullptr;
  const float* ap = a.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  const AnchorCenters centers(ap, A);
  const float eps = static_cast<float>(center_eps);
  const std::vector<int64_t> levels(num_anchors_per_level.begin(), num_anchors_per_level.end());
  const int64_t max_level = *std::max_element(levels.begin(), levels.end());
  const int64_t held = std::min(topk, max_level);  // topk itself may be huge

  // O(B * G * C) per-GT state between the candidate and the resolution passes.
  std::vector<int64_t> candidates(B * G * C, -1);
  std::vector<float> cand_iou(B * G * C, 0.0f);
  std::unique_ptr<bool[]> positive(new bool[B * G * C]());
  float* thr_p = threshold.data_ptr<float>();

  at::parallel_for(0, B * G, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> d2(max_level), best_dist(held);
    std::vector<uint32_t> best_keys(held);
    for (int64_t bg = begin; bg < end; ++bg) {
      const int64_t b = bg / G;
      if (bg % G >= valid_gt_count(cp, b, G)) continue;  // padding: never read
      const float* box = gp + 4 * bg;
      const float gcx = center_of(box[0], box[2]), gcy = center_of(box[1], box[3]);
      int64_t* slots = candidates.data() + bg * C;
      int64_t start = 0;
      for (int64_t n : levels) {
        const int64_t k = std::min(topk, n);
        if (k > 0) {
          level_distances(centers, start, n, gcx, gcy, d2.data());
          select_level(d2.data(), vp ? vp + b * A + start : nullptr, start, n, k,
                       best_keys.data(), best_dist.data(), slots);
          slots += k;
        }
        start += n;
      }
      thr_p[bg] = score_candidates(ap, centers, box, candidates.data() + bg * C, C, eps,
                                   cand_iou.data() + bg * C, positive.get() + bg * C);
    }
  });

  int64_t* gi = gt_index.data_ptr<int64_t>();
  float* io = iou.data_ptr<float>();
  int64_t* np = num_positive.data_ptr<int64_t>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t off = b * G * C;
      resolve_image(candidates.data() + off, cand_iou.data() + off, positive.get() + off, G, C, A,
                    gi + b * A, io + b * A, np + b * G);
    }
  });
  return {gt_index, iou, threshold, num_positive};
}

TORCH_LIBRARY_IMPL(atss_ops, CPU, m) { m.impl("atss_assign", &atss_assign_cpu); }

}  // namespace atss::cpu
