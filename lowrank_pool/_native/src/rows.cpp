// The channels-last layout: a sample is n rows of f numbers, and X is read once per pass. Forward: for a block of 4
// rows, their P dot products with B (Z), σ, then V += σ(z_i) x_iᵀ while the rows are in L1 (softmax with a running
// maximum per map). Backward: ∂z_i = σ'(∂V x_i), then ∂X_i = Σ_p u_pi ∂v_p + ∂z_pi b_p and ∂Bᵀ_p += ∂z_pi x_i from
// the same rows (softmax's σ' needs every position first: a second pass, from cache where the sample fits).
#include "blocks.h"
#include "passes.h"
#include "write.h"

namespace lp {
namespace {

// Whether rank 1 reads a block of 4 rows one after the other (one stream the hardware prefetcher follows, no software
// prefetch) instead of side by side (each loaded vector of the maps serving 4 rows)
template <typename T>
bool sequential_rows(int64_t P, int64_t f) {
  const Tuning& t = tuning();
  const int64_t row = f * int64_t(sizeof(T));
  return P == 1 && row >= t.sequential_min_bytes && row < t.sequential_max_bytes;
}

// Rows of an (n, f) sample in blocks of 4, then one at a time: body(first row, rows, count)
template <typename T, typename Body>
void over_rows(const T* xs, int64_t n, int64_t f, Ahead* ahead, Body&& body) {
  over_strided_rows<T>(
      xs, n, f, f, ahead, [&](int64_t i, const T* const* rows) { body(i, rows, 4); },
      [&](int64_t i, const T* const* rows) { body(i, rows, 1); });
}

// Q > 0: P = Q maps (2-4) known at compile time, each block's dot products, weights and updates called directly
// (multi_dot, multi_axpy); Q = 0: any P, through dots_block / axpy_block.
template <typename T, int Q>
void forward_rows(const T* xs, const T* const* bt, T* us, T* vs, int64_t n, int64_t f, int64_t P_, int att,
                  ForwardScratch<T>& sc) {
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

// ∂X_i = Σ_p u_pi ∂v_p + ∂z_pi b_p, ∂Bᵀ_p += ∂z_pi x_i; Q as in forward_rows
template <typename T, int Q>
void backward_rows(const T* xs, const T* bt, const T* us, const T* gvs, T* gxs, T* gb, int64_t n, int64_t f,
                   int64_t P, int att, bool streamed, BackwardScratch<T>& sc) {
  const int64_t maps = Q > 0 ? Q : P;
  T* gz = sc.gz.data();
  T* gzc = sc.gzc.data();
  T* coef = sc.coef.data();
  for (int64_t p = 0; p < maps; ++p) sc.src[p] = gvs + p * f, sc.src[maps + p] = bt + p * f;
  for (int64_t p = 0; p < maps && gb; ++p) sc.gbrows[p] = gb + p * f;
  RowWriter<T> out{gxs, f, f, streamed, sc.staging};
  const bool direct = streamed && gxs && is_line_run(gxs, f);
  Ahead ahead;  // the prefetches of the rows ahead, spread over both loops
  auto finish = [&](int64_t i0, const T* const* rows, int count) {
    for (int r = 0; r < count; ++r)
      for (int64_t p = 0; p < maps; ++p) gzc[r * maps + p] = gz[p * n + i0 + r];
    if (gb) axpy_block<T, Q>(rows, count, gzc, maps, sc.gbrows.data(), f, &ahead);
    if (gxs && count == 4 && 2 * maps <= kMaxSources) {
      for (int r = 0; r < 4; ++r)
        for (int64_t p = 0; p < maps; ++p)
          coef[r * 2 * maps + p] = us[p * n + i0 + r], coef[r * 2 * maps + maps + p] = gzc[r * maps + p];
      // rows that start on a cache line are streamed from registers; others staged or in place
      T* first = direct ? gxs + i0 * f : out.rows(i0, 4);
      T* dsts[4] = {first, first + f, first + 2 * f, first + 3 * f};
      combine_rows<T, 4>(sc.src.data(), coef, 2 * maps, dsts, f, direct);
    } else {
      for (int r = 0; r < count && gxs; ++r) {
        for (int64_t p = 0; p < maps; ++p) coef[p] = us[p * n + i0 + r], coef[maps + p] = gzc[r * maps + p];
        combine(sc.src.data(), coef, 2 * maps, out.row(i0 + r), f);
      }
    }
  };
  const bool fused = att != kSoftmax;  // σ' is per position: one pass over the rows
  const bool seq = sequential_rows<T>(maps, f);
  over_rows<T>(xs, n, f, seq ? nullptr : &ahead, [&](int64_t i0, const T* const* rows, int count) {
    dots_block<T, Q>(rows, count, sc.gvrows.data(), maps, f, sc.part.data(), seq, &ahead);
    for (int r = 0; r < count; ++r)
      for (int64_t p = 0; p < maps; ++p) {
        const T g = sc.part[r * maps + p];
        gz[p * n + i0 + r] = att == kRelu ? (us[p * n + i0 + r] > 0 ? g : T(0)) : g;
      }
    if (fused) finish(i0, rows, count);
  });
  if (!fused) {
    for (int64_t p = 0; p < maps; ++p) activation_derivative(us + p * n, gz + p * n, n, att);
    over_rows<T>(xs, n, f, &ahead, finish);
  }
  if (gxs) out.flush();
}

}  // namespace

template <typename T>
void forward_rows_sample(const T* xs, const T* const* bt, T* us, T* vs, int64_t n, int64_t f, int64_t P, int att,
                         ForwardScratch<T>& sc) {
  with_fixed_maps(P, [&](auto q) { forward_rows<T, decltype(q)::value>(xs, bt, us, vs, n, f, P, att, sc); });
}

template <typename T>
void backward_rows_sample(const T* xs, const T* bt, const T* us, const T* gvs, T* gxs, T* gb, int64_t n, int64_t f,
                          int64_t P, int att, bool streamed, BackwardScratch<T>& sc) {
  for (int64_t p = 0; p < P; ++p) sc.gvrows[p] = gvs + p * f;
  with_fixed_maps(P, [&](auto q) {
    backward_rows<T, decltype(q)::value>(xs, bt, us, gvs, gxs, gb, n, f, P, att, streamed, sc);
  });
}

#define LP_INSTANTIATE(T)                                                                                             \
  template void forward_rows_sample<T>(const T*, const T* const*, T*, T*, int64_t, int64_t, int64_t, int,            \
                                       ForwardScratch<T>&);                                                           \
  template void backward_rows_sample<T>(const T*, const T*, const T*, const T*, T*, T*, int64_t, int64_t, int64_t,   \
                                        int, bool, BackwardScratch<T>&);
LP_INSTANTIATE(float)
LP_INSTANTIATE(double)
#undef LP_INSTANTIATE

}  // namespace lp
