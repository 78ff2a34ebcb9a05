#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/checks.h"
#include "steps.h"

namespace atss::cpu {

at::Tensor topk_per_level_cpu(const at::Tensor& distances, at::IntArrayRef num_anchors_per_level,
                              int64_t topk, const std::optional<at::Tensor>& gt_counts,
                              const std::optional<at::Tensor>& anchor_valid,
                              const std::optional<at::Tensor>& anchor_ignore) {
  check_topk_per_level_args(distances, num_anchors_per_level, topk, gt_counts, anchor_valid,
                            anchor_ignore);
  const int64_t B = distances.size(0), G = distances.size(1), A = distances.size(2);
  check_gt_counts_values(gt_counts, G);

  const int64_t C = num_candidate_slots(num_anchors_per_level, topk);
  at::Tensor out = at::empty({B, G, C}, distances.options().dtype(at::kLong));
  if (out.numel() == 0) return out;
  const at::Tensor d = distances.contiguous();
  std::optional<at::Tensor> counts, valid, ignore;
  if (gt_counts) counts = gt_counts->contiguous();
  if (anchor_valid) valid = anchor_valid->contiguous();
  if (anchor_ignore) ignore = anchor_ignore->contiguous();
  const int64_t* cp = counts ? counts->data_ptr<int64_t>() : nullptr;
  // Candidates come from the usable anchors: valid and not ignored.
  const UsableAnchors usable(valid ? valid->data_ptr<bool>() : nullptr,
                             ignore ? ignore->data_ptr<bool>() : nullptr, B * A);
  const bool* vp = usable.get();
  const float* dp = d.data_ptr<float>();
  int64_t* op = out.data_ptr<int64_t>();
  const std::vector<int64_t> levels(num_anchors_per_level.begin(), num_anchors_per_level.end());

  // Scratch of min(topk, largest level) entries: topk itself may be huge.
  const int64_t max_level = levels.empty() ? 0 : *std::max_element(levels.begin(), levels.end());
  const int64_t held = std::min(topk, max_level);

  at::parallel_for(0, B * G, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint32_t> best_keys(held);
    std::vector<float> best_dist(held);
    for (int64_t bg = begin; bg < end; ++bg) {
      const int64_t b = bg / G;
      int64_t* slots = op + bg * C;
      if (bg % G >= valid_gt_count(cp, b, G)) {
        std::fill(slots, slots + C, int64_t{-1});
        continue;
      }
      const float* row = dp + bg * A;
      int64_t start = 0;
      for (int64_t n : levels) {
        const int64_t k = std::min(topk, n);
        if (k > 0) {
          select_level(row + start, vp ? vp + b * A + start : nullptr, start, n, k,
                       best_keys.data(), best_dist.data(), slots);
          slots += k;
        }
        start += n;
      }
    }
  });
  return out;
}

TORCH_LIBRARY_IMPL(atss_ops, CPU, m) {
  m.impl("topk_per_level", &topk_per_level_cpu);
}

}  // namespace atss::cpu
