// An execution model of CUDA on the host, for running the kernel sources of
// csrc/cuda/ where no GPU is at hand (the test-only library atss_ops_emu).
//
// A kernel source compiles unchanged against this header except for three
// macros of csrc/cuda/runtime.cuh: ATSS_LAUNCH (the triple-chevron launch),
// ATSS_DYNAMIC_SMEM (extern __shared__) and ATSS_SHARED (static __shared__).
//
// The model:
//   * Every thread of a block is an OS thread, 32 lanes to a warp, so that the
//     scheduler interleaves them for real and ThreadSanitizer sees it.
//   * __syncthreads waits for every thread of the block at the same call site;
//     warp collectives (__syncwarp, __shfl*_sync, __reduce_*_sync, vote) wait
//     for every lane their mask names, at the same collective with the same
//     mask. A lane outside its own mask, a source lane outside the mask, masks
//     that disagree, or a state where every thread of the block waits and no
//     barrier can complete (a divergent barrier, an exited thread) fails the
//     launch with a message naming the kernel, the block and the barrier: it
//     never hangs. A watchdog (ATSS_EMU_TIMEOUT seconds, default 600) aborts
//     the process if a launch makes no progress at all.
//   * Dynamic shared memory is one heap allocation of exactly the requested
//     size per block (AddressSanitizer catches an overflow), static __shared__
//     variables one each; both start filled with a garbage pattern. Launches
//     the device rejects are rejected: block > 1024 threads (or x, y > 1024,
//     z > 64), grid x > 2^31 - 1, y or z > 65535, an empty grid or block, more
//     than 48 KB of dynamic shared memory without the opt-in attribute
//     (cudaFuncSetAttribute), more than 227 KB with it.
//   * Blocks run in a shuffled order (seed ATSS_EMU_SEED, default 0, mixed
//     with a per-process launch counter), ATSS_EMU_CONCURRENCY blocks at a
//     time (default 2), so that blocks of one launch really run concurrently.
//   * Memory model under ThreadSanitizer (the TSan build of the library): the
//     emulator's own synchronisation is hidden from TSan, which sees only the
//     orderings CUDA guarantees: __syncthreads orders the block, __syncwarp the
//     lanes it names, a kernel launch everything before and after it, and
//     __threadfence is a fence.sc: fences are totally ordered (as they run) and
//     each synchronises with every later one. Shuffles, votes and atomic
//     read-modify-writes exchange values but order no memory (atomics are
//     relaxed, as on the device). So the "last block" pattern is race-free only
//     with a fence on the writers' side before the counter's atomic and one on
//     the reader's side after it; a missing fence or barrier is a data race
//     that TSan reports.
//
// What it does not model: the GPU's own NaN bits (the host's arithmetic runs,
// so a missing canonical-NaN fix-up goes unseen), floating-point special
// instructions beyond IEEE +-*/ and sqrt, register and launch-bounds limits,
// timing, and the memory model of plain accesses outside TSan (x86 is stronger
// than the GPU; only the TSan build checks the orderings above).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>

// ----------------------------------------------------------------- keywords

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __grid_constant__
#define __align__(n) alignas(n)

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
inline float2 make_float2(float x, float y) {
  return float2{x, y};
}
inline float4 make_float4(float x, float y, float z, float w) {
  return float4{x, y, z, w};
}

// The block and thread coordinates of the calling (emulated) thread.
extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;

namespace atss::emu {

// Where a barrier or collective is called from, for error messages.
struct Site {
  const char* file;
  int line;
};

enum class Collective : uint8_t {
  kSyncwarp,
  kShfl,
  kShflXor,
  kShflUp,
  kShflDown,
  kReduceMinU,
  kReduceMaxU,
  kReduceMinS,
  kReduceMaxS,
  kReduceAdd,
  kBallot,
  kAny,
  kAll,
};

void syncthreads(Site site);
// The warp collective `kind` of the calling lane with `mask`; `value` holds the
// lane's operand bits, `param` the source lane / lane mask / delta. Returns
// the result bits.
uint64_t warp_collective(Site site, Collective kind, unsigned mask, uint64_t value, int param);

void threadfence();
void* dynamic_shared_memory();
void* static_shared_memory(const void* tag, size_t bytes, size_t align);

// Atomic read-modify-writes (relaxed, with the fence model above).
uint32_t atomic_add_u32(uint32_t* addr, uint32_t v);
uint64_t atomic_add_u64(uint64_t* addr, uint64_t v);
uint32_t atomic_max_u32(uint32_t* addr, uint32_t v);
uint64_t atomic_max_u64(uint64_t* addr, uint64_t v);
uint32_t atomic_min_u32(uint32_t* addr, uint32_t v);
uint64_t atomic_min_u64(uint64_t* addr, uint64_t v);
int32_t atomic_add_s32(int32_t* addr, int32_t v);
int32_t atomic_max_s32(int32_t* addr, int32_t v);
int32_t atomic_min_s32(int32_t* addr, int32_t v);
uint32_t atomic_cas_u32(uint32_t* addr, uint32_t expected, uint32_t desired);
uint64_t atomic_cas_u64(uint64_t* addr, uint64_t expected, uint64_t desired);

// Runs `body` as the kernel `name` over the grid (see the model above).
// `kernel` identifies the kernel for its attributes. Throws std::runtime_error
// when the launch is rejected or fails.
void launch_grid(const char* name, const void* kernel, dim3 grid, dim3 block, size_t dynamic_smem,
                 std::function<void()> body);

// cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes).
void set_max_dynamic_smem(const void* kernel, int bytes);

template <class T>
uint64_t to_bits(T v) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8,
                "collective operands are <= 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}

template <class T>
T from_bits(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

template <class... Params>
class Launch {
 public:
  Launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem)
      : name_(name), kernel_(kernel), grid_(grid), block_(block), smem_(smem) {}

  // The kernel's arguments, converted to its parameter types as the device
  // launch does, are copied once; every thread calls the kernel on a copy.
  template <class... Args>
  void operator()(Args&&... args) const {
    static_assert(sizeof...(Args) == sizeof...(Params), "wrong number of kernel arguments");
    auto packed =
        std::make_shared<const std::tuple<std::decay_t<Params>...>>(std::forward<Args>(args)...);
    void (*kernel)(Params...) = kernel_;
    launch_grid(name_, reinterpret_cast<const void*>(kernel_), grid_, block_, smem_,
                [kernel, packed] { std::apply(kernel, *packed); });
  }

 private:
  const char* name_;
  void (*kernel_)(Params...);
  dim3 grid_, block_;
  size_t smem_;
};

template <class... Params>
Launch<Params...> make_launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block,
                              size_t smem) {
  return Launch<Params...>(name, kernel, grid, block, smem);
}

}  // namespace atss::emu

#define ATSS_EMU_SITE (::atss::emu::Site{__FILE__, __LINE__})

// ----------------------------------------------------------------- barriers and warp collectives

#define __syncthreads() ::atss::emu::syncthreads(ATSS_EMU_SITE)
#define __syncwarp(...) ::atss_emu_syncwarp(ATSS_EMU_SITE __VA_OPT__(, ) __VA_ARGS__)
#define __shfl_sync(mask, value, lane, ...) \
  ::atss_emu_shfl(ATSS_EMU_SITE, ::atss::emu::Collective::kShfl, mask, value, lane)
#define __shfl_xor_sync(mask, value, lane_mask, ...) \
  ::atss_emu_shfl(ATSS_EMU_SITE, ::atss::emu::Collective::kShflXor, mask, value, lane_mask)
#define __shfl_up_sync(mask, value, delta, ...) \
  ::atss_emu_shfl(ATSS_EMU_SITE, ::atss::emu::Collective::kShflUp, mask, value, delta)
#define __shfl_down_sync(mask, value, delta, ...) \
  ::atss_emu_shfl(ATSS_EMU_SITE, ::atss::emu::Collective::kShflDown, mask, value, delta)
#define __reduce_min_sync(mask, value) ::atss_emu_reduce(ATSS_EMU_SITE, true, mask, value)
#define __reduce_max_sync(mask, value) ::atss_emu_reduce(ATSS_EMU_SITE, false, mask, value)
#define __reduce_add_sync(mask, value)                                                       \
  static_cast<decltype(+(value))>(                                                           \
      ::atss::emu::warp_collective(ATSS_EMU_SITE, ::atss::emu::Collective::kReduceAdd, mask, \
                                   static_cast<uint64_t>(static_cast<uint32_t>(value)), 0))
#define __ballot_sync(mask, pred)                     \
  static_cast<unsigned>(::atss::emu::warp_collective( \
      ATSS_EMU_SITE, ::atss::emu::Collective::kBallot, mask, (pred) ? 1u : 0u, 0))
#define __any_sync(mask, pred)                                                                \
  static_cast<int>(::atss::emu::warp_collective(ATSS_EMU_SITE, ::atss::emu::Collective::kAny, \
                                                mask, (pred) ? 1u : 0u, 0))
#define __all_sync(mask, pred)                                                                \
  static_cast<int>(::atss::emu::warp_collective(ATSS_EMU_SITE, ::atss::emu::Collective::kAll, \
                                                mask, (pred) ? 1u : 0u, 0))

inline void atss_emu_syncwarp(atss::emu::Site site, unsigned mask = 0xffffffffu) {
  atss::emu::warp_collective(site, atss::emu::Collective::kSyncwarp, mask, 0, 0);
}

template <class T>
T atss_emu_shfl(atss::emu::Site site, atss::emu::Collective kind, unsigned mask, T value,
                int param) {
  return atss::emu::from_bits<T>(
      atss::emu::warp_collective(site, kind, mask, atss::emu::to_bits(value), param));
}

template <class T>
T atss_emu_reduce(atss::emu::Site site, bool min, unsigned mask, T value) {
  static_assert(std::is_integral_v<T> && sizeof(T) == 4, "__reduce_*_sync takes 32-bit integers");
  using atss::emu::Collective;
  const Collective kind = std::is_signed_v<T>
                              ? (min ? Collective::kReduceMinS : Collective::kReduceMaxS)
                              : (min ? Collective::kReduceMinU : Collective::kReduceMaxU);
  const uint64_t bits = static_cast<uint32_t>(value);
  return static_cast<T>(
      static_cast<uint32_t>(atss::emu::warp_collective(site, kind, mask, bits, 0)));
}

// ----------------------------------------------------------------- memory

inline void __threadfence() {
  atss::emu::threadfence();
}
inline void __threadfence_block() {
  atss::emu::threadfence();
}

template <class T>
inline T __ldg(const T* p) {
  return *p;
}
template <class T>
inline T __ldcg(const T* p) {
  return *p;
}

inline unsigned atomicAdd(unsigned* a, unsigned v) {
  return atss::emu::atomic_add_u32(a, v);
}
inline int atomicAdd(int* a, int v) {
  return atss::emu::atomic_add_s32(a, v);
}
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) {
  return atss::emu::atomic_add_u64(reinterpret_cast<uint64_t*>(a), v);
}
inline unsigned atomicMax(unsigned* a, unsigned v) {
  return atss::emu::atomic_max_u32(a, v);
}
inline int atomicMax(int* a, int v) {
  return atss::emu::atomic_max_s32(a, v);
}
inline unsigned long long atomicMax(unsigned long long* a, unsigned long long v) {
  return atss::emu::atomic_max_u64(reinterpret_cast<uint64_t*>(a), v);
}
inline unsigned atomicMin(unsigned* a, unsigned v) {
  return atss::emu::atomic_min_u32(a, v);
}
inline int atomicMin(int* a, int v) {
  return atss::emu::atomic_min_s32(a, v);
}
inline unsigned long long atomicMin(unsigned long long* a, unsigned long long v) {
  return atss::emu::atomic_min_u64(reinterpret_cast<uint64_t*>(a), v);
}
inline unsigned atomicCAS(unsigned* a, unsigned expected, unsigned desired) {
  return atss::emu::atomic_cas_u32(a, expected, desired);
}
inline unsigned long long atomicCAS(unsigned long long* a, unsigned long long expected,
                                    unsigned long long desired) {
  return atss::emu::atomic_cas_u64(reinterpret_cast<uint64_t*>(a), expected, desired);
}

inline unsigned __float_as_uint(float v) {
  return atss::emu::from_bits<unsigned>(atss::emu::to_bits(v));
}
inline float __uint_as_float(unsigned v) {
  return atss::emu::from_bits<float>(atss::emu::to_bits(v));
}
inline long long __double_as_longlong(double v) {
  return atss::emu::from_bits<long long>(atss::emu::to_bits(v));
}
inline double __longlong_as_double(long long v) {
  return atss::emu::from_bits<double>(atss::emu::to_bits(v));
}

// ----------------------------------------------------------------- launch-side API

enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

template <class... Params>
inline int cudaFuncSetAttribute(void (*kernel)(Params...), cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    atss::emu::set_max_dynamic_smem(reinterpret_cast<const void*>(kernel), value);
  }
  return 0;
}

#define ATSS_EMU_LAUNCH(grid, block, smem, ...)                                \
  ::atss::emu::make_launch(#__VA_ARGS__, __VA_ARGS__, dim3(grid), dim3(block), \
                           static_cast<size_t>(smem))
#define ATSS_EMU_DYNAMIC_SMEM(type, name) \
  type* const name = static_cast<type*>(::atss::emu::dynamic_shared_memory())
#define ATSS_EMU_SHARED(type, name)     \
  static const char name##_emu_tag = 0; \
  type& name = *static_cast<type*>(     \
      ::atss::emu::static_shared_memory(&name##_emu_tag, sizeof(type), alignof(type)))
