// The one way into torch's stable-ABI headers: every source includes this before
// any of them (a later include is an error below).
//
// No iostreams in the library (see text.h): torch's header-only error paths
// format their messages with std::stringstream, including line numbers, the
// pattern that crashed on a toolchain linking parts of libstdc++ statically. So:
//   * STRIP_ERROR_MESSAGES makes STD_TORCH_CHECK (the TORCH_BOX boxer's arity
//     checks, which a correct schema never trips) use a fixed string;
//   * STABLE_TORCH_ERROR_CODE_CHECK, which wraps every C-shim call of the stable
//     headers (tensor sizes, allocation, ...), is redefined to throw a message
//     built from strings alone. torch logs the failing call's own message.
// tests/test_stable_abi.py checks the built libraries for iostream symbols.
#pragma once

#if defined(STABLE_TORCH_ERROR_CODE_CHECK)
#error "include csrc/common/stable.h before any torch header"
#endif
#ifndef STRIP_ERROR_MESSAGES
#define STRIP_ERROR_MESSAGES
#endif

#include <torch/csrc/stable/macros.h>

#include <stdexcept>
#include <string>

namespace atss {

[[noreturn]] inline void torch_call_failed(const char* call) {
  throw std::runtime_error(std::string("atss_ops: the torch C API call ") + call +
                           " failed (torch logged the reason)");
}

}  // namespace atss

#undef STABLE_TORCH_ERROR_CODE_CHECK
#define STABLE_TORCH_ERROR_CODE_CHECK(call) \
  if ((call) != TORCH_SUCCESS) {            \
    ::atss::torch_call_failed(#call);       \
  }

#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/device.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/DeviceType.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/HeaderOnlyArrayRef.h>
