#include "checks.h"

#include "text.h"

#include <torch/headeronly/core/DeviceType.h>

#include <cmath>
#include <limits>
#include <string>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace atss {
namespace {

// torch's Python spelling of a dtype ("torch.float16"), so that messages read
// the same as the ones the Python reference raises.
std::string dtype_name(ScalarType t) {
  switch (t) {
    case ScalarType::Float:
      return "torch.float32";
    case ScalarType::Double:
      return "torch.float64";
    case ScalarType::Half:
      return "torch.float16";
    case ScalarType::BFloat16:
      return "torch.bfloat16";
    case ScalarType::Long:
      return "torch.int64";
    case ScalarType::Int:
      return "torch.int32";
    case ScalarType::Short:
      return "torch.int16";
    case ScalarType::Char:
      return "torch.int8";
    case ScalarType::Byte:
      return "torch.uint8";
    case ScalarType::Bool:
      return "torch.bool";
    default:
      return std::string("torch.") + torch::headeronly::toString(t);
  }
}

// torch's spelling of a device ("cpu", "cuda:0"), as str(tensor.device) in Python.
std::string device_str(const Tensor& t) {
  const auto device = t.device();
  const auto type = device.type();
  std::string name;
  if (type == torch::headeronly::DeviceType::CPU) {
    name = "cpu";
  } else if (type == torch::headeronly::DeviceType::CUDA) {
    name = "cuda";
  } else if (type == torch::headeronly::DeviceType::Meta) {
    name = "meta";
  } else {
    name = "device type " + num(static_cast<int>(type));
  }
  return device.index() >= 0 ? name + ":" + num(static_cast<int>(device.index())) : name;
}

bool same_sizes(IntArrayRef a, IntArrayRef b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i] != b[i]) return false;
  return true;
}

std::string short_name(ScalarType t) {
  return dtype_name(t).substr(6);
}

std::string sizes_str(IntArrayRef sizes) {
  std::string out = "[";
  for (size_t i = 0; i < sizes.size(); ++i) out += (i ? ", " : "") + num(sizes[i]);
  return out + "]";
}

// A box of 2 * dims coordinates, as the reference prints it.
std::string box_str(const float* box, int dims) {
  std::string out = "[";
  for (int i = 0; i < 2 * dims; ++i) out += (i ? ", " : "") + num(box[i]);
  return out + "]";
}

bool box_finite(const float* box, int dims) {
  for (int i = 0; i < 2 * dims; ++i)
    if (!std::isfinite(box[i])) return false;
  return true;
}

bool box_ordered(const float* box, int dims) {
  for (int t = 0; t < dims; ++t)
    if (!(box[t + dims] >= box[t])) return false;
  return true;
}

// True when all n boxes ([n, 2 * D] floats) are finite and ordered (upper
// corner >= lower corner on every axis): the common case, checked in one pass
// without branches (blocks of boxes keep an early exit). Only when it is
// false do the per-box checks below run, to name the first bad box as the
// reference does. |x| <= FLT_MAX is false for inf and NaN.
#if defined(__SSE2__)
// A box's lower and upper corners as two vectors (the last lane repeated).
template <int D>
inline void box_corners(const float* box, __m128* lo, __m128* hi, __m128* all_lo, __m128* all_hi) {
  if constexpr (D == 2) {
    const __m128 v = _mm_loadu_ps(box);  // x1 y1 x2 y2
    *lo = _mm_movelh_ps(v, v);           // x1 y1 x1 y1
    *hi = _mm_movehl_ps(v, v);           // x2 y2 x2 y2
    *all_lo = *all_hi = v;
  } else {
    const __m128 v0 = _mm_loadu_ps(box);      // x1 y1 z1 x2
    const __m128 v1 = _mm_loadu_ps(box + 2);  // z1 x2 y2 z2
    *lo = _mm_shuffle_ps(v0, v0, _MM_SHUFFLE(2, 2, 1, 0));
    *hi = _mm_shuffle_ps(v1, v1, _MM_SHUFFLE(3, 3, 2, 1));
    *all_lo = v0;
    *all_hi = v1;
  }
}
#endif

template <int D>
bool boxes_all_good(const float* p, int64_t n) {
  constexpr int64_t kBlock = 1024;
  for (int64_t first = 0; first < n; first += kBlock) {
    const int64_t stop = first + kBlock < n ? first + kBlock : n;
#if defined(__SSE2__)
    const __m128 abs_mask = _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff));
    const __m128 max = _mm_set1_ps(std::numeric_limits<float>::max());
    __m128 good = _mm_castsi128_ps(_mm_set1_epi32(-1));
    for (int64_t i = first; i < stop; ++i) {
      __m128 lo, hi, a, b;
      box_corners<D>(p + 2 * D * i, &lo, &hi, &a, &b);
      good = _mm_and_ps(good, _mm_cmple_ps(_mm_and_ps(a, abs_mask), max));
      good = _mm_and_ps(good, _mm_cmple_ps(_mm_and_ps(b, abs_mask), max));
      good = _mm_and_ps(good, _mm_cmpge_ps(hi, lo));
    }
    if (_mm_movemask_ps(good) != 0xf) return false;
#else
    constexpr float kMax = std::numeric_limits<float>::max();
    int good = 1;
    for (int64_t i = first; i < stop; ++i) {
      const float* box = p + 2 * D * i;
      for (int t = 0; t < D; ++t) {
        const float lo = box[t], hi = box[t + D];
        good &= static_cast<int>(std::fabs(lo) <= kMax) & static_cast<int>(std::fabs(hi) <= kMax) &
                static_cast<int>(hi >= lo);
      }
    }
    if (!good) return false;
#endif
  }
  return true;
}

bool boxes_all_good(const float* p, int64_t n, int dims) {
  return dims == 2 ? boxes_all_good<2>(p, n) : boxes_all_good<3>(p, n);
}

// What a box whose upper corner lies below its lower one is told.
const char* misordered(int dims) {
  return dims == 2 ? " has x2 < x1 or y2 < y1" : " has x2 < x1, y2 < y1 or z2 < z1";
}

const char* layout(const Tensor& boxes, bool batched) {
  if (boxes.size(-1) == 4) return batched ? "2-D ([B, G, 4])" : "2-D ([A, 4])";
  return batched ? "3-D ([B, G, 6])" : "3-D ([A, 6])";
}

void check_dtype(const Tensor& t, const char* name, ScalarType dtype) {
  ATSS_CHECK_VALUE(t.scalar_type() == dtype, name, " must be ", short_name(dtype), ", got ",
                   dtype_name(t.scalar_type()));
}

}  // namespace

void check_anchors(const Tensor& anchors) {
  ATSS_CHECK_VALUE(anchors.dim() == 2 && (anchors.size(1) == 4 || anchors.size(1) == 6),
                   "anchors must have shape [A, 4] (2-D) or [A, 6] (3-D), got shape ",
                   sizes_str(anchors.sizes()));
  check_dtype(anchors, "anchors", ScalarType::Float);
  check_num_anchors(anchors.size(0));
}

void check_num_anchors(int64_t num_anchors) {
  // Anchor indices travel as 32 bits inside the packed sort keys.
  ATSS_CHECK_VALUE(num_anchors <= std::numeric_limits<int32_t>::max(),
                   "anchors must hold at most 2^31 - 1 anchors, got A = ", num(num_anchors));
}

void check_gt_boxes(const Tensor& gt_boxes) {
  ATSS_CHECK_VALUE(gt_boxes.dim() == 3 && (gt_boxes.size(2) == 4 || gt_boxes.size(2) == 6),
                   "gt_boxes must have shape [B, G, 4] (2-D) or [B, G, 6] (3-D), got shape ",
                   sizes_str(gt_boxes.sizes()));
  check_dtype(gt_boxes, "gt_boxes", ScalarType::Float);
}

void check_same_dims(const Tensor& anchors, const Tensor& gt_boxes) {
  ATSS_CHECK_VALUE(anchors.size(-1) == gt_boxes.size(-1),
                   "anchors and gt_boxes must have the same number of axes: anchors are ",
                   layout(anchors, false), ", gt_boxes are ", layout(gt_boxes, true));
}

void check_distances(const Tensor& distances) {
  ATSS_CHECK_VALUE(distances.dim() == 3, "distances must have shape [B, G, A], got shape ",
                   sizes_str(distances.sizes()));
  check_dtype(distances, "distances", ScalarType::Float);
  check_num_anchors(distances.size(2));
}

void check_same_device(std::initializer_list<std::pair<const char*, const Tensor*>> named) {
  const char* first_name = nullptr;
  const Tensor* first = nullptr;
  for (const auto& [name, t] : named) {
    if (t == nullptr || !t->defined()) continue;
    if (first == nullptr) {
      first_name = name;
      first = t;
      continue;
    }
    ATSS_CHECK_VALUE(t->device() == first->device(), name, " is on ", device_str(*t), " but ",
                     first_name, " is on ", device_str(*first),
                     ": all tensors must be on one device");
  }
}

// Decimal digits of a non-negative 128-bit integer.
static std::string to_decimal(unsigned __int128 v) {
  std::string digits;
  do {
    digits.insert(digits.begin(), static_cast<char>('0' + static_cast<int>(v % 10)));
    v /= 10;
  } while (v != 0);
  return digits;
}

void check_levels(IntArrayRef num_anchors_per_level, int64_t num_anchors) {
  // 128-bit sum: level sizes near 2^63 must not wrap around to A.
  unsigned __int128 total = 0;
  for (int64_t n : num_anchors_per_level) {
    ATSS_CHECK_VALUE(n >= 0, "num_anchors_per_level entries must be >= 0, got ",
                     sizes_str(num_anchors_per_level));
    total += static_cast<unsigned __int128>(n);
  }
  ATSS_CHECK_VALUE(total == static_cast<unsigned __int128>(num_anchors),
                   "num_anchors_per_level must sum to A = ", num(num_anchors),
                   " (anchors.shape[0]), got ", sizes_str(num_anchors_per_level), " summing to ",
                   to_decimal(total));
}

void check_topk(int64_t topk) {
  ATSS_CHECK_VALUE(topk >= 1, "topk must be >= 1, got ", num(topk));
}

void check_center_eps(std::optional<double> center_eps) {
  if (!center_eps.has_value()) return;
  ATSS_CHECK_VALUE(std::isfinite(*center_eps) && *center_eps >= 0,
                   "center_eps must be finite and >= 0 (or None: no centre test), got ",
                   num(*center_eps));
}

void check_gt_counts(const OptionalTensor& gt_counts, int64_t batch) {
  if (!gt_counts.has_value()) return;
  const Tensor& t = *gt_counts;
  ATSS_CHECK_VALUE(t.dim() == 1 && t.size(0) == batch, "gt_counts must have shape [B] = [",
                   num(batch), "], got shape ", sizes_str(t.sizes()));
  check_dtype(t, "gt_counts", ScalarType::Long);
}

void check_anchor_mask(const OptionalTensor& mask, const char* name, int64_t batch,
                       int64_t num_anchors) {
  if (!mask.has_value()) return;
  const Tensor& t = *mask;
  ATSS_CHECK_VALUE(t.dim() == 2 && t.size(0) == batch && t.size(1) == num_anchors, name,
                   " must have shape [B, A] = [", num(batch), ", ", num(num_anchors),
                   "], got shape ", sizes_str(t.sizes()));
  check_dtype(t, name, ScalarType::Bool);
}

void check_anchor_valid(const OptionalTensor& anchor_valid, int64_t batch, int64_t num_anchors) {
  check_anchor_mask(anchor_valid, "anchor_valid", batch, num_anchors);
}

void check_anchor_ignore(const OptionalTensor& anchor_ignore, int64_t batch, int64_t num_anchors) {
  check_anchor_mask(anchor_ignore, "anchor_ignore", batch, num_anchors);
}

void check_candidates(const Tensor& candidates, int64_t batch, int64_t num_gt) {
  ATSS_CHECK_VALUE(
      candidates.dim() == 3 && candidates.size(0) == batch && candidates.size(1) == num_gt,
      "candidates must have shape [B, G, C] with B = ", num(batch), ", G = ", num(num_gt),
      ", got shape ", sizes_str(candidates.sizes()));
  check_dtype(candidates, "candidates", ScalarType::Long);
}

void check_candidate_like(const Tensor& t, const char* name, const Tensor& candidates,
                          ScalarType dtype) {
  ATSS_CHECK_VALUE(same_sizes(t.sizes(), candidates.sizes()), name,
                   " must have the shape of candidates ", sizes_str(candidates.sizes()),
                   ", got shape ", sizes_str(t.sizes()));
  check_dtype(t, name, dtype);
}

void check_gt_counts_values(const OptionalTensor& gt_counts, int64_t num_gt) {
  if (!gt_counts.has_value()) return;
  const Tensor counts = as_contiguous(*gt_counts);
  const int64_t* p = data<int64_t>(counts);
  const int64_t count = counts.numel();
  for (int64_t b = 0; b < count; ++b) {
    ATSS_CHECK_VALUE(p[b] >= 0 && p[b] <= num_gt, "gt_counts[", num(b), "] = ", num(p[b]),
                     " is out of range [0, G = ", num(num_gt), "]");
  }
}

void check_box_values(const Tensor& anchors, const Tensor& gt_boxes,
                      const OptionalTensor& gt_counts) {
  const int64_t num_gt = gt_boxes.size(1);
  check_gt_counts_values(gt_counts, num_gt);
  // Non-finite boxes are reported before misordered ones, as in the reference.
  const int dims = static_cast<int>(anchors.size(1) / 2);
  const Tensor a = as_contiguous(anchors);
  const float* ap = data<float>(a);
  const int64_t num_anchors = a.size(0);
  for (int pass = boxes_all_good(ap, num_anchors, dims) ? 2 : 0; pass < 2; ++pass) {
    for (int64_t i = 0; i < num_anchors; ++i) {
      const float* box = ap + 2 * dims * i;
      if (pass == 0) {
        ATSS_CHECK_VALUE(box_finite(box, dims), "anchors[", num(i), "] = ", box_str(box, dims),
                         " is not finite");
      } else {
        ATSS_CHECK_VALUE(box_ordered(box, dims), "anchors[", num(i), "] = ", box_str(box, dims),
                         misordered(dims));
      }
    }
  }
  const Tensor g = as_contiguous(gt_boxes);
  const float* gp = data<float>(g);
  const OptionalTensor counts = as_contiguous(gt_counts);
  const int64_t* cp = data<int64_t>(counts);
  const int64_t batch = g.size(0);
  for (int pass = 0; pass < 2; ++pass) {
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t valid = valid_gt_count(cp, b, num_gt);
      for (int64_t j = 0; j < valid; ++j) {
        const float* box = gp + 2 * dims * (b * num_gt + j);
        if (pass == 0) {
          ATSS_CHECK_VALUE(box_finite(box, dims), "gt_boxes[", num(b), ", ", num(j),
                           "] = ", box_str(box, dims), " is not finite");
        } else {
          ATSS_CHECK_VALUE(box_ordered(box, dims), "gt_boxes[", num(b), ", ", num(j),
                           "] = ", box_str(box, dims), misordered(dims));
        }
      }
    }
  }
}

void check_candidate_values(const Tensor& candidates, int64_t num_anchors) {
  const Tensor c = as_contiguous(candidates);
  const int64_t* p = data<int64_t>(c);
  const int64_t G = c.size(1), C = c.size(2), count = c.numel();
  // Every value in [-1, A) exactly when value + 1 < A + 1 as unsigned: one
  // branch-free pass first (values near INT64_MAX wrap past A + 1, and A + 1
  // cannot overflow); the offender is looked for only when there is one.
  bool bad = false;
  const uint64_t limit = static_cast<uint64_t>(num_anchors) + 1;
  for (int64_t i = 0; i < count; ++i) bad |= static_cast<uint64_t>(p[i]) + 1 >= limit;
  if (!bad) return;
  for (int64_t i = 0; i < count; ++i) {
    if (p[i] < -1 || p[i] >= num_anchors) {
      const int64_t b = i / (G * C), g = (i / C) % G, k = i % C;
      ATSS_CHECK_VALUE(false, "candidates[", num(b), ", ", num(g), ", ", num(k), "] = ", num(p[i]),
                       " is out of range [-1, A) with A = ", num(num_anchors));
    }
  }
}

namespace {
const Tensor* maybe(const OptionalTensor& t) {
  return t ? &*t : nullptr;
}
}  // namespace

void check_center_distance_args(const Tensor& anchors, const Tensor& gt_boxes,
                                const OptionalTensor& gt_counts) {
  check_anchors(anchors);
  check_gt_boxes(gt_boxes);
  check_same_dims(anchors, gt_boxes);
  check_same_device(
      {{"anchors", &anchors}, {"gt_boxes", &gt_boxes}, {"gt_counts", maybe(gt_counts)}});
  check_gt_counts(gt_counts, gt_boxes.size(0));
}

void check_topk_per_level_args(const Tensor& distances, IntArrayRef num_anchors_per_level,
                               int64_t topk, const OptionalTensor& gt_counts,
                               const OptionalTensor& anchor_valid,
                               const OptionalTensor& anchor_ignore) {
  check_distances(distances);
  check_same_device({{"distances", &distances},
                     {"gt_counts", maybe(gt_counts)},
                     {"anchor_valid", maybe(anchor_valid)},
                     {"anchor_ignore", maybe(anchor_ignore)}});
  check_levels(num_anchors_per_level, distances.size(2));
  check_topk(topk);
  check_gt_counts(gt_counts, distances.size(0));
  check_anchor_valid(anchor_valid, distances.size(0), distances.size(2));
  check_anchor_ignore(anchor_ignore, distances.size(0), distances.size(2));
}

void check_iou_statistics_args(const Tensor& anchors, const Tensor& gt_boxes,
                               const Tensor& candidates, const OptionalTensor& gt_counts,
                               std::optional<double> center_eps) {
  check_anchors(anchors);
  check_gt_boxes(gt_boxes);
  check_same_dims(anchors, gt_boxes);
  check_candidates(candidates, gt_boxes.size(0), gt_boxes.size(1));
  check_same_device({{"anchors", &anchors},
                     {"gt_boxes", &gt_boxes},
                     {"candidates", &candidates},
                     {"gt_counts", maybe(gt_counts)}});
  check_gt_counts(gt_counts, gt_boxes.size(0));
  check_center_eps(center_eps);
}

void check_resolve_multi_gt_args(const Tensor& candidates, const Tensor& candidate_iou,
                                 const Tensor& is_positive, int64_t num_anchors,
                                 const OptionalTensor& anchor_ignore) {
  const int64_t B = candidates.dim() > 0 ? candidates.size(0) : 0;
  const int64_t G = candidates.dim() > 1 ? candidates.size(1) : 0;
  check_candidates(candidates, B, G);
  check_candidate_like(candidate_iou, "candidate_iou", candidates, ScalarType::Float);
  check_candidate_like(is_positive, "is_positive", candidates, ScalarType::Bool);
  check_same_device({{"candidates", &candidates},
                     {"candidate_iou", &candidate_iou},
                     {"is_positive", &is_positive},
                     {"anchor_ignore", maybe(anchor_ignore)}});
  ATSS_CHECK_VALUE(num_anchors >= 0, "num_anchors must be >= 0, got ", num(num_anchors));
  check_num_anchors(num_anchors);
  check_anchor_ignore(anchor_ignore, B, num_anchors);
}

void check_atss_assign_args(const Tensor& anchors, IntArrayRef num_anchors_per_level,
                            const Tensor& gt_boxes, const OptionalTensor& gt_counts, int64_t topk,
                            const OptionalTensor& anchor_valid, std::optional<double> center_eps,
                            const OptionalTensor& anchor_ignore) {
  check_anchors(anchors);
  check_gt_boxes(gt_boxes);
  check_same_dims(anchors, gt_boxes);
  check_same_device({{"anchors", &anchors},
                     {"gt_boxes", &gt_boxes},
                     {"gt_counts", maybe(gt_counts)},
                     {"anchor_valid", maybe(anchor_valid)},
                     {"anchor_ignore", maybe(anchor_ignore)}});
  check_levels(num_anchors_per_level, anchors.size(0));
  check_topk(topk);
  check_center_eps(center_eps);
  check_gt_counts(gt_counts, gt_boxes.size(0));
  check_anchor_valid(anchor_valid, gt_boxes.size(0), anchors.size(0));
  check_anchor_ignore(anchor_ignore, gt_boxes.size(0), anchors.size(0));
}

namespace {

std::string dims_str(std::initializer_list<int64_t> sizes) {
  std::string out = "[";
  size_t i = 0;
  for (int64_t n : sizes) out += (i++ ? ", " : "") + num(n);
  return out + "]";
}

// alpha, beta: the powers the contract's routine P computes (multiples of 0.5 in [0, 1024]).
void check_power(double value, const char* name) {
  const bool ok =
      std::isfinite(value) && value >= 0 && value <= 1024.0 && value * 2 == std::floor(value * 2);
  ATSS_CHECK_VALUE(ok, name,
                   " must be a multiple of 0.5 in [0, 1024] (0, 0.5, 1, 1.5, ...: the powers the "
                   "contract computes exactly), got ",
                   num(value));
}

// Finite, then ordered (x2 >= x1, y2 >= y1), named `name[i, j]`, for the first `valid(i)` rows
// of each of `rows` blocks of `cols` 2-D boxes.
template <class Valid>
void check_boxes_2d(const char* name, const float* p, int64_t rows, int64_t cols,
                    const Valid& valid) {
  for (int pass = 0; pass < 2; ++pass) {
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t n = valid(i);
      for (int64_t j = 0; j < n; ++j) {
        const float* box = p + 4 * (i * cols + j);
        if (pass == 0) {
          ATSS_CHECK_VALUE(box_finite(box, 2), name, "[", num(i), ", ", num(j),
                           "] = ", box_str(box, 2), " is not finite");
        } else {
          ATSS_CHECK_VALUE(box_ordered(box, 2), name, "[", num(i), ", ", num(j),
                           "] = ", box_str(box, 2), misordered(2));
        }
      }
    }
  }
}

}  // namespace

void check_tal_assign_args(const Tensor& pred_scores, const Tensor& pred_boxes,
                           const Tensor& anchor_points, const Tensor& gt_boxes,
                           const Tensor& gt_labels, const OptionalTensor& gt_counts, int64_t topk,
                           double alpha, double beta, std::optional<double> min_side,
                           std::optional<int64_t> topk2, double eps) {
  ATSS_CHECK_VALUE(pred_scores.dim() == 3, "pred_scores must have shape [B, A, C], got shape ",
                   sizes_str(pred_scores.sizes()));
  check_dtype(pred_scores, "pred_scores", ScalarType::Float);
  const int64_t B = pred_scores.size(0), A = pred_scores.size(1);
  check_num_anchors(A);
  ATSS_CHECK_VALUE(pred_boxes.dim() == 3 && pred_boxes.size(0) == B && pred_boxes.size(1) == A &&
                       pred_boxes.size(2) == 4,
                   "pred_boxes must have shape [B, A, 4] = ", dims_str({B, A, 4}), ", got shape ",
                   sizes_str(pred_boxes.sizes()));
  check_dtype(pred_boxes, "pred_boxes", ScalarType::Float);
  ATSS_CHECK_VALUE(
      anchor_points.dim() == 2 && anchor_points.size(0) == A && anchor_points.size(1) == 2,
      "anchor_points must have shape [A, 2] = ", dims_str({A, 2}), ", got shape ",
      sizes_str(anchor_points.sizes()));
  check_dtype(anchor_points, "anchor_points", ScalarType::Float);
  ATSS_CHECK_VALUE(gt_boxes.dim() == 3 && gt_boxes.size(0) == B && gt_boxes.size(2) == 4,
                   "gt_boxes must have shape [B, G, 4] with B = ", num(B), ", got shape ",
                   sizes_str(gt_boxes.sizes()));
  check_dtype(gt_boxes, "gt_boxes", ScalarType::Float);
  const int64_t G = gt_boxes.size(1);
  ATSS_CHECK_VALUE(gt_labels.dim() == 2 && gt_labels.size(0) == B && gt_labels.size(1) == G,
                   "gt_labels must have shape [B, G] = ", dims_str({B, G}), ", got shape ",
                   sizes_str(gt_labels.sizes()));
  check_dtype(gt_labels, "gt_labels", ScalarType::Long);
  check_same_device({{"pred_scores", &pred_scores},
                     {"pred_boxes", &pred_boxes},
                     {"anchor_points", &anchor_points},
                     {"gt_boxes", &gt_boxes},
                     {"gt_labels", &gt_labels},
                     {"gt_counts", maybe(gt_counts)}});
  check_gt_counts(gt_counts, B);
  check_topk(topk);
  if (topk2.has_value()) {
    ATSS_CHECK_VALUE(*topk2 >= 1, "topk2 must be >= 1 (or None: no second filter), got ",
                     num(*topk2));
  }
  check_power(alpha, "alpha");
  check_power(beta, "beta");
  if (min_side.has_value()) {
    ATSS_CHECK_VALUE(std::isfinite(*min_side) && *min_side > 0,
                     "min_side must be finite and > 0 (or None: no widening), got ",
                     num(*min_side));
  }
  ATSS_CHECK_VALUE(std::isfinite(eps) && eps >= 0, "eps must be finite and >= 0, got ", num(eps));
}

void check_tal_values(const Tensor& pred_scores, const Tensor& pred_boxes,
                      const Tensor& anchor_points, const Tensor& gt_boxes, const Tensor& gt_labels,
                      const OptionalTensor& gt_counts) {
  const int64_t B = gt_boxes.size(0), G = gt_boxes.size(1), A = anchor_points.size(0);
  const int64_t C = pred_scores.size(2);
  check_gt_counts_values(gt_counts, G);
  const Tensor points = as_contiguous(anchor_points);
  const float* pp = data<float>(points);
  for (int64_t i = 0; i < A; ++i) {
    ATSS_CHECK_VALUE(std::isfinite(pp[2 * i]) && std::isfinite(pp[2 * i + 1]), "anchor_points[",
                     num(i), "] = ", box_str(pp + 2 * i, 1), " is not finite");
  }
  const Tensor pred = as_contiguous(pred_boxes);
  const float* pb = data<float>(pred);
  if (!boxes_all_good(pb, B * A, 2)) {
    check_boxes_2d("pred_boxes", pb, B, A, [A](int64_t) { return A; });
  }
  const OptionalTensor counts = as_contiguous(gt_counts);
  const int64_t* cp = data<int64_t>(counts);
  const auto valid = [cp, G](int64_t b) { return valid_gt_count(cp, b, G); };
  const Tensor g = as_contiguous(gt_boxes);
  check_boxes_2d("gt_boxes", data<float>(g), B, G, valid);
  const Tensor labels = as_contiguous(gt_labels);
  const int64_t* lp = data<int64_t>(labels);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t j = 0; j < valid(b); ++j) {
      const int64_t label = lp[b * G + j];
      ATSS_CHECK_VALUE(label >= 0 && label < C, "gt_labels[", num(b), ", ", num(j),
                       "] = ", num(label), " is out of range [0, C = ", num(C), ")");
    }
  }
}

Tensor unassigned_gt_index(const Tensor& like, int64_t batch, int64_t num_anchors,
                           const OptionalTensor& anchor_ignore) {
  if (!anchor_ignore || batch * num_anchors == 0) {
    return new_full(like, {batch, num_anchors}, ScalarType::Long, -1.0);
  }
  // -1 - ignore, so -2 where ignored (the stable ABI has no masked_fill_; its
  // subtract takes a float alpha, which integer tensors refuse: float32 holds -1
  // and -2 exactly).
  const Tensor minus_one = new_full(like, {batch, num_anchors}, ScalarType::Float, -1.0);
  return torch::stable::to(
      torch::stable::subtract(minus_one, torch::stable::to(*anchor_ignore, ScalarType::Float)),
      ScalarType::Long);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> background_assignment(
    int64_t batch, int64_t num_gt, int64_t num_anchors, const Tensor& anchors,
    const OptionalTensor& anchor_ignore) {
  return {unassigned_gt_index(anchors, batch, num_anchors, anchor_ignore),
          new_full(anchors, {batch, num_anchors}, ScalarType::Float, 0.0),
          new_full(anchors, {batch, num_gt}, ScalarType::Float,
                   std::numeric_limits<float>::quiet_NaN()),
          new_full(anchors, {batch, num_gt}, ScalarType::Long, 0.0)};
}

int64_t num_candidate_slots(IntArrayRef num_anchors_per_level, int64_t topk) {
  int64_t total = 0;
  for (int64_t n : num_anchors_per_level) total += n < topk ? n : topk;
  return total;
}

}  // namespace atss

// The record of text.h's fail_value, for atss_ops's Python wrappers (through
// ctypes): the message of the last input error raised on the calling thread by
// this library ("" if none).
extern "C" __attribute__((visibility("default"))) const char* atss_ops_last_input_error() {
  return atss::last_input_error.c_str();
}
