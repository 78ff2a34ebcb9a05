// Box maths of the ATSS contract (docs/contract.md), shared by the CPU and CUDA
// kernels so that both compute the same bits.
//
// Numerics: every float operation below must be rounded on its own. The CPU
// sources are compiled with -ffp-contract=off and the CUDA sources with
// -fmad=false, so `a * b + c` never becomes a fused multiply-add, which would
// round once and break bit-equality with the reference. min/max are written as
// comparisons, not fminf/std::min, so that NaN from overflow and the sign of a
// zero come out exactly as in atss_ops/reference.py (`where(b < a, b, a)`).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define ATSS_HD __host__ __device__ __forceinline__
#else
#define ATSS_HD inline
#endif

namespace atss {

// Valid boxes of image b: gt_counts[b], or G without gt_counts. Clamped to
// [0, G] so that a kernel that skipped the value checks (CUDA) never reads
// outside the padded batch.
ATSS_HD int64_t valid_gt_count(const int64_t* gt_counts, int64_t b, int64_t num_gt) {
  if (gt_counts == nullptr) return num_gt;
  const int64_t n = gt_counts[b];
  return n < 0 ? 0 : (n > num_gt ? num_gt : n);
}

ATSS_HD float min_of(float a, float b) {
  return b < a ? b : a;
}
ATSS_HD float max_of(float a, float b) {
  return b > a ? b : a;
}

// Step 1: box centre along one axis.
ATSS_HD float center_of(float lo, float hi) {
  return (lo + hi) / 2.0f;
}

// Step 2: squared centre distance, each operation rounded to float32.
ATSS_HD float squared_distance(float acx, float acy, float gcx, float gcy) {
  const float dx = acx - gcx;
  const float dy = acy - gcy;
  const float dx2 = dx * dx;
  const float dy2 = dy * dy;
  return dx2 + dy2;
}

// Step 2 for D axes (boxes are [lo_0, .., lo_{D-1}, hi_0, .., hi_{D-1}]; a and
// g are centres): per axis d = a - g, d2 = sum of d*d in axis order, each
// operation rounded to float32 on its own: (dx*dx + dy*dy) + dz*dz for D = 3.
// D = 2 is squared_distance itself.
template <int D>
ATSS_HD float squared_distance_nd(const float* a, const float* g) {
  static_assert(D == 2 || D == 3, "boxes are 2-D or 3-D");
  if constexpr (D == 2) {
    return squared_distance(a[0], a[1], g[0], g[1]);
  } else {
    const float dx = a[0] - g[0];
    const float dy = a[1] - g[1];
    const float dz = a[2] - g[2];
    const float dx2 = dx * dx;
    const float dy2 = dy * dy;
    const float dz2 = dz * dz;
    const float dxy = dx2 + dy2;
    return dxy + dz2;
  }
}

// Ordering key of a distance: an unsigned integer whose order is the order of
// torch.sort(stable=True) on float32: -0.0 equals 0.0, and every NaN maps to
// one value after +inf. Ties on the key are broken by the lower anchor index.
// (The contract's d2 is never negative; topk_per_level also takes caller
// distances, hence the full mapping.)
ATSS_HD uint32_t distance_bits(float d) {
  if (d != d) return 0xffffffffu;
  if (d == 0.0f) d = 0.0f;
#if defined(__CUDA_ARCH__)
  const uint32_t bits = __float_as_uint(d);
#else
  uint32_t bits;
  std::memcpy(&bits, &d, sizeof(bits));
#endif
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// Step 4: IoU of anchor box a with GT box g ([x1, y1, x2, y2] each), in the
// contract's order of operations.
ATSS_HD float box_iou(const float* a, const float* g) {
  const float area_a = (a[2] - a[0]) * (a[3] - a[1]);
  const float area_g = (g[2] - g[0]) * (g[3] - g[1]);
  const float iw = max_of(min_of(a[2], g[2]) - max_of(a[0], g[0]), 0.0f);
  const float ih = max_of(min_of(a[3], g[3]) - max_of(a[1], g[1]), 0.0f);
  const float inter = iw * ih;
  const float uni = (area_a + area_g) - inter;
  return inter / max_of(uni, 1e-6f);
}

// Step 6, second half: the anchor centre lies inside the GT with margin eps.
// min(l, t, r, b) > eps, written as four comparisons (a NaN fails all of them).
ATSS_HD bool center_inside(float cx, float cy, const float* g, float eps) {
  return (cx - g[0]) > eps && (cy - g[1]) > eps && (g[2] - cx) > eps && (g[3] - cy) > eps;
}

// Step 4 for D axes: per axis extent = hi - lo and overlap = max(min(a_hi,
// g_hi) - max(a_lo, g_lo), 0); volumes and the intersection are products in
// axis order ((x * y) * z); union = (vol_a + vol_g) - inter; iou = inter /
// max(union, 1e-6). D = 2 is box_iou itself.
template <int D>
ATSS_HD float box_iou_nd(const float* a, const float* g) {
  static_assert(D == 2 || D == 3, "boxes are 2-D or 3-D");
  if constexpr (D == 2) {
    return box_iou(a, g);
  } else {
    const float vol_a = ((a[3] - a[0]) * (a[4] - a[1])) * (a[5] - a[2]);
    const float vol_g = ((g[3] - g[0]) * (g[4] - g[1])) * (g[5] - g[2]);
    const float ox = max_of(min_of(a[3], g[3]) - max_of(a[0], g[0]), 0.0f);
    const float oy = max_of(min_of(a[4], g[4]) - max_of(a[1], g[1]), 0.0f);
    const float oz = max_of(min_of(a[5], g[5]) - max_of(a[2], g[2]), 0.0f);
    const float inter = (ox * oy) * oz;
    const float uni = (vol_a + vol_g) - inter;
    return inter / max_of(uni, 1e-6f);
  }
}

// Step 6's centre test for D axes: c - lo > eps and hi - c > eps on every axis
// (c: the anchor centre, D values; g: the GT box).
template <int D>
ATSS_HD bool center_inside_nd(const float* c, const float* g, float eps) {
  bool inside = true;
  for (int t = 0; t < D; ++t) inside = inside && (c[t] - g[t]) > eps && (g[t + D] - c[t]) > eps;
  return inside;
}

// Step 5: threshold mean + std of the present candidates' IoUs, in float64,
// one term at a time in candidate order. `candidates[c] < 0` marks an empty
// slot. Returns NaN when there is no candidate (then *count is 0).
ATSS_HD double iou_threshold(const float* iou, const int64_t* candidates, int64_t num_slots,
                             int64_t* count) {
  double total = 0.0;
  int64_t n = 0;
  for (int64_t c = 0; c < num_slots; ++c) {
    if (candidates[c] >= 0) {
      total = total + static_cast<double>(iou[c]);
      ++n;
    }
  }
  *count = n;
  if (n == 0) return static_cast<double>(NAN);
  const double mean = total / static_cast<double>(n);
  double squares = 0.0;
  for (int64_t c = 0; c < num_slots; ++c) {
    if (candidates[c] >= 0) {
      const double d = static_cast<double>(iou[c]) - mean;
      squares = squares + d * d;
    }
  }
  const double stdev = n > 1 ? sqrt(squares / static_cast<double>(n - 1)) : 0.0;
  return mean + stdev;
}

}  // namespace atss
