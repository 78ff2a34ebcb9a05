// The whole contract in one call on the CPU, no [B, G, A] tensor: memory
// O(A + B * A + B * G * C).
//
// Candidates (step 3) come from a uniform grid over each level's anchor
// centres (spatial_index.h), built once per call and shared by the batch, or
// reused from the thread's previous call when the anchors are bit for bit the
// same (AnchorGrids): time about O(A + B * G * L * k). The scan of steps.h (every anchor of the
// level per GT, time O(B * G * A)) serves levels too small for the grid to pay off, levels with
// non-finite centres and GTs with a non-finite centre. Both give the same bits. The environment
// variable ATSS_CPU_SELECT, read on every call, picks the path (for tests and benchmarks):
//   unset or "auto"  the grid where it pays off, the scan elsewhere (default)
//   "index"          the grid on every level it can handle, however small
//   "index:N"        the same with about N anchors per cell (N >= 1)
//   "scan"           the scan everywhere

#include "../common/checks.h"  // first: the stable-ABI headers (common/stable.h)

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "../common/text.h"
#include "parallel.h"
#include "spatial_index.h"
#include "steps.h"

namespace atss::cpu {
namespace {

SelectOptions select_options_from_env() {
  SelectOptions opts;
  const char* env = std::getenv("ATSS_CPU_SELECT");
  const std::string v = env != nullptr ? env : "";
  if (v.empty() || v == "auto") return opts;
  if (v == "scan") {
    opts.mode = SelectMode::kScan;
    return opts;
  }
  if (v == "index") {
    opts.mode = SelectMode::kIndex;
    return opts;
  }
  if (v.rfind("index:", 0) == 0 && v.size() > 6 && v.size() <= 15 &&
      v.find_first_not_of("0123456789", 6) == std::string::npos) {
    opts.mode = SelectMode::kIndex;
    opts.anchors_per_cell = std::stoll(v.substr(6));
    if (opts.anchors_per_cell >= 1) return opts;
  }
  ATSS_CHECK_VALUE(false,
                   "ATSS_CPU_SELECT must be auto, index, index:N (N >= 1 anchors per cell) or "
                   "scan, got '",
                   v, "'");
  return opts;
}

// Should level n (k = min(topk, n) candidates) get a grid?
bool wants_grid(const SelectOptions& opts, int64_t n, int64_t k) {
  switch (opts.mode) {
    case SelectMode::kScan:
      return false;
    case SelectMode::kIndex:
      return n > 0;
    case SelectMode::kAuto:
      return n >= kMinIndexedLevel && k * 8 <= n;
  }
  return false;
}

// The anchor centres and per-level grids (D axes) of the last call on this thread.
// Training calls atss_assign with the same anchors at every step: when the
// anchors' bytes, the level sizes and the grid settings all equal the last
// call's, the centres and grids, a function of exactly these, are reused as
// they are, which takes the O(A) build off the call; any difference, down to
// one bit, rebuilds them. Held per calling thread (no locking): about 60 bytes
// per anchor of the thread's last call.
template <int D>
class AnchorGrids {
 public:
  // Makes centers() and grid(l) those of `anchors` ([A, 2D], contiguous).
  void update(const float* anchors, int64_t num_anchors, const std::vector<int64_t>& levels,
              const SelectOptions& opts, int64_t topk) {
    std::vector<bool> wanted(levels.size());
    bool any_wanted = false;
    for (size_t l = 0; l < levels.size(); ++l) {
      wanted[l] = wants_grid(opts, levels[l], std::min(topk, levels[l]));
      any_wanted |= wanted[l];
    }
    const int64_t per_cell = any_wanted ? opts.anchors_per_cell : 0;
    const size_t bytes = sizeof(float) * 2 * D * static_cast<size_t>(num_anchors);
    if (ready_ && levels == levels_ && wanted == wanted_ && per_cell == anchors_per_cell_ &&
        anchors_.size() == 2 * D * static_cast<size_t>(num_anchors) &&
        std::memcmp(anchors_.data(), anchors, bytes) == 0) {
      return;
    }
    ready_ = false;  // stays false if anything below throws
    anchors_.assign(anchors, anchors + 2 * D * num_anchors);
    levels_ = levels;
    wanted_ = wanted;
    anchors_per_cell_ = per_cell;
    centers_.emplace(anchors, num_anchors, D);
    if (grids_.size() < levels.size()) grids_.resize(levels.size());
    std::vector<int64_t> start(levels.size() + 1, 0);
    for (size_t l = 0; l < levels.size(); ++l) start[l + 1] = start[l] + levels[l];
    std::array<const float*, D> axes;
    for (int t = 0; t < D; ++t) axes[t] = centers_->axis[t].data();
    LevelGrid<D>* const grids = grids_.data();
    // Levels are built side by side (the largest holds about 3/4 of A), once
    // there is enough of them to pay for a second thread.
    const int64_t num_levels = static_cast<int64_t>(levels.size());
    const int64_t levels_per_thread = num_anchors >= (int64_t{1} << 16) ? 1 : num_levels;
    parallel_for(0, num_levels, levels_per_thread, [&](int64_t begin, int64_t end) {
      for (int64_t l = begin; l < end; ++l)
        grids[l].build(axes, start[l], levels[l], opts.anchors_per_cell, wanted[l]);
    });
    any_grid_ = false;
    for (size_t l = 0; l < levels.size(); ++l) any_grid_ |= grids_[l].indexed();
    ready_ = true;
  }

  const AnchorCenters& centers() const { return *centers_; }
  const LevelGrid<D>& grid(size_t level) const { return grids_[level]; }
  bool any_grid() const { return any_grid_; }

 private:
  std::vector<float> anchors_;  // the anchors of the grids, bit for bit
  std::vector<int64_t> levels_;
  std::vector<bool> wanted_;
  int64_t anchors_per_cell_ = 0;
  bool ready_ = false, any_grid_ = false;
  std::optional<AnchorCenters> centers_;
  std::vector<LevelGrid<D>> grids_;  // keep their capacity between builds
};

// Steps 1-6 for every valid GT of the batch (D axes): candidates, their IoUs,
// positive flags and the thresholds. `usable` is the [B, A] mask of usable
// anchors (valid and not ignored) or null.
template <int D>
void select_and_score(const float* ap, int64_t A, const float* gp, int64_t B, int64_t G,
                      const int64_t* cp, const bool* usable, const std::vector<int64_t>& levels,
                      int64_t topk, int64_t C, bool center_test, float eps,
                      std::vector<int64_t>& candidates, std::vector<float>& cand_iou,
                      bool* positive, float* thr_p) {
  const int64_t max_level = *std::max_element(levels.begin(), levels.end());
  const int64_t held = std::min(topk, max_level);  // topk itself may be huge

  // One grid per level, shared by the batch: O(A) to build, or to find
  // unchanged since this thread's last call (see AnchorGrids).
  thread_local AnchorGrids<D> anchor_grids;
  anchor_grids.update(ap, A, levels, select_options_from_env(), topk);
  // The lambdas below use these references: a thread_local named inside them
  // would be each worker thread's own.
  const AnchorGrids<D>& shared = anchor_grids;
  const AnchorCenters& centers = shared.centers();
  const bool any_grid = shared.any_grid();

  // With the grids a GT costs a microsecond or two: at least 64 GTs per
  // thread, so that a small call (B=2, G=20) runs on one thread rather than
  // pay a wake-up and join it cannot amortise (or, on a loaded machine, wait
  // for a descheduled worker).
  const int64_t grain = any_grid ? 64 : 1;
  parallel_for(0, B * G, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> d2, chunk_min;  // when a level is scanned
    std::vector<uint32_t> best_keys(held);
    std::vector<uint64_t> best(held);
    std::vector<std::pair<uint32_t, int64_t>> ring;
    for (int64_t bg = begin; bg < end; ++bg) {
      const int64_t b = bg / G;
      if (bg % G >= valid_gt_count(cp, b, G)) continue;  // padding: never read
      const float* box = gp + 2 * D * bg;
      float center[D];
      box_center<D>(box, center);
      // A non-finite GT centre makes NaN distances: the grid's bounds need
      // finite ones, so such a GT is scanned.
      bool finite = true;
      for (int t = 0; t < D; ++t) finite = finite && std::isfinite(center[t]);
      int64_t* slots = candidates.data() + bg * C;
      int64_t start = 0;
      for (size_t l = 0; l < levels.size(); ++l) {
        const int64_t n = levels[l];
        const int64_t k = std::min(topk, n);
        const bool* level_usable = usable ? usable + b * A + start : nullptr;
        if (k > 0 && finite && shared.grid(l).indexed()) {
          shared.grid(l).select(center, level_usable, k, best.data(), ring, slots);
          slots += k;
        } else if (k > 0) {
          if (d2.empty()) {
            d2.resize(max_level);
            chunk_min.resize(select_chunks(max_level) + held);
          }
          level_distances<D>(centers, start, n, center, d2.data());
          select_level(d2.data(), level_usable, start, n, k, best_keys.data(), chunk_min.data(),
                       slots);
          slots += k;
        }
        start += n;
      }
      thr_p[bg] = score_candidates<D>(ap, box, candidates.data() + bg * C, C, center_test, eps,
                                      cand_iou.data() + bg * C, positive + bg * C);
    }
  });
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor> atss_assign_cpu(
    const Tensor& anchors, IntArrayRef num_anchors_per_level, const Tensor& gt_boxes,
    const OptionalTensor& gt_counts, int64_t topk, const OptionalTensor& anchor_valid,
    std::optional<double> center_eps, const OptionalTensor& anchor_ignore, bool ensure_positive) {
  check_atss_assign_args(anchors, num_anchors_per_level, gt_boxes, gt_counts, topk, anchor_valid,
                         center_eps, anchor_ignore);
  const int64_t B = gt_boxes.size(0), G = gt_boxes.size(1), A = anchors.size(0);
  check_box_values(anchors, gt_boxes, gt_counts);

  if (B * G * A == 0) return background_assignment(B, G, A, anchors, anchor_ignore);
  // gt_index and iou ([B, A]) are filled image by image in the resolution
  // pass below, in the same parallel region, rather than by a separate
  // parallel fill.
  Tensor gt_index = new_empty(anchors, {B, A}, dtype::kLong);
  Tensor iou = new_empty(anchors, {B, A}, dtype::kFloat);
  Tensor threshold =
      new_full(anchors, {B, G}, dtype::kFloat, std::numeric_limits<float>::quiet_NaN());
  Tensor num_positive = new_full(anchors, {B, G}, dtype::kLong, 0.0);
  const int64_t C = num_candidate_slots(num_anchors_per_level, topk);

  const Tensor a = as_contiguous(anchors);
  const Tensor g = as_contiguous(gt_boxes);
  const OptionalTensor counts = as_contiguous(gt_counts), valid = as_contiguous(anchor_valid),
                       ignore = as_contiguous(anchor_ignore);
  const int64_t* cp = data<int64_t>(counts);
  const bool* ig = data<bool>(ignore);
  const UsableAnchors usable(data<bool>(valid), ig, B * A);
  const bool* up = usable.get();
  const float* ap = data<float>(a);
  const float* gp = data<float>(g);
  const bool center_test = center_eps.has_value();
  const float eps = center_test ? static_cast<float>(*center_eps) : 0.0f;
  const std::vector<int64_t> levels(num_anchors_per_level.begin(), num_anchors_per_level.end());

  // O(B * G * C) per-GT state between the candidate and the resolution passes.
  std::vector<int64_t> candidates(B * G * C, -1);
  std::vector<float> cand_iou(B * G * C, 0.0f);
  std::unique_ptr<bool[]> positive(new bool[B * G * C]());
  float* thr_p = data<float>(threshold);
  if (a.size(1) == 4) {
    select_and_score<2>(ap, A, gp, B, G, cp, up, levels, topk, C, center_test, eps, candidates,
                        cand_iou, positive.get(), thr_p);
  } else {
    select_and_score<3>(ap, A, gp, B, G, cp, up, levels, topk, C, center_test, eps, candidates,
                        cand_iou, positive.get(), thr_p);
  }

  int64_t* gi = data<int64_t>(gt_index);
  float* io = data<float>(iou);
  int64_t* np = data<int64_t>(num_positive);
  // An image costs O(A + G * C): small images share a thread.
  const int64_t images_per_thread = std::max<int64_t>(1, (int64_t{1} << 16) / (A + G * C));
  parallel_for(0, B, images_per_thread, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> proposal(ensure_positive ? G : 0);
    for (int64_t b = begin; b < end; ++b) {
      std::fill(gi + b * A, gi + (b + 1) * A, int64_t{-1});  // resolve_image's starting state
      std::fill(io + b * A, io + (b + 1) * A, 0.0f);
      const int64_t off = b * G * C;
      resolve_image(candidates.data() + off, cand_iou.data() + off, positive.get() + off,
                    ig ? ig + b * A : nullptr, ensure_positive, G, C, A, gi + b * A, io + b * A,
                    np + b * G, proposal.data());
    }
  });
  return {gt_index, iou, threshold, num_positive};
}

STABLE_TORCH_LIBRARY_IMPL(atss_ops, CPU, m) {
  m.impl("atss_assign", TORCH_BOX(&atss_assign_cpu));
}

}  // namespace atss::cpu
