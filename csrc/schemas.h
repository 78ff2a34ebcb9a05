// Every atss_ops schema, in one place: the library atss_ops (csrc/atss_ops.cpp)
// and the test-only emulated library atss_ops_emu (csrc/cuda/emu/) define the
// same ops with these. Kernels: csrc/cpu/<op>.cpp (CPU) and csrc/cuda/<op>.cu
// (CUDA); fake kernels: atss_ops/_fake.py. The function they compute is
// docs/contract.md.
#pragma once

#include "common/stable.h"

namespace atss {

inline void define_schemas(torch::stable::detail::StableLibrary& m) {
  // Boxes are [A, 2D] / [B, G, 2D] with D = 2 or 3, read from the shapes (contract version 2).
  // Step 2: squared centre distances [B, G, A] float32; NaN rows for padding GTs.
  m.def("center_distance(Tensor anchors, Tensor gt_boxes, Tensor? gt_counts=None) -> Tensor");
  // Step 3: candidate anchor indices [B, G, C] int64, C = sum_l min(topk, N_l); -1 = empty slot.
  m.def(
      "topk_per_level(Tensor distances, int[] num_anchors_per_level, int topk, "
      "Tensor? gt_counts=None, Tensor? anchor_valid=None, Tensor? anchor_ignore=None) -> Tensor");
  // Steps 4-6: (candidate_iou [B, G, C] float32, threshold [B, G] float32, is_positive [B, G, C]
  // bool).
  m.def(
      "iou_statistics(Tensor anchors, Tensor gt_boxes, Tensor candidates, "
      "Tensor? gt_counts=None, float? center_eps=0.01) -> (Tensor candidate_iou, Tensor threshold, "
      "Tensor is_positive)");
  // Steps 7 and 8: (gt_index [B, A] int64, iou [B, A] float32, num_positive [B, G] int64).
  m.def(
      "resolve_multi_gt(Tensor candidates, Tensor candidate_iou, Tensor is_positive, "
      "int num_anchors, Tensor? anchor_ignore=None, bool ensure_positive=False) -> "
      "(Tensor gt_index, Tensor iou, Tensor num_positive)");
  // The whole contract in one call, never materialising [B, G, A].
  m.def(
      "atss_assign(Tensor anchors, int[] num_anchors_per_level, Tensor gt_boxes, "
      "Tensor? gt_counts=None, int topk=9, Tensor? anchor_valid=None, float? center_eps=0.01, "
      "Tensor? anchor_ignore=None, bool ensure_positive=False) -> "
      "(Tensor gt_index, Tensor iou, Tensor threshold, Tensor num_positive)");
  // Task-aligned assignment (the TAL contract, version 1), never materialising [B, G, A] or
  // [B, A, C]: (gt_index [B, A] int64, target_score [B, A] float32, overlap [B, A] float32,
  // num_positive [B, G] int64). A CPU kernel only so far (atss_ops._extension.TAL_OPS).
  m.def(
      "tal_assign(Tensor pred_scores, Tensor pred_boxes, Tensor anchor_points, Tensor gt_boxes, "
      "Tensor gt_labels, Tensor? gt_counts=None, int topk=10, float alpha=0.5, float beta=6.0, "
      "bool ciou=True, float? min_side=None, int? topk2=None, float eps=1e-09) -> "
      "(Tensor gt_index, Tensor target_score, Tensor overlap, Tensor num_positive)");
}

}  // namespace atss
