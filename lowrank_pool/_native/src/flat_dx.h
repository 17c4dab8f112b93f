// ∂X of a channels-first sample whose rows are not whole vectors (49 or 196 positions), computed as the aligned vectors
// of the sample's flat (f · n) ∂X and stored from the registers: ∂X_c = Σ_p ∂v_pc u_p + b_cp ∂z_p. A vector that starts
// at position j0 of row c and runs into row c + 1 takes row c + 1's coefficients in those lanes, and reads U and ∂Z
// from copies whose first kLanes numbers are repeated after their n. (Rows computed one at a time had to be written
// unaligned through a staging buffer.)
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "blocks.h"
#include "vec.h"

namespace lp {
// (internal linkage: each translation unit inlines and specialises its own copies, built for its own flags)
namespace {

// Q = P ≤ 4 maps; u and gz: rows `w` apart, n + kLanes numbers each. Full lines are streamed with `stream`; the
// numbers before the first line and after the last vector are written one at a time.
template <typename T, int Q>
void flat_dx(const T* bm, const T* gvs, const T* u, const T* gz, int64_t w, int64_t n, int64_t f, int64_t P, T* dst,
             bool stream) {
  constexpr int L = kLanes<T>, LL = kLineBytes / int(sizeof(T));
  const int64_t N = f * n;
  auto one = [&](int64_t q) {
    const int64_t c = q / n, j = q - c * n;
    T acc = 0;
    for (int64_t p = 0; p < P; ++p) acc += gvs[p * f + c] * u[p * w + j] + bm[c * P + p] * gz[p * w + j];
    dst[q] = acc;
  };
  int64_t q = 0;
  for (; q < N && reinterpret_cast<std::uintptr_t>(dst + q) % kLineBytes != 0; ++q) one(q);
  const int64_t streamed_end = stream ? q + (N - q) / LL * LL : q;  // the full lines from q
  vmask<T> from[L];  // from[k]: the lanes ≥ k
  for (int k = 0; k < L; ++k) from[k] = lanes_from<T>(k);
  vec<T> g[Q], b[Q], g1[Q], b1[Q];
  auto coefficients = [&](int64_t c, vec<T>* gc, vec<T>* bc) {
    for (int k = 0; k < Q; ++k) gc[k] = broadcast<T>(gvs[k * f + c]), bc[k] = broadcast<T>(bm[c * P + k]);
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

// flat_dx from P ≤ 4 rows of U and of ∂Z (n numbers each; row p at u + p · su, gz + p · sg), copied into ext with
// their first vector repeated after them
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

}  // namespace
}  // namespace lp
