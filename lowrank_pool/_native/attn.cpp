// Fused CPU kernels of attention-weighted pooling with a shared bottom-up basis B (f, P).
//
// Per sample, X (n, f) rows (layout "bnf") or X (f, n) rows (layout "bfn", NCHW):
//   forward   Z = Bᵀ X (P, n), U = σ(Z), V = U Xᵀ (P, f)
//   backward  ∂U = ∂V X, ∂Z = σ'(∂U), ∂X = ∂Vᵀ U + B ∂Z, ∂B += X ∂Zᵀ
// and the products with A (P, f, K): s = scale · vec(V) A, ∂V = scale · g Aᵀ, ∂A = scale · vec(V)ᵀ g (see
// "products with A" below). The math: docs/math.md.
//
// How X is read. Layout (n, f): one pass over the rows; each row (f numbers) is used for all P maps while
// it is in L1 — its P dot products with B, then, for linear and ReLU attention, its P updates of V at once;
// softmax attention does the same with a running maximum per map (V rescaled when the maximum grows, as in
// "online" softmax), so X is read from memory once. Layout (f, n): Z needs every channel before σ, so a
// sample is read twice, the second time from L2 (a sample is n·f numbers: 0.4–2 MB at the reference shapes).
// The backward does the same: one pass over (n, f) rows for linear/ReLU, two (the second from cache) for
// softmax and for (f, n). Rows are combined a block of 4 at a time and the P maps in blocks of up to 4, with
// explicit vectors (GCC/Clang vector extensions) and several accumulators, so each loaded vector feeds many
// FMAs. Samples run in parallel (at::parallel_for).
//
// ∂X buffers. A fresh multi-MB buffer costs page faults on its first write (measured: 11–13 ms for 51 MB
// against 2.2 ms to overwrite a warm one), as much as the backward's arithmetic. ∂X is therefore allocated
// from a small cache of blocks this module owns: when autograd frees a ∂X, its block returns to the cache
// and the next backward of the same size reuses it (the same idea as PyTorch's CUDA caching allocator).
// Peak memory is unchanged (one ∂X); between steps the cache keeps the freed blocks, at most
// LOWRANK_POOL_CACHE_MIB MiB (default 1024; 0 turns the cache off), released by empty_cache().
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace {

enum Attention { kLinear = 0, kRelu = 1, kSoftmax = 2 };

// ------------------------------------------------------------------------------------------- vectors
template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(32)));
  typedef int32_t mask __attribute__((vector_size(32)));  // lane masks (bitwise and)
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(32)));
  typedef int64_t mask __attribute__((vector_size(32)));
};
template <typename T>
using vec = typename VecOf<T>::type;
template <typename T>
constexpr int kLanes = 32 / sizeof(T);

template <typename T>
inline vec<T> load(const T* p) {
  vec<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename T>
inline void store(T* p, vec<T> v) {
  std::memcpy(p, &v, sizeof v);
}
// A loaded vector kept in a register: without this GCC folds the load into each FMA that uses it, so a
// block of R rows × Q maps loaded every number Q (or R) times: 2·R·Q loads per R·Q FMAs instead of R + Q,
// and the dot products were load-bound (measured, forward P = 4 at (32, 196, 512): 0.69 -> 0.53 ms).
// (x86 with AVX only, where a 32-byte vector is one register; elsewhere a no-op.)
template <typename V>
inline V in_register(V v) {
#if defined(__AVX__) && (defined(__x86_64__) || defined(__i386__))
  asm("" : "+v"(v));
#endif
  return v;
}

// Σ of a vector's lanes as a tree (halves added): a few shuffles instead of a chain of kLanes dependent adds,
// which dominated the dot products of short rows (NCHW with 7×7 positions: 49 numbers per row).
template <typename T, int Bytes>
struct Part {
  typedef T type __attribute__((vector_size(Bytes)));
};
template <typename T, int Bytes>
inline T tree_sum(typename Part<T, Bytes>::type v) {
  if constexpr (Bytes == int(2 * sizeof(T))) {
    return v[0] + v[1];
  } else {
    typename Part<T, Bytes / 2>::type lo, hi;
    std::memcpy(&lo, &v, sizeof lo);
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof lo, sizeof hi);
    return tree_sum<T, Bytes / 2>(lo + hi);
  }
}
template <typename T>
inline T lanes_sum(vec<T> v) {
  return tree_sum<T, 32>(v);
}

// The lanes l ≥ from of a vector (all ones there, zeros below): the last, partial vector of a row of len ≥ kLanes
// numbers is read as the full vector ending at len, and its lanes before `from` (already summed) are masked off.
template <typename T>
inline typename VecOf<T>::mask lanes_from(int64_t from) {
  typename VecOf<T>::mask m;
  for (int l = 0; l < kLanes<T>; ++l) m[l] = l >= from ? -1 : 0;
  return m;
}
template <typename T>
inline vec<T> masked(vec<T> v, typename VecOf<T>::mask m) {
  using M = typename VecOf<T>::mask;
  return reinterpret_cast<vec<T>>(reinterpret_cast<M>(v) & m);
}

// out[i] = Σ of a[i]'s lanes, i < 4: four sums at once (AVX: three horizontal adds and one of the halves, against
// four trees of three shuffles and three adds each)
template <typename T>
inline void lanes_sums4(const vec<T>* a, T* out) {
#if defined(__AVX__)
  if constexpr (sizeof(T) == 4) {
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(reinterpret_cast<const __m256&>(a[0]), reinterpret_cast<const __m256&>(a[1])),
                                    _mm256_hadd_ps(reinterpret_cast<const __m256&>(a[2]), reinterpret_cast<const __m256&>(a[3])));
    _mm_storeu_ps(reinterpret_cast<float*>(out), _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
  } else {
    const __m256d h01 = _mm256_hadd_pd(reinterpret_cast<const __m256d&>(a[0]), reinterpret_cast<const __m256d&>(a[1]));
    const __m256d h23 = _mm256_hadd_pd(reinterpret_cast<const __m256d&>(a[2]), reinterpret_cast<const __m256d&>(a[3]));
    _mm256_storeu_pd(reinterpret_cast<double*>(out), _mm256_add_pd(_mm256_permute2f128_pd(h01, h23, 0x20),
                                                                    _mm256_permute2f128_pd(h01, h23, 0x31)));
  }
#else
  for (int i = 0; i < 4; ++i) out[i] = lanes_sum<T>(a[i]);
#endif
}

// Lines of X to prefetch while a block of rows is computed (filled by over_strided_rows): the vector loops of
// multi_dot and multi_axpy given one issue a line per iteration, so the prefetches are spread through the block's
// work instead of issued at its start (128 at once for 4 rows of 512 floats); what is left when the block ends
// is issued then (drain).
struct Ahead {
  const char* next = nullptr;
  const char* end = nullptr;
  void drain() {
    for (; next < end; next += 64) __builtin_prefetch(next, 0, 2);
  }
};

// An Ahead over rows that are not contiguous: the position blocks of a channels-first sample (one run of `span`
// bytes per channel, `stride` apart). Its own type: the loops over contiguous rows compile without the jumps.
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
    next = reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(run) & ~uintptr_t(63));
    end = run + span;
    run += stride;
    --runs;
    return true;
  }
  void drain() {
    do
      for (; next < end; next += 64) __builtin_prefetch(next, 0, 2);
    while (advance());
  }
};

// An Ahead whose loops issue one prefetch per line they read (see steps_per_vectors): long whole rows of a
// channels-first sample larger than L2 (see channel_sums).
struct AheadPerLine : Ahead {};

// One prefetch per loop iteration from an Ahead or a Runs (nullptr: none), the cursor kept in registers; over
// Runs, at the end of a run on to the next (the Runs dropped once none is left). The Ahead branch keeps the
// test it had alone: written as "nothing left: return", every loop using it compiled to another size.
template <typename A>
class AheadCursor {
 public:
  explicit AheadCursor(A* a) : a_(a), next_(a ? a->next : nullptr), end_(a ? a->end : nullptr) {}
  void step() {
    if constexpr (!std::is_same_v<A, Runs>) {
      if (next_ < end_) {
        __builtin_prefetch(next_, 0, 2);
        next_ += 64;
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
      next_ += 64;
    }
  }
  ~AheadCursor() {
    if (a_) a_->next = next_;
  }

 private:
  A* a_;
  const char* next_;
  const char* end_;
};

// Prefetches a loop issues per iteration that reads `vectors` vectors of X: one, or over Runs (parts of rows, whose
// block ahead has as many lines as the block being read) and AheadPerLine one per line read, so that the block
// ahead is requested while this one is computed instead of mostly in a burst at its end (drain), where the
// prefetches queue behind each other. Other contiguous rows keep one: one per line read made the rows layout's
// forward at (196, 2048), P = 4, 0.83x and at (196, 512), P = 1, 0.90x.
template <typename T, typename A>
constexpr int steps_per_vectors(int vectors) {
  if constexpr (std::is_same_v<A, Runs> || std::is_same_v<A, AheadPerLine>)
    return std::max<int>(1, vectors * int(sizeof(vec<T>)) / 64);
  else
    return 1;
}

// out[r * Q + q] = Σ_j rows[r][j] vecs[q][j]: R·Q dot products in one pass over the rows
template <typename T, int R, int Q, typename A = Ahead>
void multi_dot(const T* const* rows, const T* const* vecs, int64_t len, T* out, A* ahead = nullptr) {
  constexpr int L = kLanes<T>, U = R * Q >= 4 ? 1 : 4 / (R * Q);  // enough independent accumulators
  vec<T> acc[R][Q][U] = {};
  int64_t j = 0;
  AheadCursor<A> pf(ahead);
  for (; j + U * L <= len; j += U * L) {
    for (int k = 0; k < steps_per_vectors<T, A>(R * U); ++k) pf.step();
    for (int u = 0; u < U; ++u) {
      vec<T> w[Q], x[R];
      for (int q = 0; q < Q; ++q) w[q] = in_register(load(vecs[q] + j + u * L));
      for (int r = 0; r < R; ++r) x[r] = in_register(load(rows[r] + j + u * L));
      for (int r = 0; r < R; ++r)
        for (int q = 0; q < Q; ++q) acc[r][q][u] += x[r] * w[q];
    }
  }
  for (; j + L <= len; j += L) {
    for (int r = 0; r < R; ++r) {
      const vec<T> x = load(rows[r] + j);
      for (int q = 0; q < Q; ++q) acc[r][q][0] += x * load(vecs[q] + j);
    }
  }
  if (j < len && len >= L) {  // the last numbers as the vector ending at len, its first lanes masked off
    const int64_t t0 = len - L;
    const auto m = lanes_from<T>(j - t0);
    for (int r = 0; r < R; ++r) {
      const vec<T> x = load(rows[r] + t0);
      for (int q = 0; q < Q; ++q) acc[r][q][0] += masked<T>(x * load(vecs[q] + t0), m);
    }
    j = len;
  }
  for (int r = 0; r < R; ++r) {
    vec<T> s[Q];
    for (int q = 0; q < Q; ++q) {
      s[q] = acc[r][q][0];
      for (int u = 1; u < U; ++u) s[q] += acc[r][q][u];
    }
    if constexpr (Q == 4) {
      lanes_sums4<T>(s, out + r * Q);
    } else {
      for (int q = 0; q < Q; ++q) out[r * Q + q] = lanes_sum<T>(s[q]);
    }
    for (int q = 0; q < Q; ++q)
      for (int64_t i = j; i < len; ++i) out[r * Q + q] += rows[r][i] * vecs[q][i];
  }
}

// dsts[q][j] += Σ_r coef[q * R + r] srcs[r][j]: Q outputs updated from R rows in one pass
template <typename T, int R, int Q, typename A = Ahead>
void multi_axpy(const T* const* srcs, const T* coef, T* const* dsts, int64_t len, A* ahead = nullptr) {
  constexpr int L = kLanes<T>;
  // pointers and coefficients in locals: the stores (memcpy) may alias anything the loop reads through memory,
  // so each would otherwise be loaded again after every store
  const T* src[R];
  T* dst[Q];
  vec<T> c[Q * R];
  for (int r = 0; r < R; ++r) src[r] = srcs[r];
  for (int q = 0; q < Q; ++q) dst[q] = dsts[q];
  for (int k = 0; k < Q * R; ++k) c[k] = vec<T>{} + coef[k];
  int64_t j = 0;
  AheadCursor<A> pf(ahead);
  for (; j + L <= len; j += L) {
    for (int k = 0; k < steps_per_vectors<T, A>(R); ++k) pf.step();
    vec<T> s[R];
    for (int r = 0; r < R; ++r) s[r] = in_register(load(src[r] + j));
    for (int q = 0; q < Q; ++q) {
      vec<T> acc = load(dst[q] + j);
      for (int r = 0; r < R; ++r) acc += s[r] * c[q * R + r];
      store(dst[q] + j, acc);
    }
  }
  if (j < len && len >= L) {  // as in multi_dot: the vector ending at len, the lanes before j unchanged
    const int64_t t0 = len - L;
    const auto m = lanes_from<T>(j - t0);
    vec<T> s[R];
    for (int r = 0; r < R; ++r) s[r] = load(src[r] + t0);
    for (int q = 0; q < Q; ++q) {
      vec<T> add = {};
      for (int r = 0; r < R; ++r) add += s[r] * c[q * R + r];
      store(dst[q] + t0, load(dst[q] + t0) + masked<T>(add, m));
    }
    j = len;
  }
  for (; j < len; ++j)
    for (int q = 0; q < Q; ++q) {
      T acc = dsts[q][j];
      for (int r = 0; r < R; ++r) acc += srcs[r][j] * coef[q * R + r];
      dsts[q][j] = acc;
    }
}

// Non-temporal stores (x86 AVX): a large ∂X goes to memory without first reading each line into the cache
// (a cached store reads the line before writing it: 2 bytes of traffic per byte written). Full aligned
// 64-byte lines only; the lines a row shares with its neighbours get ordinary stores.
template <typename T>
inline void stream_store(T* p, vec<T> v) {
#if defined(__AVX__)
  if constexpr (sizeof(T) == 4)
    _mm256_stream_ps(reinterpret_cast<float*>(p), reinterpret_cast<__m256&>(v));
  else
    _mm256_stream_pd(reinterpret_cast<double*>(p), reinterpret_cast<__m256d&>(v));
#else
  store(p, v);
#endif
}

// a store, non-temporal with `stream`
template <typename T>
inline void put(T* p, vec<T> v, bool stream) {
  if (stream)
    stream_store(p, v);
  else
    store(p, v);
}

inline void stream_fence() {
#if defined(__AVX__)
  _mm_sfence();  // the thread's streamed stores are visible before the result is used
#endif
}

// dst[j] = Σ_r coef[r] srcs[r][j] (the ∂X rows); with `stream`, the full vectors by non-temporal stores (dst then
// starts on a 64-byte line and len fills whole lines)
template <typename T>
void combine(const T* const* srcs, const T* coef, int64_t count, T* dst, int64_t len, bool stream = false) {
  // 8 vectors of dst at a time: each is a chain of `count` dependent FMAs, and the FMA's latency (4 cycles)
  // times its throughput (2 a cycle) asks for 8 chains in flight (2 left the FMA units 3/4 idle)
  constexpr int L = kLanes<T>, V = 8;
  int64_t j = 0;
  for (; j + V * L <= len; j += V * L) {
    vec<T> a[V] = {};
    for (int64_t r = 0; r < count; ++r) {
      const T* s = srcs[r] + j;
      const vec<T> c = vec<T>{} + coef[r];
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

// dsts[q][j] = Σ_r coef[q·count + r] srcs[r][j] for Q rows at once (the (n, f) layout's ∂X rows, 4 at a time): each
// loaded vector of a source row serves the Q rows, so the 2P source rows (∂V and B: 64 KB at f = 2048, P = 4, read
// from L2) are read once per Q rows instead of once per row.
// With `stream`, the full vectors go to memory by non-temporal stores (the rows then start on a 64-byte line and
// the loop's 4 vectors are whole lines).
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
        const vec<T> c = vec<T>{} + coef[q * count + r];
        for (int v = 0; v < V; ++v) a[q][v] += x[v] * c;
      }
    }
    for (int q = 0; q < Q; ++q)
      for (int v = 0; v < V; ++v) put(dsts[q] + j + v * L, a[q][v], stream);
  }
  // whole vectors left, then the last numbers as the vector ending at len (its first lanes written again, with
  // the same sums), each loaded vector still serving the Q rows: a row of 196 numbers (NCHW 14 × 14) has 4 left
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
    const T* rest[64];
    for (int64_t r = 0; r < count && r < 64; ++r) rest[r] = srcs[r] + j;
    for (int q = 0; q < Q; ++q) combine(rest, coef + q * count, count, dsts[q] + j, len - j, stream);
  }
}

// dst[:len] = src[:len] with the full aligned lines streamed (src: a staging buffer in L1)
template <typename T>
void stream_copy(const T* src, T* dst, int64_t len) {
  constexpr int L = kLanes<T>;
  int64_t j = 0;
  for (; j < len && (reinterpret_cast<std::uintptr_t>(dst + j) & 63) != 0; ++j) dst[j] = src[j];
  for (; j + 2 * L <= len; j += 2 * L) {
    stream_store(dst + j, load(src + j));
    stream_store(dst + j + L, load(src + j + L));
  }
  for (; j < len; ++j) dst[j] = src[j];
}

// Whether p[0:len] is whole 64-byte lines: rows of such runs, `len` apart, can be streamed straight from the
// registers (no staging buffer, no second pass over it).
template <typename T>
inline bool is_line_run(const T* p, int64_t len) {
  return reinterpret_cast<std::uintptr_t>(p) % 64 == 0 && (len * int64_t(sizeof(T))) % 64 == 0;
}

// Writes ∂X rows: straight into place, or, for a large ∂X, through a staging buffer of consecutive rows that
// is then streamed as one run (runs of a few hundred bytes, one per row, were slower streamed than cached).
// Rows that are whole lines (is_line_run) skip it: combine/combine_rows stream them from the registers
// (rank-P backward at (32, 49, 2048) and (32, 4096, 128) 16-25 % faster than through the staging buffer, whose
// 16-32 KB also pushed the rows being read out of L1).
template <typename T>
struct RowWriter {
  T* base;  // the sample's ∂X
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

// The maps come in blocks of up to 4 (multi_dot's Q); rows in blocks of R. Q > 0: P = Q, known at compile time
// (see forward_rows): no copies, no switch.
template <typename T, int R, typename A = Ahead, int Q = 0>
void dots_rows(const T* const* rows, const T* const* vecs, int64_t P, int64_t len, T* out /* R × P */,
               A* ahead = nullptr) {
  if constexpr (Q > 0) {  // P = Q: out is multi_dot's own layout
    multi_dot<T, R, Q, A>(rows, vecs, len, out, ahead);
    return;
  }
  T part[R * 4];
  for (int64_t p0 = 0; p0 < P; p0 += 4) {
    const int64_t q = std::min<int64_t>(4, P - p0);
    switch (q) {
      case 4: multi_dot<T, R, 4, A>(rows, vecs + p0, len, part, ahead); break;
      case 3: multi_dot<T, R, 3, A>(rows, vecs + p0, len, part, ahead); break;
      case 2: multi_dot<T, R, 2, A>(rows, vecs + p0, len, part, ahead); break;
      default: multi_dot<T, R, 1, A>(rows, vecs + p0, len, part, ahead);
    }
    for (int r = 0; r < R; ++r)
      for (int64_t k = 0; k < q; ++k) out[r * P + p0 + k] = part[r * q + k];
  }
}

// dsts[p] += Σ_r coef[r * P + p] srcs[r], p < P
template <typename T, int R, typename A = Ahead, int Q = 0>
void axpy_rows(const T* const* srcs, const T* coef /* R × P */, int64_t P, T* const* dsts, int64_t len,
               A* ahead = nullptr) {
  if constexpr (Q > 0) P = Q;  // (one block of maps, its bounds constants)
  T part[4 * R];
  for (int64_t p0 = 0; p0 < P; p0 += 4) {
    const int64_t q = std::min<int64_t>(4, P - p0);
    for (int64_t k = 0; k < q; ++k)
      for (int r = 0; r < R; ++r) part[k * R + r] = coef[r * P + p0 + k];
    if constexpr (Q > 0) {
      multi_axpy<T, R, Q, A>(srcs, part, dsts, len, ahead);
      continue;
    }
    switch (q) {
      case 4: multi_axpy<T, R, 4, A>(srcs, part, dsts + p0, len, ahead); break;
      case 3: multi_axpy<T, R, 3, A>(srcs, part, dsts + p0, len, ahead); break;
      case 2: multi_axpy<T, R, 2, A>(srcs, part, dsts + p0, len, ahead); break;
      default: multi_axpy<T, R, 1, A>(srcs, part, dsts + p0, len, ahead);
    }
  }
}

// Which order the first pass over an (n, f) sample reads a block of 4 rows in: with one map and rows of 384 B to
// 2 KB, one row after the other (the hardware prefetcher follows one stream; no software prefetch, which then only
// competed with it); else the 4 rows side by side (each loaded vector of the maps serves 4 rows: the dot products
// are then the cost) with the software prefetch below. Measured, rank 1 on one thread with X from memory: forward
// 1.2-2x faster (12.9 -> 26 GB/s at (196, 512), 20 -> 25 at (4096, 128)), backward 1.1-1.4x; at P = 2 no change,
// at P = 4 15-30 % slower. Measured later, with the prefetch spread through the loops (two threads, B = 32, X from
// memory), rank 1 side by side: rows of 2.5-16 KB (640-4096 floats, 384-2048 doubles) forward 1.02-2.0x, 2 KB
// 0.92-1.3x, (49, 2048) with X in L3 0.93-1.05x, forward+backward 0.99-1.8x; rows of 320 B and less (16-80
// floats, 16-32 doubles, where one row's dot product and update are mostly fixed costs) forward 1.15-1.31x,
// forward+backward 1.04-1.18x; 384 B 0.96-1.16x, 512 B 0.93-0.99x and 1 KB 0.92-1.06x, so those keep the
// sequential order.
template <typename T>
inline bool sequential_rows(int64_t P, int64_t f) {
  const int64_t row = f * int64_t(sizeof(T));
  return P == 1 && row >= 384 && row < 2048;
}

// Software prefetch of rows a few blocks ahead: between the loads of one block and the next the kernel
// computes from L1 (the second use of the rows), and the hardware prefetcher alone let the memory stream
// idle there. Into L2 (a block of long rows is tens of KB). Rows that follow each other are prefetched through
// an Ahead, spread over the block's loops, and so are parts of rows through Runs (see runs_ahead); parts of rows
// given an Ahead, and channels-first rows shorter than kSpreadBytes of a sample larger than L2, all at the block's
// start. Measured, rank-P forward (P = 4) on one thread with X from memory:
// spread 1.6-1.8x faster at (196, 512), (49, 2048) and (196, 2048), backward 1.3x. The rows ahead start at
// least kAheadBytes on: 8 rows of 128 floats (4 KB), prefetched 32 lines at once at the block's start, kept the
// loads and the arithmetic from overlapping (the rank-P forward at (32, 4096, 128) took the time of reading X
// plus that of the arithmetic in cache). Spread, and 8 KB on: forward on two threads, B = 32, X from memory,
// P = 2-4 1.26x at (4096, 128), 1.0-1.65x at (2048, 64-200), channels-first rows of 100 positions 1.09-1.15x;
// forward+backward 1.04-1.34x (two cases 0.97-1.0x, within the noise); rows of 1 KB or more unchanged. Where a
// channels-first sample does not fit L2 ((196, 2048): 1.6 MB, its second pass from L3) spreading its rows of 784
// bytes made the forward at P = 1 0.93-0.94x, as in an earlier run (5-16 % slower at P = 1-3): those keep the burst.
constexpr int64_t kAheadRows = 8;
constexpr int64_t kAheadBytes = 8192;
constexpr int64_t kSpreadBytes = 1024;

template <typename T>
inline void prefetch_row(const T* row, int64_t span) {
  const char* p = reinterpret_cast<const char*>(row);
  const int64_t bytes = span * int64_t(sizeof(T));
  for (int64_t k = 0; k < bytes; k += 64) __builtin_prefetch(p + k, 0, 2);
}

// Rows of `span` numbers, `stride` apart (rows < count), in blocks of 4, then one at a time:
// body4(first row, rows) / body1(row, rows). With `ahead`, a block of rows ahead (at least kAheadRows and
// kAheadBytes on) is prefetched: through it (the body hands it to its loops) where the rows are contiguous or
// `ahead` is Runs, and are at least `spread_from` bytes long, else at once; nullptr: no software prefetch.
template <typename T, typename A, typename Body4, typename Body1>
void over_strided_rows(const T* xs, int64_t count, int64_t stride, int64_t span, A* ahead, Body4&& body4,
                       Body1&& body1, int64_t spread_from = 0) {
  constexpr bool runs = std::is_same_v<A, Runs>;
  const bool spread = (runs || stride == span) && span * int64_t(sizeof(T)) >= spread_from;
  const int64_t dist = std::max(kAheadRows, kAheadBytes / (std::max<int64_t>(1, stride) * int64_t(sizeof(T))) / 4 * 4);
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

// ------------------------------------------------------------------------------------------- activations
template <typename T>
inline T relu(T z) {
  return (z > 0 || std::isnan(z)) ? z : T(0);
}

// σ'(Z) applied to du (in place -> dz), given u = σ(z)
template <typename T>
void activation_derivative(const T* u, T* du, int64_t n, int att) {
  if (att == kRelu) {
    for (int64_t i = 0; i < n; ++i) du[i] = u[i] > 0 ? du[i] : T(0);
  } else if (att == kSoftmax) {
    T c = 0;
    for (int64_t i = 0; i < n; ++i) c += du[i] * u[i];
    c /= T(n);
    for (int64_t i = 0; i < n; ++i) du[i] = u[i] * (du[i] - c);
  }
}

// Rows of an (n, f) sample in blocks of 4, then one at a time: body(first row, rows, count)
template <typename T, typename Body>
void over_rows(const T* xs, int64_t n, int64_t f, Ahead* ahead, Body&& body) {
  over_strided_rows<T>(
      xs, n, f, f, ahead, [&](int64_t i, const T* const* rows) { body(i, rows, 4); },
      [&](int64_t i, const T* const* rows) { body(i, rows, 1); });
}

template <typename T, int Q = 0>
void dots_block(const T* const* rows, int count, const T* const* vecs, int64_t P, int64_t len, T* out,
                bool sequential = false, Ahead* ahead = nullptr) {
  if (count == 4 && !sequential)
    dots_rows<T, 4, Ahead, Q>(rows, vecs, P, len, out, ahead);
  else
    for (int r = 0; r < count; ++r) dots_rows<T, 1, Ahead, Q>(rows + r, vecs, P, len, out + r * P, ahead);
}

template <typename T, int Q = 0>
void axpy_block(const T* const* rows, int count, const T* coef, int64_t P, T* const* dsts, int64_t len,
                Ahead* ahead = nullptr) {
  if (count == 4)
    axpy_rows<T, 4, Ahead, Q>(rows, coef, P, dsts, len, ahead);
  else
    for (int r = 0; r < count; ++r) axpy_rows<T, 1, Ahead, Q>(rows + r, coef + r * P, P, dsts, len, ahead);
}

// dst[i·di + j·dj] = src[i·si + j·sj] for i < rows, j < cols, in 16 × 16 tiles: walking a whole row against a whole
// column (rows 2-8 KB apart, which fall into the same few L1 sets) took 2.5 ns a number, as long as the products.
// Inside a tile the inner loop runs along the dimension with the smaller strides, so that the lines it touches at
// once are the tile's 16 short runs on the other side, not one line in each of 16 rows a large stride apart:
// with A's K = 10 classes as the columns, Aᵀ's rows are M numbers apart (32 KB at M = 8192, every row in the same
// L1 set: more rows than ways), and the column-inner order took 3x as long (0.1 ms of a 2.5 ms rank-P step).
template <typename T>
void copy_tiles(const T* src, int64_t si, int64_t sj, T* dst, int64_t di, int64_t dj, int64_t rows, int64_t cols) {
  constexpr int64_t kTile = 16;
  const bool rows_inner = std::max(std::abs(si), std::abs(di)) < std::max(std::abs(sj), std::abs(dj));
  for (int64_t i0 = 0; i0 < rows; i0 += kTile)
    for (int64_t j0 = 0; j0 < cols; j0 += kTile) {
      const int64_t i1 = std::min(rows, i0 + kTile), j1 = std::min(cols, j0 + kTile);
      if (rows_inner) {
        for (int64_t j = j0; j < j1; ++j)
          for (int64_t i = i0; i < i1; ++i) dst[i * di + j * dj] = src[i * si + j * sj];
      } else {
        for (int64_t i = i0; i < i1; ++i)
          for (int64_t j = j0; j < j1; ++j) dst[i * di + j * dj] = src[i * si + j * sj];
      }
    }
}

// ------------------------------------------------------------------------------------------- forward
// One (n, f) sample, X read once: z_i = Bᵀ x_i for a block of 4 rows, then V += σ(z_i) x_iᵀ while the rows
// are in L1. Softmax keeps a running maximum m_p and sum s_p per map (V rescaled when m_p grows).
// Softmax over positions met in blocks ("online"): per map a running maximum m and sum s of exp(z - m);
// V accumulates exp(z - m) x and is rescaled when m grows. A NaN anywhere makes the map all NaN, as on the
// torch path; z = -inf weighs 0.
template <typename T>
struct OnlineSoftmax {
  std::vector<T> m, s;
  std::vector<char> nan;
  explicit OnlineSoftmax(int64_t P) : m(P), s(P), nan(P) {}
  void reset() {
    std::fill(m.begin(), m.end(), -std::numeric_limits<T>::infinity());
    std::fill(s.begin(), s.end(), T(0));
    std::fill(nan.begin(), nan.end(), 0);
  }
  // before weighing a block of map p: z[k * stride], k < count; v = V's row p (f numbers)
  void grow(int64_t p, const T* z, int64_t count, int64_t stride, T* v, int64_t f) {
    T mb = -std::numeric_limits<T>::infinity();
    for (int64_t k = 0; k < count; ++k) {
      const T zk = z[k * stride];
      nan[p] |= std::isnan(zk);
      if (zk > mb) mb = zk;
    }
    if (mb > m[p]) {
      const T scale = std::exp(m[p] - mb);
      if (s[p] != T(0))
        for (int64_t c = 0; c < f; ++c) v[c] *= scale;
      s[p] *= scale;
      m[p] = mb;
    }
  }
  T weight(int64_t p, T z) {
    const T w = z == -std::numeric_limits<T>::infinity() ? T(0) : std::exp(z - m[p]);
    s[p] += w;
    return w;
  }
  // after the last block: u = n exp(z - m) / s (us holds z), V scaled by n / s
  void finish(T* us, T* vs, int64_t n, int64_t f) const {
    for (int64_t p = 0; p < int64_t(m.size()); ++p) {
      T* u = us + p * n;
      T* v = vs + p * f;
      if (nan[p]) {
        std::fill(u, u + n, std::numeric_limits<T>::quiet_NaN());
        std::fill(v, v + f, std::numeric_limits<T>::quiet_NaN());
        continue;
      }
      const T scale = T(n) / s[p];
      for (int64_t i = 0; i < n; ++i) u[i] = std::exp(u[i] - m[p]) * scale;
      for (int64_t c = 0; c < f; ++c) v[c] *= scale;
    }
  }
};

// Per-thread scratch of the forward: a block's Z and weights, V's rows, the softmax state.
template <typename T>
struct RowScratch {
  std::vector<T> z, w;
  std::vector<T*> vrows;
  OnlineSoftmax<T> soft;
  explicit RowScratch(int64_t P) : z(4 * P), w(4 * P), vrows(P), soft(P) {}
};

// Q > 0: P = Q maps (2-4) known at compile time, each block's dot products, weights and updates called directly
// (multi_dot, multi_axpy); Q = 0: any P, through dots_block / axpy_block, whose copies and switches over the maps
// took about a quarter of the kernel's time on short rows (perf, rank-P at (4096, 128)). Measured, forward, two
// threads, in cache: P = 2-4 1.18-1.29x at (4096, 128), 1.03-1.09x at (1024, 512), 1.01-1.02x at (256, 2048);
// B = 32 from memory 1.07-1.08x at (4096, 128), 1.10x at (196, 512), P = 2. (Through dots_block<T, Q> and
// axpy_block<T, Q> instead, with Z and the weights in the heap scratch and the weights transposed there: in cache
// 0.84x at (4096, 128), P = 4, 0.95-0.98x at P = 2, 3; not kept.)
template <typename T, int Q = 0>
void forward_rows(const T* xs, const T* const* bt, T* us, T* vs, int64_t n, int64_t f, int64_t P_, int att,
                  RowScratch<T>& sc) {
  const int64_t P = Q > 0 ? Q : P_;
  for (int64_t p = 0; p < P; ++p) sc.vrows[p] = vs + p * f;
  std::fill(vs, vs + P * f, T(0));
  sc.soft.reset();
  const bool seq = Q == 0 && sequential_rows<T>(P, f);
  Ahead ahead;
  over_rows<T>(xs, n, f, seq ? nullptr : &ahead, [&](int64_t i0, const T* const* rows, int count) {
    T zq[4 * (Q > 0 ? Q : 1)], wq[4 * (Q > 0 ? Q : 1)];
    T* z = Q > 0 ? zq : sc.z.data();
    T* w = Q > 0 ? wq : sc.w.data();
    if constexpr (Q > 0) {
      const T* bq[Q];
      for (int q = 0; q < Q; ++q) bq[q] = bt[q];
      if (count == 4)
        multi_dot<T, 4, Q>(rows, bq, f, z, &ahead);
      else
        multi_dot<T, 1, Q>(rows, bq, f, z, &ahead);
    } else {
      dots_block<T>(rows, count, bt, P, f, z, seq, &ahead);
    }
    for (int64_t p = 0; p < P; ++p) {
      if (att == kSoftmax) sc.soft.grow(p, z + p, count, P, sc.vrows[p], f);
      for (int r = 0; r < count; ++r) {
        const T zi = z[r * P + p];
        us[p * n + i0 + r] = zi;
        // Q > 0: the layout multi_axpy reads (map-major); else axpy_block's (row-major)
        w[Q > 0 ? p * count + r : r * P + p] = att == kRelu ? relu(zi) : att == kSoftmax ? sc.soft.weight(p, zi) : zi;
      }
    }
    if constexpr (Q > 0) {
      T* vq[Q];
      for (int q = 0; q < Q; ++q) vq[q] = sc.vrows[q];
      if (count == 4)
        multi_axpy<T, 4, Q>(rows, w, vq, f, &ahead);
      else
        multi_axpy<T, 1, Q>(rows, w, vq, f, &ahead);
    } else {
      axpy_block<T>(rows, count, w, P, sc.vrows.data(), f, &ahead);
    }
  });
  if (att == kRelu)
    for (int64_t k = 0; k < P * n; ++k) us[k] = relu(us[k]);
  else if (att == kSoftmax)
    sc.soft.finish(us, vs, n, f);
}

// Positions per block of an (f, n) sample: a sample that fits in L2 (1.5 MB) is one block; a larger one is
// cut into blocks of at least 256 positions (1 KB runs per row, so each row's part streams well) whose
// f × block numbers stay in L2 between the two passes over them (measured at (4096, 128): 12 % faster;
// shorter runs were slower, at (196, 2048) by 15 %). Except where its rows are 4 KB or shorter and it fits its
// thread's share of L3 (a 32 MB L3 assumed, half of it for the samples in flight, at most 8 MB each): such
// rows make blocks of a third to a half of each row (784 positions: 256 or 384), whose strided parts read
// from memory more slowly than the whole sample read twice, the second time from L3. Measured (paired A/B,
// two threads, B = 16, X from memory): (784, 512-2048) forward 1.12-1.27x (one 0.96x), forward+backward
// 1.06-1.41x, P = 1 and 4 (on a 16-core Xeon at two threads 1.09-1.16x, rank 1 at (784, 1024) 0.97-0.98x); with
// rows of 6 and 12.5 KB (1568 and 3136 positions) one block was 0.85-1.13x, so they keep the blocks.
// The sizes a sample is held against: kL2Bytes, up to which a sample stays in L2 between two passes over it (a
// budget tuned by measurement on machines with 1 and 2 MB of L2 per core); kL2HotBytes, up to which its second
// pass needs no software prefetch (half of the 1 MB L2 measured here, see forward_channels); kL3Bytes, the L3
// assumed (sysconf reports the host's 320 MB inside the VM measured here).
constexpr int64_t kL2Bytes = int64_t(3) << 19;
constexpr int64_t kL2HotBytes = int64_t(1) << 19;
constexpr int64_t kL3Bytes = int64_t(32) << 20;

template <typename T>
inline int64_t sample_bytes(int64_t n, int64_t f) {
  return n * f * int64_t(sizeof(T));
}

template <typename T>
inline bool sample_fits_l2(int64_t n, int64_t f) {
  return sample_bytes<T>(n, f) <= kL2Bytes;
}

template <typename T>
int64_t position_block(int64_t n, int64_t f) {
  const int64_t row = std::max<int64_t>(1, f * int64_t(sizeof(T)));
  if (sample_fits_l2<T>(n, f)) return n;
  const int64_t share = std::min<int64_t>(int64_t(8) << 20, kL3Bytes / (2 * std::max(1, at::get_num_threads())));
  if (n * int64_t(sizeof(T)) <= 4096 && sample_bytes<T>(n, f) <= share) return n;
  const int64_t fit = kL2Bytes / 2 / row;
  return std::min(n, std::max<int64_t>(256, fit / 16 * 16));
}

// Rows c.. of the (f, n) sample, restricted to positions [j0, j0 + len)
template <typename T, typename A, typename Body4, typename Body1>
void over_channel_block(const T* xs, int64_t f, int64_t n, int64_t j0, int64_t len, A* ahead, Body4&& body4,
                        Body1&& body1) {
  over_strided_rows<T>(xs + j0, f, n, len, ahead, body4, body1, sample_fits_l2<T>(n, f) ? 0 : kSpreadBytes);
}

// out[p * f + c] += x_c[J] · vecs[p] for every channel c and map p (X_J read once, 4 rows at a time); `prefetch`:
// the rows ahead prefetched (see over_strided_rows), else none
template <typename T, int Q = 0>
void add_channel_dots(const T* xs, int64_t f, int64_t n, int64_t j0, int64_t len, const T* const* vecs, int64_t P_,
                      T* out, std::vector<T>& part, bool prefetch = true) {
  const int64_t P = Q > 0 ? Q : P_;
  Ahead ahead;
  Ahead* pf = prefetch ? &ahead : nullptr;
  over_channel_block<T>(
      xs, f, n, j0, len, pf,
      [&](int64_t c, const T* const* rows) {
        dots_rows<T, 4, Ahead, Q>(rows, vecs, P, len, part.data(), pf);
        for (int r = 0; r < 4; ++r)
          for (int64_t p = 0; p < P; ++p) out[p * f + c + r] += part[r * P + p];
      },
      [&](int64_t c, const T* const* rows) {
        dots_rows<T, 1, Ahead, Q>(rows, vecs, P, len, part.data());
        for (int64_t p = 0; p < P; ++p) out[p * f + c] += part[p];
      });
}

// Short rows (NCHW with few positions: 7 × 7 = 49 numbers a row). A sample's rows are contiguous, so a row is read
// as NV full vectors whose last one runs into the next row: sums over rows accumulate in NV registers (the lanes past
// n are ignored), dot products with a row mask those lanes off. The sample's last rows, whose overrun would leave the
// sample, go one number at a time. The general path kept its accumulator in memory and paid a load, a store and a
// horizontal sum per block of 4 rows: 2x the time of the (n, f) layout here, and now about the same.
template <typename T, int NV>
struct ShortRows {
  static constexpr int L = kLanes<T>;
  using M = typename VecOf<T>::mask;
  const T* xs;
  int64_t n, f, safe;  // rows c < safe can be read as NV full vectors
  M tail;              // the lanes of the last vector that are still in the row
  ShortRows(const T* xs_, int64_t n_, int64_t f_)
      : xs(xs_), n(n_), f(f_), safe(f_ * n_ < NV * L ? 0 : std::min<int64_t>(f_, (f_ * n_ - NV * L) / n_ + 1)) {
    for (int l = 0; l < L; ++l) tail[l] = (NV - 1) * L + l < n ? -1 : 0;
  }
  // out[q][:n] = Σ_c coef[q][c · step] x_c for Q maps at once, each row loaded once for all of them (out[q]
  // holds NV · L numbers; those past n are not meaningful)
  template <int Q>
  void sum_rows(const T* const* coef, int64_t step, T* const* out) const {
    constexpr int S = Q == 1 ? 2 : 1;  // accumulator sets: consecutive rows do not wait for each other's FMAs
    vec<T> z[S][Q][NV] = {};
    int64_t c = 0;
    for (; c + S <= safe; c += S)
      for (int s = 0; s < S; ++s) {
        const T* r = xs + (c + s) * n;
        vec<T> x[NV];
        for (int v = 0; v < NV; ++v) x[v] = in_register(load(r + v * L));
        for (int q = 0; q < Q; ++q) {
          const T b = coef[q][(c + s) * step];
          for (int v = 0; v < NV; ++v) z[s][q][v] += x[v] * b;
        }
      }
    for (int q = 0; q < Q; ++q)
      for (int v = 0; v < NV; ++v) {
        vec<T> t = z[0][q][v];
        for (int s = 1; s < S; ++s) t += z[s][q][v];
        store(out[q] + v * L, t);
      }
    for (; c < f; ++c)
      for (int q = 0; q < Q; ++q)
        for (int64_t j = 0; j < n; ++j) out[q][j] += coef[q][c * step] * xs[c * n + j];
  }
  // out[q][c] += x_c · w[q] for every row c and Q maps at once; w[q] holds NV · L numbers, zero past n
  template <int Q>
  void add_dots(const T* const* w, T* const* out) const {
    vec<T> wv[Q][NV];
    for (int q = 0; q < Q; ++q)
      for (int k = 0; k < NV; ++k) wv[q][k] = load(w[q] + k * L);
    // C rows from c, their last vector masked to the row; 4 rows give a map's 4 sums at once (lanes_sums4)
    auto rows_block = [&](int64_t c, auto rows_in_block) {
      constexpr int C = decltype(rows_in_block)::value;
      const T* r0 = xs + c * n;
      vec<T> a[Q][C] = {};
      // unrolled, so that wv stays in registers (GCC kept the loop, and wv in memory: each weight vector loaded once
      // per row, 12 loads per 8 FMAs at Q = 2). Forward, two threads, B = 32: P = 2, 4 at (2048, 7 × 7) and
      // (512, 7 × 7), (1024, 8 × 8) 1.11-1.20x, backward P = 4 (∂B) 1.11-1.13x; built without AVX-512 (16 vector
      // registers: wv spills) forward 1.06-1.07x, backward 1.00x
#pragma GCC unroll 8
      for (int k = 0; k < NV; ++k) {
        vec<T> x[C];
        for (int i = 0; i < C; ++i) {
          x[i] = in_register(load(r0 + i * n + k * L));
          if (k + 1 == NV) x[i] = masked<T>(x[i], tail);
        }
        for (int q = 0; q < Q; ++q)
          for (int i = 0; i < C; ++i) a[q][i] += x[i] * wv[q][k];
      }
      for (int q = 0; q < Q; ++q) {
        T t[4];
        if constexpr (C == 4) {
          lanes_sums4<T>(a[q], t);
        } else {
          for (int i = 0; i < C; ++i) t[i] = lanes_sum<T>(a[q][i]);
        }
        for (int i = 0; i < C; ++i) out[q][c + i] += t[i];
      }
    };
    int64_t c = 0;
    for (; c + 4 <= safe; c += 4) rows_block(c, std::integral_constant<int, 4>());
    for (; c < safe; ++c) rows_block(c, std::integral_constant<int, 1>());
    for (; c < f; ++c)
      for (int q = 0; q < Q; ++q) {
        T acc = 0;
        for (int64_t j = 0; j < n; ++j) acc += w[q][j] * xs[c * n + j];
        out[q][c] += acc;
      }
  }
  // The maps in pairs (one read of the sample serves two), then a last single one: body(first map, count, rows)
  template <typename Body>
  static void in_pairs(int64_t P, Body&& body) {
    for (int64_t p0 = 0; p0 < P; p0 += 2) {
      if (p0 + 2 <= P)
        body(p0, std::integral_constant<int, 2>());
      else
        body(p0, std::integral_constant<int, 1>());
    }
  }
};

// The forward of one (f, n) sample with short rows, two maps per read of the sample: Z from registers, σ, then V by
// masked dot products.
template <typename T, int NV>
void forward_short(const T* xs, const T* bm, T* us, T* vs, int64_t n, int64_t f, int64_t P, int att,
                   RowScratch<T>& sc) {
  const ShortRows<T, NV> rows(xs, n, f);
  alignas(32) T wbuf[4][NV * kLanes<T>];
  sc.soft.reset();
  std::fill(vs, vs + P * f, T(0));
  auto weights = [&](int64_t p, T* w) {
    T* u = us + p * n;
    std::copy(w, w + n, u);  // Z; σ is applied to U below, as in forward_rows
    if (att == kRelu) {
      for (int64_t j = 0; j < n; ++j) w[j] = relu(w[j]);
    } else if (att == kSoftmax) {
      sc.soft.grow(p, u, n, 1, vs + p * f, f);
      for (int64_t j = 0; j < n; ++j) w[j] = sc.soft.weight(p, u[j]);
    }
    std::fill(w + n, w + NV * kLanes<T>, T(0));
  };
  int64_t p0 = 0;
  // Z of 4 maps from one read of the sample (the rows' sums of 4 maps fit in the registers; their dot products
  // with 4 maps' weights do not, so V goes in pairs): 3 reads of the sample per 4 maps instead of 4. Measured,
  // forward on two threads at (32, 2048, 7 × 7): P = 4 0.69 -> 0.63 ms, P = 8 1.08 -> 1.01.
  for (; p0 + 4 <= P; p0 += 4) {
    const T* coef[4];
    T* w[4];
    for (int k = 0; k < 4; ++k) coef[k] = bm + p0 + k, w[k] = wbuf[k];
    rows.template sum_rows<4>(coef, P, w);
    for (int k = 0; k < 4; ++k) weights(p0 + k, w[k]);
    for (int k = 0; k < 4; k += 2) {
      T* wk[2] = {w[k], w[k + 1]};
      T* v[2] = {vs + (p0 + k) * f, vs + (p0 + k + 1) * f};
      rows.template add_dots<2>(wk, v);
    }
  }
  ShortRows<T, NV>::in_pairs(P - p0, [&](int64_t q0, auto q) {
    constexpr int Q = decltype(q)::value;
    const T* coef[Q];
    T* w[Q];
    T* v[Q];
    for (int k = 0; k < Q; ++k) coef[k] = bm + p0 + q0 + k, w[k] = wbuf[k], v[k] = vs + (p0 + q0 + k) * f;
    rows.template sum_rows<Q>(coef, P, w);
    for (int k = 0; k < Q; ++k) weights(p0 + q0 + k, w[k]);
    rows.template add_dots<Q>(w, v);
  });
  if (att == kRelu)
    for (int64_t k = 0; k < P * n; ++k) us[k] = relu(us[k]);
  if (att == kSoftmax) sc.soft.finish(us, vs, n, f);
}

// ∂X of one (f, n) channels-first sample whose rows are whole (n ≥ kLanes), with Q = P ≤ 4 maps,
// ∂X_c = Σ_p ∂v_pc u_p + b_cp ∂z_p, computed as the aligned vectors of the sample's flat (f · n) ∂X and stored from
// the registers. Rows computed as vectors (49 or 196 numbers: not whole vectors, nor whole 64-byte lines) had to be
// written unaligned into a staging buffer and copied from there to memory. A vector starts at j0 of row c and runs
// into row c + 1 where j0 + kLanes > n: those lanes take row c + 1's coefficients, and U and ∂Z are read from
// copies whose first kLanes numbers are repeated after their n (u and gz: rows `w` apart, n + kLanes numbers each).
// Full 64-byte lines are streamed with `stream`; the numbers before the first line and after the last vector are
// written one at a time.
template <typename T, int Q>
void flat_dx(const T* bm, const T* gvs, const T* u, const T* gz, int64_t w, int64_t n, int64_t f, int64_t P, T* dst,
             bool stream) {
  constexpr int L = kLanes<T>, LL = 64 / int(sizeof(T));
  const int64_t N = f * n;
  auto one = [&](int64_t q) {
    const int64_t c = q / n, j = q - c * n;
    T acc = 0;
    for (int64_t p = 0; p < P; ++p) acc += gvs[p * f + c] * u[p * w + j] + bm[c * P + p] * gz[p * w + j];
    dst[q] = acc;
  };
  int64_t q = 0;
  for (; q < N && reinterpret_cast<std::uintptr_t>(dst + q) % 64 != 0; ++q) one(q);
  const int64_t streamed_end = stream ? q + (N - q) / LL * LL : q;  // the full lines from q
  typename VecOf<T>::mask from[L];  // from[k]: the lanes ≥ k
  for (int k = 0; k < L; ++k) from[k] = lanes_from<T>(k);
  vec<T> g[Q], b[Q], g1[Q], b1[Q];
  auto coefficients = [&](int64_t c, vec<T>* gc, vec<T>* bc) {
    for (int k = 0; k < Q; ++k) gc[k] = vec<T>{} + gvs[k * f + c], bc[k] = vec<T>{} + bm[c * P + k];
  };
  coefficients(0, g, b);
  for (int64_t c = 0; c < f; ++c) {
    const int64_t row_end = std::min((c + 1) * n, N - L + 1);  // vectors that start in row c and end in the sample
    const int64_t inside_end = std::min(row_end, (c + 1) * n - L + 1);  // ... and end in row c
    for (; q < inside_end; q += L) {
      const int64_t j0 = q - c * n;
      vec<T> acc = g[0] * load(u + j0) + b[0] * load(gz + j0);
      for (int k = 1; k < Q; ++k) acc += g[k] * load(u + k * w + j0) + b[k] * load(gz + k * w + j0);
      put(dst + q, acc, q < streamed_end);
    }
    if (c + 1 < f) coefficients(c + 1, g1, b1);
    if (q < row_end) {  // the vector that runs into row c + 1
      const int64_t j0 = q - c * n;
      const auto next = from[n - j0];  // the lanes in row c + 1
      vec<T> acc{};
      for (int k = 0; k < Q; ++k)
        acc += (next ? g1[k] : g[k]) * load(u + k * w + j0) + (next ? b1[k] : b[k]) * load(gz + k * w + j0);
      put(dst + q, acc, q < streamed_end);
      q += L;
    }
    for (int k = 0; k < Q; ++k) g[k] = g1[k], b[k] = b1[k];
  }
  for (; q < N; ++q) one(q);
}

// fn(std::integral_constant<int, P>()) for P = 1 ... 4
template <typename Fn>
void with_maps(int64_t P, Fn&& fn) {
  switch (P) {
    case 1: fn(std::integral_constant<int, 1>()); break;
    case 2: fn(std::integral_constant<int, 2>()); break;
    case 3: fn(std::integral_constant<int, 3>()); break;
    default: fn(std::integral_constant<int, 4>());
  }
}

// fn(std::integral_constant<int, Q>()) with Q = P for 2 ... 4 maps (their count known at compile time), Q = 0 for
// any other P (1: rank-1, whose rows of 384 B to 2 KB are read one after the other, see sequential_rows; more
// than 4: maps in blocks)
template <typename Fn>
void with_fixed_maps(int64_t P, Fn&& fn) {
  if (P >= 2 && P <= 4)
    with_maps(P, fn);
  else
    fn(std::integral_constant<int, 0>());
}

// flat_dx from P rows of U and of ∂Z (n numbers each; row p at u + p · su, gz + p · sg), copied into ext with their
// first vector repeated after them
template <typename T>
void flat_dx_rows(const T* bm, const T* gvs, const T* u, int64_t su, const T* gz, int64_t sg, int64_t n, int64_t f,
                  int64_t P, T* dst, bool stream, std::vector<T>& ext) {
  const int64_t w = n + kLanes<T>;
  ext.resize(2 * P * w);
  for (int64_t p = 0; p < P; ++p)
    for (const auto& [row, to] : {std::pair{u + p * su, p}, std::pair{gz + p * sg, P + p}}) {
      std::copy(row, row + n, ext.data() + to * w);
      std::copy(row, row + kLanes<T>, ext.data() + to * w + n);
    }
  with_maps(P, [&](auto q) {
    flat_dx<T, decltype(q)::value>(bm, gvs, ext.data(), ext.data() + P * w, w, n, f, P, dst, stream);
  });
}

// The backward of one (f, n) sample with short rows: ∂Z_p = σ'(Σ_c ∂v_pc x_c) from registers, ∂B by masked dot
// products, then ∂X: by flat_dx (rows of 2 or more vectors, up to 4 maps; ext its copies of U and ∂Z), else from U
// and ∂Z padded to whole vectors (in L1), each row c = Σ_p ∂v_pc u_p + b_cp ∂z_p computed whole (combine's scalar
// remainder, tried here: backward 14 % slower at P = 1).
template <typename T, int NV>
void backward_short(const T* xs, const T* bm, const T* us, const T* gvs, T* gb, int64_t n, int64_t f, int64_t P,
                    int att, RowWriter<T>* out, std::vector<T>& pad /* 2 · P · NV · L */, std::vector<T>& ext) {
  constexpr int L = kLanes<T>, W = NV * L;
  const ShortRows<T, NV> rows(xs, n, f);
  T* upad = pad.data();
  T* gzpad = pad.data() + P * W;
  std::fill(pad.begin(), pad.end(), T(0));
  // ∂X by flat_dx: rows of at least 2 vectors (3 from 3 maps on; shorter rows have a vector across two rows too
  // often), up to 4 maps. Measured, backward, two threads, B = 32, float32: P = 1 1.2-1.6x faster at 16-64
  // positions (f = 2048); P = 4 1.1-1.3x at 36-64, 0.9-1.05x at 12-25 (the rows below kept there)
  const bool flat = out != nullptr && n >= (P <= 2 ? 2 : 3) * L && P <= 4;
  ShortRows<T, NV>::in_pairs(P, [&](int64_t p0, auto q) {
    constexpr int Q = decltype(q)::value;
    const T* gv[Q];
    T* gz[Q];
    T* gbq[Q];
    for (int k = 0; k < Q; ++k)
      gv[k] = gvs + (p0 + k) * f, gz[k] = gzpad + (p0 + k) * W, gbq[k] = gb ? gb + (p0 + k) * f : nullptr;
    rows.template sum_rows<Q>(gv, 1, gz);
    for (int k = 0; k < Q; ++k) {
      const int64_t p = p0 + k;
      std::fill(gz[k] + n, gz[k] + W, T(0));
      if (!flat) std::copy(us + p * n, us + (p + 1) * n, upad + p * W);  // (flat_dx copies U itself)
      activation_derivative(us + p * n, gz[k], n, att);
    }
    if (gb) rows.template add_dots<Q>(gz, gbq);
  });
  if (out == nullptr) return;
  if (flat) {
    flat_dx_rows(bm, gvs, us, n, gzpad, W, n, f, P, out->base, out->streamed, ext);
    return;
  }
  // Two rows at a time, the maps outermost: 2·NV independent FMA chains, and each vector of U and ∂Z loaded once
  // for both rows (one accumulator summed over the maps one vector at a time was a chain of dependent adds:
  // 3x slower). A row's last vector runs past n; it is stored whole where the next row of the pair, written
  // after it, covers the overrun, and copied in part otherwise.
  const int64_t rem = n - (NV - 1) * L;
  const bool overrun_in_next = NV * L <= 2 * n;
  auto block = [&](int64_t c, auto rows_in_block) {
    constexpr int C = decltype(rows_in_block)::value;
    T* dst = out->rows(c, C);  // the C rows, n apart
    vec<T> acc[C][NV] = {};
    for (int64_t p = 0; p < P; ++p) {
      vec<T> g[C], b[C];
      for (int r = 0; r < C; ++r) g[r] = vec<T>{} + gvs[p * f + c + r], b[r] = vec<T>{} + bm[(c + r) * P + p];
      for (int k = 0; k < NV; ++k) {
        const vec<T> su = in_register(load(upad + p * W + k * L)), sz = in_register(load(gzpad + p * W + k * L));
        for (int r = 0; r < C; ++r) {
          acc[r][k] += su * g[r];
          acc[r][k] += sz * b[r];
        }
      }
    }
    for (int r = 0; r < C; ++r) {
      T* d = dst + r * n;
      for (int k = 0; k + 1 < NV; ++k) store(d + k * L, acc[r][k]);
      if (r + 1 < C && overrun_in_next) {
        store(d + (NV - 1) * L, acc[r][NV - 1]);
      } else {
        alignas(32) T last[L];
        store(last, acc[r][NV - 1]);
        std::copy(last, last + rem, d + (NV - 1) * L);
      }
    }
  };
  int64_t c = 0;
  for (; c + 2 <= f; c += 2) block(c, std::integral_constant<int, 2>());
  if (c < f) block(c, std::integral_constant<int, 1>());
}

// forward_short / backward_short for rows of at most 8 vectors (their NV); false for longer rows
template <typename T, typename Fn>
bool with_short_rows(int64_t n, Fn&& fn) {
  constexpr int L = kLanes<T>;
  switch (n <= 8 * L ? (n + L - 1) / L : 0) {
    case 1: fn(std::integral_constant<int, 1>()); return true;
    case 2: fn(std::integral_constant<int, 2>()); return true;
    case 3: fn(std::integral_constant<int, 3>()); return true;
    case 4: fn(std::integral_constant<int, 4>()); return true;
    case 5: fn(std::integral_constant<int, 5>()); return true;
    case 6: fn(std::integral_constant<int, 6>()); return true;
    case 7: fn(std::integral_constant<int, 7>()); return true;
    case 8: fn(std::integral_constant<int, 8>()); return true;
    default: return false;
  }
}

// Whether a pass over the block of positions [j0, j0 + len) prefetches its rows through Runs: where the block is
// part of each row. Measured, forward on two threads with blocks of 1536, 768 and 384 positions at (32, n, f) =
// (4096, 128), (2048, 256) and (1024, 512): P = 1, 2, 3 11-18 % faster than with a burst per block of 4 rows.
// P = 4 and more (4 × 4 updates per loaded vector) gained once the loops issued as many prefetches as they read
// lines (see multi_dot): paired, B = 32, at (4096, 128), (2048, 256), (3136, 256), (1500, 300) forward 1.11-1.22x,
// forward+backward 1.11-1.19x (float64 1.13-1.16x, one thread 1.11-1.17x, P = 6 1.05-1.06x); (3136, 64) 1.01-1.03x.
inline bool runs_ahead(int64_t len, int64_t n) { return len < n; }

// zrows[p][:len] += Σ_c coef[c·P + p] x_c[J] for the positions J = [j0, j0 + len) (Z_J = Bᵀ X_J with coef = B; ∂Z_J
// with ∂Vᵀ), X_J read from memory 4 rows at a time. A = Ahead or AheadPerLine: whole rows (J every position), the
// rows ahead prefetched as over_strided_rows does; A = Runs: a block of parts of rows, `n` apart, also prefetched
// through the loops (see runs_ahead). Out of line: inlined beside both, the whole rows' loop of forward_channels ran
// 7-10 % slower at (32, 196, 2048) (the same code, moved).
template <typename T, typename A, int Q = 0>
__attribute__((noinline)) void channel_sums_with(const T* xs, const T* coef, T* const* zrows, int64_t n, int64_t f,
                                                 int64_t P_, int64_t j0, int64_t len) {
  const int64_t P = Q > 0 ? Q : P_;
  A ahead;
  over_channel_block<T>(
      xs, f, n, j0, len, &ahead,
      [&](int64_t c, const T* const* rows) { axpy_rows<T, 4, A, Q>(rows, coef + c * P, P, zrows, len, &ahead); },
      [&](int64_t c, const T* const* rows) { axpy_rows<T, 1, A, Q>(rows, coef + c * P, P, zrows, len); });
}

// Whole rows of 2 KB or more, of a sample larger than L2, with 2 maps or more, prefetch one line per line read
// (AheadPerLine). Measured (paired, B = 32, two threads) at (784, 512-1024), (512, 1024), (1024, 1024): P = 4
// forward 1.02-1.11x, forward+backward 1.04-1.08x (float64 0.98-1.08x), P = 2 forward+backward 1.05-1.09x; P = 1
// 0.95-1.08x, so it keeps one per iteration, as do rows under 2 KB ((400, 1024): 0.95-1.02x).
template <typename T, int Q = 0>
void channel_sums(const T* xs, const T* coef, T* const* zrows, int64_t n, int64_t f, int64_t P, int64_t j0,
                  int64_t len) {
  if (runs_ahead(len, n))
    channel_sums_with<T, Runs, Q>(xs, coef, zrows, n, f, P, j0, len);
  else if (P >= 2 && !sample_fits_l2<T>(n, f) && n * int64_t(sizeof(T)) >= 2 * kSpreadBytes)
    channel_sums_with<T, AheadPerLine, Q>(xs, coef, zrows, n, f, P, j0, len);
  else
    channel_sums_with<T, Ahead, Q>(xs, coef, zrows, n, f, P, j0, len);
}

// One (f, n) sample, in blocks of positions J: Z_J = Bᵀ X_J (X_J read from memory), σ, V += U_J X_Jᵀ (X_J
// from L2). Softmax runs over blocks as over rows: a running maximum and sum per map, V rescaled.
// Q > 0: P = Q maps known at compile time, as in forward_rows. Measured, forward, two threads: in cache P = 2, 4
// 1.02-1.14x at 100-4096 positions; B = 32 from memory 1.02-1.29x (100 positions 1.19-1.29x, (196, 512) 1.04-1.10x,
// (196, 2048) 1.06x).
template <typename T, int Q = 0>
void forward_channels(const T* xs, const T* bm, T* us, T* vs, int64_t n, int64_t f, int64_t P_, int att,
                      RowScratch<T>& sc, std::vector<T>& wbuf) {
  const int64_t P = Q > 0 ? Q : P_;
  if (with_short_rows<T>(n, [&](auto nv) { forward_short<T, decltype(nv)::value>(xs, bm, us, vs, n, f, P, att, sc); }))
    return;
  const int64_t jb = position_block<T>(n, f);
  if (att == kSoftmax) wbuf.resize(P * jb);
  std::vector<T*> zrows(P);
  std::vector<const T*> wrows(P);
  std::vector<T> part(4 * P);
  std::fill(vs, vs + P * f, T(0));
  sc.soft.reset();
  for (int64_t j0 = 0; j0 < n; j0 += jb) {
    const int64_t len = std::min(jb, n - j0);
    for (int64_t p = 0; p < P; ++p) {
      zrows[p] = us + p * n + j0;
      std::fill(zrows[p], zrows[p] + len, T(0));
    }
    channel_sums<T, Q>(xs, bm, zrows.data(), n, f, P, j0, len);
    for (int64_t p = 0; p < P; ++p) {
      T* z = zrows[p];
      wrows[p] = z;  // linear: the weights are Z itself; ReLU: in place
      if (att == kRelu) {
        for (int64_t j = 0; j < len; ++j) z[j] = relu(z[j]);
      } else if (att == kSoftmax) {  // Z stays in U until finish(); the weights go to wbuf
        sc.soft.grow(p, z, len, 1, vs + p * f, f);
        T* w = wbuf.data() + p * jb;
        for (int64_t j = 0; j < len; ++j) w[j] = sc.soft.weight(p, z[j]);
        wrows[p] = w;
      }
    }
    // The second pass over a sample of up to kL2HotBytes runs without software prefetch: its rows are in L2
    // already, and the prefetches cost issue slots. Measured (paired A/B, two threads, B = 32): forward
    // 1.11-1.18x at P = 1 (100-250 positions, 200 KB-512 KB), 0.99-1.08x at P = 4; larger samples (960 KB)
    // 0.95-1.05x keep it. The backward's pass for ∂B keeps it too: without, 0.92-0.97x at (250, 512).
    add_channel_dots<T, Q>(xs, f, n, j0, len, wrows.data(), P, vs, part, sample_bytes<T>(n, f) > kL2HotBytes);
  }
  if (att == kSoftmax) sc.soft.finish(us, vs, n, f);
}

template <typename T>
void forward_impl(const T* x, const T* bm, T* u, T* v, int64_t B, int64_t n, int64_t f, int64_t P, bool cf,
                  int att) {
  std::vector<T> btv(cf ? 0 : P * f);  // (P, f): each map's weights contiguous, for the rows layout
  if (!cf) copy_tiles(bm, P, 1, btv.data(), 1, f, f, P);
  std::vector<const T*> bt(P);
  for (int64_t p = 0; p < P && !cf; ++p) bt[p] = btv.data() + p * f;
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    RowScratch<T> sc(P);
    std::vector<T> wbuf;
    for (int64_t b = b0; b < b1; ++b) {
      with_fixed_maps(P, [&](auto q) {
        constexpr int Q = decltype(q)::value;
        if (cf)
          forward_channels<T, Q>(x + b * n * f, bm, u + b * P * n, v + b * P * f, n, f, P, att, sc, wbuf);
        else
          forward_rows<T, Q>(x + b * n * f, bt.data(), u + b * P * n, v + b * P * f, n, f, P, att, sc);
      });
    }
  });
}

// ------------------------------------------------------------------------------------------- backward
template <typename T>
void backward_impl(const T* x, const T* bm, const T* u, const T* gv, T* gx, T* gbm, int64_t B, int64_t n, int64_t f,
                   int64_t P, bool cf, int att) {
  std::vector<T> btv(P * f);  // B (f, P) as (P, f)
  copy_tiles(bm, P, 1, btv.data(), 1, f, f, P);
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(B, at::get_num_threads()));
  const int64_t per = (B + chunks - 1) / chunks;
  // one ∂Bᵀ (P, f) accumulator per chunk, summed at the end (no atomics, deterministic for a thread count)
  std::vector<T> gbm_parts(gbm ? chunks * f * P : 0, T(0));
  // ∂X of 4 MiB or more (more than L2) is streamed to memory, as glibc's memcpy does for large copies:
  // between two training steps the rest of the network evicts the buffer, so a cached store would first read
  // each line from memory. Measured, fwd+bwd after a cache-evicting neighbour: 1.0-1.1x faster at 12.8 MB,
  // 1.1-1.5x at 51-67 MB; with the caches warm (a tight loop) equal at 12.8 MB.
  const bool streamed = B * n * f * int64_t(sizeof(T)) >= (int64_t(4) << 20);
  at::parallel_for(0, chunks, 1, [&](int64_t k0, int64_t k1) {
    std::vector<T> gz(P * n), coef(8 * P), part(4 * P), gzc(4 * P), gvt, ext, pad(cf ? 2 * P * 8 * kLanes<T> : 0);
    // staging for streamed ∂X rows: 16 KB (in L1), and at least the 4 rows that combine_rows writes at once
    std::vector<T> staging(streamed ? std::max<int64_t>(16384 / int64_t(sizeof(T)), 4 * (cf ? n : f)) : 0);
    std::vector<const T*> src(2 * P), gvrows(P), gzrows(P);
    std::vector<T*> gbrows(P), gzout(P);
    for (int64_t p = 0; p < P; ++p) gzrows[p] = gz.data() + p * n, gzout[p] = gz.data() + p * n;
    for (int64_t k = k0; k < k1; ++k) {
      T* gb = gbm ? gbm_parts.data() + k * f * P : nullptr;
      for (int64_t p = 0; p < P && gb; ++p) gbrows[p] = gb + p * f;
      const int64_t last = std::min(B, (k + 1) * per);
      for (int64_t b = k * per; b < last; ++b) {
        const T* xs = x + b * n * f;
        const T* us = u + b * P * n;
        const T* gvs = gv + b * P * f;
        T* gxs = gx ? gx + b * n * f : nullptr;
        for (int64_t p = 0; p < P; ++p) gvrows[p] = gvs + p * f;
        if (!cf) {  // X (n, f): ∂X_i = Σ_p u_pi ∂v_p + ∂z_pi b_p, ∂Bᵀ_p += ∂z_pi x_i
          // Q > 0: P = Q known at compile time, as in forward_rows. Forward+backward, two threads: 1.11-1.18x at
          // (4096, 128), P = 2, 4, in cache and from memory; rows of 512-2048 numbers 0.98-1.02x
          with_fixed_maps(P, [&](auto q) {
            constexpr int Q = decltype(q)::value;
            const int64_t maps = Q > 0 ? Q : P;
            for (int64_t p = 0; p < maps; ++p) src[p] = gvs + p * f, src[maps + p] = btv.data() + p * f;
            RowWriter<T> out{gxs, f, f, streamed, staging};
            const bool direct = streamed && gxs && is_line_run(gxs, f);
            Ahead ahead;  // the prefetches of the rows ahead, spread over both loops
            auto finish = [&](int64_t i0, const T* const* rows, int count) {
              for (int r = 0; r < count; ++r)
                for (int64_t p = 0; p < maps; ++p) gzc[r * maps + p] = gz[p * n + i0 + r];
              if (gb) axpy_block<T, Q>(rows, count, gzc.data(), maps, gbrows.data(), f, &ahead);
              if (gxs && count == 4 && 2 * maps <= 64) {  // (64: combine_rows' remainder)
                for (int r = 0; r < 4; ++r)
                  for (int64_t p = 0; p < maps; ++p)
                    coef[r * 2 * maps + p] = us[p * n + i0 + r], coef[r * 2 * maps + maps + p] = gzc[r * maps + p];
                // rows that start on a cache line are streamed from registers; others staged or in place
                T* first = direct ? gxs + i0 * f : out.rows(i0, 4);
                T* dsts[4] = {first, first + f, first + 2 * f, first + 3 * f};
                combine_rows<T, 4>(src.data(), coef.data(), 2 * maps, dsts, f, direct);
              } else {
                for (int r = 0; r < count && gxs; ++r) {
                  for (int64_t p = 0; p < maps; ++p) coef[p] = us[p * n + i0 + r], coef[maps + p] = gzc[r * maps + p];
                  combine(src.data(), coef.data(), 2 * maps, out.row(i0 + r), f);
                }
              }
            };
            const bool fused = att != kSoftmax;  // σ' is per position: one pass over the rows
            const bool seq = sequential_rows<T>(maps, f);
            over_rows<T>(xs, n, f, seq ? nullptr : &ahead, [&](int64_t i0, const T* const* rows, int count) {
              dots_block<T, Q>(rows, count, gvrows.data(), maps, f, part.data(), seq, &ahead);
              for (int r = 0; r < count; ++r)
                for (int64_t p = 0; p < maps; ++p) {
                  const T g = part[r * maps + p];
                  gz[p * n + i0 + r] = att == kRelu ? (us[p * n + i0 + r] > 0 ? g : T(0)) : g;
                }
              if (fused) finish(i0, rows, count);
            });
            if (!fused) {
              for (int64_t p = 0; p < maps; ++p) activation_derivative(us + p * n, gz.data() + p * n, n, att);
              over_rows<T>(xs, n, f, &ahead, finish);
            }
            if (gxs) out.flush();
          });
        } else if (with_short_rows<T>(n, [&](auto nv) {
                     RowWriter<T> out{gxs, n, n, streamed, staging};
                     backward_short<T, decltype(nv)::value>(xs, bm, us, gvs, gb, n, f, P, att, gxs ? &out : nullptr,
                                                            pad, ext);
                     if (gxs) out.flush();
                   })) {
        } else {  // X (f, n): ∂Z = σ'(Σ_c ∂v[:, c] x_c); ∂B_cp += x_c · ∂z_p; ∂X_c = Σ_p ∂v_pc u_p + b_cp ∂z_p
          // In blocks of positions for linear/ReLU (σ' per position); softmax's σ' needs every position.
          const int64_t jb = att == kSoftmax ? n : position_block<T>(n, f);
          gvt.resize(f * P);  // ∂V (P, f) as (f, P): each channel's P coefficients side by side, as B's
          copy_tiles(gvs, 1, f, gvt.data(), P, 1, f, P);
          for (int64_t j0 = 0; j0 < n; j0 += jb) {
            const int64_t len = std::min(jb, n - j0);
            for (int64_t p = 0; p < P; ++p) {
              gzout[p] = gz.data() + p * n + j0, gzrows[p] = gzout[p];
              std::fill(gzout[p], gzout[p] + len, T(0));
              src[p] = us + p * n + j0, src[P + p] = gzout[p];
            }
            with_fixed_maps(P, [&](auto q) {  // X_J from memory
              channel_sums<T, decltype(q)::value>(xs, gvt.data(), gzout.data(), n, f, P, j0, len);
            });
            for (int64_t p = 0; p < P; ++p) activation_derivative(us + p * n + j0, gzout[p], len, att);
            if (gb)  // X_J again, from L2, before ∂X's writes compete for it
              with_fixed_maps(P, [&](auto q) {
                add_channel_dots<T, decltype(q)::value>(xs, f, n, j0, len, gzrows.data(), P, gb, part);
              });
            RowWriter<T> out{gxs + j0, n, len, streamed, staging};
            const bool direct = streamed && gxs && is_line_run(gxs + j0, len) && is_line_run(gxs, n);
            // whole rows that are not whole lines, up to 4 maps: by flat_dx (backward, two threads, B = 32, against
            // the rows below through the staging buffer: 1.1-1.4x at 97-300 positions, P = 1-4)
            if (gxs && len == n && !direct && P <= 4) {
              flat_dx_rows(bm, gvs, us, n, gz.data(), n, n, f, P, gxs, streamed, ext);
              continue;  // (the only block)
            }
            int64_t c = 0;
            // Rows 4 at a time: each loaded vector of U and ∂Z serves the 4 (one row at a time loads as many numbers
            // as it computes). Measured, one thread, backward P = 4: 10-18 % faster at (1024, 256) and (784, 512) in
            // cache; at 196 and 100 positions 8-11 % faster once combine_rows ended a row with a vector instead of
            // a scalar remainder (with it, 4-8 % slower than one row at a time).
            for (; len >= 64 && c + 4 <= f && gxs && 2 * P <= 64; c += 4) {
              for (int r = 0; r < 4; ++r)
                for (int64_t p = 0; p < P; ++p)
                  coef[r * 2 * P + p] = gvs[p * f + c + r], coef[r * 2 * P + P + p] = bm[(c + r) * P + p];
              T* first = direct ? gxs + j0 + c * n : out.rows(c, 4);
              const int64_t gap = direct ? n : out.gap();
              T* dsts[4] = {first, first + gap, first + 2 * gap, first + 3 * gap};
              combine_rows<T, 4>(src.data(), coef.data(), 2 * P, dsts, len, direct);
            }
            for (; c < f && gxs; ++c) {
              for (int64_t p = 0; p < P; ++p) coef[p] = gvs[p * f + c], coef[P + p] = bm[c * P + p];
              combine(src.data(), coef.data(), 2 * P, direct ? gxs + j0 + c * n : out.row(c), len, direct);
            }
            if (gxs) out.flush();
          }
        }
      }
    }
    if (streamed) stream_fence();
  });
  if (gbm) {
    for (int64_t c = 0; c < f; ++c)
      for (int64_t p = 0; p < P; ++p) {
        T acc = 0;
        for (int64_t k = 0; k < chunks; ++k) acc += gbm_parts[k * f * P + p * f + c];
        gbm[c * P + p] = acc;
      }
  }
}

// ------------------------------------------------------------------------------------------- products with A
// s = scale · vec(V) A, ∂V = scale · g Aᵀ, ∂A = scale · vec(V)ᵀ g, with A given as a (P, f, K) view (M = P·f rows of
// K classes; rank-P's (f, K, P) parameter permuted, without a copy). These are skinny products (B = 32 rows, inner
// dimension K or B): MKL took 50-200 µs for each at (B, M, K) = (32, 2048, 10) on the AMD machine measured here,
// more than the maps themselves. With few classes they run here, on A packed as Aᵀ (K, M), with the same blocked
// dot products and updates as the maps; wider A runs through wide_product on A in place (below: a GEMM library
// packs A first, which at these shapes costs about as much as the product): on rows of K numbers where A's memory
// is (P, f, K) (rank-1's A, or rank-P's laid out so), by lane groups where it is a contiguous (f, K, P) (the layer's
// parameter, see grouped_scores), and through one contiguous (P·f, K) copy otherwise.
bool small_product(int64_t M, int64_t K) { return K <= 32 && M * K <= (int64_t(1) << 18); }

// Transpositions of more than a few thousand numbers run on every thread: a serial one of the 82K numbers of
// A at f = 2048, K = 10, P = 4 took 0.1 ms here, about a tenth of the rank-P forward at (32, 2048, 7 x 7).
constexpr int64_t kCopyTile = 16;
constexpr int64_t kCopyGrain = 8192;  // numbers per task

// `blocks` transpositions of rows × cols at src + b·sb / dst + b·db, their tiles split into tasks of about
// kCopyGrain numbers over every thread
template <typename T>
void copy_tiles_parallel(const T* src, int64_t sb, int64_t si, int64_t sj, T* dst, int64_t db, int64_t di, int64_t dj,
                         int64_t blocks, int64_t rows, int64_t cols) {
  const int64_t tiles = (rows + kCopyTile - 1) / kCopyTile;
  const int64_t grain = std::max<int64_t>(1, kCopyGrain / (kCopyTile * std::max<int64_t>(1, cols)));
  at::parallel_for(0, blocks * tiles, grain, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t b = q / tiles, r0 = (q % tiles) * kCopyTile;
      copy_tiles(src + b * sb + r0 * si, si, sj, dst + b * db + r0 * di, di, dj, std::min(kCopyTile, rows - r0), cols);
    }
  });
}

// Aᵀ (K, M) packed from a (P, f, K) view: Aᵀ[k, p·f + c] = A[p, c, k]; the P maps' tiles in one parallel region
template <typename T>
std::unique_ptr<T[]> pack_at(const torch::Tensor& a) {
  const int64_t P = a.size(0), f = a.size(1), K = a.size(2), M = P * f;
  std::unique_ptr<T[]> at(new T[K * M]);  // (not zeroed: every number is written below)
  copy_tiles_parallel(a.data_ptr<T>(), a.stride(0), a.stride(1), a.stride(2), at.get(), f, 1, M, P, f, K);
  return at;
}

// s (B, K) = scale · V (B, M) Aᵀᵀ: blocks of 4 samples × 4 classes
template <typename T>
void small_scores(const T* v, const T* at, T* s, int64_t B, int64_t M, int64_t K, T scale) {
  std::vector<const T*> arows(K);
  for (int64_t k = 0; k < K; ++k) arows[k] = at + k * M;
  at::parallel_for(0, (B + 3) / 4, 1, [&](int64_t q0, int64_t q1) {
    for (int64_t b = q0 * 4; b < std::min(B, q1 * 4); b += 4) {
      const int count = int(std::min<int64_t>(4, B - b));
      const T* rows[4] = {v + b * M, v + std::min(b + 1, B - 1) * M, v + std::min(b + 2, B - 1) * M,
                          v + std::min(b + 3, B - 1) * M};
      dots_block<T>(rows, count, arows.data(), K, M, s + b * K);
    }
  });
  for (int64_t k = 0; k < B * K; ++k) s[k] *= scale;
}

// dsts[d] = Σ_r coef[r][d] srcs[r] for d < D (D rows of M numbers), srcs in blocks of 4; columns split among threads
template <typename T>
void small_updates(const T* src, int64_t R, const T* coef /* R × D */, T* dst, int64_t D, int64_t M) {
  at::parallel_for(0, M, 256, [&](int64_t m0, int64_t m1) {
    std::vector<T*> drows(D);
    for (int64_t d = 0; d < D; ++d) {
      drows[d] = dst + d * M + m0;
      std::fill(drows[d], drows[d] + (m1 - m0), T(0));
    }
    for (int64_t r = 0; r < R; r += 4) {
      const int count = int(std::min<int64_t>(4, R - r));
      const T* rows[4];
      for (int k = 0; k < 4; ++k) rows[k] = src + std::min(r + k, R - 1) * M + m0;
      axpy_block<T>(rows, count, coef + r * D, D, drows.data(), m1 - m0);
    }
  });
}

// The wide products (K > 32 classes): out[r·ors + c] = Σ_i w[r·wrs + i·wis] · a[i·lda + c], r < R, c < N, i < I.
// A GEMM library packs both operands into panels first; with one side this thin (B = 32 rows against M·K numbers of A)
// packing A costs about as much as the product: MKL reached 80-110 GF/s of the machine's 178 on the three products of
// rank-P at (32, 8192, 600). Here A is read in place: a tile of rows × vectors of columns (8 × 3 or 4 × 6) keeps 24
// accumulators in registers; each step loads the tile's vectors of a row of A and broadcasts one number of w per row
// (no packing, no horizontal sums). The inner dimension runs in blocks so that a tile's strip of A stays in L2 for
// the other row tiles. Threads take column tiles (each reads its share of A once) or, when the rows outnumber the
// columns, row tiles. Columns past the last whole vector are computed on a zero-padded copy of their strip.
//
// The tile's shape is the caller's (Shape): the forward's product s = vec(V) A has few rows (B) and many columns (K),
// and runs 4 rows × 6 vectors; with A read from memory (the maps have just streamed X through the caches) it walks
// the inner dimension in short blocks and prefetches the next block's rows of its columns while it computes this
// one, spread over the tiles (a row of A is K numbers, 2.4 KB at K = 600, and the tile reads 192 bytes of it: the
// hardware prefetchers do not follow that stride). Measured on one thread, (32 × 8192) @ (8192 × 288 of 600), A
// cold: 8 × 3 tiles in blocks of 1024, 30-60 GF/s; 4 × 6, 62; 4 × 6 in blocks of 128 with the prefetch, 76-78 (the
// machine's GEMM: 92). The backward's products have many rows (M = P·f): ∂A (K columns, an inner dimension of B)
// keeps 8 × 3 tiles and blocks of 1024 (4 × 6 and 6 × 4 measured 0.86-0.96x there); ∂V (B columns, K inner) runs
// 6 × 4: at B = 32 one tile of 4 vectors spans every column, where 8 × 3 took an 8 × 1 tile beside it, a broadcast
// per 1 FMA (paired, the backward of the products alone at B = 32: 1.14-1.21x at K = 100-1000; B = 64, 128
// 1.07-1.12x; B = 8-24 0.97-1.02x).
struct Shape {
  int rows, vecs;    // a tile: rows × vecs vectors of columns
  int64_t inner;     // the inner dimension's block
  bool prefetch;     // prefetch the next block's rows of A (column tiles only)
};
constexpr Shape kWideForward{4, 6, 128, true}, kWideBackward{8, 3, 1024, false}, kWideGradV{6, 4, 1024, false};

// G numbers at p repeated over a vector's lanes (G divides kLanes): a broadcast for G = 1, one 16- or 8-byte
// broadcast on x86 with AVX (a lane-by-lane loop compiles to a gather there)
template <typename T, int G>
inline vec<T> repeat_group(const T* p) {
  if constexpr (G == 1) {
    return vec<T>{} + *p;
  } else if constexpr (G == kLanes<T>) {
    return load(p);
  } else {
#if defined(__AVX__) && (defined(__x86_64__) || defined(__i386__))
    if constexpr (G * sizeof(T) == 16) {
      return vec<T>(_mm256_broadcast_pd(reinterpret_cast<const __m128d*>(p)));
    } else if constexpr (G * sizeof(T) == 8) {
      double d;
      std::memcpy(&d, p, sizeof d);
      return vec<T>(_mm256_set1_pd(d));
    }
#endif
    vec<T> v;
    for (int l = 0; l < kLanes<T>; ++l) v[l] = p[l % G];
    return v;
  }
}

// Rows r0.. (at most RT, fewer at the end) × NV vectors of columns, over `count` inner steps: a and w start at
// the first inner step (a's rows lda apart, w's steps wis apart, w's rows wrs apart); out at row r0, first column;
// `first`: the block starts the sum (else it adds to out). With lane groups (G > 1) column j takes w's number
// j mod G of the step: w[r][i·wis + j mod G] (see grouped_scores).
template <typename T, int RT, int NV, int G = 1>
void wide_tile(const T* w, int64_t wrs, int64_t wis, int64_t rows, const T* a, int64_t lda, int64_t count, T* out,
               int64_t ors, bool first) {
  constexpr int L = kLanes<T>;
  vec<T> acc[RT][NV];
  const T* wr[RT];
  for (int r = 0; r < RT; ++r) {
    const int64_t row = std::min<int64_t>(r, rows - 1);  // rows past the end repeat the last one, not stored
    wr[r] = w + row * wrs;
    for (int v = 0; v < NV; ++v) acc[r][v] = first ? vec<T>{} : load(out + row * ors + v * L);
  }
  for (int64_t i = 0; i < count; ++i) {
    const T* ar = a + i * lda;
    vec<T> x[NV];
    for (int v = 0; v < NV; ++v) x[v] = in_register(load(ar + v * L));
    for (int r = 0; r < RT; ++r) {
      const vec<T> b = repeat_group<T, G>(wr[r] + i * wis);
      for (int v = 0; v < NV; ++v) acc[r][v] += b * x[v];
    }
  }
  for (int r = 0; r < RT && r < rows; ++r)
    for (int v = 0; v < NV; ++v) store(out + r * ors + v * L, acc[r][v]);
}

// fn(std::integral_constant<int, v>()) for 1 <= v < NV
template <int NV, typename Fn>
void with_vectors(int64_t v, Fn&& fn) {
  if constexpr (NV > 1) {
    if (v == NV - 1) return fn(std::integral_constant<int, NV - 1>());
    with_vectors<NV - 1>(v, fn);
  }
}

template <typename T, const Shape& S, int G = 1>
void wide_product(const T* w, int64_t wrs, int64_t wis, int64_t R, const T* a, int64_t lda, int64_t N, int64_t I, T* out,
                  int64_t ors) {
  constexpr int RT = S.rows, NV = S.vecs;
  constexpr int64_t L = kLanes<T>, TW = NV * L, item = sizeof(T);
  if (I == 0) {  // an empty sum (no channels): zeros, as a GEMM with an empty inner dimension gives
    for (int64_t r = 0; r < R; ++r) std::fill(out + r * ors, out + r * ors + N, T(0));
    return;
  }
  // Where every row of A starts at the same offset within 32 bytes (lda a multiple of 32 bytes) but not on a
  // boundary, the first `head` columns go through a partial strip and the vectors start at the next boundary: a
  // vector load across two cache lines costs two (A 16 bytes off, as numpy allocates large arrays, made the rank-1
  // forward at (32, 196, 2048), K = 600, 2.1 -> 3.2 ms).
  const int64_t off = int64_t(reinterpret_cast<uintptr_t>(a) % 32);
  // (Not with lane groups, whose columns must start at multiples of G.)
  const int64_t head =
      G == 1 && (lda * item) % 32 == 0 && off % item == 0 && off > 0 ? std::min(N, (32 - off) / item) : 0;
  const int64_t body = N - head;
  const int64_t whole = body / TW, singles = (body % TW) / L, rest = body % L;
  // column tiles: `whole` of TW columns, one of the `singles` vectors left (one tile of RT × singles accumulators:
  // as single-vector tiles, 4 accumulators of a 4-cycle FMA each, they left the pipes half idle; measured, paired,
  // forward at K = 120, 600, 1000: 1.10x, 1.03x, 1.05x), then the partial strips: the last `rest` columns, the `head`
  const int64_t partial0 = whole + (singles > 0), col_tiles = partial0 + (rest > 0) + (head > 0);
  const int64_t row_tiles = (R + RT - 1) / RT;
  // column tile t: its first column and width (TW, the vectors left, or fewer than L for a partial strip)
  struct Columns {
    int64_t c0, width;
  };
  auto columns = [&](int64_t t) -> Columns {
    if (t < whole) return {head + t * TW, TW};
    if (t < partial0) return {head + whole * TW, singles * L};
    if (t == partial0 && rest > 0) return {head + whole * TW + singles * L, rest};
    return {0, head};
  };
  // one task: the column tiles [t0, t1) and the row tiles [q0, q1), over the whole inner dimension
  auto run = [&](int64_t t0, int64_t t1, int64_t q0, int64_t q1, bool prefetch) {
    std::vector<T> pad;  // a partial strip of A (fewer than L columns), zero-padded to L columns
    // the task's columns [lo, hi) of A, and the lines of a row of A they cover (for the prefetch)
    int64_t lo = N, hi = 0;
    for (int64_t t = t0; t < t1; ++t)
      lo = std::min(lo, columns(t).c0), hi = std::max(hi, columns(t).c0 + columns(t).width);
    const int64_t lines = hi > lo ? ((hi - lo) * item + 63) / 64 + 1 : 0, steps = (t1 - t0) * (q1 - q0);
    for (int64_t i0 = 0; i0 < I; i0 += S.inner) {
      const int64_t count = std::min(I, i0 + S.inner) - i0;
      const bool first = i0 == 0;
      // the next block's lines, a share before each tile
      const int64_t ahead = prefetch ? (std::min(I, i0 + 2 * S.inner) - std::min(I, i0 + S.inner)) * lines : 0;
      const int64_t share = steps > 0 ? (ahead + steps - 1) / steps : 0;
      int64_t issued = 0;
      for (int64_t t = t0; t < t1; ++t) {
        const auto [c0, width] = columns(t);
        const bool partial = t >= partial0;
        if (partial) {
          pad.assign(count * L, T(0));
          for (int64_t i = 0; i < count; ++i)
            for (int64_t c = 0; c < width; ++c) pad[i * L + c] = a[(i0 + i) * lda + c0 + c];
        }
        for (int64_t q = q0; q < q1; ++q) {
          for (const int64_t stop = std::min(ahead, issued + share); issued < stop; ++issued) {
            const int64_t row = i0 + S.inner + issued / lines;
            __builtin_prefetch(reinterpret_cast<const char*>(a + row * lda + lo) + (issued % lines) * 64, 0, 2);
          }
          const int64_t r0 = q * RT, rows = std::min<int64_t>(RT, R - r0);
          const T* wq = w + r0 * wrs + i0 * wis;
          if (t < whole) {
            wide_tile<T, RT, NV, G>(wq, wrs, wis, rows, a + i0 * lda + c0, lda, count, out + r0 * ors + c0, ors, first);
          } else if (!partial) {
            with_vectors<NV>(singles, [&](auto nv) {
              wide_tile<T, RT, decltype(nv)::value, G>(wq, wrs, wis, rows, a + i0 * lda + c0, lda, count,
                                                       out + r0 * ors + c0, ors, first);
            });
          } else {  // `width` columns, through a block of L-wide rows
            T part[RT * L];
            for (int64_t r = 0; r < rows; ++r)
              for (int64_t c = 0; c < L; ++c) part[r * L + c] = first || c >= width ? T(0) : out[(r0 + r) * ors + c0 + c];
            wide_tile<T, RT, 1, G>(wq, wrs, wis, rows, pad.data(), L, count, part, L, false);
            for (int64_t r = 0; r < rows; ++r)
              for (int64_t c = 0; c < width; ++c) out[(r0 + r) * ors + c0 + c] = part[r * L + c];
          }
        }
      }
    }
  };
  if (R > N) {  // more rows than columns (∂A: M rows): threads take row tiles
    at::parallel_for(0, row_tiles, 1, [&](int64_t q0, int64_t q1) { run(0, col_tiles, q0, q1, false); });
    return;
  }
  // threads take runs of column tiles of about the same number of columns (the tiles are NV, 1 or part of a vector
  // wide: an even split of their count gave one thread 336 of 600 columns): a run ends at the tile whose middle
  // passes its share
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), col_tiles));
  std::vector<int64_t> cut(parts + 1, col_tiles);
  cut[0] = 0;
  int64_t widest = 0;
  for (int64_t t = 0, done = 0, k = 1; t < col_tiles; ++t) {
    const int64_t width = columns(t).width;
    for (; k < parts && (2 * done + width) * parts >= 2 * k * N; ++k) cut[k] = t;
    done += width;
  }
  for (int64_t k = 0; k < parts; ++k) {
    int64_t width = 0;
    for (int64_t t = cut[k]; t < cut[k + 1]; ++t) width += columns(t).width;
    widest = std::max(widest, width);
  }
  // Too few tiles to share evenly (K = 100: 48 + 48 + 4 columns on two threads): every thread takes all columns
  // for its rows instead, and A is read by each (from the shared cache after the first)
  if (4 * widest * parts > 5 * N && row_tiles >= at::get_num_threads()) {
    at::parallel_for(0, row_tiles, 1, [&](int64_t q0, int64_t q1) { run(0, col_tiles, q0, q1, S.prefetch); });
    return;
  }
  at::parallel_for(0, parts, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) run(cut[k], cut[k + 1], 0, row_tiles, S.prefetch);
  });
}

// A (P, f, K) as M = P·f rows of K numbers with unit column stride, as wide_product reads it: a view where A's
// strides allow one, else a copy (the forward hands its copy to the backward)
torch::Tensor a_rows(const torch::Tensor& a, int64_t M, int64_t K) {
  const auto a2 = a.reshape({M, K});
  return a2.stride(1) == 1 ? a2 : a2.contiguous();
}

// A held as a contiguous (f, K, P) (AttentionalPool's parameter; the (P, f, K) view then has strides (1, K·P, P)),
// with P dividing a vector's lanes: s = scale · vec(V) A without copying A (a copy of 19.7 MB at f = 2048, K = 600,
// P = 4 took 2-3 ms, longer than the product). Row c of A holds the numbers (k, p) at k·P + p, so
// sg[b, k·P + p] = Σ_c V[b, p, c] A[c, k, p] is wide_product over A's rows in place, each step's w the P numbers
// V[b, :, c] repeated over the lanes (V first transposed to (B, f, P): 1 MB at B = 32, f = 2048); then
// s[b, k] = scale · Σ_p sg[b, k·P + p].
template <typename T>
bool grouped_layout(const torch::Tensor& a) {
  const int64_t P = a.size(0), f = a.size(1), K = a.size(2);
  return P > 1 && kLanes<T> % P == 0 && a.stride(0) == 1 && a.stride(2) == P && (f == 1 || a.stride(1) == K * P);
}

// fn(std::integral_constant<int, P>) for the P that grouped_layout admits
template <typename T, typename Fn>
void with_group(int64_t P, Fn&& fn) {
  switch (P) {
    case 2: fn(std::integral_constant<int, 2>()); break;
    case 4: fn(std::integral_constant<int, 4>()); break;
    default:
      if constexpr (kLanes<T> == 8) fn(std::integral_constant<int, 8>());
  }
}

// V (B, P, f) transposed to (B, f, P): each channel's P numbers side by side, as the lane groups read them;
// with `batch_inner`, to (f, B, P): each channel's B·P numbers side by side (∂A's rows, see steps_alias)
template <typename T>
std::unique_ptr<T[]> maps_by_channel(const T* v, int64_t B, int64_t P, int64_t f, bool batch_inner = false) {
  std::unique_ptr<T[]> vt(new T[B * f * P]);  // (written whole)
  if (batch_inner)
    copy_tiles_parallel(v, P * f, f, 1, vt.get(), P, 1, B * P, B, P, f);
  else
    copy_tiles_parallel(v, P * f, f, 1, vt.get(), f * P, 1, P, B, P, f);
  return vt;
}

// Whether ∂A = Vᵀ gs reads V through a transposed copy: the product's steps are the batch, and a row tile of ∂A
// reads, per step, numbers of V one row of V (`row` numbers) apart, its B = 32 steps' lines then falling into few
// L1 sets (the likely cause: the threshold below is measured, not derived). Transposed (1 MB at (32, 8192)), a
// tile reads its rows' B numbers side by side. Measured, paired, ∂A alone, B = 32: float32 at M = 4096-8192
// 1.09-1.18x (B = 128 1.05x), float64 at M = 2048-8192 1.05-1.11x; float32 at M = 2048 (8 KB apart) 0.90-1.04x,
// so below 16 KB it keeps V in place.
template <typename T>
inline bool steps_alias(int64_t row) {
  return row * int64_t(sizeof(T)) >= 16384;
}

template <typename T>
void grouped_scores(const T* v, const T* a, T* s, int64_t B, int64_t f, int64_t P, int64_t K, T scale) {
  const auto vt = maps_by_channel(v, B, P, f);
  const int64_t N = K * P;
  std::unique_ptr<T[]> sg(new T[B * N]);
  with_group<T>(P, [&](auto g) {
    wide_product<T, kWideForward, decltype(g)::value>(vt.get(), f * P, P, B, a, N, N, f, sg.get(), N);
  });
  for (int64_t q = 0; q < B * K; ++q) {
    T sum = 0;
    for (int64_t p = 0; p < P; ++p) sum += sg[q * P + p];
    s[q] = scale * sum;
  }
}

// The backward's products with A held as a contiguous (f, K, P) (see grouped_scores), gs = scale · g (B, K):
//   ∂V[b, p, c] = Σ_k gs[b, k] A[c, k, p]: rows c of A (each step k: the P numbers A[c, k, :] repeated over the
//     lanes) against gs expanded to (K, B·P) (gs[b, k] at b·P + p), into (f, B·P), then transposed into gv (B, P, f);
//   ∂A[c, k, p] = Σ_b V[b, p, c] gs[b, k]: rows c of V transposed to (B, f, P) (each step b: V[b, :, c]) against gs
//     expanded to (B, K·P), straight into ga's (f, K, P) memory.
// gv or ga: nullptr when not wanted.
template <typename T>
void grouped_gradients(const T* a, const T* v, const T* gs, T* gv, T* ga, int64_t B, int64_t f, int64_t P, int64_t K) {
  with_group<T>(P, [&](auto g) {
    constexpr int G = decltype(g)::value;
    if (gv != nullptr) {
      std::unique_ptr<T[]> gsx(new T[K * B * P]), gvt(new T[f * B * P]);  // (written whole)
      for (int64_t k = 0; k < K; ++k)
        for (int64_t b = 0; b < B; ++b)
          for (int64_t p = 0; p < P; ++p) gsx[(k * B + b) * P + p] = gs[b * K + k];
      wide_product<T, kWideGradV, G>(a, K * P, P, f, gsx.get(), B * P, B * P, K, gvt.get(), B * P);
      // gv[b, p, c] = gvt[c, b·P + p]: B·P rows of f
      copy_tiles_parallel(gvt.get(), 0, 1, B * P, gv, 0, f, 1, 1, B * P, f);
    }
    if (ga != nullptr) {
      const bool alias = steps_alias<T>(f * P);
      const auto vt = maps_by_channel(v, B, P, f, alias);
      std::unique_ptr<T[]> gsx(new T[B * K * P]);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t k = 0; k < K; ++k)
          for (int64_t p = 0; p < P; ++p) gsx[(b * K + k) * P + p] = gs[b * K + k];
      // rows c of V and steps b: (f, B, P) or (B, f, P) strides
      const int64_t wrs = alias ? B * P : P, wis = alias ? P : f * P;
      wide_product<T, kWideBackward, G>(vt.get(), wrs, wis, f, gsx.get(), K * P, K * P, B, ga, K * P);
    }
  });
}

// ------------------------------------------------------------------------------------------- ∂X cache
struct Cache {
  std::mutex mu;
  std::deque<std::pair<size_t, void*>> free_blocks;  // oldest first
  size_t bytes = 0;
  size_t limit;
  Cache() {
    const char* v = std::getenv("LOWRANK_POOL_CACHE_MIB");
    limit = size_t(v ? std::strtoull(v, nullptr, 10) : 1024) << 20;
  }
};

Cache& cache() {
  static Cache* c = new Cache;  // never destroyed: tensors may be freed during interpreter shutdown
  return *c;
}

constexpr size_t kMinCached = size_t(1) << 20;  // smaller buffers: torch's own allocator
constexpr size_t kAlign = 64;

void give_back(void* ptr, size_t nbytes) {
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mu);
    if (nbytes <= c.limit) {
      while (c.bytes + nbytes > c.limit && !c.free_blocks.empty()) {  // evict the oldest
        std::free(c.free_blocks.front().second);
        c.bytes -= c.free_blocks.front().first;
        c.free_blocks.pop_front();
      }
      c.free_blocks.emplace_back(nbytes, ptr);
      c.bytes += nbytes;
      return;
    }
  }
  std::free(ptr);
}

torch::Tensor cached_empty_like(const torch::Tensor& like) {
  const size_t nbytes = (like.nbytes() + kAlign - 1) / kAlign * kAlign;
  Cache& c = cache();
  if (nbytes < kMinCached || c.limit == 0) return torch::empty_like(like);
  void* ptr = nullptr;
  {
    std::lock_guard<std::mutex> lock(c.mu);
    for (auto it = c.free_blocks.end(); it != c.free_blocks.begin();) {  // newest first
      --it;
      if (it->first == nbytes) {
        ptr = it->second;
        c.bytes -= nbytes;
        c.free_blocks.erase(it);
        break;
      }
    }
  }
  if (ptr == nullptr) {
    ptr = std::aligned_alloc(kAlign, nbytes);
    if (ptr == nullptr) throw std::bad_alloc();
  }
  return torch::from_blob(
      ptr, like.sizes(), [nbytes](void* p) { give_back(p, nbytes); }, like.options());
}

void check(const torch::Tensor& x, const torch::Tensor& bm, bool cf) {
  TORCH_CHECK(x.device().is_cpu() && bm.device().is_cpu(), "lowrank_pool native kernel: CPU tensors only");
  TORCH_CHECK(x.dim() == 3 && x.is_contiguous() && bm.dim() == 2 && bm.is_contiguous(),
              "lowrank_pool native kernel: contiguous x (B, n, f) / (B, f, n) and bm (f, P)");
  TORCH_CHECK(x.scalar_type() == bm.scalar_type(), "lowrank_pool native kernel: one dtype");
  TORCH_CHECK(bm.size(0) == (cf ? x.size(1) : x.size(2)), "lowrank_pool native kernel: channel mismatch");
}

void check_a(const torch::Tensor& a, const torch::Tensor& bm, const torch::Tensor& x) {
  TORCH_CHECK(a.device().is_cpu() && a.dim() == 3 && a.size(0) == bm.size(1) && a.size(1) == bm.size(0) &&
                  a.scalar_type() == x.scalar_type(),
              "lowrank_pool native kernel: a (P, f, K) on the CPU in x's dtype");
}

}  // namespace

// returns (s (B, K) = scale · vec(V) A, U (B, P, n), V (B, P, f), A as a contiguous (M, K) copy or an empty tensor);
// a: A as a (P, f, K) view, any strides. The copy exists where the wide product needed one (A's memory neither
// (P, f, K) rows nor a grouped (f, K, P): see a_rows, grouped_layout): the caller keeps it for the backward, which
// would otherwise copy A again.
std::vector<torch::Tensor> scores_forward(torch::Tensor x, torch::Tensor bm, torch::Tensor a, bool cf, int64_t att,
                                          double scale) {
  check(x, bm, cf);
  check_a(a, bm, x);
  const int64_t B = x.size(0), f = bm.size(0), P = bm.size(1), n = cf ? x.size(2) : x.size(1);
  const int64_t K = a.size(2), M = P * f;
  auto u = torch::empty({B, P, n}, x.options());
  auto v = torch::empty({B, P, f}, x.options());
  if (P == 0 || B == 0) return {torch::zeros({B, K}, x.options()), u, v.zero_(), torch::Tensor()};
  torch::Tensor s, copy;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "scores_forward", [&] {
    forward_impl<scalar_t>(x.data_ptr<scalar_t>(), bm.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(),
                           v.data_ptr<scalar_t>(), B, n, f, P, cf, static_cast<int>(att));
    if (small_product(M, K)) {
      s = torch::empty({B, K}, x.options());
      const auto at = pack_at<scalar_t>(a);
      small_scores<scalar_t>(v.data_ptr<scalar_t>(), at.get(), s.data_ptr<scalar_t>(), B, M, K, scalar_t(scale));
    } else if (grouped_layout<scalar_t>(a)) {
      s = torch::empty({B, K}, x.options());
      grouped_scores<scalar_t>(v.data_ptr<scalar_t>(), a.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(), B, f, P, K,
                               scalar_t(scale));
    } else {
      const auto a2 = a_rows(a, M, K);
      s = torch::empty({B, K}, x.options());
      wide_product<scalar_t, kWideForward>(v.data_ptr<scalar_t>(), M, 1, B, a2.data_ptr<scalar_t>(), a2.stride(0), K, M,
                             s.data_ptr<scalar_t>(), K);
      s.mul_(scale);
      if (!a2.is_alias_of(a)) copy = a2;
    }
  });
  return {s, u, v, copy};
}

// Inference: s (B, K) alone, from the tensors as the caller holds them (one call from Python, no views made
// there: with cold caches each tensor Python creates or returns costs tens of microseconds). x: (B, n, f), or
// channels-first (B, f, ...) contiguous; b: (f,) or (f, P); a: (f, K) with a (f,) b, else (f, K, P).
torch::Tensor scores_inference(torch::Tensor x, torch::Tensor b, torch::Tensor a, bool cf, int64_t att, double scale) {
  if (cf && x.dim() > 3) x = x.view({x.size(0), x.size(1), -1});
  const bool rank1 = b.dim() == 1;
  TORCH_CHECK(a.dim() == (rank1 ? 2 : 3), "lowrank_pool native kernel: a (f, K) with b (f,), (f, K, P) with B (f, P)");
  return scores_forward(x, rank1 ? b.view({b.size(0), 1}) : b, rank1 ? a.unsqueeze(0) : a.permute({2, 0, 1}), cf,
                        att, scale)[0];
}

// returns (∂X in X's layout, ∂B (f, P), ∂A (P, f, K)), each an empty tensor where not needed; g: ∂L/∂s (B, K)
std::vector<torch::Tensor> scores_backward(torch::Tensor x, torch::Tensor bm, torch::Tensor a, torch::Tensor u,
                                           torch::Tensor v, torch::Tensor g, bool cf, int64_t att, double scale,
                                           bool need_x, bool need_b, bool need_a) {
  check(x, bm, cf);
  check_a(a, bm, x);
  g = g.contiguous();
  TORCH_CHECK(u.is_contiguous() && v.is_contiguous() && u.scalar_type() == x.scalar_type() &&
                  v.scalar_type() == x.scalar_type() && g.scalar_type() == x.scalar_type(),
              "lowrank_pool native kernel: contiguous u, v and g in x's dtype");
  const int64_t B = x.size(0), f = bm.size(0), P = bm.size(1), n = cf ? x.size(2) : x.size(1);
  const int64_t K = a.size(2), M = P * f;
  auto gx = need_x ? cached_empty_like(x) : torch::Tensor();
  auto gbm = need_b ? torch::empty_like(bm) : torch::Tensor();
  torch::Tensor ga;  // ∂A (P, f, K): made below, by the product that computes it
  if (P == 0 || B == 0) {
    if (need_a) ga = torch::zeros({P, f, K}, x.options());
    for (auto* t : {&gx, &gbm})
      if (t->defined()) t->zero_();
    return {gx, gbm, ga};
  }
  const bool small = small_product(M, K), maps = need_x || need_b;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "scores_backward", [&] {
    using T = scalar_t;
    const T sc = T(scale);
    const T* gp = g.data_ptr<T>();
    torch::Tensor gv;
    if (small) {
      std::vector<T> coef(B * K);
      if (maps) {  // ∂V_b = scale · Σ_k g_bk Aᵀ_k
        const auto at = pack_at<T>(a);
        gv = torch::empty({B, P, f}, x.options());
        for (int64_t b = 0; b < B; ++b)
          for (int64_t k = 0; k < K; ++k) coef[k * B + b] = sc * gp[b * K + k];
        small_updates<T>(at.get(), K, coef.data(), gv.data_ptr<T>(), B, M);
      }
      if (need_a) {  // ∂Aᵀ_k = scale · Σ_b g_bk V_b, then transposed into (P, f, K)
        ga = torch::empty({P, f, K}, x.options());
        for (int64_t k = 0; k < B * K; ++k) coef[k] = sc * gp[k];
        std::unique_ptr<T[]> gat(new T[K * M]);  // (small_updates writes every number)
        small_updates<T>(v.data_ptr<T>(), B, coef.data(), gat.get(), K, M);
        copy_tiles_parallel(gat.get(), 0, 1, M, ga.data_ptr<T>(), 0, K, 1, 1, M, K);
      }
    } else if (grouped_layout<T>(a)) {  // A as a contiguous (f, K, P), read in place (see grouped_gradients)
      const auto gs = g * scale;
      if (maps) gv = torch::empty({B, P, f}, x.options());
      if (need_a) ga = torch::empty({f, K, P}, x.options()).permute({2, 0, 1});
      grouped_gradients<T>(a.data_ptr<T>(), v.data_ptr<T>(), gs.data_ptr<T>(), maps ? gv.data_ptr<T>() : nullptr,
                           need_a ? ga.data_ptr<T>() : nullptr, B, f, P, K);
    } else {  // scale on g (B × K), not on the M × K products
      const auto gs = g * scale;
      if (maps) {  // ∂Vᵀ (M, B) = A gsᵀ, rows of A read in place, then transposed into ∂V (B, P, f)
        const auto a2 = a_rows(a, M, K);
        const auto gst = gs.t().contiguous();
        std::unique_ptr<T[]> gvt(new T[M * B]);  // (written whole)
        wide_product<T, kWideGradV>(a2.data_ptr<T>(), a2.stride(0), 1, M, gst.data_ptr<T>(), B, B, K, gvt.get(), B);
        gv = torch::empty({B, P, f}, x.options());
        copy_tiles_parallel(gvt.get(), 0, B, 1, gv.data_ptr<T>(), 0, 1, M, 1, M, B);
      }
      if (need_a) {  // ∂A (M, K) = Vᵀ gs: rows m of Vᵀ are columns of V
        ga = torch::empty({P, f, K}, x.options());
        // rows m of Vᵀ: V's columns in place, or V transposed to (M, B) first (see steps_alias)
        const bool alias = steps_alias<T>(M);
        std::unique_ptr<T[]> vt(alias ? new T[M * B] : nullptr);  // (written whole)
        if (alias) copy_tiles_parallel(v.data_ptr<T>(), 0, 1, M, vt.get(), 0, B, 1, 1, M, B);
        const T* w = alias ? vt.get() : v.data_ptr<T>();
        wide_product<T, kWideBackward>(w, alias ? B : 1, alias ? 1 : M, M, gs.data_ptr<T>(), K, K, B,
                                       ga.data_ptr<T>(), K);
      }
    }
    if (maps)
      backward_impl<T>(x.data_ptr<T>(), bm.data_ptr<T>(), u.data_ptr<T>(), gv.data_ptr<T>(),
                       need_x ? gx.data_ptr<T>() : nullptr, need_b ? gbm.data_ptr<T>() : nullptr, B, n, f, P, cf,
                       static_cast<int>(att));
  });
  return {gx, gbm, ga};
}

// bytes the ∂X cache holds now; release=true frees them first (returns what was freed)
int64_t cache_bytes(bool release) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  const auto held = static_cast<int64_t>(c.bytes);
  if (release) {
    for (auto& block : c.free_blocks) std::free(block.second);
    c.free_blocks.clear();
    c.bytes = 0;
  }
  return held;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("scores_forward", &scores_forward, "s, U, V of attention-weighted pooling with a shared B");
  m.def("scores_inference", &scores_inference, "s alone, from X, b or B, and A as the caller holds them");
  m.def("scores_backward", &scores_backward, "dX, dB, dA of attention-weighted pooling with a shared B");
  m.def("cache_bytes", &cache_bytes, "bytes held by the dX cache; release=True frees them");
}
