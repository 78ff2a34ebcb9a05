// resolve_multi_gt on CUDA (contract steps 7 and 8): the claim and decoding
// kernels of resolve.cuh, two launches (four with ensure_positive) after one
// memset of the claim buffer and the counts. Candidate indices outside [0, A) are empty slots (the
// CPU rejects them in its value checks; here they are never read or written through).
#include "resolve.cuh"

namespace atss::cuda {
namespace {

std::tuple<Tensor, Tensor, Tensor> resolve_multi_gt_cuda(
    const Tensor& candidates, const Tensor& candidate_iou, const Tensor& is_positive,
    int64_t num_anchors, const OptionalTensor& anchor_ignore, bool ensure_positive) {
  // The structural checks every backend runs; no value check (no sync).
  check_resolve_multi_gt_args(candidates, candidate_iou, is_positive, num_anchors, anchor_ignore);
  const int64_t B = candidates.size(0), G = candidates.size(1);
  check_cuda_num_gt(G);

  const DeviceGuard guard(candidates);
  const int64_t A = num_anchors, C = candidates.size(2);
  if (B * G * A == 0) {
    return {unassigned_gt_index(candidates, B, A, anchor_ignore),
            new_full(candidate_iou, {B, A}, dtype::kFloat, 0.0),
            new_full(candidates, {B, G}, dtype::kLong, 0.0)};
  }
  const OptionalTensor ignore = as_contiguous(anchor_ignore);
  const bool* ignore_p = data<bool>(ignore);
  const Tensor cand = as_contiguous(candidates);
  const Tensor ciou = as_contiguous(candidate_iou);
  const Tensor pos = as_contiguous(is_positive);
  Tensor gt_index = new_empty(candidates, {B, A}, dtype::kLong);
  Tensor iou = new_empty(candidate_iou, {B, A}, dtype::kFloat);
  Tensor num_positive = new_empty(candidates, {B, G}, dtype::kLong);
  Tensor claims = new_empty(candidates, {B * A}, dtype::kLong);  // u64 keys, 0 = no claim
  u64* claims_p = reinterpret_cast<u64*>(data<int64_t>(claims));
  const Stream stream = current_stream();
  memset_async(claims_p, 0, B * A * static_cast<int64_t>(sizeof(u64)), stream);
  memset_async(num_positive.data_ptr(), 0, B * G * static_cast<int64_t>(sizeof(int64_t)), stream);
  launch_claims(data<int64_t>(cand), data<float>(ciou), data<bool>(pos), ignore_p, B, G, C, A,
                claims_p, stream);
  launch_decode_claims(claims_p, B, G, A, C, data<int64_t>(cand), data<float>(ciou),
                       data<bool>(pos), ignore_p, data<int64_t>(gt_index), data<float>(iou),
                       data<int64_t>(num_positive), stream);
  if (ensure_positive) {
    launch_ensure_positive(data<int64_t>(cand), data<float>(ciou), nullptr, B, G, C, A, claims_p,
                           data<int64_t>(gt_index), data<float>(iou), data<int64_t>(num_positive),
                           stream);
  }
  return {gt_index, iou, num_positive};
}

}  // namespace

ATSS_DEVICE_LIBRARY_IMPL(m) {
  m.impl("resolve_multi_gt", TORCH_BOX(&resolve_multi_gt_cuda));
}

}  // namespace atss::cuda
