// The vector layer: every kernel loop is written in vec<T> (GCC/Clang vector extensions, kVecBytes wide) and the
// few operations below; the intrinsics of each instruction set live here and nowhere else. A loop over len numbers
// runs whole vectors, then the last partial vector as the full vector ending at len with its first lanes masked off
// (lanes_from / masked), then scalars for rows shorter than one vector.
#pragma once

#include <cstdint>
#include <cstring>

#include "capability.h"

#if defined(__AVX__)
#include <immintrin.h>
#endif

// The helpers below are a few instructions each and sit in the innermost loops: always inlined
#define LP_INLINE inline __attribute__((always_inline))

namespace lp {
// (internal linkage: each translation unit inlines and specialises its own copies, built for its own flags)
namespace {

template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(kVecBytes)));
  typedef int32_t mask __attribute__((vector_size(kVecBytes)));  // lane masks (bitwise and)
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(kVecBytes)));
  typedef int64_t mask __attribute__((vector_size(kVecBytes)));
};
template <typename T>
using vec = typename VecOf<T>::type;
template <typename T>
using vmask = typename VecOf<T>::mask;
template <typename T>
constexpr int kLanes = kVecBytes / int(sizeof(T));

template <typename T>
LP_INLINE vec<T> load(const T* p) {
  vec<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename T>
LP_INLINE void store(T* p, vec<T> v) {
  std::memcpy(p, &v, sizeof v);
}
template <typename T>
LP_INLINE vec<T> broadcast(T x) {
  return vec<T>{} + x;
}

// A loaded vector kept in a register: without this GCC folds the load into each FMA that uses it, and a block of
// R rows × Q maps loads every number Q (or R) times, 2·R·Q loads per R·Q FMAs instead of R + Q (x86 only).
template <typename V>
LP_INLINE V in_register(V v) {
#if defined(__AVX__) && (defined(__x86_64__) || defined(__i386__))
  asm("" : "+v"(v));
#endif
  return v;
}

// Σ of a vector's lanes as a tree (halves added): a few shuffles instead of a chain of kLanes dependent adds
template <typename T, int Bytes>
struct Part {
  typedef T type __attribute__((vector_size(Bytes)));
};
template <typename T, int Bytes>
LP_INLINE typename Part<T, Bytes>::type fold(typename Part<T, 2 * Bytes>::type v) {  // lower half + upper half
  typename Part<T, Bytes>::type lo, hi;
  std::memcpy(&lo, &v, sizeof lo);
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof lo, sizeof hi);
  return lo + hi;
}
template <typename T, int Bytes>
LP_INLINE T tree_sum(typename Part<T, Bytes>::type v) {
  if constexpr (Bytes == int(2 * sizeof(T))) {
    return v[0] + v[1];
  } else {
    return tree_sum<T, Bytes / 2>(fold<T, Bytes / 2>(v));
  }
}
template <typename T>
LP_INLINE T lanes_sum(vec<T> v) {
  return tree_sum<T, kVecBytes>(v);
}

// The lanes l ≥ from of a vector (all ones there, zeros below)
template <typename T>
LP_INLINE vmask<T> lanes_from(int64_t from) {
  vmask<T> m;
  for (int l = 0; l < kLanes<T>; ++l) m[l] = l >= from ? -1 : 0;
  return m;
}
template <typename T>
LP_INLINE vec<T> masked(vec<T> v, vmask<T> m) {
  return reinterpret_cast<vec<T>>(reinterpret_cast<vmask<T>>(v) & m);
}

// v itself (32-byte vectors) or the sum of its halves (64-byte vectors): 32 bytes with the same lanes sum
template <typename T>
LP_INLINE typename Part<T, 32>::type fold_to_32(vec<T> v) {
  if constexpr (kVecBytes == 32)
    return v;
  else
    return fold<T, 32>(v);
}

// out[i] = Σ of a[i]'s lanes, i < 4: four sums at once (x86: each vector folded to 32 bytes, then three horizontal adds
// and one add of the halves, against four trees of shuffles and adds)
template <typename T>
LP_INLINE void lanes_sums4(const vec<T>* a, T* out) {
#if defined(__AVX__) && LP_VEC_BYTES >= 32
  using H = typename Part<T, 32>::type;
  const H h[4] = {fold_to_32<T>(a[0]), fold_to_32<T>(a[1]), fold_to_32<T>(a[2]), fold_to_32<T>(a[3])};
  if constexpr (sizeof(T) == 4) {
    const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps((__m256)h[0], (__m256)h[1]), _mm256_hadd_ps((__m256)h[2], (__m256)h[3]));
    _mm_storeu_ps(reinterpret_cast<float*>(out), _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1)));
  } else {
    const __m256d h01 = _mm256_hadd_pd((__m256d)h[0], (__m256d)h[1]);
    const __m256d h23 = _mm256_hadd_pd((__m256d)h[2], (__m256d)h[3]);
    _mm256_storeu_pd(reinterpret_cast<double*>(out),
                     _mm256_add_pd(_mm256_permute2f128_pd(h01, h23, 0x20), _mm256_permute2f128_pd(h01, h23, 0x31)));
  }
#else
  for (int i = 0; i < 4; ++i) out[i] = lanes_sum<T>(a[i]);
#endif
}

// Non-temporal store of a whole aligned vector (x86): the line goes to memory without being read into the cache first
template <typename T>
LP_INLINE void stream_store(T* p, vec<T> v) {
#if defined(__AVX512F__) && LP_VEC_BYTES == 64
  if constexpr (sizeof(T) == 4)
    _mm512_stream_ps(reinterpret_cast<float*>(p), (__m512)v);
  else
    _mm512_stream_pd(reinterpret_cast<double*>(p), (__m512d)v);
#elif defined(__AVX__) && LP_VEC_BYTES == 32
  if constexpr (sizeof(T) == 4)
    _mm256_stream_ps(reinterpret_cast<float*>(p), (__m256)v);
  else
    _mm256_stream_pd(reinterpret_cast<double*>(p), (__m256d)v);
#else
  store(p, v);
#endif
}

// a store, non-temporal with `stream`
template <typename T>
LP_INLINE void put(T* p, vec<T> v, bool stream) {
  if (stream)
    stream_store(p, v);
  else
    store(p, v);
}

// the thread's non-temporal stores are visible before the result is used
LP_INLINE void stream_fence() {
#if defined(__AVX__)
  _mm_sfence();
#endif
}

// G numbers at p repeated over a vector's lanes (G divides kLanes): a broadcast for G = 1, one load for G = kLanes,
// a broadcast of 8, 16 or 32 bytes on x86 (a lane-by-lane loop compiles to a gather there)
template <typename T, int G>
LP_INLINE vec<T> repeat_group(const T* p) {
  static_assert(kLanes<T> % G == 0, "a group divides a vector's lanes");
  if constexpr (G == 1) {
    return broadcast<T>(*p);
  } else if constexpr (G == kLanes<T>) {
    return load(p);
  } else {
    constexpr int bytes = G * int(sizeof(T));
#if defined(__AVX512F__) && LP_VEC_BYTES == 64
    if constexpr (bytes == 32) return vec<T>(_mm512_broadcast_f64x4(_mm256_loadu_pd(reinterpret_cast<const double*>(p))));
    if constexpr (bytes == 16) return vec<T>(_mm512_broadcast_f32x4(_mm_loadu_ps(reinterpret_cast<const float*>(p))));
    if constexpr (bytes == 8) {
      double d;
      std::memcpy(&d, p, sizeof d);
      return vec<T>(_mm512_set1_pd(d));
    }
#elif defined(__AVX__) && LP_VEC_BYTES == 32
    if constexpr (bytes == 16) return vec<T>(_mm256_broadcast_pd(reinterpret_cast<const __m128d*>(p)));
    if constexpr (bytes == 8) {
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

}  // namespace
}  // namespace lp
