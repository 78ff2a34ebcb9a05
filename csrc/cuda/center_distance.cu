// center_distance on CUDA (contract steps 1-2): out[b, g, a] = squared_distance
// of the anchor and GT centres, NaN rows for padding GTs. One launch; a 2-D
// grid-stride loop (rows on y, anchors on x), one thread per output element.
// This op materialises [B, G, A] by definition; atss_assign never calls it.
#include "cuda_common.cuh"

namespace atss::cuda {
namespace {

constexpr int kDistanceThreads = 256;

template <int D>
__global__ void __launch_bounds__(kDistanceThreads)
    center_distance_kernel(const float* anchors, const float* gt_boxes, const int64_t* gt_counts,
                           int64_t num_gt, int64_t num_anchors, int64_t rows, uint32_t nan_bits,
                           float* out) {
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const int64_t b = row / num_gt;
    const bool active = row - b * num_gt < valid_gt_count(gt_counts, b, num_gt);
    float gc[D] = {};
    if (active) {
      const float* box = gt_boxes + 2 * D * row;
      for (int t = 0; t < D; ++t) gc[t] = center_of(box[t], box[t + D]);
    }
    float* out_row = out + row * num_anchors;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t a = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; a < num_anchors;
         a += stride) {
      float d = quiet_nan();  // padding GT: the CPU's quiet NaN
      if (active) {
        const float* box = anchors + 2 * D * a;
        float c[D];
        for (int t = 0; t < D; ++t) c[t] = center_of(box[t], box[t + D]);
        d = cpu_nan_bits(squared_distance_nd<D>(c, gc), nan_bits);
      }
      out_row[a] = d;
    }
  }
}

Tensor center_distance_cuda(const Tensor& anchors, const Tensor& gt_boxes,
                            const OptionalTensor& gt_counts) {
  // The structural checks every backend runs; no value check (no sync).
  check_center_distance_args(anchors, gt_boxes, gt_counts);

  const DeviceGuard guard(anchors);
  const Tensor a = as_contiguous(anchors);
  const Tensor g = as_contiguous(gt_boxes);
  const int64_t B = g.size(0), G = g.size(1), A = a.size(0);
  Tensor out = new_empty(a, {B, G, A}, dtype::kFloat);
  if (out.numel() == 0) return out;
  const OptionalTensor counts = as_contiguous(gt_counts);

  const int64_t rows = B * G;
  const unsigned blocks_x = grid_for(A, kDistanceThreads, 1024);
  const unsigned blocks_y = max_grid_blocks(rows, 65535);
  const dim3 grid(blocks_x, blocks_y);
  if (a.size(1) == 4) {
    ATSS_LAUNCH(grid, kDistanceThreads, 0, current_stream(), center_distance_kernel<2>)(
        data<float>(a), data<float>(g), data<int64_t>(counts), G, A, rows, host_default_nan_bits(),
        data<float>(out));
  } else {
    ATSS_LAUNCH(grid, kDistanceThreads, 0, current_stream(), center_distance_kernel<3>)(
        data<float>(a), data<float>(g), data<int64_t>(counts), G, A, rows, host_default_nan_bits(),
        data<float>(out));
  }
  launch_check();
  return out;
}

}  // namespace

ATSS_DEVICE_LIBRARY_IMPL(m) {
  m.impl("center_distance", TORCH_BOX(&center_distance_cuda));
}

}  // namespace atss::cuda
