#include "../common/checks.h"  // first: the stable-ABI headers (common/stable.h)

#include <limits>

#include "parallel.h"
#include "steps.h"

namespace atss::cpu {

Tensor center_distance_cpu(const Tensor& anchors, const Tensor& gt_boxes,
                           const OptionalTensor& gt_counts) {
  check_center_distance_args(anchors, gt_boxes, gt_counts);
  check_box_values(anchors, gt_boxes, gt_counts);

  const Tensor a = as_contiguous(anchors);
  const Tensor g = as_contiguous(gt_boxes);
  const int64_t B = g.size(0), G = g.size(1), A = a.size(0);
  Tensor out = new_empty(a, {B, G, A}, dtype::kFloat);
  if (out.numel() == 0) return out;
  const OptionalTensor counts = as_contiguous(gt_counts);
  const int64_t* cp = data<int64_t>(counts);
  const int dims = static_cast<int>(a.size(1) / 2);
  const AnchorCenters centers(data<float>(a), A, dims);
  const float* gp = data<float>(g);
  float* op = data<float>(out);

  parallel_for(0, B * G, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bg = begin; bg < end; ++bg) {
      float* row = op + bg * A;
      if (bg % G >= valid_gt_count(cp, bg / G, G)) {
        std::fill(row, row + A, std::numeric_limits<float>::quiet_NaN());
        continue;
      }
      const float* box = gp + 2 * dims * bg;
      float center[3];
      if (dims == 2) {
        box_center<2>(box, center);
        level_distances<2>(centers, 0, A, center, row);
      } else {
        box_center<3>(box, center);
        level_distances<3>(centers, 0, A, center, row);
      }
    }
  });
  return out;
}

STABLE_TORCH_LIBRARY_IMPL(atss_ops, CPU, m) {
  m.impl("center_distance", TORCH_BOX(&center_distance_cpu));
}

}  // namespace atss::cpu
