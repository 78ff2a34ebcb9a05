// Error messages without iostreams. The messages of the input checks are built
// from strings alone (numbers through num()) and thrown as c10::ValueError
// directly. Why: on a toolchain that links parts of libstdc++ statically into
// the extension while torch uses the shared one (seen with the GPU machine's
// compiler), formatting a number through an ostream in the extension reads the
// other library's locale facets and crashes; c10::str (TORCH_CHECK's message
// builder) does exactly that for every number. ATSS_CHECK_VALUE takes only
// text, so a number passed without num() does not compile.
#pragma once

#include <c10/util/Exception.h>

#include <cstdio>
#include <initializer_list>
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

[[noreturn]] inline void fail_value(const std::string& message, const char* func, const char* file,
                                    uint32_t line) {
  throw c10::ValueError({func, file, line}, message);
}

}  // namespace atss

// ValueError(message) unless `cond`; the message parts are strings (num() for numbers).
#define ATSS_CHECK_VALUE(cond, ...)                                       \
  do {                                                                    \
    if (!(cond)) {                                                        \
      ::atss::fail_value(::atss::text({__VA_ARGS__}), __func__, __FILE__, \
                         static_cast<uint32_t>(__LINE__));                \
    }                                                                     \
  } while (0)
