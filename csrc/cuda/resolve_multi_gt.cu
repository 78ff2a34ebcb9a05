// resolve_multi_gt on CUDA (contract steps 7 and 8): the claim and decoding
// kernels of resolve.cuh, two launches (four with ensure_positive) after one
// memset of the claim buffer and the counts. Candidate indices outside [0, A) are empty slots (the
// CPU rejects them in its value checks; here they are never read or written through).
#include "resolve.cuh"

namespace atss::cuda {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> resolve_multi_gt_cuda(
    const at::Tensor& candidates, const at::Tensor& candidate_iou, const at::Tensor& is_positive,
    int64_t num_anchors, const std::optional<at::Tensor>& anchor_ignore, bool ensure_positive) {
  // The structural checks every backend runs; no value check (no sync).
  check_resolve_multi_gt_args(candidates, candidate_iou, is_positive, num_anchors, anchor_ignore);
  const int64_t B = candidates.size(0), G = candidates.size(1);
  check_cuda_num_gt(G);

  const DeviceGuard guard(candidates.device());
  const int64_t A = num_anchors, C = candidates.size(2);
  if (B * G * A == 0) {
    at::Tensor gt_index = at::full({B, A}, -1, candidates.options());
    if (anchor_ignore && B * A > 0) gt_index.masked_fill_(*anchor_ignore, -2);
    return {gt_index, at::zeros({B, A}, candidate_iou.options()),
            at::zeros({B, G}, candidates.options())};
  }
  std::optional<at::Tensor> ignore;
  if (anchor_ignore) ignore = anchor_ignore->contiguous();
  const bool* ignore_p = optional_ptr<bool>(ignore);
  const at::Tensor cand = candidates.contiguous();
  const at::Tensor ciou = candidate_iou.contiguous();
  const at::Tensor pos = is_positive.contiguous();
  at::Tensor gt_index = at::empty({B, A}, candidates.options());
  at::Tensor iou = at::empty({B, A}, candidate_iou.options());
  at::Tensor num_positive = at::empty({B, G}, candidates.options());
  at::Tensor claims = at::empty({B * A}, candidates.options());  // u64 keys, 0 = no claim
  u64* claims_p = reinterpret_cast<u64*>(claims.data_ptr<int64_t>());
  const Stream stream = current_stream();
  memset_async(claims_p, 0, B * A * static_cast<int64_t>(sizeof(u64)), stream);
  memset_async(num_positive.data_ptr(), 0, B * G * static_cast<int64_t>(sizeof(int64_t)), stream);
  launch_claims(cand.data_ptr<int64_t>(), ciou.data_ptr<float>(), pos.data_ptr<bool>(), ignore_p, B,
                G, C, A, claims_p, stream);
  launch_decode_claims(claims_p, B, G, A, C, cand.data_ptr<int64_t>(), ciou.data_ptr<float>(),
                       pos.data_ptr<bool>(), ignore_p, gt_index.data_ptr<int64_t>(),
                       iou.data_ptr<float>(), num_positive.data_ptr<int64_t>(), stream);
  if (ensure_positive) {
    launch_ensure_positive(cand.data_ptr<int64_t>(), ciou.data_ptr<float>(), nullptr, B, G, C, A,
                           claims_p, gt_index.data_ptr<int64_t>(), iou.data_ptr<float>(),
                           num_positive.data_ptr<int64_t>(), stream);
  }
  return {gt_index, iou, num_positive};
}

}  // namespace

ATSS_DEVICE_LIBRARY_IMPL(m) {
  m.impl("resolve_multi_gt", &resolve_multi_gt_cuda);
}

}  // namespace atss::cuda
