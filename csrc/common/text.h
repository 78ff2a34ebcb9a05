// Error messages without iostreams. The messages of the input checks are built
// from strings alone (numbers through num()) and thrown as std::invalid_argument,
// which torch turns into Python's ValueError with the message as it is (the
// stable ABI has no c10::ValueError; torch maps std::invalid_argument to
// ValueError, std::runtime_error to RuntimeError). Why no iostreams: on a
// toolchain that links parts of libstdc++ statically into the extension while
// torch uses the shared one (seen with the GPU machine's compiler), formatting
// a number through an ostream in the extension reads the other library's
// locale facets and crashes. ATSS_CHECK_VALUE takes only text, so a number
// passed without num() does not compile.
#pragma once

#include <cstdio>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>

namespace atss {

template <class T, std::enable_if_t<std::is_integral_v<T>, int> = 0>
std::string num(T v) {
  return std::to_string(v);
}

// As Python's f"{v:g}" and an ostream's default: 6 significant digits, nan, inf.
inline std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

inline std::string text(std::initializer_list<std::string_view> parts) {
  std::string out;
  for (std::string_view p : parts) out.append(p.data(), p.size());
  return out;
}

// The message of the last input error this library raised on the calling thread:
// torch 2.10 to 2.14 carry std::invalid_argument across the stable ABI as Python's
// ValueError, torch 2.15 as RuntimeError with the same message; atss_ops's Python
// wrappers read this record (atss_ops_last_input_error, checks.cpp) to tell the
// two apart and raise ValueError either way.
inline thread_local std::string last_input_error;

[[noreturn]] inline void fail_value(const std::string& message) {
  last_input_error = message;
  throw std::invalid_argument(message);
}

// A failure that is not the caller's input (a CUDA error): RuntimeError in Python.
[[noreturn]] inline void fail_runtime(const std::string& message) {
  throw std::runtime_error(message);
}

}  // namespace atss

// ValueError(message) unless `cond`; the message parts are strings (num() for numbers).
#define ATSS_CHECK_VALUE(cond, ...)                               \
  do {                                                            \
    if (!(cond)) ::atss::fail_value(::atss::text({__VA_ARGS__})); \
  } while (0)
