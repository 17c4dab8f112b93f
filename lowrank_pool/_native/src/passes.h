// The passes over one sample, shared by the translation units of the two layouts (rows.cpp: X as (n, f) rows;
// channels.cpp: X as (f, n) channels-first rows) and the batch driver (passes.cpp):
//   forward   Z = Bᵀ X (P, n), U = σ(Z), V = U Xᵀ (P, f)
//   backward  ∂Z = σ'(∂V X), ∂X = ∂Vᵀ U + B ∂Z, ∂Bᵀ += ∂Z Xᵀ
// Every pointer is the sample's own; U (P, n) and V, ∂V, ∂Bᵀ (P, f) are row-major.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "attention.h"
#include "tuning.h"
#include "vec.h"

namespace lp {

// Per-thread scratch of the forward: a block's Z and weights, V's rows, the softmax state, the weights of a block of
// positions (channels-first softmax)
template <typename T>
struct ForwardScratch {
  std::vector<T> z, w, wbuf;
  std::vector<T*> vrows;
  OnlineSoftmax<T> soft;
  explicit ForwardScratch(int64_t P) : z(4 * P), w(4 * P), vrows(P), soft(P) {}
};

// Per-thread scratch of the backward
template <typename T>
struct BackwardScratch {
  std::vector<T> gz, coef, part, gzc, gvt, ext, pad, staging;
  std::vector<const T*> src, gvrows, gzrows;
  std::vector<T*> gbrows, gzout;
  BackwardScratch(int64_t n, int64_t f, int64_t P, bool cf, bool streamed)
      : gz(P * n),
        coef(8 * P),
        part(4 * P),
        gzc(4 * P),
        pad(cf ? 2 * P * kMaxShortVectors * kLanes<T> : 0),
        // streamed ∂X rows go through it: in L1, and at least the 4 rows combine_rows writes at once
        staging(streamed ? std::max<int64_t>(tuning().staging_bytes / int64_t(sizeof(T)), 4 * (cf ? n : f)) : 0),
        src(2 * P),
        gvrows(P),
        gzrows(P),
        gbrows(P),
        gzout(P) {
    for (int64_t p = 0; p < P; ++p) gzrows[p] = gz.data() + p * n, gzout[p] = gz.data() + p * n;
  }
};

// (n, f) rows; bt: B as P rows of f numbers
template <typename T>
void forward_rows_sample(const T* xs, const T* const* bt, T* us, T* vs, int64_t n, int64_t f, int64_t P, int att,
                         ForwardScratch<T>& sc);
// channels-first (f, n); bm: B (f, P)
template <typename T>
void forward_channels_sample(const T* xs, const T* bm, T* us, T* vs, int64_t n, int64_t f, int64_t P, int att,
                             ForwardScratch<T>& sc);
// gxs: ∂X of the sample (nullptr: not wanted); gb: this thread's ∂Bᵀ (P, f) accumulator (nullptr: not wanted)
template <typename T>
void backward_rows_sample(const T* xs, const T* bt /* (P, f) */, const T* us, const T* gvs, T* gxs, T* gb, int64_t n,
                          int64_t f, int64_t P, int att, bool streamed, BackwardScratch<T>& sc);
// the same for rows of at most tuning short_max_vectors vectors (short_rows.cpp); false (nothing done) for longer rows
template <typename T>
bool forward_short_sample(const T* xs, const T* bm, T* us, T* vs, int64_t n, int64_t f, int64_t P, int att,
                          ForwardScratch<T>& sc);
template <typename T>
bool backward_short_sample(const T* xs, const T* bm, const T* us, const T* gvs, T* gxs, T* gb, int64_t n, int64_t f,
                           int64_t P, int att, bool streamed, BackwardScratch<T>& sc);
template <typename T>
void backward_channels_sample(const T* xs, const T* bm /* (f, P) */, const T* us, const T* gvs, T* gxs, T* gb,
                              int64_t n, int64_t f, int64_t P, int att, bool streamed, BackwardScratch<T>& sc);

}  // namespace lp
