// The channels-first layout (NCHW): a sample is f rows of n positions. Z needs every channel before σ, so a sample is
// read twice per pass, the second time from cache: a sample that fits L2 as one block of positions, a larger one in
// blocks of positions whose f × block numbers stay in L2 between the two passes (or whole where its rows are short and
// it fits its thread's share of L3). Forward per block J: Z_J = Bᵀ X_J (X_J from memory), σ, V += U_J X_Jᵀ (from
// cache). Backward per block: ∂Z_J = σ'(∂V X_J), ∂Bᵀ += ∂Z_J X_Jᵀ, ∂X_J = ∂Vᵀ U_J + B ∂Z_J (softmax: one block, its
// σ' needs every position). Short rows take short_rows.cpp.
#include "blocks.h"
#include "flat_dx.h"
#include "passes.h"
#include "transpose.h"
#include "write.h"

namespace lp {
namespace {

template <typename T>
inline int64_t sample_bytes(int64_t n, int64_t f) {
  return n * f * int64_t(sizeof(T));
}

template <typename T>
inline bool sample_fits_l2(int64_t n, int64_t f) {
  return sample_bytes<T>(n, f) <= tuning().l2_bytes;
}

// Positions per block of an (f, n) sample
template <typename T>
int64_t position_block(int64_t n, int64_t f) {
  const Tuning& t = tuning();
  const int64_t row = std::max<int64_t>(1, f * int64_t(sizeof(T)));
  if (sample_fits_l2<T>(n, f)) return n;
  const int64_t share = std::min<int64_t>(t.l3_share_bytes, t.l3_bytes / (2 * std::max(1, at::get_num_threads())));
  if (n * int64_t(sizeof(T)) <= t.l3_row_bytes && sample_bytes<T>(n, f) <= share) return n;
  const int64_t fit = t.l2_bytes / 2 / row;
  return std::min(n, std::max<int64_t>(t.block_min_positions, fit / 16 * 16));
}

// Rows c.. of the (f, n) sample, restricted to positions [j0, j0 + len)
template <typename T, typename A, typename Body4, typename Body1>
void over_channel_block(const T* xs, int64_t f, int64_t n, int64_t j0, int64_t len, A* ahead, Body4&& body4,
                        Body1&& body1) {
  over_strided_rows<T>(xs + j0, f, n, len, ahead, body4, body1, sample_fits_l2<T>(n, f) ? 0 : tuning().spread_bytes);
}

// out[p * f + c] += x_c[J] · vecs[p] for every channel c and map p (X_J read once, 4 rows at a time); `prefetch`: the
// rows ahead prefetched (see over_strided_rows), else none
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

// zrows[p][:len] += Σ_c coef[c·P + p] x_c[J] for the positions J = [j0, j0 + len) (Z_J = Bᵀ X_J with coef = B; ∂Z_J
// with ∂Vᵀ), X_J read from memory 4 rows at a time. A = Ahead or AheadPerLine: whole rows, the rows ahead prefetched
// as over_strided_rows does; A = Runs: a block of parts of rows, `n` apart, also prefetched through the loops. Out of
// line: inlined beside both callers, the whole rows' loop ran slower (the same code, moved).
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

// A block that is part of each row prefetches through Runs; whole rows of tuning per_line_bytes or more, of a sample
// over L2, with 2 maps or more, a line per line read; other whole rows one per loop iteration
template <typename T, int Q = 0>
void channel_sums(const T* xs, const T* coef, T* const* zrows, int64_t n, int64_t f, int64_t P, int64_t j0,
                  int64_t len) {
  if (len < n)
    channel_sums_with<T, Runs, Q>(xs, coef, zrows, n, f, P, j0, len);
  else if (P >= 2 && !sample_fits_l2<T>(n, f) && n * int64_t(sizeof(T)) >= tuning().per_line_bytes)
    channel_sums_with<T, AheadPerLine, Q>(xs, coef, zrows, n, f, P, j0, len);
  else
    channel_sums_with<T, Ahead, Q>(xs, coef, zrows, n, f, P, j0, len);
}

// One (f, n) sample, in blocks of positions J; Q > 0: P = Q maps known at compile time
template <typename T, int Q = 0>
void forward_channels(const T* xs, const T* bm, T* us, T* vs, int64_t n, int64_t f, int64_t P_, int att,
                      ForwardScratch<T>& sc) {
  const int64_t P = Q > 0 ? Q : P_;
  const int64_t jb = position_block<T>(n, f);
  if (att == kSoftmax) sc.wbuf.resize(P * jb);
  std::vector<T*> zrows(P);
  std::vector<const T*> wrows(P);
  std::vector<T> part(4 * P);
  std::fill(vs, vs + P * f, T(0));
  sc.soft.reset();
  // the second pass over a sample of up to l2_hot_bytes runs without software prefetch (its rows are in L2 already)
  const bool prefetch_second = sample_bytes<T>(n, f) > tuning().l2_hot_bytes;
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
        T* w = sc.wbuf.data() + p * jb;
        for (int64_t j = 0; j < len; ++j) w[j] = sc.soft.weight(p, z[j]);
        wrows[p] = w;
      }
    }
    add_channel_dots<T, Q>(xs, f, n, j0, len, wrows.data(), P, vs, part, prefetch_second);
  }
  if (att == kSoftmax) sc.soft.finish(us, vs, n, f);
}

// ∂Z = σ'(Σ_c ∂v[:, c] x_c); ∂B_cp += x_c · ∂z_p; ∂X_c = Σ_p ∂v_pc u_p + b_cp ∂z_p, in blocks of positions for
// linear/ReLU (σ' per position)
template <typename T>
void backward_channels(const T* xs, const T* bm, const T* us, const T* gvs, T* gxs, T* gb, int64_t n, int64_t f,
                       int64_t P, int att, bool streamed, BackwardScratch<T>& sc) {
  const Tuning& tune = tuning();
  const int64_t jb = att == kSoftmax ? n : position_block<T>(n, f);
  T* gz = sc.gz.data();
  T* coef = sc.coef.data();
  sc.gvt.resize(f * P);  // ∂V (P, f) as (f, P): each channel's P coefficients side by side, as B's
  copy_tiles(gvs, 1, f, sc.gvt.data(), P, 1, f, P);
  for (int64_t j0 = 0; j0 < n; j0 += jb) {
    const int64_t len = std::min(jb, n - j0);
    for (int64_t p = 0; p < P; ++p) {
      sc.gzout[p] = gz + p * n + j0, sc.gzrows[p] = sc.gzout[p];
      std::fill(sc.gzout[p], sc.gzout[p] + len, T(0));
      sc.src[p] = us + p * n + j0, sc.src[P + p] = sc.gzout[p];
    }
    with_fixed_maps(P, [&](auto q) {  // X_J from memory
      channel_sums<T, decltype(q)::value>(xs, sc.gvt.data(), sc.gzout.data(), n, f, P, j0, len);
    });
    for (int64_t p = 0; p < P; ++p) activation_derivative(us + p * n + j0, sc.gzout[p], len, att);
    if (gb)  // X_J again, from L2, before ∂X's writes compete for it
      with_fixed_maps(P, [&](auto q) {
        add_channel_dots<T, decltype(q)::value>(xs, f, n, j0, len, sc.gzrows.data(), P, gb, sc.part);
      });
    if (gxs == nullptr) continue;
    RowWriter<T> out{gxs + j0, n, len, streamed, sc.staging};
    const bool direct = streamed && is_line_run(gxs + j0, len) && is_line_run(gxs, n);
    // whole rows that are not whole lines (and at least 2 vectors), up to 4 maps: by flat_dx
    if (len == n && !direct && P <= 4 && n >= 2 * kLanes<T>) {
      flat_dx_rows(bm, gvs, us, n, gz, n, n, f, P, gxs, streamed, sc.ext);
      continue;  // (the only block)
    }
    int64_t c = 0;
    // rows 4 at a time: each loaded vector of U and ∂Z serves the 4
    for (; len >= tune.rows4_min_positions && c + 4 <= f && 2 * P <= kMaxSources; c += 4) {
      for (int r = 0; r < 4; ++r)
        for (int64_t p = 0; p < P; ++p)
          coef[r * 2 * P + p] = gvs[p * f + c + r], coef[r * 2 * P + P + p] = bm[(c + r) * P + p];
      T* first = direct ? gxs + j0 + c * n : out.rows(c, 4);
      const int64_t gap = direct ? n : out.gap();
      T* dsts[4] = {first, first + gap, first + 2 * gap, first + 3 * gap};
      combine_rows<T, 4>(sc.src.data(), coef, 2 * P, dsts, len, direct);
    }
    for (; c < f; ++c) {
      for (int64_t p = 0; p < P; ++p) coef[p] = gvs[p * f + c], coef[P + p] = bm[c * P + p];
      combine(sc.src.data(), coef, 2 * P, direct ? gxs + j0 + c * n : out.row(c), len, direct);
    }
    out.flush();
  }
}

}  // namespace

template <typename T>
void forward_channels_sample(const T* xs, const T* bm, T* us, T* vs, int64_t n, int64_t f, int64_t P, int att,
                             ForwardScratch<T>& sc) {
  if (forward_short_sample<T>(xs, bm, us, vs, n, f, P, att, sc)) return;
  with_fixed_maps(P, [&](auto q) { forward_channels<T, decltype(q)::value>(xs, bm, us, vs, n, f, P, att, sc); });
}

template <typename T>
void backward_channels_sample(const T* xs, const T* bm, const T* us, const T* gvs, T* gxs, T* gb, int64_t n,
                              int64_t f, int64_t P, int att, bool streamed, BackwardScratch<T>& sc) {
  if (backward_short_sample<T>(xs, bm, us, gvs, gxs, gb, n, f, P, att, streamed, sc)) return;
  backward_channels<T>(xs, bm, us, gvs, gxs, gb, n, f, P, att, streamed, sc);
}

#define LP_INSTANTIATE(T)                                                                                             \
  template void forward_channels_sample<T>(const T*, const T*, T*, T*, int64_t, int64_t, int64_t, int,               \
                                           ForwardScratch<T>&);                                                       \
  template void backward_channels_sample<T>(const T*, const T*, const T*, const T*, T*, T*, int64_t, int64_t,        \
                                            int64_t, int, bool, BackwardScratch<T>&);
LP_INSTANTIATE(float)
LP_INSTANTIATE(double)
#undef LP_INSTANTIATE

}  // namespace lp
