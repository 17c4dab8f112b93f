// Software prefetch of the rows of X ahead of the ones being computed. Between the loads of one block of rows and
// the next the kernel computes from L1, and the hardware prefetcher alone lets the memory stream idle there. The
// lines ahead are issued from inside the vector loops (an Ahead handed to them: one prefetch per iteration, or per
// line read for Runs and AheadPerLine), so that they are requested while a block is computed, not in a burst at its
// end; what a block's loops did not issue is issued when it ends (drain). Into L2 (locality hint 2).
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "tuning.h"
#include "vec.h"

namespace lp {
// (internal linkage: each translation unit inlines and specialises its own copies, built for its own flags)
namespace {

// Lines [next, end) of contiguous rows ahead
struct Ahead {
  const char* next = nullptr;
  const char* end = nullptr;
  void drain() {
    for (; next < end; next += kLineBytes) __builtin_prefetch(next, 0, 2);
  }
};

// Rows that are not contiguous: the position blocks of a channels-first sample (a run of `span` bytes per channel,
// `stride` apart). Its own type, so that the loops over contiguous rows compile without its jumps.
struct Runs {
  const char* next = nullptr;
  const char* end = nullptr;
  const char* run = nullptr;  // the run after [next, end): `runs` more, `stride` bytes apart
  int64_t runs = 0, span = 0, stride = 0;
  void set(const char* first, int64_t count, int64_t span_bytes, int64_t stride_bytes) {
    next = end = run = nullptr, runs = 0;
    if (count <= 0) return;
    run = first, runs = count, span = span_bytes, stride = stride_bytes;
    advance();
  }
  // the next run into [next, end) (from the start of its first line); false when none is left
  bool advance() {
    if (runs <= 0) return false;
    next = reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(run) & ~uintptr_t(kLineBytes - 1));
    end = run + span;
    run += stride;
    --runs;
    return true;
  }
  void drain() {
    do
      for (; next < end; next += kLineBytes) __builtin_prefetch(next, 0, 2);
    while (advance());
  }
};

// Contiguous rows whose loops issue one prefetch per line they read (long whole rows of a channels-first sample over L2)
struct AheadPerLine : Ahead {};

// One prefetch per call of step() from an Ahead or a Runs (nullptr: none), the cursor kept in registers; over Runs,
// at the end of a run on to the next. (The Ahead branch is written as one test: "nothing left: return" changed the
// code of every loop using it.)
template <typename A>
class AheadCursor {
 public:
  explicit AheadCursor(A* a) : a_(a), next_(a ? a->next : nullptr), end_(a ? a->end : nullptr) {}
  void step() {
    if constexpr (!std::is_same_v<A, Runs>) {
      if (next_ < end_) {
        __builtin_prefetch(next_, 0, 2);
        next_ += kLineBytes;
      }
    } else {
      if (next_ >= end_) {
        if (a_ == nullptr) return;
        a_->next = next_;
        if (!a_->advance()) {
          a_ = nullptr;
          return;
        }
        next_ = a_->next, end_ = a_->end;
      }
      __builtin_prefetch(next_, 0, 2);
      next_ += kLineBytes;
    }
  }
  ~AheadCursor() {
    if (a_) a_->next = next_;
  }
  AheadCursor(const AheadCursor&) = delete;
  AheadCursor& operator=(const AheadCursor&) = delete;

 private:
  A* a_;
  const char* next_;
  const char* end_;
};

// Prefetches a loop issues per iteration that reads `vectors` vectors of X: one per line read over Runs and
// AheadPerLine, one per iteration over other contiguous rows
template <typename T, typename A>
constexpr int steps_per_vectors(int vectors) {
  if constexpr (std::is_same_v<A, Runs> || std::is_same_v<A, AheadPerLine>)
    return std::max<int>(1, vectors * int(sizeof(vec<T>)) / kLineBytes);
  else
    return 1;
}

template <typename T>
inline void prefetch_row(const T* row, int64_t span) {
  const char* p = reinterpret_cast<const char*>(row);
  const int64_t bytes = span * int64_t(sizeof(T));
  for (int64_t k = 0; k < bytes; k += kLineBytes) __builtin_prefetch(p + k, 0, 2);
}

// Rows of `span` numbers, `stride` apart (rows < count), in blocks of 4, then one at a time: body4(first row, rows) /
// body1(row, rows). With `ahead`, a block of rows ahead (tuning ahead_rows and ahead_bytes on) is prefetched: through
// it (the body hands it to its loops) where the rows are contiguous or `ahead` is Runs, and are at least `spread_from`
// bytes long, else at once; nullptr: no software prefetch.
template <typename T, typename A, typename Body4, typename Body1>
void over_strided_rows(const T* xs, int64_t count, int64_t stride, int64_t span, A* ahead, Body4&& body4,
                       Body1&& body1, int64_t spread_from = 0) {
  constexpr bool runs = std::is_same_v<A, Runs>;
  const Tuning& tune = tuning();
  const bool spread = (runs || stride == span) && span * int64_t(sizeof(T)) >= spread_from;
  const int64_t dist =
      std::max(tune.ahead_rows, tune.ahead_bytes / (std::max<int64_t>(1, stride) * int64_t(sizeof(T))) / 4 * 4);
  int64_t c = 0;
  for (; c + 4 <= count; c += 4) {
    if (ahead) {
      const int64_t k0 = std::min(count, c + dist), k1 = std::min(count, c + dist + 4);
      if (spread) {
        if constexpr (runs) {
          ahead->set(reinterpret_cast<const char*>(xs + k0 * stride), k1 - k0, span * int64_t(sizeof(T)),
                     stride * int64_t(sizeof(T)));
        } else {
          ahead->next = reinterpret_cast<const char*>(xs + k0 * stride);
          ahead->end = reinterpret_cast<const char*>(xs + k1 * stride);
        }
      } else {
        for (int64_t k = k0; k < k1; ++k) prefetch_row(xs + k * stride, span);
      }
    }
    const T* rows[4] = {xs + c * stride, xs + (c + 1) * stride, xs + (c + 2) * stride, xs + (c + 3) * stride};
    body4(c, rows);
    if (ahead) ahead->drain();
  }
  for (; c < count; ++c) {
    const T* rows[1] = {xs + c * stride};
    body1(c, rows);
  }
}

}  // namespace
}  // namespace lp
