// ∂X rows, each a combination of the 2P source rows (∂V's and B's, or U's and ∂Z's): dst = Σ_r coef[r] srcs[r]. A
// large ∂X goes to memory by non-temporal stores (a cached store first reads each line: 2 bytes of traffic per byte
// written, and between two training steps the rest of the network has evicted the buffer): straight from the
// registers where the rows are whole 64-byte lines, else through a staging buffer of consecutive rows (RowWriter).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "tuning.h"
#include "vec.h"

namespace lp {
// (internal linkage: each translation unit inlines and specialises its own copies, built for its own flags)
namespace {

// dst[j] = Σ_r coef[r] srcs[r][j]; with `stream`, the full vectors by non-temporal stores (dst then starts on a line
// and len fills whole lines). kCombineChains vectors at a time: each is a chain of `count` dependent FMAs.
template <typename T>
void combine(const T* const* srcs, const T* coef, int64_t count, T* dst, int64_t len, bool stream = false) {
  constexpr int L = kLanes<T>, V = kCombineChains;
  int64_t j = 0;
  for (; j + V * L <= len; j += V * L) {
    vec<T> a[V] = {};
    for (int64_t r = 0; r < count; ++r) {
      const T* s = srcs[r] + j;
      const vec<T> c = broadcast<T>(coef[r]);
      for (int v = 0; v < V; ++v) a[v] += load(s + v * L) * c;
    }
    for (int v = 0; v < V; ++v) put(dst + j + v * L, a[v], stream);
  }
  for (; j + L <= len; j += L) {
    vec<T> a = {};
    for (int64_t r = 0; r < count; ++r) a += load(srcs[r] + j) * coef[r];
    put(dst + j, a, stream);
  }
  if (j < len && len >= L) {  // the last numbers as the vector ending at len (its first lanes written again)
    const int64_t t0 = len - L;
    vec<T> a = {};
    for (int64_t r = 0; r < count; ++r) a += load(srcs[r] + t0) * coef[r];
    store(dst + t0, a);
    j = len;
  }
  for (; j < len; ++j) {
    T acc = 0;
    for (int64_t r = 0; r < count; ++r) acc += srcs[r][j] * coef[r];
    dst[j] = acc;
  }
}

// dsts[q][j] = Σ_r coef[q·count + r] srcs[r][j] for Q rows at once: each loaded vector of a source row serves the Q
// rows. count ≤ kMaxSources. With `stream`, the full vectors go to memory by non-temporal stores (the rows then start
// on a line and the loop's 4 vectors are whole lines).
template <typename T, int Q>
void combine_rows(const T* const* srcs, const T* coef, int64_t count, T* const* dsts, int64_t len, bool stream) {
  constexpr int L = kLanes<T>, V = 4;
  int64_t j = 0;
  for (; j + V * L <= len; j += V * L) {
    vec<T> a[Q][V] = {};
    for (int64_t r = 0; r < count; ++r) {
      const T* s = srcs[r] + j;
      vec<T> x[V];
      for (int v = 0; v < V; ++v) x[v] = in_register(load(s + v * L));
      for (int q = 0; q < Q; ++q) {
        const vec<T> c = broadcast<T>(coef[q * count + r]);
        for (int v = 0; v < V; ++v) a[q][v] += x[v] * c;
      }
    }
    for (int q = 0; q < Q; ++q)
      for (int v = 0; v < V; ++v) put(dsts[q] + j + v * L, a[q][v], stream);
  }
  // whole vectors left, then the last numbers as the vector ending at len (its first lanes written again, with the
  // same sums), each loaded vector still serving the Q rows
  auto one_vector = [&](int64_t at, bool streamed) {
    vec<T> a[Q] = {};
    for (int64_t r = 0; r < count; ++r) {
      const vec<T> x = load(srcs[r] + at);
      for (int q = 0; q < Q; ++q) a[q] += x * coef[q * count + r];
    }
    for (int q = 0; q < Q; ++q) put(dsts[q] + at, a[q], streamed);
  };
  for (; j + L <= len; j += L) one_vector(j, stream);
  if (j < len && len >= L) {  // (rewritten lanes: cached stores; a streamed row is whole lines and has no tail)
    one_vector(len - L, false);
    j = len;
  }
  if (j < len) {
    const T* rest[kMaxSources];
    for (int64_t r = 0; r < count && r < kMaxSources; ++r) rest[r] = srcs[r] + j;
    for (int q = 0; q < Q; ++q) combine(rest, coef + q * count, count, dsts[q] + j, len - j, stream);
  }
}

// dst[:len] = src[:len] with the full aligned lines streamed (src: a staging buffer in L1)
template <typename T>
void stream_copy(const T* src, T* dst, int64_t len) {
  constexpr int L = kLanes<T>;
  constexpr int per_line = kLineBytes / int(sizeof(T));
  constexpr int step = L >= per_line ? L : per_line;  // whole lines per iteration
  int64_t j = 0;
  for (; j < len && (reinterpret_cast<std::uintptr_t>(dst + j) % kLineBytes) != 0; ++j) dst[j] = src[j];
  for (; j + step <= len; j += step)
    for (int v = 0; v < step; v += L) stream_store(dst + j + v, load(src + j + v));
  for (; j < len; ++j) dst[j] = src[j];
}

// Whether p[0:len] is whole lines: rows of such runs, `len` apart, are streamed straight from the registers
template <typename T>
inline bool is_line_run(const T* p, int64_t len) {
  return reinterpret_cast<std::uintptr_t>(p) % kLineBytes == 0 && (len * int64_t(sizeof(T))) % kLineBytes == 0;
}

// Writes ∂X rows: straight into place, or, for a streamed ∂X, through a staging buffer of consecutive rows that is
// then streamed as one run (runs of a few hundred bytes, one per row, were slower streamed than cached).
template <typename T>
struct RowWriter {
  T* base;              // the sample's ∂X
  int64_t stride, len;  // row r starts at base + r * stride; len numbers are written
  bool streamed;
  std::vector<T>& staging;
  int64_t first = 0, held = 0;
  // where row r goes now
  T* row(int64_t r) { return rows(r, 1); }
  // the distance between consecutive rows that rows() returns
  int64_t gap() const { return streamed ? len : stride; }
  // rows r .. r + count - 1 at once (row k at the result + k · len when staged, + k · stride in place)
  T* rows(int64_t r, int64_t count) {
    if (!streamed) return base + r * stride;
    if (held > 0 && (r != first + held || (held + count) * len > int64_t(staging.size()))) flush();
    if (held == 0) first = r;
    T* p = staging.data() + held * len;
    held += count;
    return p;
  }
  void flush() {
    if (held == 0) return;
    if (stride == len) {
      stream_copy(staging.data(), base + first * stride, held * len);
    } else {
      for (int64_t k = 0; k < held; ++k) stream_copy(staging.data() + k * len, base + (first + k) * stride, len);
    }
    held = 0;
  }
};

}  // namespace
}  // namespace lp
