// The runtime of the CUDA execution model (see cuda_emu.h for the model).
#include "cuda_emu.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <random>
#include <semaphore>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#if defined(__SANITIZE_THREAD__)
#define ATSS_EMU_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define ATSS_EMU_TSAN 1
#endif
#endif

#if defined(ATSS_EMU_TSAN)
extern "C" {
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
void __tsan_ignore_thread_begin();
void __tsan_ignore_thread_end();
void AnnotateIgnoreSyncBegin(const char* file, int line);
void AnnotateIgnoreSyncEnd(const char* file, int line);
void AnnotateNewMemory(const char* file, int line, const volatile void* mem, long size);
}
#endif

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

namespace atss::emu {
namespace {

// ----------------------------------------------------------------- ThreadSanitizer plumbing

// Hides the emulator's own memory accesses and synchronisation from TSan, so
// that TSan sees only the orderings CUDA promises (made explicit below).
class Hidden {
 public:
  Hidden() {
#if defined(ATSS_EMU_TSAN)
    __tsan_ignore_thread_begin();
    AnnotateIgnoreSyncBegin(__FILE__, __LINE__);
#endif
  }
  ~Hidden() {
#if defined(ATSS_EMU_TSAN)
    AnnotateIgnoreSyncEnd(__FILE__, __LINE__);
    __tsan_ignore_thread_end();
#endif
  }
  Hidden(const Hidden&) = delete;
  Hidden& operator=(const Hidden&) = delete;
};

inline void tsan_release(void* obj) {
#if defined(ATSS_EMU_TSAN)
  __tsan_release(obj);
#else
  (void)obj;
#endif
}

inline void tsan_acquire(void* obj) {
#if defined(ATSS_EMU_TSAN)
  __tsan_acquire(obj);
#else
  (void)obj;
#endif
}

// tsan_release from inside a Hidden scope (the caller holds the block's lock).
inline void tsan_release_hidden(void* obj) {
#if defined(ATSS_EMU_TSAN)
  AnnotateIgnoreSyncEnd(__FILE__, __LINE__);
  __tsan_release(obj);
  AnnotateIgnoreSyncBegin(__FILE__, __LINE__);
#else
  (void)obj;
#endif
}

// Fresh memory for TSan: no earlier access of a previous owner is remembered.
inline void tsan_new_memory(const void* mem, size_t bytes) {
#if defined(ATSS_EMU_TSAN)
  AnnotateNewMemory(__FILE__, __LINE__, mem, static_cast<long>(bytes));
#else
  (void)mem;
  (void)bytes;
#endif
}

// ----------------------------------------------------------------- configuration

int64_t env_int(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  const long long parsed = std::strtoll(v, &end, 10);
  if (end == v || *end != '\0') {
    throw std::runtime_error(std::string("CUDA emulation: environment variable ") + name + "=" + v +
                             " is not an integer");
  }
  return parsed;
}

constexpr int kWarpSize = 32;
constexpr size_t kDefaultSmemLimit = 48 * 1024;
constexpr size_t kOptInSmemLimit = 227 * 1024;  // sm_90
constexpr unsigned char kGarbage = 0xA5;

const char* collective_name(Collective k) {
  switch (k) {
    case Collective::kSyncwarp:
      return "__syncwarp";
    case Collective::kShfl:
      return "__shfl_sync";
    case Collective::kShflXor:
      return "__shfl_xor_sync";
    case Collective::kShflUp:
      return "__shfl_up_sync";
    case Collective::kShflDown:
      return "__shfl_down_sync";
    case Collective::kReduceMinU:
    case Collective::kReduceMinS:
      return "__reduce_min_sync";
    case Collective::kReduceMaxU:
    case Collective::kReduceMaxS:
      return "__reduce_max_sync";
    case Collective::kReduceAdd:
      return "__reduce_add_sync";
    case Collective::kBallot:
      return "__ballot_sync";
    case Collective::kAny:
      return "__any_sync";
    case Collective::kAll:
      return "__all_sync";
  }
  return "?";
}

std::string site_str(Site s) {
  const char* base = std::strrchr(s.file, '/');
  return std::string(base ? base + 1 : s.file) + ":" + std::to_string(s.line);
}

std::string hex(unsigned mask) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0x%08x", mask);
  return buf;
}

// Thrown into every thread of a block that failed, to unwind its kernel code.
struct BlockAborted {};

// ----------------------------------------------------------------- one block

enum class State : uint8_t { kRunning, kAtBarrier, kAtCollective, kExited };

struct Pending {  // what a waiting thread waits at
  Site site{"", 0};
  Collective kind = Collective::kSyncwarp;
  unsigned mask = 0;
  uint64_t value = 0;
  int param = 0;
  uint64_t result = 0;
};

struct Block {
  const char* kernel;
  uint3 index;
  int num_threads;
  int num_warps;

  std::mutex mu;
  std::unique_ptr<std::binary_semaphore[]> wake;  // posted when the thread's wait is over
  std::vector<State> state;
  std::vector<Pending> pending;
  int running;
  int exited = 0;
  int at_barrier = 0;
  std::atomic<bool> failed{false};
  std::string error;
  int live_threads;  // threads that have not yet left the block (the runner frees it at 0)

  unsigned char* smem = nullptr;
  size_t smem_bytes = 0;
  std::vector<std::pair<const void*, void*>> statics;
  size_t static_bytes = 0;

  // TSan objects: __syncthreads instances alternate between two, so that a
  // fast thread's next barrier never leaks into a slow thread's acquire; the
  // same per warp for __syncwarp.
  char barrier_sync[2] = {0, 0};
  std::unique_ptr<char[]> warp_sync;  // [warp][2]
  std::vector<unsigned> warp_syncs;   // completed __syncwarp instances per warp

  Block(const char* kernel_name, uint3 idx, int threads, size_t dynamic_bytes)
      : kernel(kernel_name),
        index(idx),
        num_threads(threads),
        num_warps((threads + kWarpSize - 1) / kWarpSize),
        wake(static_cast<std::binary_semaphore*>(
            ::operator new[](sizeof(std::binary_semaphore) * threads))),
        state(threads, State::kRunning),
        pending(threads),
        running(threads),
        live_threads(threads),
        smem_bytes(dynamic_bytes),
        warp_sync(new char[2 * static_cast<size_t>((threads + kWarpSize - 1) / kWarpSize)]()),
        warp_syncs(static_cast<size_t>((threads + kWarpSize - 1) / kWarpSize), 0) {
    for (int t = 0; t < threads; ++t) new (&wake[t]) std::binary_semaphore(0);
    smem = static_cast<unsigned char*>(std::malloc(dynamic_bytes == 0 ? 1 : dynamic_bytes));
    if (smem == nullptr) throw std::bad_alloc();
    std::memset(smem, kGarbage, dynamic_bytes);
    tsan_new_memory(smem, dynamic_bytes);
  }

  ~Block() {
    for (int t = 0; t < num_threads; ++t) std::destroy_at(&wake[t]);
    ::operator delete[](wake.release());
    tsan_new_memory(smem, smem_bytes);
    std::free(smem);
    for (auto& s : statics) std::free(s.second);
  }

  std::string where() const {
    return std::string("kernel ") + kernel + ", block (" + std::to_string(index.x) + ", " +
           std::to_string(index.y) + ", " + std::to_string(index.z) + ")";
  }

  // Fails the block (caller holds mu): every waiting thread wakes and unwinds.
  void fail(const std::string& why) {
    if (failed) return;
    error = "CUDA emulation: " + where() + ": " + why;
    failed = true;
    for (int t = 0; t < num_threads; ++t) {
      if (state[t] == State::kAtBarrier || state[t] == State::kAtCollective) wake[t].release();
    }
  }

  std::string describe_thread(int t) const {
    switch (state[t]) {
      case State::kRunning:
        return "run";
      case State::kExited:
        return "have exited";
      case State::kAtBarrier:
        return "wait at __syncthreads (" + site_str(pending[t].site) + ")";
      case State::kAtCollective:
        return "wait at " + std::string(collective_name(pending[t].kind)) + "(mask " +
               hex(pending[t].mask) + ") (" + site_str(pending[t].site) + ")";
    }
    return "?";
  }

  // "threads 0-31 wait at ...; threads 32-255 have exited".
  std::string describe_all() const {
    std::ostringstream os;
    int t = 0;
    bool first = true;
    while (t < num_threads) {
      const std::string what = describe_thread(t);
      int end = t + 1;
      while (end < num_threads && describe_thread(end) == what) ++end;
      os << (first ? "" : "; ")
         << (end - t == 1 ? "thread " + std::to_string(t)
                          : "threads " + std::to_string(t) + "-" + std::to_string(end - 1))
         << " " << what;
      first = false;
      t = end;
    }
    return os.str();
  }

  // Nobody runs and nothing completed: the block can never finish.
  void check_stuck() {
    if (running == 0 && exited < num_threads && !failed) {
      fail("deadlock: a barrier or warp collective is not reached by every thread it names: " +
           describe_all());
    }
  }

  // Waits until release(t) or a failure; the lock is dropped meanwhile and not
  // taken back (what the releaser wrote for t is visible through the semaphore).
  void wait(std::unique_lock<std::mutex>& lock, int t) {
    check_stuck();
    if (failed) throw BlockAborted{};
    lock.unlock();
    wake[t].acquire();
    if (failed) throw BlockAborted{};
  }

  // Ends t's wait (caller holds mu; t itself may be the caller, then no post).
  void release(int t, int self) {
    state[t] = State::kRunning;
    ++running;
    if (t != self) wake[t].release();
  }
};

// The calling OS thread's emulated thread.
thread_local Block* t_block = nullptr;
thread_local int t_thread = 0;
thread_local unsigned t_barrier_seq = 0;

Block& current_block() {
  if (t_block == nullptr) {
    throw std::logic_error("CUDA emulation: a device function was called outside a kernel launch");
  }
  return *t_block;
}

// Computes the results of a complete collective over `mask` of warp w
// (caller holds mu; every lane of the mask waits at it). Returns "" or an error.
std::string complete_collective(Block& b, int w, unsigned mask) {
  const int first = w * kWarpSize;
  const int leader = first + __builtin_ctz(mask);
  const Pending& p0 = b.pending[leader];
  for (unsigned m = mask; m != 0; m &= m - 1) {
    const int t = first + __builtin_ctz(m);
    const Pending& p = b.pending[t];
    if (p.kind != p0.kind ||
        (p.kind != Collective::kSyncwarp &&
         (p.site.line != p0.site.line || std::strcmp(p.site.file, p0.site.file) != 0))) {
      return "lanes of warp " + std::to_string(w) + " named by mask " + hex(mask) +
             " wait at different collectives: lane " + std::to_string(leader - first) + " at " +
             collective_name(p0.kind) + " (" + site_str(p0.site) + "), lane " +
             std::to_string(t - first) + " at " + collective_name(p.kind) + " (" +
             site_str(p.site) + ")";
    }
  }
  auto value_of = [&](int lane) { return b.pending[first + lane].value; };
  auto in_mask = [&](int lane) { return lane >= 0 && lane < kWarpSize && ((mask >> lane) & 1u); };
  uint64_t reduce = 0;
  switch (p0.kind) {
    case Collective::kReduceMinU:
    case Collective::kReduceMinS:
    case Collective::kReduceMaxU:
    case Collective::kReduceMaxS:
    case Collective::kReduceAdd:
    case Collective::kBallot:
    case Collective::kAny:
    case Collective::kAll: {
      bool started = false;
      for (unsigned m = mask; m != 0; m &= m - 1) {
        const int lane = __builtin_ctz(m);
        const uint32_t u = static_cast<uint32_t>(value_of(lane));
        const int32_t s = static_cast<int32_t>(u);
        const uint32_t r = static_cast<uint32_t>(reduce);
        switch (p0.kind) {
          case Collective::kReduceMinU:
            reduce = !started || u < r ? u : r;
            break;
          case Collective::kReduceMaxU:
            reduce = !started || u > r ? u : r;
            break;
          case Collective::kReduceMinS:
            reduce = static_cast<uint32_t>(
                !started || s < static_cast<int32_t>(r) ? s : static_cast<int32_t>(r));
            break;
          case Collective::kReduceMaxS:
            reduce = static_cast<uint32_t>(
                !started || s > static_cast<int32_t>(r) ? s : static_cast<int32_t>(r));
            break;
          case Collective::kReduceAdd:
            reduce = static_cast<uint32_t>(r + u);
            break;
          case Collective::kBallot:
            reduce |= (u != 0 ? 1ull : 0ull) << lane;
            break;
          case Collective::kAny:
            reduce = (started ? r : 0u) | (u != 0 ? 1u : 0u);
            break;
          case Collective::kAll:
            reduce = (started ? r : 1u) & (u != 0 ? 1u : 0u);
            break;
          default:
            break;
        }
        started = true;
      }
      break;
    }
    default:
      break;
  }
  for (unsigned m = mask; m != 0; m &= m - 1) {
    const int lane = __builtin_ctz(m);
    Pending& p = b.pending[first + lane];
    switch (p.kind) {
      case Collective::kSyncwarp:
        p.result = 0;
        break;
      case Collective::kShfl:
      case Collective::kShflXor:
      case Collective::kShflUp:
      case Collective::kShflDown: {
        int src = lane;
        if (p.kind == Collective::kShfl) src = p.param & (kWarpSize - 1);
        if (p.kind == Collective::kShflXor) src = lane ^ (p.param & (kWarpSize - 1));
        if (p.kind == Collective::kShflUp) src = lane - p.param >= 0 ? lane - p.param : lane;
        if (p.kind == Collective::kShflDown)
          src = lane + p.param < kWarpSize ? lane + p.param : lane;
        if (!in_mask(src)) {
          return std::string(collective_name(p.kind)) + " (" + site_str(p.site) + "): lane " +
                 std::to_string(lane) + " of warp " + std::to_string(w) + " reads lane " +
                 std::to_string(src) + ", which mask " + hex(mask) + " leaves out";
        }
        p.result = value_of(src);
        break;
      }
      default:
        p.result = reduce;
        break;
    }
  }
  return "";
}

// ----------------------------------------------------------------- TSan model of fences and
// atomics

#if defined(ATSS_EMU_TSAN)
// __threadfence is a fence.sc: the SC fences of a run are totally ordered (here
// by the order in which they execute), and each synchronises with every later
// one. One TSan object that every fence releases to and acquires from, under
// a lock so that each fence's release and acquire are one step.
std::mutex g_fence_mu;
char g_fence_sync = 0;
#endif

// Atomic read-modify-writes are relaxed: they order nothing (for TSan, they are
// hidden atomics, so they race with nothing and synchronise nothing).
template <class T, class F>
T atomic_rmw(T* addr, F update) {
#if defined(ATSS_EMU_TSAN)
  Hidden hidden;
#endif
  T old = __atomic_load_n(addr, __ATOMIC_SEQ_CST);
  while (!__atomic_compare_exchange_n(addr, &old, update(old), false, __ATOMIC_SEQ_CST,
                                      __ATOMIC_SEQ_CST)) {
  }
  return old;
}

// ----------------------------------------------------------------- launches

std::mutex g_attr_mu;
std::unordered_map<const void*, int> g_max_dynamic_smem;
std::atomic<uint64_t> g_launches{0};

// A group of OS threads, one per thread of a block, that runs blocks one after
// the other. Its threads need not meet between blocks: each takes the
// runner's k-th block when it is done with the (k-1)-th (the first to get
// there claims it from the launch), and the last to leave a block frees it.
struct Runner {
  std::mutex mu;
  std::deque<Block*> blocks;  // claimed and not yet freed, in order
  int64_t first = 0;          // the runner's index of blocks.front()
  bool exhausted = false;

  ~Runner() {
    for (Block* b : blocks) delete b;
  }
};

struct LaunchState {
  const char* name;
  dim3 grid, block;
  size_t smem;
  int threads;
  std::vector<int64_t> order;
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  std::atomic<int64_t> blocks_done{0};
  std::mutex error_mu;
  std::string error;

  void record(const std::string& e) {
    std::lock_guard<std::mutex> lock(error_mu);
    if (error.empty()) error = e;
    failed.store(true);
  }
};

uint3 block_coords(int64_t linear, dim3 grid) {
  uint3 c;
  c.x = static_cast<unsigned>(linear % grid.x);
  c.y = static_cast<unsigned>((linear / grid.x) % grid.y);
  c.z = static_cast<unsigned>(linear / (static_cast<int64_t>(grid.x) * grid.y));
  return c;
}

void thread_exits(Block& b, int t) {
  Hidden hidden;
  std::lock_guard<std::mutex> lock(b.mu);
  b.state[t] = State::kExited;
  --b.running;
  ++b.exited;
  b.check_stuck();
}

// The runner's k-th block, claimed from the launch when no thread of the
// runner has got there yet; null when the launch has no block left.
Block* runner_block(LaunchState& L, Runner& r, int64_t k) {
  Hidden hidden;
  std::lock_guard<std::mutex> lock(r.mu);
  const int64_t num_blocks = static_cast<int64_t>(L.order.size());
  while (r.first + static_cast<int64_t>(r.blocks.size()) <= k) {
    if (r.exhausted) return nullptr;
    const int64_t i = L.failed.load() ? num_blocks : L.next.fetch_add(1);
    if (i >= num_blocks) {
      r.exhausted = true;
      return nullptr;
    }
    const int64_t linear = L.order[static_cast<size_t>(i)];
    r.blocks.push_back(new Block(L.name, block_coords(linear, L.grid), L.threads, L.smem));
  }
  return r.blocks[static_cast<size_t>(k - r.first)];
}

void leave_block(LaunchState& L, Runner& r, Block* b) {
  Hidden hidden;
  std::lock_guard<std::mutex> lock(r.mu);
  if (--b->live_threads == 0) {
    if (b->failed) L.record(b->error);
    L.blocks_done.fetch_add(1);
  }
  while (!r.blocks.empty() && r.blocks.front()->live_threads == 0) {
    delete r.blocks.front();
    r.blocks.pop_front();
    ++r.first;
  }
}

void run_thread(LaunchState& L, Runner& r, int t, const std::function<void()>& body) {
  for (int64_t k = 0;; ++k) {
    Block* b = runner_block(L, r, k);
    if (b == nullptr) return;
    {
      Hidden hidden;
      t_block = b;
      t_thread = t;
      t_barrier_seq = 0;
      threadIdx = uint3{static_cast<unsigned>(t % L.block.x),
                        static_cast<unsigned>((t / L.block.x) % L.block.y),
                        static_cast<unsigned>(t / (L.block.x * L.block.y))};
      blockIdx = b->index;
      blockDim = L.block;
      gridDim = L.grid;
    }
    try {
      body();
    } catch (const BlockAborted&) {
    } catch (const std::exception& e) {
      Hidden hidden;
      std::lock_guard<std::mutex> lock(b->mu);
      b->fail(std::string("thread ") + std::to_string(t) + " threw: " + e.what());
    }
    thread_exits(*b, t);
    {
      Hidden hidden;
      t_block = nullptr;
    }
    leave_block(L, r, b);
  }
}

}  // namespace

// ----------------------------------------------------------------- device-side entry points

void syncthreads(Site site) {
  Block& b = current_block();
  const int t = t_thread;
  const unsigned seq = t_barrier_seq++;
  tsan_release(&b.barrier_sync[seq & 1]);
  {
    Hidden hidden;
    std::unique_lock<std::mutex> lock(b.mu);
    if (b.failed) throw BlockAborted{};
    b.state[t] = State::kAtBarrier;
    b.pending[t].site = site;
    --b.running;
    if (++b.at_barrier == b.num_threads) {
      for (int u = 0; u < b.num_threads; ++u) {
        const Site s = b.pending[u].site;
        if (s.line != site.line || std::strcmp(s.file, site.file) != 0) {
          b.fail("divergent __syncthreads: thread " + std::to_string(u) + " waits at " +
                 site_str(s) + ", thread " + std::to_string(t) + " at " + site_str(site));
          throw BlockAborted{};
        }
      }
      b.at_barrier = 0;
      for (int u = 0; u < b.num_threads; ++u) b.release(u, t);
    } else {
      b.wait(lock, t);
    }
  }
  tsan_acquire(&b.barrier_sync[seq & 1]);
}

uint64_t warp_collective(Site site, Collective kind, unsigned mask, uint64_t value, int param) {
  Block& b = current_block();
  const int t = t_thread;
  const int w = t / kWarpSize;
  const int lane = t % kWarpSize;
  const bool is_sync = kind == Collective::kSyncwarp;
  char* sync_obj = nullptr;  // __syncwarp: this instance's TSan object
  uint64_t result;
  {
    Hidden hidden;
    std::unique_lock<std::mutex> lock(b.mu);
    if (b.failed) throw BlockAborted{};
    const int lanes_in_warp = std::min(kWarpSize, b.num_threads - w * kWarpSize);
    const unsigned existing = lanes_in_warp == kWarpSize ? 0xffffffffu : (1u << lanes_in_warp) - 1u;
    if (((mask >> lane) & 1u) == 0) {
      b.fail(std::string(collective_name(kind)) + " (" + site_str(site) + "): lane " +
             std::to_string(lane) + " of warp " + std::to_string(w) + " calls it with mask " +
             hex(mask) + ", which leaves the lane out");
      throw BlockAborted{};
    }
    if ((mask & ~existing) != 0) {
      b.fail(std::string(collective_name(kind)) + " (" + site_str(site) + "): mask " + hex(mask) +
             " names lanes that warp " + std::to_string(w) + " does not have (it has " +
             std::to_string(lanes_in_warp) + ")");
      throw BlockAborted{};
    }
    b.state[t] = State::kAtCollective;
    Pending& p = b.pending[t];
    p.site = site;
    p.kind = kind;
    p.mask = mask;
    p.value = value;
    p.param = param;
    if (is_sync) {
      sync_obj = &b.warp_sync[2 * w + (b.warp_syncs[w] & 1)];
      tsan_release_hidden(sync_obj);
    }
    --b.running;
    // Complete when every lane of the mask waits at a collective with this mask.
    bool complete = true;
    const int first = w * kWarpSize;
    for (unsigned m = mask; m != 0; m &= m - 1) {
      const int u = first + __builtin_ctz(m);
      if (b.state[u] != State::kAtCollective) {
        complete = false;
        continue;
      }
      if (b.pending[u].mask != mask) {
        b.fail(std::string(collective_name(kind)) + " (" + site_str(site) + "): lane " +
               std::to_string(lane) + " of warp " + std::to_string(w) + " uses mask " + hex(mask) +
               " but lane " + std::to_string(u - first) + " waits at " +
               collective_name(b.pending[u].kind) + " (" + site_str(b.pending[u].site) +
               ") with mask " + hex(b.pending[u].mask));
        throw BlockAborted{};
      }
    }
    if (complete) {
      const std::string error = complete_collective(b, w, mask);
      if (!error.empty()) {
        b.fail(error);
        throw BlockAborted{};
      }
      if (is_sync) ++b.warp_syncs[w];
      for (unsigned m = mask; m != 0; m &= m - 1) b.release(first + __builtin_ctz(m), t);
    } else {
      b.wait(lock, t);
    }
    result = p.result;
  }
  if (is_sync) tsan_acquire(sync_obj);
  return result;
}

void threadfence() {
#if defined(ATSS_EMU_TSAN)
  Hidden hidden;
  std::lock_guard<std::mutex> lock(g_fence_mu);
  AnnotateIgnoreSyncEnd(__FILE__, __LINE__);
  __tsan_release(&g_fence_sync);
  __tsan_acquire(&g_fence_sync);
  AnnotateIgnoreSyncBegin(__FILE__, __LINE__);
#else
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
}

void* dynamic_shared_memory() {
  Hidden hidden;
  return current_block().smem;
}

void* static_shared_memory(const void* tag, size_t bytes, size_t align) {
  Hidden hidden;
  Block& b = current_block();
  std::lock_guard<std::mutex> lock(b.mu);
  for (const auto& s : b.statics) {
    if (s.first == tag) return s.second;
  }
  void* mem = nullptr;
  if (posix_memalign(&mem, std::max(align, sizeof(void*)), bytes) != 0) throw std::bad_alloc();
  std::memset(mem, kGarbage, bytes);
  tsan_new_memory(mem, bytes);
  b.statics.emplace_back(tag, mem);
  b.static_bytes += bytes;
  return mem;
}

uint32_t atomic_add_u32(uint32_t* a, uint32_t v) {
  return atomic_rmw(a, [v](uint32_t o) { return o + v; });
}
uint64_t atomic_add_u64(uint64_t* a, uint64_t v) {
  return atomic_rmw(a, [v](uint64_t o) { return o + v; });
}
uint32_t atomic_max_u32(uint32_t* a, uint32_t v) {
  return atomic_rmw(a, [v](uint32_t o) { return v > o ? v : o; });
}
uint64_t atomic_max_u64(uint64_t* a, uint64_t v) {
  return atomic_rmw(a, [v](uint64_t o) { return v > o ? v : o; });
}
uint32_t atomic_min_u32(uint32_t* a, uint32_t v) {
  return atomic_rmw(a, [v](uint32_t o) { return v < o ? v : o; });
}
uint64_t atomic_min_u64(uint64_t* a, uint64_t v) {
  return atomic_rmw(a, [v](uint64_t o) { return v < o ? v : o; });
}
int32_t atomic_add_s32(int32_t* a, int32_t v) {
  return atomic_rmw(a, [v](int32_t o) {
    return static_cast<int32_t>(static_cast<uint32_t>(o) + static_cast<uint32_t>(v));
  });
}
int32_t atomic_max_s32(int32_t* a, int32_t v) {
  return atomic_rmw(a, [v](int32_t o) { return v > o ? v : o; });
}
int32_t atomic_min_s32(int32_t* a, int32_t v) {
  return atomic_rmw(a, [v](int32_t o) { return v < o ? v : o; });
}
uint32_t atomic_cas_u32(uint32_t* a, uint32_t expected, uint32_t desired) {
  return atomic_rmw(a, [=](uint32_t o) { return o == expected ? desired : o; });
}
uint64_t atomic_cas_u64(uint64_t* a, uint64_t expected, uint64_t desired) {
  return atomic_rmw(a, [=](uint64_t o) { return o == expected ? desired : o; });
}

// ----------------------------------------------------------------- host-side entry points

void set_max_dynamic_smem(const void* kernel, int bytes) {
  if (bytes < 0 || static_cast<size_t>(bytes) > kOptInSmemLimit) {
    throw std::runtime_error("CUDA emulation: cudaFuncSetAttribute(MaxDynamicSharedMemorySize, " +
                             std::to_string(bytes) + "): the device takes at most " +
                             std::to_string(kOptInSmemLimit) + " bytes");
  }
  std::lock_guard<std::mutex> lock(g_attr_mu);
  g_max_dynamic_smem[kernel] = bytes;
}

void launch_grid(const char* name, const void* kernel, dim3 grid, dim3 block, size_t dynamic_smem,
                 std::function<void()> body) {
  const std::string who = std::string("CUDA emulation: kernel ") + name + ": launch rejected: ";
  const int64_t threads = static_cast<int64_t>(block.x) * block.y * block.z;
  if (block.x == 0 || block.y == 0 || block.z == 0 || block.x > 1024 || block.y > 1024 ||
      block.z > 64 || threads > 1024) {
    throw std::runtime_error(who + "block (" + std::to_string(block.x) + ", " +
                             std::to_string(block.y) + ", " + std::to_string(block.z) +
                             ") is not 1 to 1024 threads (x, y <= 1024, z <= 64)");
  }
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 ||
      grid.z > 65535) {
    throw std::runtime_error(who + "grid (" + std::to_string(grid.x) + ", " +
                             std::to_string(grid.y) + ", " + std::to_string(grid.z) +
                             ") is out of range (x 1 to 2^31 - 1, y and z 1 to 65535)");
  }
  size_t limit = kDefaultSmemLimit;
  {
    std::lock_guard<std::mutex> lock(g_attr_mu);
    const auto it = g_max_dynamic_smem.find(kernel);
    if (it != g_max_dynamic_smem.end()) limit = std::max(limit, static_cast<size_t>(it->second));
  }
  if (dynamic_smem > limit) {
    throw std::runtime_error(
        who + std::to_string(dynamic_smem) + " bytes of dynamic shared memory, over the " +
        std::to_string(limit) + "-byte limit" +
        (limit == kDefaultSmemLimit ? " (without cudaFuncSetAttribute's opt-in)" : ""));
  }
  const int64_t num_blocks = static_cast<int64_t>(grid.x) * grid.y * grid.z;
  const int64_t concurrency = std::max<int64_t>(1, env_int("ATSS_EMU_CONCURRENCY", 2));
  const uint64_t seed = static_cast<uint64_t>(env_int("ATSS_EMU_SEED", 0));
  const int64_t timeout_s = env_int("ATSS_EMU_TIMEOUT", 600);

  LaunchState L;
  L.name = name;
  L.grid = grid;
  L.block = block;
  L.smem = dynamic_smem;
  L.threads = static_cast<int>(threads);
  L.order.resize(static_cast<size_t>(num_blocks));
  for (int64_t i = 0; i < num_blocks; ++i) L.order[static_cast<size_t>(i)] = i;
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + g_launches.fetch_add(1));
  std::shuffle(L.order.begin(), L.order.end(), rng);

  const int num_runners = static_cast<int>(std::min<int64_t>(concurrency, num_blocks));
  std::vector<std::unique_ptr<Runner>> runners;
  std::vector<std::thread> workers;
  for (int r = 0; r < num_runners; ++r) runners.emplace_back(new Runner);
  std::mutex done_mu;
  std::condition_variable done_cv;
  int finished = 0;
  try {
    for (int r = 0; r < num_runners; ++r) {
      for (int t = 0; t < L.threads; ++t) {
        workers.emplace_back([&, r, t] {
          run_thread(L, *runners[static_cast<size_t>(r)], t, body);
          std::lock_guard<std::mutex> lock(done_mu);
          ++finished;
          done_cv.notify_all();
        });
      }
    }
  } catch (const std::system_error& e) {
    // Could not start every thread: the started ones must still finish.
    L.record(std::string("CUDA emulation: kernel ") + name +
             ": could not start a thread: " + e.what());
    std::fprintf(stderr, "%s\n", L.error.c_str());
    std::abort();
  }
  // Watchdog: a launch that makes no progress for timeout_s seconds is a hang.
  {
    std::unique_lock<std::mutex> lock(done_mu);
    int64_t last_done = -1;
    const int total = static_cast<int>(workers.size());
    while (finished < total) {
      const int64_t done = L.blocks_done.load();
      if (!done_cv.wait_for(lock, std::chrono::seconds(timeout_s),
                            [&] { return finished == total; }) &&
          L.blocks_done.load() == done && done == last_done) {
        std::fprintf(stderr,
                     "CUDA emulation: kernel %s: no block finished in %lld s (a thread spins "
                     "forever?): aborting\n",
                     name, static_cast<long long>(timeout_s));
        std::abort();
      }
      last_done = done;
    }
  }
  for (auto& w : workers) w.join();
  if (L.failed.load()) throw std::runtime_error(L.error);
}

}  // namespace atss::emu
