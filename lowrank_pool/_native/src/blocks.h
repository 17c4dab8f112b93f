// Dot products and updates of a block of rows against a block of maps, in one pass over the rows: each loaded vector
// of a row serves every map and each loaded vector of a map every row, with several independent accumulators. These
// are the inner loops of both layouts' passes (Z = Bᵀ X, V += U Xᵀ, ∂Z, ∂B) and of the small products with A.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "prefetch.h"
#include "vec.h"

namespace lp {
// (internal linkage: each translation unit inlines and specialises its own copies, built for its own flags)
namespace {

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
  // pointers and coefficients in locals: the stores (memcpy) may alias anything the loop reads through memory
  const T* src[R];
  T* dst[Q];
  vec<T> c[Q * R];
  for (int r = 0; r < R; ++r) src[r] = srcs[r];
  for (int q = 0; q < Q; ++q) dst[q] = dsts[q];
  for (int k = 0; k < Q * R; ++k) c[k] = broadcast<T>(coef[k]);
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

// out (R × P) = the dot products of R rows with P maps, the maps in blocks of up to 4. Q > 0: P = Q, known at compile
// time (out is then multi_dot's own layout: no copies, no switch).
template <typename T, int R, typename A = Ahead, int Q = 0>
void dots_rows(const T* const* rows, const T* const* vecs, int64_t P, int64_t len, T* out, A* ahead = nullptr) {
  if constexpr (Q > 0) {
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

// dsts[p] += Σ_r coef[r * P + p] srcs[r], p < P, the maps in blocks of up to 4
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

// dots_rows of `count` rows (4: side by side, unless `sequential`; else one at a time)
template <typename T, int Q = 0>
void dots_block(const T* const* rows, int count, const T* const* vecs, int64_t P, int64_t len, T* out,
                bool sequential = false, Ahead* ahead = nullptr) {
  if (count == 4 && !sequential)
    dots_rows<T, 4, Ahead, Q>(rows, vecs, P, len, out, ahead);
  else
    for (int r = 0; r < count; ++r) dots_rows<T, 1, Ahead, Q>(rows + r, vecs, P, len, out + r * P, ahead);
}

// axpy_rows of `count` rows (4 side by side, else one at a time)
template <typename T, int Q = 0>
void axpy_block(const T* const* rows, int count, const T* coef, int64_t P, T* const* dsts, int64_t len,
                Ahead* ahead = nullptr) {
  if (count == 4)
    axpy_rows<T, 4, Ahead, Q>(rows, coef, P, dsts, len, ahead);
  else
    for (int r = 0; r < count; ++r) axpy_rows<T, 1, Ahead, Q>(rows + r, coef + r * P, P, dsts, len, ahead);
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

// fn(std::integral_constant<int, Q>()) with Q = P for 2 ... 4 maps (their count known at compile time), Q = 0 for any
// other P (1: rank 1, whose rows may be read one after the other, see sequential_rows; more than 4: maps in blocks)
template <typename Fn>
void with_fixed_maps(int64_t P, Fn&& fn) {
  if (P >= 2 && P <= 4)
    with_maps(P, fn);
  else
    fn(std::integral_constant<int, 0>());
}

}  // namespace
}  // namespace lp
