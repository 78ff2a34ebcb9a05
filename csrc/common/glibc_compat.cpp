// Keeps the compiled libraries within the manylinux_2_28 symbol set (glibc 2.28,
// GLIBCXX 3.4.25), whatever newer glibc and GCC build them: two symbols that
// GCC 11+'s libstdc++ headers reference from inline code get local definitions
// here, with hidden visibility, so the libraries never ask the system for them.
// `auditwheel show` on the wheel (make wheel) and tests/test_stable_abi.py check
// the result.
#include <new>

// glibc 2.32's flag that libstdc++'s reference counting reads to skip atomics in
// a single-threaded process (shared_ptr, inside torch::stable::Tensor). 0 ("other
// threads may exist") always takes the atomic path: correct, and what the
// library did before glibc 2.32.
extern "C" {
__attribute__((visibility("hidden"))) char __libc_single_threaded = 0;
}

namespace std {
// GLIBCXX_3.4.29: what an array `new` or an allocator throws for an impossible
// size (GCC 11+ headers call it).
[[noreturn]] __attribute__((visibility("hidden"))) void __throw_bad_array_new_length() {
  throw std::bad_array_new_length();
}
}  // namespace std
