// Input checks shared by every backend. The messages match
// atss_ops/_validation.py word for word.
//
// Structural checks (shape, dtype, device, level sizes, topk) read no tensor
// data and run in every kernel. Value checks read the data: the CPU kernels
// always run them; on CUDA they would cost a device-to-host sync, so the CUDA
// kernels skip them and stay safe on any input instead (see each kernel).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

#include "box_math.h"  // valid_gt_count

namespace atss {

void check_anchors(const at::Tensor& anchors);
void check_gt_boxes(const at::Tensor& gt_boxes);
// anchors [A, 2D] and gt_boxes [B, G, 2D] with the same D.
void check_same_dims(const at::Tensor& anchors, const at::Tensor& gt_boxes);
void check_distances(const at::Tensor& distances);
// All defined tensors of `named` on the device of the first one.
void check_same_device(std::initializer_list<std::pair<const char*, const at::Tensor*>> named);
void check_levels(at::IntArrayRef num_anchors_per_level, int64_t num_anchors);
void check_topk(int64_t topk);
void check_center_eps(std::optional<double> center_eps);
void check_gt_counts(const std::optional<at::Tensor>& gt_counts, int64_t batch);
void check_anchor_valid(const std::optional<at::Tensor>& anchor_valid, int64_t batch,
                        int64_t num_anchors);
void check_anchor_ignore(const std::optional<at::Tensor>& anchor_ignore, int64_t batch,
                         int64_t num_anchors);
// [B, A] bool: valid and not ignored (nullopt when neither mask is given). The
// kernels select candidates among these anchors (contract: "usable").
std::optional<at::Tensor> usable_mask(const std::optional<at::Tensor>& anchor_valid,
                                      const std::optional<at::Tensor>& anchor_ignore);
void check_candidates(const at::Tensor& candidates, int64_t batch, int64_t num_gt);
void check_candidate_like(const at::Tensor& t, const char* name, const at::Tensor& candidates,
                          at::ScalarType dtype);
void check_num_anchors(int64_t num_anchors);

// Every structural check of one op, in the order both backends run them (and
// the order of the fake kernels in atss_ops/ops.py).
void check_center_distance_args(const at::Tensor& anchors, const at::Tensor& gt_boxes,
                                const std::optional<at::Tensor>& gt_counts);
void check_topk_per_level_args(const at::Tensor& distances, at::IntArrayRef num_anchors_per_level,
                               int64_t topk, const std::optional<at::Tensor>& gt_counts,
                               const std::optional<at::Tensor>& anchor_valid,
                               const std::optional<at::Tensor>& anchor_ignore);
void check_iou_statistics_args(const at::Tensor& anchors, const at::Tensor& gt_boxes,
                               const at::Tensor& candidates,
                               const std::optional<at::Tensor>& gt_counts,
                               std::optional<double> center_eps);
void check_resolve_multi_gt_args(const at::Tensor& candidates, const at::Tensor& candidate_iou,
                                 const at::Tensor& is_positive, int64_t num_anchors,
                                 const std::optional<at::Tensor>& anchor_ignore);
void check_atss_assign_args(const at::Tensor& anchors, at::IntArrayRef num_anchors_per_level,
                            const at::Tensor& gt_boxes, const std::optional<at::Tensor>& gt_counts,
                            int64_t topk, const std::optional<at::Tensor>& anchor_valid,
                            std::optional<double> center_eps,
                            const std::optional<at::Tensor>& anchor_ignore);

// Value checks: read tensor data (contiguous CPU tensors).
void check_gt_counts_values(const std::optional<at::Tensor>& gt_counts, int64_t num_gt);
void check_box_values(const at::Tensor& anchors, const at::Tensor& gt_boxes,
                      const std::optional<at::Tensor>& gt_counts);
void check_candidate_values(const at::Tensor& candidates, int64_t num_anchors);

// atss_assign's outputs when B, G or A is 0, on the anchors' device: every
// anchor background (-1) or, where anchor_ignore says so, ignored (-2), IoU 0,
// thresholds NaN, num_positive 0. Shared by the CPU and CUDA kernels.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> background_assignment(
    int64_t batch, int64_t num_gt, int64_t num_anchors, const at::TensorOptions& float_options,
    const std::optional<at::Tensor>& anchor_ignore);

// Number of candidate slots per GT: sum over levels of min(topk, N_l).
int64_t num_candidate_slots(at::IntArrayRef num_anchors_per_level, int64_t topk);

}  // namespace atss
