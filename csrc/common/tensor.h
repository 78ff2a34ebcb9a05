// The tensor vocabulary of the library, on the LibTorch stable ABI alone
// (torch/csrc/stable and torch/headeronly): the compiled library works with
// every torch from the target version on (TORCH_TARGET_VERSION, set by the
// build from pyproject.toml's torch requirement), so no ATen, no c10 beyond
// torch/headeronly, no pybind11.
//
// Allocation goes through the C shim's empty_strided, a direct call, rather
// than the boxed dispatcher call of torch::stable::empty: the CPU kernels of
// small calls take about 150 us in all, and four outputs through the boxed
// path would cost a few percent of that.
#pragma once

#include "stable.h"  // first: before any torch header

#include <cstdint>
#include <initializer_list>
#include <optional>

namespace atss {

using Tensor = torch::stable::Tensor;
using OptionalTensor = std::optional<torch::stable::Tensor>;
using IntArrayRef = torch::headeronly::IntHeaderOnlyArrayRef;
using ScalarType = torch::headeronly::ScalarType;

namespace dtype {
inline constexpr ScalarType kFloat = ScalarType::Float;
inline constexpr ScalarType kLong = ScalarType::Long;
inline constexpr ScalarType kBool = ScalarType::Bool;
inline constexpr ScalarType kByte = ScalarType::Byte;
inline constexpr ScalarType kInt = ScalarType::Int;
}  // namespace dtype

// A new contiguous tensor of `sizes` and `scalar_type` on `like`'s device,
// uninitialised.
inline Tensor new_empty(const Tensor& like, std::initializer_list<int64_t> sizes,
                        ScalarType scalar_type) {
  int64_t strides[8];
  const int64_t ndim = static_cast<int64_t>(sizes.size());
  int64_t stride = 1;
  for (int64_t i = ndim - 1; i >= 0; --i) {
    strides[i] = stride;
    const int64_t n = sizes.begin()[i];
    stride *= n > 1 ? n : 1;
  }
  int32_t device_type = 0;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_device_type(like.get(), &device_type));
  const int32_t device_index = like.get_device_index();
  AtenTensorHandle handle = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_empty_strided(
      ndim, sizes.begin(), strides,
      torch::stable::detail::to<int32_t>(torch::stable::detail::from(scalar_type)), device_type,
      device_index < 0 ? 0 : device_index, &handle));
  return Tensor(handle);
}

// The same, every element `value`.
inline Tensor new_full(const Tensor& like, std::initializer_list<int64_t> sizes,
                       ScalarType scalar_type, double value) {
  Tensor out = new_empty(like, sizes, scalar_type);
  if (out.numel() > 0) torch::stable::fill_(out, value);
  return out;
}

// `t` itself when contiguous (no dispatcher call), else a contiguous copy.
inline Tensor as_contiguous(const Tensor& t) {
  return t.is_contiguous() ? t : torch::stable::contiguous(t);
}

inline OptionalTensor as_contiguous(const OptionalTensor& t) {
  return t.has_value() ? OptionalTensor(as_contiguous(*t)) : std::nullopt;
}

// Typed data pointers (null for an absent optional).
template <class T>
T* data(const Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

template <class T>
T* data(const OptionalTensor& t) {
  return t.has_value() ? static_cast<T*>(t->data_ptr()) : nullptr;
}

}  // namespace atss
