// A uniform grid over the anchor centres of one pyramid level, and the exact
// top-k (contract step 3) of one GT on it, for the fused CPU atss_assign.
//
// The scan (steps.h, select_level) computes the key of every anchor of a level:
// O(A) per GT. A GT's k nearest anchors lie in a small neighbourhood of its
// centre, so the grid finds them in about O(k) work per GT and level, and the
// grid costs O(A) to build, once per call, shared by the whole batch.
//
// It is an acceleration structure only: the result is the scan's, bit for bit,
// ties included, for every layout. The argument:
//
// * Keys are (distance_bits(d2), anchor index), d2 computed exactly as the scan
//   does (squared_distance of box_math.h, every operation rounded to float32).
// * A cell keeps the smallest and largest centre coordinate of its own members,
//   per axis. For a GT centre g, clamp g into that box: p = min(max(g, lo), hi).
//   For every member c and axis t, c_t - g_t lies on the same side of 0 as
//   p_t - g_t and is at least as far from it, and float32 rounding is monotone,
//   so |fl(c_t - g_t)| >= |fl(p_t - g_t)|; squaring and adding non-negative
//   terms are monotone too. Hence squared_distance(p, g) <= d2 of every member,
//   in float32, exactly: a lower bound of the keys the cell can hold. The same
//   holds for a slab (all cells beyond some index along one axis) with the
//   slab's extreme coordinate on that axis and g on the others.
// * A cell is skipped only when that bound's distance_bits is strictly greater
//   than the current k-th key's: an equal bound is visited, since a member at
//   an equal distance with a lower anchor index must win. The search stops
//   when every cell outside the visited box lies in a slab whose bound is
//   strictly greater. Everything not skipped is compared by the full key, so
//   the k smallest keys come out, in key order: the scan's answer.
// * The argument needs finite centres (inf - inf is NaN, which is no bound):
//   a level with a non-finite anchor centre is not indexed, and a GT with a
//   non-finite centre is scanned. Finite but huge coordinates are fine: d2 and
//   the bounds overflow to +inf together, monotonically, and equal bounds are
//   visited.
// * Invalid anchors (anchor_valid) stay in the cells, so the bounds cover them
//   too; they are skipped when visited. A mask that hides most of a level makes
//   the search visit most cells: the cost of a scan, never a wrong answer.
//
// The grid is templated on the number of axes D (2 or 3; d2 = (dx*dx + dy*dy)
// + dz*dz for 3-D boxes, box_math.h's squared_distance_nd).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <utility>
#include <vector>

#include "../common/box_math.h"

namespace atss::cpu {

// How the fused CPU kernel finds each GT's candidates on a level.
enum class SelectMode {
  kAuto,   // the index on levels where it pays off, the scan on the others
  kIndex,  // the index on every level it can handle (tests: small levels too)
  kScan,   // the scan everywhere (the path the tests compare against)
};

struct SelectOptions {
  SelectMode mode = SelectMode::kAuto;
  // Target number of anchors per grid cell (>= 1).
  int64_t anchors_per_cell = 4;
};

// Levels below this size are scanned in auto mode: the scan is as fast there.
constexpr int64_t kMinIndexedLevel = 256;
// At most this many cells per level and axis budget (so at most 2^D times as
// many cells): cell ids fit in 32 bits and cell coordinates are exact floats.
constexpr int64_t kMaxCellBudget = int64_t{1} << 22;

template <int D>
class LevelGrid {
 public:
  // (Re)builds the grid over the anchors [start, start + n) whose centre
  // coordinates along axis t are centers[t][start + i]; `wanted` false, or
  // non-finite centres, leave the level unindexed (indexed() false). A grid
  // object keeps its buffers' capacity between builds, so a caller that
  // reuses it (atss_assign.cpp keeps one set per thread) allocates nothing in
  // the steady state: fresh multi-megabyte buffers on every call cost more in
  // page faults than the build itself.
  void build(const std::array<const float*, D>& centers, int64_t start, int64_t n,
             int64_t anchors_per_cell, bool wanted) {
    start_ = start;
    n_ = n;
    indexed_ = false;
    if (!wanted || n <= 0) return;
    std::array<float, D> lo, hi;
    for (int t = 0; t < D; ++t) {
      lo[t] = std::numeric_limits<float>::infinity();
      hi[t] = -std::numeric_limits<float>::infinity();
      const float* c = centers[t] + start;
      bool nan = false;
      for (int64_t i = 0; i < n; ++i) {
        nan |= c[i] != c[i];
        lo[t] = c[i] < lo[t] ? c[i] : lo[t];
        hi[t] = c[i] > hi[t] ? c[i] : hi[t];
      }
      // NaN-free bounds need finite centres (a huge box's centre is +-inf).
      if (nan || !std::isfinite(lo[t]) || !std::isfinite(hi[t])) return;
    }
    choose_dims(lo, hi, anchors_per_cell);
    bucket(centers);
    indexed_ = true;
  }

  bool indexed() const { return indexed_; }
  int64_t num_cells() const { return num_cells_; }

  // Contract step 3 on this level for the GT centre g: the k valid anchors
  // with the smallest keys, nearest first, as global anchor indices in
  // out[0, k); -1 where fewer than k anchors are valid. `valid` is the level's
  // anchor_valid row (indexed from the level's first anchor) or null.
  // `best` (k entries) and `ring` are per-thread scratch.
  void select(const float* g, const bool* valid, int64_t k, uint64_t* best,
              std::vector<std::pair<uint32_t, int64_t>>& ring, int64_t* out) const {
    std::array<int64_t, D> home;
    for (int t = 0; t < D; ++t) home[t] = axis_cell(t, g[t]);
    int64_t filled = 0;
    // The k-th key's distance bits once k anchors are held; until then every
    // cell must be visited, which `worst_bits` = max lets through.
    uint32_t worst_bits = 0xffffffffu;
    bool all_visited = false;
    for (int64_t r = 0; !all_visited; ++r) {
      // The cells at Chebyshev distance r from home, each with its bound.
      ring.clear();
      std::array<int64_t, D> first, last;
      all_visited = true;
      for (int t = 0; t < D; ++t) {
        first[t] = std::max<int64_t>(home[t] - r, 0);
        last[t] = std::min<int64_t>(home[t] + r, dims_[t] - 1);
        if (first[t] > 0 || last[t] < dims_[t] - 1) all_visited = false;
      }
      for_each_ring_cell(home, r, first, last, [&](int64_t cell) {
        if (cell_begin_[cell] == cell_begin_[cell + 1]) return;
        const uint32_t bound = distance_bits(cell_bound(cell, g));
        if (filled == k && bound > worst_bits) return;
        ring.emplace_back(bound, cell);
      });
      // Nearest cells first, so that the k-th key tightens early and more of
      // the ring is skipped.
      std::sort(ring.begin(), ring.end());
      for (const auto& [bound, cell] : ring) {
        if (filled == k && bound > worst_bits) break;  // sorted: the rest is farther
        for (int64_t m = cell_begin_[cell]; m < cell_begin_[cell + 1]; ++m) {
          const int64_t local = member_[m];
          if (valid != nullptr && !valid[local]) continue;
          std::array<float, D> c;
          for (int t = 0; t < D; ++t) c[t] = coords_[t][m];
          const uint64_t key =
              (static_cast<uint64_t>(distance_bits(squared_distance_nd<D>(c.data(), g))) << 32) |
              static_cast<uint64_t>(start_ + local);
          if (filled == k && key >= best[k - 1]) continue;
          int64_t pos = filled < k ? filled++ : k - 1;
          while (pos > 0 && best[pos - 1] > key) {
            best[pos] = best[pos - 1];
            --pos;
          }
          best[pos] = key;
          if (filled == k) worst_bits = static_cast<uint32_t>(best[k - 1] >> 32);
        }
      }
      if (all_visited || filled < k) continue;
      // Every cell outside the visited box lies beyond it along some axis:
      // stop when each such slab's bound is strictly above the k-th key.
      bool outside_may_beat = false;
      for (int t = 0; t < D && !outside_may_beat; ++t) {
        if (last[t] + 1 < dims_[t]) {
          outside_may_beat |= slab_may_beat(g, t, above_min_[t][last[t] + 1], true, worst_bits);
        }
        if (first[t] > 0) {
          outside_may_beat |= slab_may_beat(g, t, below_max_[t][first[t] - 1], false, worst_bits);
        }
      }
      if (!outside_may_beat) break;
    }
    for (int64_t j = 0; j < filled; ++j) out[j] = static_cast<int64_t>(best[j] & 0xffffffffu);
    for (int64_t j = filled; j < k; ++j) out[j] = -1;
  }

 private:
  // Grid resolution: about n / anchors_per_cell cells, as square as the
  // centres' extent allows. An axis where all centres agree gets one cell.
  // Each axis is capped at the cell budget, so that a thin layout (a line of
  // anchors) cannot ask for a huge number of cells: at most 2^D * budget.
  void choose_dims(const std::array<float, D>& lo, const std::array<float, D>& hi,
                   int64_t anchors_per_cell) {
    const int64_t budget =
        std::clamp<int64_t>(n_ / std::max<int64_t>(1, anchors_per_cell), 1, kMaxCellBudget);
    std::array<double, D> extent;
    double volume = 1.0;
    int spread = 0;
    for (int t = 0; t < D; ++t) {
      extent[t] = static_cast<double>(hi[t]) - static_cast<double>(lo[t]);  // exact enough, finite
      if (extent[t] > 0.0) {
        volume *= extent[t];
        ++spread;
      }
    }
    // The side of a cube (square, segment) of the cell volume: the spread-th root.
    // (sqrt and cbrt rather than pow: the glibc of the wheel's manylinux_2_28 tag
    // predates pow's current symbol version.)
    const double cell_volume = volume / static_cast<double>(budget);
    const double side = spread == 3   ? std::cbrt(cell_volume)
                        : spread == 2 ? std::sqrt(cell_volume)
                        : spread == 1 ? cell_volume
                                      : 1.0;
    num_cells_ = 1;
    for (int t = 0; t < D; ++t) {
      int64_t dim = 1;
      if (extent[t] > 0.0 && side > 0.0) {
        const double cells = std::ceil(extent[t] / side);
        dim = cells >= static_cast<double>(budget) ? budget : std::max<int64_t>(1, cells);
      }
      dims_[t] = dim;
      origin_[t] = lo[t];
      scale_[t] = extent[t] > 0.0 ? static_cast<float>(static_cast<double>(dim) / extent[t]) : 0.0f;
      top_[t] = static_cast<float>(dim - 1);
      num_cells_ *= dim;
    }
  }

  // The cell along axis t of coordinate x (any float; clamped to the grid).
  // Only its monotonicity in x matters (every step below is monotone, and a
  // NaN from inf * 0 goes to cell 0): exactness comes from the members' own
  // extremes, never from the cell borders.
  int64_t axis_cell(int t, float x) const {
    float u = (x - origin_[t]) * scale_[t];
    u = u > 0.0f ? u : 0.0f;
    u = u < top_[t] ? u : top_[t];
    const int64_t cell = static_cast<int64_t>(u);
    return cell < dims_[t] - 1 ? cell : dims_[t] - 1;
  }

  // Counting sort of the level's anchors by cell. Within a cell, members stay
  // in increasing anchor index. Records each cell's extreme member centres
  // and, per axis, the extreme coordinate of every slab of cells beyond an
  // index (above_min_) or before it (below_max_).
  void bucket(const std::array<const float*, D>& centers) {
    const int64_t n = n_, num_cells = num_cells_;
    int64_t s = 1;
    for (int t = 0; t < D; ++t) {
      stride_[t] = s;
      s *= dims_[t];
    }
    // Cell of each anchor, one axis at a time: axis_cell as a plain loop the
    // compiler vectorises. Anchor centres are finite, so (c - origin) * scale
    // is never NaN and min/max clamp it exactly; ids fit in 32 bits
    // (kMaxCellBudget).
    cell_of_.assign(n, 0);
    for (int t = 0; t < D; ++t) {
      const float* c = centers[t] + start_;
      const float origin = origin_[t], scale = scale_[t], top = top_[t];
      const int32_t stride = static_cast<int32_t>(stride_[t]);
      int32_t* cell = cell_of_.data();
      for (int64_t i = 0; i < n; ++i) {
        const float u = std::min(std::max((c[i] - origin) * scale, 0.0f), top);
        cell[i] += static_cast<int32_t>(u) * stride;
      }
    }
    cell_begin_.assign(num_cells + 1, 0);
    int64_t* begin = cell_begin_.data();
    const int32_t* cell_of = cell_of_.data();
    for (int64_t i = 0; i < n; ++i) ++begin[cell_of[i] + 1];
    std::partial_sum(cell_begin_.begin(), cell_begin_.end(), cell_begin_.begin());
    next_.assign(cell_begin_.begin(), cell_begin_.end() - 1);
    int64_t* next = next_.data();
    member_.resize(n);
    const float inf = std::numeric_limits<float>::infinity();
    for (int t = 0; t < D; ++t) {
      coords_[t].resize(n);
      cell_lo_[t].resize(num_cells);  // an empty cell gets (inf, -inf): never visited
      cell_hi_[t].resize(num_cells);
      above_min_[t].assign(dims_[t], inf);  // an empty slab keeps inf / -inf
      below_max_[t].assign(dims_[t], -inf);
    }
    int32_t* member = member_.data();
    std::array<float*, D> coords;
    for (int t = 0; t < D; ++t) coords[t] = coords_[t].data();
    for (int64_t i = 0; i < n; ++i) {
      const int64_t m = next[cell_of[i]]++;
      member[m] = static_cast<int32_t>(i);  // n <= A < 2^31 (check_num_anchors)
      for (int t = 0; t < D; ++t) coords[t][m] = centers[t][start_ + i];
    }
    // Each cell's extreme member centres, the running values in registers.
    for (int64_t cell = 0; cell < num_cells; ++cell) {
      std::array<float, D> lo, hi;
      lo.fill(inf);
      hi.fill(-inf);
      for (int64_t m = begin[cell]; m < begin[cell + 1]; ++m) {
        for (int t = 0; t < D; ++t) {
          lo[t] = std::min(lo[t], coords[t][m]);
          hi[t] = std::max(hi[t], coords[t][m]);
        }
      }
      for (int t = 0; t < D; ++t) {
        cell_lo_[t][cell] = lo[t];
        cell_hi_[t][cell] = hi[t];
      }
    }
    // Slab extremes from the cells'. Along axis t, cell = (outer * dims + j) *
    // stride + inner with j its slab: three plain loops, no division.
    for (int t = 0; t < D; ++t) {
      const int64_t dim = dims_[t], stride = stride_[t], outer = num_cells / (dim * stride);
      const float* lo = cell_lo_[t].data();
      const float* hi = cell_hi_[t].data();
      for (int64_t o = 0; o < outer; ++o) {
        for (int64_t j = 0; j < dim; ++j) {
          const int64_t base = (o * dim + j) * stride;
          float slab_lo = above_min_[t][j], slab_hi = below_max_[t][j];
          for (int64_t inner = 0; inner < stride; ++inner) {
            slab_lo = std::min(slab_lo, lo[base + inner]);
            slab_hi = std::max(slab_hi, hi[base + inner]);
          }
          above_min_[t][j] = slab_lo;
          below_max_[t][j] = slab_hi;
        }
      }
    }
    for (int t = 0; t < D; ++t) {
      for (int64_t j = dims_[t] - 2; j >= 0; --j)
        above_min_[t][j] = std::min(above_min_[t][j], above_min_[t][j + 1]);
      for (int64_t j = 1; j < dims_[t]; ++j)
        below_max_[t][j] = std::max(below_max_[t][j], below_max_[t][j - 1]);
    }
  }

  // Lower bound of d2 over the cell's members: the distance from g to g
  // clamped into the box of the members' extreme centres (see the top).
  float cell_bound(int64_t cell, const float* g) const {
    std::array<float, D> p;
    for (int t = 0; t < D; ++t) {
      const float lo = cell_lo_[t][cell], hi = cell_hi_[t][cell];
      p[t] = g[t] < lo ? lo : (g[t] > hi ? hi : g[t]);
    }
    return squared_distance_nd<D>(p.data(), g);
  }

  // May a member of a slab beat the k-th key? `edge` is the slab's extreme
  // coordinate along axis t: its smallest for the slab above the visited box
  // (`upper`), its largest for the one below; +-inf marks an empty slab
  // (centres are finite). The bound clamps g into the slab along axis t and
  // keeps g on the other axes: the argument of cell_bound with an unbounded box.
  bool slab_may_beat(const float* g, int t, float edge, bool upper, uint32_t worst_bits) const {
    if (std::isinf(edge)) return false;
    std::array<float, D> p;
    for (int u = 0; u < D; ++u) p[u] = g[u];
    if (upper ? g[t] < edge : g[t] > edge) p[t] = edge;
    return distance_bits(squared_distance_nd<D>(p.data(), g)) <= worst_bits;
  }

  // Calls fn(cell) for every grid cell of the box [first, last] at Chebyshev
  // distance exactly r from home along at least one axis (the box clipped to
  // the grid). Axis D-1 runs innermost; when no other axis is on the ring,
  // only its two ends are.
  template <typename Fn>
  void for_each_ring_cell(const std::array<int64_t, D>& home, int64_t r,
                          const std::array<int64_t, D>& first, const std::array<int64_t, D>& last,
                          Fn&& fn) const {
    std::array<int64_t, D> idx = first;
    while (true) {
      bool on_ring = false;
      int64_t base = 0;
      for (int t = 0; t < D - 1; ++t) {
        on_ring |= idx[t] == home[t] - r || idx[t] == home[t] + r;
        base += idx[t] * stride_[t];
      }
      constexpr int u = D - 1;
      if (on_ring) {
        for (int64_t j = first[u]; j <= last[u]; ++j) fn(base + j * stride_[u]);
      } else {
        if (home[u] - r >= first[u]) fn(base + (home[u] - r) * stride_[u]);
        if (r > 0 && home[u] + r <= last[u]) fn(base + (home[u] + r) * stride_[u]);
      }
      int t = D - 2;
      for (; t >= 0; --t) {
        if (++idx[t] <= last[t]) break;
        idx[t] = first[t];
      }
      if (t < 0) break;
    }
  }

  int64_t start_ = 0, n_ = 0, num_cells_ = 0;
  bool indexed_ = false;
  std::array<int64_t, D> dims_{}, stride_{};
  std::array<float, D> origin_{}, scale_{}, top_{};  // axis_cell's mapping
  std::vector<int32_t> cell_of_;                     // build scratch: the cell of each anchor
  std::vector<int64_t> next_;        // build scratch: next free member slot per cell
  std::vector<int64_t> cell_begin_;  // members of cell c: [cell_begin_[c], cell_begin_[c + 1])
  std::vector<int32_t> member_;      // anchor index within the level, cell by cell
  std::array<std::vector<float>, D> coords_;             // member centres, cell by cell
  std::array<std::vector<float>, D> cell_lo_, cell_hi_;  // per cell: extreme member centres
  std::array<std::vector<float>, D> above_min_;          // [j]: min centre of cells with index >= j
  std::array<std::vector<float>, D> below_max_;          // [j]: max centre of cells with index <= j
};

}  // namespace atss::cpu
