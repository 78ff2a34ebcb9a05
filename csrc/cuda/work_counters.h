// Work counters of the selection kernels, for the emulated library only
// (-DATSS_EMU): how many distances, inserts, bound updates, staged tiles and
// passes each GT row of the last selection launch cost. GPUs are rarely at
// hand here, so the work is counted where the kernels always run (the host
// execution model) and every change to the selection is measured in CI
// (`python -m benchmarks.bench_gpu --work`, tests/test_emulated_cuda.py).
//
// In the GPU build ATSS_WORK(...) expands to nothing and its arguments are
// never evaluated: zero cost. Code that computes a value only for a counter
// sits under `#if defined(ATSS_EMU)`.
//
// Each counter is per GT row (b * G + g) of the last launch of the selection
// (fused atss_assign, topk_per_level, or tal_assign's tal_select_kernel): the
// launch resets them. Read them
// from Python with torch.ops.atss_ops_emu._work_counters(name) ([rows] int64;
// the names are kWorkCounterNames). The figures are exact counts of what the
// emulated threads did, independent of block order and concurrency.
#pragma once

#include <cstdint>

#if defined(ATSS_EMU)
#include <atomic>
#include <memory>
#include <mutex>
#endif

namespace atss::cuda {

enum WorkCounter : int {
  kDistancesComputed,  // anchor distances evaluated for the row (each pass counted)
  kKeysInserted,       // keys inserted into a selection list (a lane's, or the warp's)
  kInsertRounds,       // divergent insert rounds of the row's warp (the slowest lane's)
  kBoundUpdates,       // warp-wide recomputations of the row's threshold
  kPasses,             // selection passes (of at most K keys) over a chunk or level
  kChunks,             // work items (chunk, or level) the row was scanned in
  kMergeKeysInserted,  // keys inserted while merging per-chunk partial lists
  kBlockBounds,        // anchor-block lower bounds computed for the row (culling)
  kBlocksVisited,      // anchor blocks scanned for the row (culling)
  kBlocksSkipped,      // anchor blocks left out by their bound (culling)
  kKeysConsidered,     // keys below the threshold when computed, compared by the warp (culling)
  kPointsTested,       // TAL: anchor points given the inside test (those of the visited blocks)
  kPointsInside,       // TAL: anchor points inside the GT's test box (scored)
  kNumWorkCounters,
};

inline constexpr const char* kWorkCounterNames[kNumWorkCounters] = {
    "distances_computed",  "keys_inserted",   "insert_rounds",
    "bound_updates",       "passes",          "chunks",
    "merge_keys_inserted", "block_bounds",    "blocks_visited",
    "blocks_skipped",      "keys_considered", "points_tested",
    "points_inside",
};

#if defined(ATSS_EMU)

// The counters of the last selection launch: rows * kNumWorkCounters values.
class WorkCounters {
 public:
  static WorkCounters& get() {
    static WorkCounters instance;
    return instance;
  }
  void reset(int64_t rows) {
    std::lock_guard<std::mutex> lock(mutex_);
    rows_ = rows < 0 ? 0 : rows;
    values_ =
        std::make_unique<std::atomic<int64_t>[]>(static_cast<size_t>(rows_) * kNumWorkCounters);
    for (int64_t i = 0; i < rows_ * kNumWorkCounters; ++i) values_[i].store(0);
  }
  void add(int64_t row, int counter, int64_t n) {
    if (row < 0 || row >= rows_ || n == 0) return;
    values_[row * kNumWorkCounters + counter].fetch_add(n, std::memory_order_relaxed);
  }
  int64_t rows() const { return rows_; }
  int64_t value(int64_t row, int counter) const {
    return values_[row * kNumWorkCounters + counter].load(std::memory_order_relaxed);
  }

 private:
  std::mutex mutex_;
  int64_t rows_ = 0;
  std::unique_ptr<std::atomic<int64_t>[]> values_;
};

#define ATSS_WORK(row, counter, n) ::atss::cuda::WorkCounters::get().add((row), (counter), (n))
#define ATSS_WORK_RESET(rows) ::atss::cuda::WorkCounters::get().reset(rows)

#else

#define ATSS_WORK(row, counter, n) ((void)0)
#define ATSS_WORK_RESET(rows) ((void)0)

#endif

}  // namespace atss::cuda
