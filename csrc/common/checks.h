// Input checks shared by every backend. The messages match
// atss_ops/_validation.py word for word.
//
// Structural checks (shape, dtype, device, level sizes, topk) read no tensor
// data and run in every kernel. Value checks read the data: the CPU kernels
// always run them; on CUDA they would cost a device-to-host sync, so the CUDA
// kernels skip them and stay safe on any input instead (see each kernel).
#pragma once

#include <optional>
#include <tuple>

#include "box_math.h"  // valid_gt_count
#include "tensor.h"

namespace atss {

void check_anchors(const Tensor& anchors);
void check_gt_boxes(const Tensor& gt_boxes);
// anchors [A, 2D] and gt_boxes [B, G, 2D] with the same D.
void check_same_dims(const Tensor& anchors, const Tensor& gt_boxes);
void check_distances(const Tensor& distances);
// All defined tensors of `named` on the device of the first one.
void check_same_device(std::initializer_list<std::pair<const char*, const Tensor*>> named);
void check_levels(IntArrayRef num_anchors_per_level, int64_t num_anchors);
void check_topk(int64_t topk);
void check_center_eps(std::optional<double> center_eps);
void check_gt_counts(const OptionalTensor& gt_counts, int64_t batch);
void check_anchor_valid(const OptionalTensor& anchor_valid, int64_t batch, int64_t num_anchors);
void check_anchor_ignore(const OptionalTensor& anchor_ignore, int64_t batch, int64_t num_anchors);
void check_candidates(const Tensor& candidates, int64_t batch, int64_t num_gt);
void check_candidate_like(const Tensor& t, const char* name, const Tensor& candidates,
                          ScalarType dtype);
void check_num_anchors(int64_t num_anchors);

// Every structural check of one op, in the order both backends run them (and
// the order of the fake kernels in atss_ops/_fake.py).
void check_center_distance_args(const Tensor& anchors, const Tensor& gt_boxes,
                                const OptionalTensor& gt_counts);
void check_topk_per_level_args(const Tensor& distances, IntArrayRef num_anchors_per_level,
                               int64_t topk, const OptionalTensor& gt_counts,
                               const OptionalTensor& anchor_valid,
                               const OptionalTensor& anchor_ignore);
void check_iou_statistics_args(const Tensor& anchors, const Tensor& gt_boxes,
                               const Tensor& candidates, const OptionalTensor& gt_counts,
                               std::optional<double> center_eps);
void check_resolve_multi_gt_args(const Tensor& candidates, const Tensor& candidate_iou,
                                 const Tensor& is_positive, int64_t num_anchors,
                                 const OptionalTensor& anchor_ignore);
void check_atss_assign_args(const Tensor& anchors, IntArrayRef num_anchors_per_level,
                            const Tensor& gt_boxes, const OptionalTensor& gt_counts, int64_t topk,
                            const OptionalTensor& anchor_valid, std::optional<double> center_eps,
                            const OptionalTensor& anchor_ignore);

// tal_assign (TAL contract version 1): every structural check, in the order of
// check_tal_assign_args in atss_ops/_validation.py, and the value checks.
void check_tal_assign_args(const Tensor& pred_scores, const Tensor& pred_boxes,
                           const Tensor& anchor_points, const Tensor& gt_boxes,
                           const Tensor& gt_labels, const OptionalTensor& gt_counts, int64_t topk,
                           double alpha, double beta, std::optional<double> min_side,
                           std::optional<int64_t> topk2, double eps);
void check_tal_values(const Tensor& pred_scores, const Tensor& pred_boxes,
                      const Tensor& anchor_points, const Tensor& gt_boxes, const Tensor& gt_labels,
                      const OptionalTensor& gt_counts);

// Value checks: read tensor data (contiguous CPU tensors).
void check_gt_counts_values(const OptionalTensor& gt_counts, int64_t num_gt);
void check_box_values(const Tensor& anchors, const Tensor& gt_boxes,
                      const OptionalTensor& gt_counts);
void check_candidate_values(const Tensor& candidates, int64_t num_anchors);

// atss_assign's outputs when B, G or A is 0, on the anchors' device: every
// anchor background (-1) or, where anchor_ignore says so, ignored (-2), IoU 0,
// thresholds NaN, num_positive 0. Shared by the CPU and CUDA kernels.
std::tuple<Tensor, Tensor, Tensor, Tensor> background_assignment(
    int64_t batch, int64_t num_gt, int64_t num_anchors, const Tensor& anchors,
    const OptionalTensor& anchor_ignore);

// gt_index [B, A] int64 of a call that assigns nothing, on `like`'s device: -1,
// or -2 where anchor_ignore ([B, A] bool) is set.
Tensor unassigned_gt_index(const Tensor& like, int64_t batch, int64_t num_anchors,
                           const OptionalTensor& anchor_ignore);

// Number of candidate slots per GT: sum over levels of min(topk, N_l).
int64_t num_candidate_slots(IntArrayRef num_anchors_per_level, int64_t topk);

}  // namespace atss
