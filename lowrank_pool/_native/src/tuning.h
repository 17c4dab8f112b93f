// Every tuning decision of the kernel, each with its rule in one line. The measurements behind them are on the
// performance page of the documentation (docs/performance.md, "The CPU kernel's tuning"); the runtime values can be
// read and set from Python (lowrank_pool._native: tuning(), tuned()), so that tests force each branch. Sizes are bytes
// unless they say otherwise.
#pragma once

#include <cstdint>

#include "capability.h"

namespace lp {

struct Tuning {
  // --- channels-last (n, f) rows
  int64_t sequential_min_bytes = 384;   // rank 1 reads a block of 4 rows one after the other if a row is at least ...
  int64_t sequential_max_bytes = 2048;  // ... and shorter than this (one stream for the hardware prefetcher); else side by side
  // --- software prefetch
  int64_t ahead_rows = 8;          // the rows prefetched ahead start at least this many rows on ...
  int64_t ahead_bytes = 8192;      // ... and at least this many bytes on
  int64_t spread_bytes = 1024;     // channels-first rows at least this long, of a sample over l2_bytes, prefetch through the loops (else a burst per block)
  int64_t per_line_bytes = 2048;   // whole channels-first rows at least this long, of a sample over l2_bytes, with 2+ maps: a prefetch per line read
  // --- caches a sample is held against
  int64_t l2_bytes = int64_t(3) << 19;      // a channels-first sample up to this size is one block of positions (it stays in L2 between passes)
  int64_t l2_hot_bytes = int64_t(1) << 19;  // the second pass over a sample up to this size runs without software prefetch
  int64_t l3_bytes = int64_t(32) << 20;     // the last-level cache: half of it is shared by the samples in flight ...
  int64_t l3_share_bytes = int64_t(8) << 20;  // ... at most this much each
  int64_t l3_row_bytes = 4096;              // rows up to this long keep a sample within its L3 share as one block
  int64_t block_min_positions = 256;        // a block of positions is at least this long (in positions)
  // --- short channels-first rows (read whole, from registers)
  int64_t short_max_vectors = 8;     // rows of up to this many vectors (at most 8) take the short-row passes
  int64_t flat_min_vectors = 2;      // ∂X of short rows as flat vectors of the sample from rows of this many vectors (1-2 maps) ...
  int64_t flat_min_vectors_3 = 3;    // ... and this many (3-4 maps); shorter rows are written a row at a time
  int64_t rows4_min_positions = 64;  // channels-first ∂X rows are combined 4 at a time from blocks of this many positions
  // --- ∂X writes
  int64_t stream_min_bytes = int64_t(4) << 20;  // ∂X this large or larger is written with non-temporal stores
  int64_t staging_bytes = 16384;                // the staging buffer streamed rows go through (in L1)
  // --- products with A
  int64_t small_max_classes = 32;              // products with A as dot products on a packed Aᵀ up to this many classes ...
  int64_t small_max_numbers = int64_t(1) << 18;  // ... and this many numbers of A; beyond: the wide products
  int64_t transpose_v_min_bytes = 16384;       // ∂A reads V through a transposed copy from rows of V this long
  int64_t copy_grain = 8192;                   // numbers per task of a parallel transposition
  int64_t own_wide_products = 1;               // 1: the wide products run the kernel's own tiles (A read in place); 0: at::mm
};

// The tuning every call reads (set_tuning replaces it between calls; it is not meant to change while kernels run).
const Tuning& tuning();
void set_tuning(const Tuning& t);

// --- compile-time choices, by register budget (kVecRegs) ---

// A tile of the wide products: rows × vecs vectors of columns (rows·vecs accumulators + vecs loaded vectors + one
// broadcast must fit the registers), the inner dimension in blocks of `inner`, the next block prefetched or not.
struct Shape {
  int rows, vecs;
  int64_t inner;
  bool prefetch;
};
#if LP_VEC_REGS >= 32
constexpr Shape kWideForward{4, 6, 128, true};    // s = vec(V) A: few rows (the batch), many columns; A from memory
constexpr Shape kWideBackward{8, 3, 1024, false};  // ∂A = Vᵀ g: many rows, K columns
constexpr Shape kWideGradV{6, 4, 1024, false};     // ∂Vᵀ = A gᵀ: many rows, the batch as columns
#else
constexpr Shape kWideForward{3, 3, 128, true};
constexpr Shape kWideBackward{4, 3, 1024, false};
constexpr Shape kWideGradV{4, 3, 1024, false};
#endif
static_assert(kWideForward.rows * kWideForward.vecs + kWideForward.vecs + 1 <= kVecRegs, "forward tile: registers");
static_assert(kWideBackward.rows * kWideBackward.vecs + kWideBackward.vecs + 1 <= kVecRegs, "backward tile: registers");
static_assert(kWideGradV.rows * kWideGradV.vecs + kWideGradV.vecs + 1 <= kVecRegs, "∂V tile: registers");

constexpr int kCombineChains = 8;  // vectors of a ∂X row in flight: an FMA's latency times its throughput (4 × 2)
constexpr int kMaxShortVectors = 8;  // the short-row passes are instantiated for rows of 1 ... 8 vectors
constexpr int kMaxSources = 64;      // combine_rows reads at most this many source rows (2P: P ≤ 32 maps) in one call
constexpr int64_t kCopyTile = 16;    // transpositions run in tiles of 16 × 16 numbers
constexpr int64_t kMinCachedBytes = int64_t(1) << 20;  // ∂X buffers from this size come from the kernel's cache
constexpr int kCachedPerSize = 2;    // freed ∂X buffers kept per size (the cache's bound besides LOWRANK_POOL_CACHE_MIB)

}  // namespace lp
