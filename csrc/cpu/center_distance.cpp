#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <limits>

#include "../common/checks.h"
#include "steps.h"

namespace atss::cpu {

at::Tensor center_distance_cpu(const at::Tensor& anchors, const at::Tensor& gt_boxes,
                               const std::optional<at::Tensor>& gt_counts) {
  check_center_distance_args(anchors, gt_boxes, gt_counts);
  check_box_values(anchors, gt_boxes, gt_counts);

  const at::Tensor a = anchors.contiguous();
  const at::Tensor g = gt_boxes.contiguous();
  const int64_t B = g.size(0), G = g.size(1), A = a.size(0);
  at::Tensor out = at::empty({B, G, A}, a.options());
  if (out.numel() == 0) return out;
  std::optional<at::Tensor> counts;
  if (gt_counts) counts = gt_counts->contiguous();
  const int64_t* cp = counts ? counts->data_ptr<int64_t>() : nullptr;
  const int dims = static_cast<int>(a.size(1) / 2);
  const AnchorCenters centers(a.data_ptr<float>(), A, dims);
  const float* gp = g.data_ptr<float>();
  float* op = out.data_ptr<float>();

  at::parallel_for(0, B * G, 1, [&](int64_t begin, int64_t end) {
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

TORCH_LIBRARY_IMPL(atss_ops, CPU, m) {
  m.impl("center_distance", &center_distance_cpu);
}

}  // namespace atss::cpu
