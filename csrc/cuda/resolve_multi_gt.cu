// resolve_multi_gt on CUDA (contract step 7): two launches, claims then
// decoding (see resolve.cuh), after one memset of the claim buffer and the
// counts. Candidate indices outside [0, A) are empty slots (the CPU rejects
// them in its value checks; here they must never be read or written through).
#include <torch/library.h>

#include "resolve.cuh"

namespace atss::cuda {
namespace {

__global__ void __launch_bounds__(256)
    claim_kernel(const int64_t* cand, const float* cand_iou, const bool* cand_positive,
                 int64_t num_gt, int64_t num_slots, int64_t num_anchors, int64_t total,
                 u64* claims) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    if (!cand_positive[i]) continue;
    const int64_t a = cand[i];
    if (a < 0 || a >= num_anchors) continue;
    const float v = cand_iou[i];
    if (!(v >= 0.0f)) continue;  // only a real IoU (>= 0; never NaN) claims an anchor
    const int64_t bg = i / num_slots;
    const int64_t b = bg / num_gt;
    atomicMax(claims + b * num_anchors + a, claim_key(v, bg - b * num_gt));
  }
}

__global__ void __launch_bounds__(256)
    decode_claims_kernel(const u64* claims, int64_t num_gt, int64_t num_anchors, int64_t num_slots,
                         int64_t total, const int64_t* cand, const float* cand_iou,
                         const bool* cand_positive, int64_t* gt_index, float* iou,
                         int64_t* num_positive) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const u64 key = claims[i];
    if (key == 0) {  // no claim: background
      gt_index[i] = -1;
      iou[i] = 0.0f;
      continue;
    }
    const int64_t b = i / num_anchors;
    const int64_t a = i - b * num_anchors;
    const int64_t g = claim_gt(key);
    // The winning IoU's bits; for a zero (a positive anchor with no overlap:
    // degenerate boxes, a negative center_eps) the sign is read back from the
    // winner's candidate row.
    const int64_t row = (b * num_gt + g) * num_slots;
    const float v = claim_iou(key, a, cand + row, cand_iou + row, cand_positive + row, num_slots);
    gt_index[i] = g;
    iou[i] = v;
    atomicAdd(reinterpret_cast<u64*>(num_positive + b * num_gt + g), u64{1});
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> resolve_multi_gt_cuda(
    const at::Tensor& candidates, const at::Tensor& candidate_iou, const at::Tensor& is_positive,
    int64_t num_anchors) {
  // The CPU kernel's structural checks, in its order; no value check (no sync).
  // The structural checks every backend runs; no value check (no sync).
  check_resolve_multi_gt_args(candidates, candidate_iou, is_positive, num_anchors);
  const int64_t B = candidates.size(0), G = candidates.size(1);
  check_cuda_num_gt(G);

  const c10::cuda::CUDAGuard guard(candidates.device());
  const int64_t A = num_anchors, C = candidates.size(2);
  if (B * G * A == 0) {
    return {at::full({B, A}, -1, candidates.options()), at::zeros({B, A}, candidate_iou.options()),
            at::zeros({B, G}, candidates.options())};
  }
  const at::Tensor cand = candidates.contiguous();
  const at::Tensor ciou = candidate_iou.contiguous();
  const at::Tensor pos = is_positive.contiguous();
  at::Tensor gt_index = at::empty({B, A}, candidates.options());
  at::Tensor iou = at::empty({B, A}, candidate_iou.options());
  at::Tensor num_positive = at::empty({B, G}, candidates.options());
  at::Tensor claims = at::empty({B * A}, candidates.options());  // u64 keys, 0 = no claim
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  C10_CUDA_CHECK(cudaMemsetAsync(claims.data_ptr(), 0, B * A * sizeof(u64), stream));
  C10_CUDA_CHECK(cudaMemsetAsync(num_positive.data_ptr(), 0, B * G * sizeof(int64_t), stream));
  u64* claims_p = reinterpret_cast<u64*>(claims.data_ptr<int64_t>());

  const int64_t total = B * G * C;
  if (total > 0) {
    const unsigned blocks = grid_for(total, 256, int64_t{32} * num_sms());
    claim_kernel<<<blocks, 256, 0, stream>>>(cand.data_ptr<int64_t>(), ciou.data_ptr<float>(),
                                             pos.data_ptr<bool>(), G, C, A, total, claims_p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  launch_decode_claims(claims_p, B, G, A, C, cand.data_ptr<int64_t>(), ciou.data_ptr<float>(),
                       pos.data_ptr<bool>(), gt_index.data_ptr<int64_t>(), iou.data_ptr<float>(),
                       num_positive.data_ptr<int64_t>(), stream);
  return {gt_index, iou, num_positive};
}

}  // namespace

void launch_decode_claims(const u64* claims, int64_t batch, int64_t num_gt, int64_t num_anchors,
                          int64_t num_slots, const int64_t* cand, const float* cand_iou,
                          const bool* cand_positive, int64_t* gt_index, float* iou,
                          int64_t* num_positive, cudaStream_t stream) {
  const int64_t total = batch * num_anchors;
  if (total == 0) return;
  const unsigned blocks = grid_for(total, 256, int64_t{32} * num_sms());
  decode_claims_kernel<<<blocks, 256, 0, stream>>>(claims, num_gt, num_anchors, num_slots, total,
                                                   cand, cand_iou, cand_positive, gt_index, iou,
                                                   num_positive);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

TORCH_LIBRARY_IMPL(atss_ops, CUDA, m) { m.impl("resolve_multi_gt", &resolve_multi_gt_cuda); }

}  // namespace atss::cuda
