// The routines of the TAL contract (docs/contract.md, TAL version 1): the inside
// test, the overlap (IoU or CIoU with the contract's own arctangent) and the
// powers of the metric, shared by every backend so that all compute the same bits
// as atss_ops/reference_tal.py.
//
// Numerics: one rounding per operation (no fused multiply-add: -ffp-contract=off
// for the CPU, -fmad=false for CUDA); float32 division and the float64 square root
// are IEEE (correctly rounded) on both. The C library's atanf and powf are not
// used: they round differently on CPU and GPU. Constants are written as the
// double the reference starts from, rounded to float32 the same way.
#pragma once

#include <cmath>
#include <cstdint>

#include "box_math.h"  // ATSS_HD, min_of, max_of

namespace atss {

namespace tal {
inline constexpr float kIouEps = static_cast<float>(1e-7);  // E: the IoU's guard
inline constexpr float kFourOverPi2 = static_cast<float>(0.40528473);
inline constexpr float kAtanBig = static_cast<float>(2.4142137);   // tan(3 pi / 8)
inline constexpr float kAtanMid = static_cast<float>(0.41421357);  // tan(pi / 8)
inline constexpr float kHalfPi = static_cast<float>(1.5707964);
inline constexpr float kQuarterPi = static_cast<float>(0.7853982);
// The polynomial's coefficients, highest degree first (scalars: a constexpr array is
// not usable in CUDA device code).
inline constexpr float kAtanP0 = static_cast<float>(-0.06071304);
inline constexpr float kAtanP1 = static_cast<float>(0.10590773);
inline constexpr float kAtanP2 = static_cast<float>(-0.14243065);
inline constexpr float kAtanP3 = static_cast<float>(0.19998442);
inline constexpr float kAtanP4 = static_cast<float>(-0.33333313);
}  // namespace tal

// pos(v) = v > 0 ? v : +0 (NaN gives +0).
ATSS_HD float pos_of(float v) {
  return v > 0.0f ? v : 0.0f;
}

// The score's clamp01: probabilities unchanged, NaN and negatives 0, above 1 1.
ATSS_HD float clamp01(float v) {
  return min_of(pos_of(v), 1.0f);
}

// The contract's atan_c of x >= 0: a reduction to |t| <= tan(pi / 8), then a
// polynomial in t * t by Horner's rule; within 2.6 ulp of the true arctangent.
ATSS_HD float atan_c(float x) {
  float base, t;
  if (x > tal::kAtanBig) {
    base = tal::kHalfPi;
    t = -1.0f / x;
  } else if (x > tal::kAtanMid) {
    base = tal::kQuarterPi;
    t = (x - 1.0f) / (x + 1.0f);
  } else {
    base = 0.0f;
    t = x;
  }
  const float z = t * t;
  float p = tal::kAtanP0;
  p = p * z + tal::kAtanP1;
  p = p * z + tal::kAtanP2;
  p = p * z + tal::kAtanP3;
  p = p * z + tal::kAtanP4;
  return base + (t + (t * z) * p);
}

// The contract's P(x, n + half / 2) of x >= 0: binary exponentiation in float64
// from the lowest bit, times sqrt(x) for the half, rounded once to float32.
ATSS_HD float power_c(float x, int64_t n, bool half) {
  const double X = x;
  double r = 1.0, base = X;
  for (int64_t k = n; k > 0;) {
    if (k & 1) r = r * base;
    k >>= 1;
    if (k > 0) base = base * base;
  }
  if (half) r = r * sqrt(X);
  return static_cast<float>(r);
}

// An exponent of the contract (a multiple of 0.5, checked) as P's (n, half).
struct Exponent {
  int64_t n;
  bool half;
};

inline Exponent exponent_of(double e) {
  const double whole = std::floor(e);
  return {static_cast<int64_t>(whole), e - whole == 0.5};
}

// The GT's term of the CIoU's aspect penalty, atan_c(gw / gh): a caller scoring many
// anchors against one GT computes it once.
ATSS_HD float tal_gt_aspect(const float* g) {
  return atan_c((g[2] - g[0]) / ((g[3] - g[1]) + tal::kIouEps));
}

// The contract's overlap o(g, p) of GT box g and predicted box p (x1, y1, x2, y2):
// pos(IoU), or pos(CIoU) with ciou, in the written order of operations; gt_aspect
// is tal_gt_aspect(g).
ATSS_HD float tal_overlap(const float* g, const float* p, bool ciou, float gt_aspect) {
  const float E = tal::kIouEps;
  const float gw = g[2] - g[0], gh = (g[3] - g[1]) + E;
  const float pw = p[2] - p[0], ph = (p[3] - p[1]) + E;
  const float iw = pos_of(min_of(g[2], p[2]) - max_of(g[0], p[0]));
  const float ih = pos_of(min_of(g[3], p[3]) - max_of(g[1], p[1]));
  const float inter = iw * ih;
  const float area_sum = (gw * gh) + (pw * ph);
  const float union_area = (area_sum - inter) + E;
  const float iou = inter / union_area;
  if (!ciou) return pos_of(iou);
  const float cw = max_of(g[2], p[2]) - min_of(g[0], p[0]);
  const float ch = max_of(g[3], p[3]) - min_of(g[1], p[1]);
  const float c2 = ((cw * cw) + (ch * ch)) + E;
  const float dx = ((p[0] + p[2]) - g[0]) - g[2];
  const float dy = ((p[1] + p[3]) - g[1]) - g[3];
  const float rho2 = ((dx * dx) + (dy * dy)) / 4.0f;
  const float d = atan_c(pw / ph) - gt_aspect;
  const float v = tal::kFourOverPi2 * (d * d);
  const float k = v / (((1.0f - iou) + v) + E);
  return pos_of(iou - ((rho2 / c2) + (v * k)));
}

// Step 1's test box of a GT: the box itself, or (widen) every box through its
// centre and half-sides with sides below min_side raised to it.
struct TestBox {
  float x1, y1, x2, y2;
};

ATSS_HD TestBox tal_test_box(const float* g, bool widen, float min_side) {
  if (!widen) return {g[0], g[1], g[2], g[3]};
  const float cx = (g[0] + g[2]) / 2.0f, cy = (g[1] + g[3]) / 2.0f;
  const float w = g[2] - g[0], h = g[3] - g[1];
  const float hw = (w < min_side ? min_side : w) / 2.0f;
  const float hh = (h < min_side ? min_side : h) / 2.0f;
  return {cx - hw, cy - hh, cx + hw, cy + hh};
}

// Step 1: the point lies inside the test box by more than eps on every side.
ATSS_HD bool tal_inside(float px, float py, const TestBox& t, float eps) {
  return (px - t.x1) > eps && (py - t.y1) > eps && (t.x2 - px) > eps && (t.y2 - py) > eps;
}

}  // namespace atss
