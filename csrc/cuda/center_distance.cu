// center_distance on CUDA (contract steps 1-2): out[b, g, a] = squared_distance
// of the anchor and GT centres, NaN rows for padding GTs. One launch: each
// thread owns kAnchorsPerThread consecutive anchors, computes their centres once
// and writes them for every row of its block's rows (rows on y, grid-stride
// both ways), as one 16-byte store per row where the row is 16-byte aligned
// (A % 4 == 0) and as plain stores otherwise. The arithmetic per element is the
// CPU's (bit-exact). This op materialises [B, G, A] by definition; atss_assign
// never calls it.
#include "cuda_common.cuh"

namespace atss::cuda {
namespace {

constexpr int kDistanceThreads = 256;
constexpr int kAnchorsPerThread = 4;   // one float4 store per row
constexpr int64_t kRowsPerThread = 8;  // rows that reuse a thread's anchor centres

template <int D>
__global__ void __launch_bounds__(kDistanceThreads)
    center_distance_kernel(const float* anchors, const float* gt_boxes, const int64_t* gt_counts,
                           int64_t num_gt, int64_t num_anchors, int64_t rows, uint32_t nan_bits,
                           bool vector_stores, float* out) {
  const int64_t groups = (num_anchors + kAnchorsPerThread - 1) / kAnchorsPerThread;
  const int64_t group_stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t group = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; group < groups;
       group += group_stride) {
    const int64_t a0 = group * kAnchorsPerThread;
    const int count = num_anchors - a0 < kAnchorsPerThread ? static_cast<int>(num_anchors - a0)
                                                           : kAnchorsPerThread;
    float c[kAnchorsPerThread][D] = {};
    for (int i = 0; i < count; ++i) {
      const float* box = anchors + 2 * D * (a0 + i);
      for (int t = 0; t < D; ++t) c[i][t] = center_of(box[t], box[t + D]);
    }
    for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
      const int64_t b = row / num_gt;
      const bool active = row - b * num_gt < valid_gt_count(gt_counts, b, num_gt);
      float d[kAnchorsPerThread];
      if (active) {
        const float* box = gt_boxes + 2 * D * row;
        float gc[D];
        for (int t = 0; t < D; ++t) gc[t] = center_of(box[t], box[t + D]);
        for (int i = 0; i < kAnchorsPerThread; ++i) {
          d[i] = cpu_nan_bits(squared_distance_nd<D>(c[i], gc), nan_bits);
        }
      } else {
        for (int i = 0; i < kAnchorsPerThread; ++i) d[i] = quiet_nan();  // the CPU's quiet NaN
      }
      float* dst = out + row * num_anchors + a0;
      if (vector_stores && count == kAnchorsPerThread) {
        *reinterpret_cast<float4*>(dst) = float4{d[0], d[1], d[2], d[3]};
      } else {
        for (int i = 0; i < count; ++i) dst[i] = d[i];
      }
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
  const int64_t groups = ceil_div(A, kAnchorsPerThread);
  const unsigned blocks_x = grid_for(groups, kDistanceThreads, 1024);
  const unsigned blocks_y = max_grid_blocks(ceil_div(rows, kRowsPerThread), 65535);
  const dim3 grid(blocks_x, blocks_y);
  // 16-byte stores: every row starts 16-byte aligned when A % 4 == 0 (and the
  // allocation is aligned).
  const bool vector_stores =
      A % kAnchorsPerThread == 0 && reinterpret_cast<uintptr_t>(data<float>(out)) % 16 == 0;
  if (a.size(1) == 4) {
    ATSS_LAUNCH(grid, kDistanceThreads, 0, current_stream(), center_distance_kernel<2>)(
        data<float>(a), data<float>(g), data<int64_t>(counts), G, A, rows, host_default_nan_bits(),
        vector_stores, data<float>(out));
  } else {
    ATSS_LAUNCH(grid, kDistanceThreads, 0, current_stream(), center_distance_kernel<3>)(
        data<float>(a), data<float>(g), data<int64_t>(counts), G, A, rows, host_default_nan_bits(),
        vector_stores, data<float>(out));
  }
  launch_check();
  return out;
}

}  // namespace

ATSS_DEVICE_LIBRARY_IMPL(m) {
  m.impl("center_distance", TORCH_BOX(&center_distance_cuda));
}

}  // namespace atss::cuda
