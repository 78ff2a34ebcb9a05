#include "../common/checks.h"  // first: the stable-ABI headers (common/stable.h)

#include <algorithm>
#include <vector>

#include "parallel.h"
#include "steps.h"

namespace atss::cpu {

Tensor topk_per_level_cpu(const Tensor& distances, IntArrayRef num_anchors_per_level, int64_t topk,
                          const OptionalTensor& gt_counts, const OptionalTensor& anchor_valid,
                          const OptionalTensor& anchor_ignore) {
  check_topk_per_level_args(distances, num_anchors_per_level, topk, gt_counts, anchor_valid,
                            anchor_ignore);
  const int64_t B = distances.size(0), G = distances.size(1), A = distances.size(2);
  check_gt_counts_values(gt_counts, G);

  const int64_t C = num_candidate_slots(num_anchors_per_level, topk);
  Tensor out = new_empty(distances, {B, G, C}, dtype::kLong);
  if (out.numel() == 0) return out;
  const Tensor d = as_contiguous(distances);
  const OptionalTensor counts = as_contiguous(gt_counts), valid = as_contiguous(anchor_valid),
                       ignore = as_contiguous(anchor_ignore);
  const int64_t* cp = data<int64_t>(counts);
  // Candidates come from the usable anchors: valid and not ignored.
  const UsableAnchors usable(data<bool>(valid), data<bool>(ignore), B * A);
  const bool* vp = usable.get();
  const float* dp = data<float>(d);
  int64_t* op = data<int64_t>(out);
  const std::vector<int64_t> levels(num_anchors_per_level.begin(), num_anchors_per_level.end());

  // Scratch of min(topk, largest level) entries: topk itself may be huge.
  const int64_t max_level = levels.empty() ? 0 : *std::max_element(levels.begin(), levels.end());
  const int64_t held = std::min(topk, max_level);

  parallel_for(0, B * G, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint32_t> best_keys(held);
    std::vector<float> chunk_min(select_chunks(max_level) + held);
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
                       best_keys.data(), chunk_min.data(), slots);
          slots += k;
        }
        start += n;
      }
    }
  });
  return out;
}

STABLE_TORCH_LIBRARY_IMPL(atss_ops, CPU, m) {
  m.impl("topk_per_level", TORCH_BOX(&topk_per_level_cpu));
}

}  // namespace atss::cpu
