// Task-aligned assignment (the TAL contract, version 1, docs/contract.md) on the
// CPU, visiting only the anchor points inside each GT: memory O(A + B * A + B * G * topk)
// (each GT holds min(topk, its inside anchors) picks), no [B, G, A] and no [B, A, C] tensor.
//
// The points are binned once per call into a uniform grid of cells (about two
// points per cell over their bounding box); a GT visits the cells its test box
// covers and tests each point there exactly, so it costs O(points in and near its
// box). The cell of a coordinate is a monotone function of it, so every point
// strictly inside the box lies in a visited cell, whatever the points' layout.
//
// Pass 1 (parallel over GTs): each valid GT's inside anchors, scored, and its top
// K picks by (metric descending, anchor index ascending). Pass 2 (parallel over
// images): one GT per anchor; an anchor picked by several GTs goes to the highest
// overlap among every GT it is inside (the GTs are visited again, in index order,
// only when some anchor of the image has several pickers); then topk2 and the
// target scores.

#include "../common/checks.h"  // first: the stable-ABI headers (common/stable.h)

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

#include "../common/tal_math.h"
#include "parallel.h"

namespace atss::cpu {
namespace {

// A uniform grid over the anchor points: cell_start / order in CSR form, anchors
// in index order within a cell.
class PointGrid {
 public:
  PointGrid(const float* points, int64_t num_points) : points_(points) {
    double lo_x = INFINITY, lo_y = INFINITY, hi_x = -INFINITY, hi_y = -INFINITY;
    for (int64_t i = 0; i < num_points; ++i) {
      lo_x = std::min<double>(lo_x, points[2 * i]);
      hi_x = std::max<double>(hi_x, points[2 * i]);
      lo_y = std::min<double>(lo_y, points[2 * i + 1]);
      hi_y = std::max<double>(hi_y, points[2 * i + 1]);
    }
    const double width = num_points ? hi_x - lo_x : 0.0, height = num_points ? hi_y - lo_y : 0.0;
    const double cells = std::max<double>(1.0, static_cast<double>(num_points) / 2.0);
    constexpr double kMaxSide = 4096.0;  // at most 2^24 cells
    if (width > 0 && height > 0) {
      const double side = std::sqrt(width * height / cells);
      nx_ = static_cast<int64_t>(std::min(kMaxSide, std::floor(width / side) + 1.0));
      ny_ = static_cast<int64_t>(std::min(kMaxSide, std::floor(height / side) + 1.0));
    } else if (width > 0) {
      nx_ = static_cast<int64_t>(std::min(kMaxSide, cells));
    } else if (height > 0) {
      ny_ = static_cast<int64_t>(std::min(kMaxSide, cells));
    }
    lo_x_ = num_points ? lo_x : 0.0;
    lo_y_ = num_points ? lo_y : 0.0;
    scale_x_ = width > 0 ? static_cast<double>(nx_) / width : 0.0;
    scale_y_ = height > 0 ? static_cast<double>(ny_) / height : 0.0;
    // Counting sort of the points by cell (stable: anchor order within a cell).
    cell_start_.assign(nx_ * ny_ + 1, 0);
    std::vector<int64_t> cell(num_points);
    for (int64_t i = 0; i < num_points; ++i) {
      cell[i] = cell_y(points[2 * i + 1]) * nx_ + cell_x(points[2 * i]);
      ++cell_start_[cell[i] + 1];
    }
    for (int64_t c = 0; c < nx_ * ny_; ++c) cell_start_[c + 1] += cell_start_[c];
    order_.resize(num_points);
    std::vector<int64_t> fill(cell_start_.begin(), cell_start_.end() - 1);
    for (int64_t i = 0; i < num_points; ++i) order_[fill[cell[i]]++] = i;
  }

  // Calls f(anchor) for every point in the cells that [x1, x2] x [y1, y2] covers
  // (a superset of the points strictly inside it).
  template <class F>
  void for_each_near(const TestBox& box, const F& f) const {
    const int64_t cx0 = cell_x(box.x1), cx1 = cell_x(box.x2);
    const int64_t cy0 = cell_y(box.y1), cy1 = cell_y(box.y2);
    for (int64_t cy = cy0; cy <= cy1; ++cy) {
      const int64_t row = cy * nx_;
      for (int64_t i = cell_start_[row + cx0]; i < cell_start_[row + cx1 + 1]; ++i) f(order_[i]);
    }
  }

  float x(int64_t i) const { return points_[2 * i]; }
  float y(int64_t i) const { return points_[2 * i + 1]; }

 private:
  // Monotone in v (a rounded difference and product, floor, clamp), NaN and
  // infinities included, so a < b implies cell(a) <= cell(b).
  static int64_t cell_of(float v, double lo, double scale, int64_t n) {
    const double c = std::floor((static_cast<double>(v) - lo) * scale);
    if (!(c > 0)) return 0;  // NaN too
    return c >= static_cast<double>(n - 1) ? n - 1 : static_cast<int64_t>(c);
  }
  int64_t cell_x(float v) const { return cell_of(v, lo_x_, scale_x_, nx_); }
  int64_t cell_y(float v) const { return cell_of(v, lo_y_, scale_y_, ny_); }

  const float* points_;
  int64_t nx_ = 1, ny_ = 1;
  double lo_x_ = 0, lo_y_ = 0, scale_x_ = 0, scale_y_ = 0;
  std::vector<int64_t> cell_start_, order_;
};

// An anchor scored for one GT.
struct Scored {
  int64_t anchor;
  float metric;
  float overlap;
};

// The contract's order of steps 3 and 4b: metric descending, anchor index ascending.
inline bool before(const Scored& a, const Scored& b) {
  return a.metric > b.metric || (a.metric == b.metric && a.anchor < b.anchor);
}

// Everything a GT's scoring needs, per call.
struct Inputs {
  const float* scores;  // [B, A, C]
  const float* pred;    // [B, A, 4]
  const float* gt;      // [B, G, 4]
  const int64_t* labels;
  int64_t A, C, G;
  bool ciou;
  Exponent alpha, beta;
  bool widen;
  float min_side, eps;

  // Step 2 for an inside pair; gt_aspect = tal_gt_aspect of the GT.
  Scored score(int64_t b, int64_t g, int64_t a, float gt_aspect) const {
    const int64_t ba = b * A + a;
    const float overlap = tal_overlap(gt + 4 * (b * G + g), pred + 4 * ba, ciou, gt_aspect);
    const float s = clamp01(scores[ba * C + labels[b * G + g]]);
    const float metric = power_c(s, alpha.n, alpha.half) * power_c(overlap, beta.n, beta.half);
    return {a, metric, overlap};
  }

  float gt_aspect(int64_t b, int64_t g) const { return tal_gt_aspect(gt + 4 * (b * G + g)); }

  TestBox test_box(int64_t b, int64_t g) const {
    return tal_test_box(gt + 4 * (b * G + g), widen, min_side);
  }
};

// Keeps the first k of `scored` in the contract's order, in that order.
void keep_first(std::vector<Scored>& scored, int64_t k) {
  if (static_cast<int64_t>(scored.size()) > k) {
    std::partial_sort(scored.begin(), scored.begin() + k, scored.end(), before);
    scored.resize(k);
  } else {
    std::sort(scored.begin(), scored.end(), before);
  }
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor> tal_assign_cpu(
    const Tensor& pred_scores, const Tensor& pred_boxes, const Tensor& anchor_points,
    const Tensor& gt_boxes, const Tensor& gt_labels, const OptionalTensor& gt_counts, int64_t topk,
    double alpha, double beta, bool ciou, std::optional<double> min_side,
    std::optional<int64_t> topk2, double eps) {
  check_tal_assign_args(pred_scores, pred_boxes, anchor_points, gt_boxes, gt_labels, gt_counts,
                        topk, alpha, beta, min_side, topk2, eps);
  check_tal_values(pred_scores, pred_boxes, anchor_points, gt_boxes, gt_labels, gt_counts);
  const int64_t B = pred_scores.size(0), A = pred_scores.size(1), C = pred_scores.size(2);
  const int64_t G = gt_boxes.size(1);
  Tensor gt_index = new_full(pred_scores, {B, A}, dtype::kLong, -1.0);
  Tensor target_score = new_full(pred_scores, {B, A}, dtype::kFloat, 0.0);
  Tensor overlap = new_full(pred_scores, {B, A}, dtype::kFloat, 0.0);
  Tensor num_positive = new_full(pred_scores, {B, G}, dtype::kLong, 0.0);
  if (B * G * A == 0) return {gt_index, target_score, overlap, num_positive};

  const Tensor scores = as_contiguous(pred_scores), pred = as_contiguous(pred_boxes);
  const Tensor points = as_contiguous(anchor_points), gt = as_contiguous(gt_boxes);
  const Tensor labels = as_contiguous(gt_labels);
  const OptionalTensor counts = as_contiguous(gt_counts);
  const int64_t* cp = data<int64_t>(counts);
  const Inputs in{data<float>(scores),
                  data<float>(pred),
                  data<float>(gt),
                  data<int64_t>(labels),
                  A,
                  C,
                  G,
                  ciou,
                  exponent_of(alpha),
                  exponent_of(beta),
                  min_side.has_value(),
                  min_side ? static_cast<float>(*min_side) : 0.0f,
                  static_cast<float>(eps)};
  const PointGrid grid(data<float>(points), A);

  // Pass 1: steps 1-3 per valid GT: min(topk, inside anchors) picks, in the contract's order.
  std::vector<std::vector<Scored>> picks(B * G);
  parallel_for(0, B * G, 16, [&](int64_t begin, int64_t end) {
    std::vector<Scored> inside;
    for (int64_t bg = begin; bg < end; ++bg) {
      const int64_t b = bg / G, g = bg % G;
      if (g >= valid_gt_count(cp, b, G)) continue;  // padding: never read
      const TestBox box = in.test_box(b, g);
      const float aspect = in.gt_aspect(b, g);
      inside.clear();
      grid.for_each_near(box, [&](int64_t a) {
        if (tal_inside(grid.x(a), grid.y(a), box, in.eps))
          inside.push_back(in.score(b, g, a, aspect));
      });
      keep_first(inside, topk);
      picks[bg].assign(inside.begin(), inside.end());
    }
  });

  // Pass 2: steps 4, 4b and 5, image by image.
  int64_t* gi = data<int64_t>(gt_index);
  float* ts = data<float>(target_score);
  float* ov = data<float>(overlap);
  int64_t* np = data<int64_t>(num_positive);
  const float eps32 = static_cast<float>(eps);
  parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> pickers(A);
    std::vector<float> metric(A), best(A);
    std::vector<std::vector<Scored>> own(G);
    for (int64_t b = begin; b < end; ++b) {
      int64_t* owner = gi + b * A;  // -1 already
      float* anchor_overlap = ov + b * A;
      std::fill(pickers.begin(), pickers.end(), 0);
      const int64_t valid = valid_gt_count(cp, b, G);
      bool shared = false;
      for (int64_t g = 0; g < valid; ++g) {
        for (const Scored& p : picks[b * G + g]) {
          const int64_t a = p.anchor;
          if (++pickers[a] == 1) {
            owner[a] = g;
            metric[a] = p.metric;
            anchor_overlap[a] = p.overlap;
          } else {
            shared = true;
          }
        }
      }
      if (shared) {
        // Step 4: an anchor picked by several GTs goes to the highest overlap among every GT
        // it is inside; GTs in index order and a strict > keep the lowest index on ties.
        std::fill(best.begin(), best.end(), -1.0f);
        for (int64_t g = 0; g < valid; ++g) {
          const TestBox box = in.test_box(b, g);
          const float aspect = in.gt_aspect(b, g);
          grid.for_each_near(box, [&](int64_t a) {
            if (pickers[a] < 2 || !tal_inside(grid.x(a), grid.y(a), box, in.eps)) return;
            const float o =
                tal_overlap(in.gt + 4 * (b * G + g), in.pred + 4 * (b * A + a), ciou, aspect);
            if (o > best[a]) {
              best[a] = o;
              owner[a] = g;
            }
          });
        }
        for (int64_t a = 0; a < A; ++a) {
          if (pickers[a] < 2) continue;
          const Scored s = in.score(b, owner[a], a, in.gt_aspect(b, owner[a]));
          metric[a] = s.metric;
          anchor_overlap[a] = s.overlap;
        }
      }
      for (int64_t g = 0; g < valid; ++g) own[g].clear();
      for (int64_t a = 0; a < A; ++a) {
        if (owner[a] >= 0) own[owner[a]].push_back({a, metric[a], anchor_overlap[a]});
      }
      for (int64_t g = 0; g < valid; ++g) {
        std::vector<Scored>& mine = own[g];
        if (topk2.has_value() && static_cast<int64_t>(mine.size()) > *topk2) {  // step 4b
          std::partial_sort(mine.begin(), mine.begin() + *topk2, mine.end(), before);
          for (size_t i = *topk2; i < mine.size(); ++i) {
            owner[mine[i].anchor] = -1;
            anchor_overlap[mine[i].anchor] = 0.0f;
          }
          mine.resize(*topk2);
        }
        // Step 5: M_g and O_g (metrics and overlaps are >= 0), then each anchor's target.
        float largest_metric = 0.0f, largest_overlap = 0.0f;
        for (const Scored& s : mine) {
          largest_metric = max_of(largest_metric, s.metric);
          largest_overlap = max_of(largest_overlap, s.overlap);
        }
        const float denominator = largest_metric + eps32;
        for (const Scored& s : mine)
          ts[b * A + s.anchor] = (s.metric * largest_overlap) / denominator;
        np[b * G + g] = static_cast<int64_t>(mine.size());
      }
    }
  });
  return {gt_index, target_score, overlap, num_positive};
}

STABLE_TORCH_LIBRARY_IMPL(atss_ops, CPU, m) {
  m.impl("tal_assign", TORCH_BOX(&tal_assign_cpu));
}

}  // namespace atss::cpu
