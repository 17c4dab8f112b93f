// The products with A: s = scale · vec(V) A, ∂V = scale · g Aᵀ, ∂A = scale · vec(V)ᵀ g, with A given as a (P, f, K) view
// (M = P·f rows of K classes; rank-P's (f, K, P) parameter permuted, without a copy). They are skinny (the batch's
// rows against M·K numbers of A). With few classes they run as the maps' dot products and updates on A packed as Aᵀ
// (K, M); with more, through wide_product on A in place (a GEMM library packs A first, which costs about as much as
// the product at these shapes): on rows of K numbers where A's memory is (P, f, K), by lane groups where it is a
// contiguous (f, K, P) (the layer's parameter, see grouped_scores), through one contiguous (M, K) copy otherwise.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>

#include <memory>

#include "blocks.h"
#include "kernel.h"
#include "transpose.h"

namespace lp {
namespace {

bool small_product(int64_t M, int64_t K) {
  const Tuning& t = tuning();
  return K <= t.small_max_classes && M * K <= t.small_max_numbers;
}

// Aᵀ (K, M) packed from a (P, f, K) view: Aᵀ[k, p·f + c] = A[p, c, k]; the P maps' tiles in one parallel region
template <typename T>
std::unique_ptr<T[]> pack_at(const at::Tensor& a) {
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

// Rows r0.. (at most RT, fewer at the end) × NV vectors of columns, over `count` inner steps: a and w start at the first
// inner step (a's rows lda apart, w's steps wis apart, w's rows wrs apart); out at row r0, first column; `first`: the
// block starts the sum (else it adds to out). With lane groups (G > 1) column j takes w's number j mod G of the step:
// w[r][i·wis + j mod G] (see grouped_scores). Each step loads the tile's vectors of a row of A and broadcasts one
// number of w per row: no packing, no horizontal sums.
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

// out[r·ors + c] = Σ_i w[r·wrs + i·wis] · a[i·lda + c], r < R, c < N, i < I, in tiles of the shape S (tuning.h). The
// inner dimension runs in blocks so that a tile's strip of A stays in L2 for the other row tiles; with S.prefetch the
// next block's rows of the tile's columns are prefetched while this one is computed, spread over the tiles (a tile
// reads a short part of each row of A, a stride the hardware prefetchers do not follow). Threads take column tiles
// (each reads its share of A once) or, when the rows outnumber the columns, row tiles. Columns past the last whole
// vector are computed on a zero-padded copy of their strip.
template <typename T, const Shape& S, int G = 1>
void wide_product(const T* w, int64_t wrs, int64_t wis, int64_t R, const T* a, int64_t lda, int64_t N, int64_t I, T* out,
                  int64_t ors) {
  constexpr int RT = S.rows, NV = S.vecs;
  constexpr int64_t L = kLanes<T>, TW = NV * L, item = sizeof(T);
  if (I == 0) {  // an empty sum (no channels): zeros, as a GEMM with an empty inner dimension gives
    for (int64_t r = 0; r < R; ++r) std::fill(out + r * ors, out + r * ors + N, T(0));
    return;
  }
  // Where every row of A starts at the same offset within a vector (lda a multiple of a vector) but not on a boundary,
  // the first `head` columns go through a partial strip and the vectors start at the next boundary: a vector load
  // across two cache lines costs two. (Not with lane groups, whose columns must start at multiples of G.)
  const int64_t off = int64_t(reinterpret_cast<uintptr_t>(a) % kVecBytes);
  const int64_t head =
      G == 1 && (lda * item) % kVecBytes == 0 && off % item == 0 && off > 0 ? std::min(N, (kVecBytes - off) / item) : 0;
  const int64_t body = N - head;
  const int64_t whole = body / TW, singles = (body % TW) / L, rest = body % L;
  // column tiles: `whole` of TW columns, one of the `singles` vectors left (one tile of RT × singles accumulators),
  // then the partial strips: the last `rest` columns, the `head`
  const int64_t partial0 = whole + (singles > 0), col_tiles = partial0 + (rest > 0) + (head > 0);
  const int64_t row_tiles = (R + RT - 1) / RT;
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
    int64_t lo = N, hi = 0;  // the task's columns of A, and the lines of a row of A they cover (for the prefetch)
    for (int64_t t = t0; t < t1; ++t)
      lo = std::min(lo, columns(t).c0), hi = std::max(hi, columns(t).c0 + columns(t).width);
    const int64_t lines = hi > lo ? ((hi - lo) * item + kLineBytes - 1) / kLineBytes + 1 : 0;
    const int64_t steps = (t1 - t0) * (q1 - q0);
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
            __builtin_prefetch(reinterpret_cast<const char*>(a + row * lda + lo) + (issued % lines) * kLineBytes, 0, 2);
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
  // threads take runs of column tiles of about the same number of columns: a run ends at the tile whose middle passes
  // its share
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
  // Too few tiles to share evenly (one thread over 5/4 of its share): every thread takes all columns for its rows
  // instead, and A is read by each (from the shared cache after the first)
  if (4 * widest * parts > 5 * N && row_tiles >= at::get_num_threads()) {
    at::parallel_for(0, row_tiles, 1, [&](int64_t q0, int64_t q1) { run(0, col_tiles, q0, q1, S.prefetch); });
    return;
  }
  at::parallel_for(0, parts, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) run(cut[k], cut[k + 1], 0, row_tiles, S.prefetch);
  });
}

// A (P, f, K) as M = P·f rows of K numbers with unit column stride: a view where A's strides allow one, else a copy
// (the forward hands its copy to the backward)
at::Tensor a_rows(const at::Tensor& a, int64_t M, int64_t K) {
  const auto a2 = a.reshape({M, K});
  return a2.stride(1) == 1 ? a2 : a2.contiguous();
}

// A held as a contiguous (f, K, P) (AttentionalPool's parameter; the (P, f, K) view then has strides (1, K·P, P)),
// with P dividing a vector's lanes: s = scale · vec(V) A without copying A. Row c of A holds the numbers (k, p) at
// k·P + p, so sg[b, k·P + p] = Σ_c V[b, p, c] A[c, k, p] is wide_product over A's rows in place, each step's w the P
// numbers V[b, :, c] repeated over the lanes (V first transposed to (B, f, P)); then s[b, k] = scale · Σ_p sg[b, k·P + p].
template <typename T>
bool grouped_layout(const at::Tensor& a) {
  const int64_t P = a.size(0), f = a.size(1), K = a.size(2);
  return P > 1 && kLanes<T> % P == 0 && a.stride(0) == 1 && a.stride(2) == P && (f == 1 || a.stride(1) == K * P);
}

// fn(std::integral_constant<int, P>) for the P that grouped_layout admits (2, 4, ... up to a vector's lanes)
template <typename T, typename Fn>
void with_group(int64_t P, Fn&& fn) {
  switch (P) {
    case 2: fn(std::integral_constant<int, 2>()); break;
    case 4: fn(std::integral_constant<int, 4>()); break;
    case 8:
      if constexpr (kLanes<T> % 8 == 0) fn(std::integral_constant<int, 8>());
      break;
    case 16:
      if constexpr (kLanes<T> % 16 == 0) fn(std::integral_constant<int, 16>());
      break;
    default: break;
  }
}

// V (B, P, f) transposed to (B, f, P): each channel's P numbers side by side, as the lane groups read them; with
// `batch_inner`, to (f, B, P): each channel's B·P numbers side by side (∂A's rows, see steps_alias)
template <typename T>
std::unique_ptr<T[]> maps_by_channel(const T* v, int64_t B, int64_t P, int64_t f, bool batch_inner = false) {
  std::unique_ptr<T[]> vt(new T[B * f * P]);  // (written whole)
  if (batch_inner)
    copy_tiles_parallel(v, P * f, f, 1, vt.get(), P, 1, B * P, B, P, f);
  else
    copy_tiles_parallel(v, P * f, f, 1, vt.get(), f * P, 1, P, B, P, f);
  return vt;
}

// Whether ∂A = Vᵀ gs reads V through a transposed copy: the product's steps are the batch, and a row tile of ∂A reads,
// per step, numbers of V one row of V (`row` numbers) apart (their lines falling into few L1 sets: the likely cause;
// the threshold is measured, not derived)
template <typename T>
inline bool steps_alias(int64_t row) {
  return row * int64_t(sizeof(T)) >= tuning().transpose_v_min_bytes;
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
//   ∂V[b, p, c] = Σ_k gs[b, k] A[c, k, p]: rows c of A against gs expanded to (K, B·P), into (f, B·P), then transposed;
//   ∂A[c, k, p] = Σ_b V[b, p, c] gs[b, k]: rows c of V transposed against gs expanded to (B, K·P), into ga's memory.
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
      copy_tiles_parallel(gvt.get(), 0, 1, B * P, gv, 0, f, 1, 1, B * P, f);  // gv[b, p, c] = gvt[c, b·P + p]
    }
    if (ga != nullptr) {
      const bool alias = steps_alias<T>(f * P);
      const auto vt = maps_by_channel(v, B, P, f, alias);
      std::unique_ptr<T[]> gsx(new T[B * K * P]);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t k = 0; k < K; ++k)
          for (int64_t p = 0; p < P; ++p) gsx[(b * K + k) * P + p] = gs[b * K + k];
      const int64_t wrs = alias ? B * P : P, wis = alias ? P : f * P;  // rows c of V and steps b
      wide_product<T, kWideBackward, G>(vt.get(), wrs, wis, f, gsx.get(), K * P, K * P, B, ga, K * P);
    }
  });
}

template <typename T>
at::Tensor scores_typed(const at::Tensor& v, const at::Tensor& a, double scale, at::Tensor& copy) {
  const int64_t B = v.size(0), P = a.size(0), f = a.size(1), K = a.size(2), M = P * f;
  const Tuning& t = tuning();
  auto s = at::empty({B, K}, v.options());
  if (small_product(M, K)) {
    const auto at = pack_at<T>(a);
    small_scores<T>(v.data_ptr<T>(), at.get(), s.data_ptr<T>(), B, M, K, T(scale));
  } else if (t.own_wide_products && grouped_layout<T>(a)) {
    grouped_scores<T>(v.data_ptr<T>(), a.data_ptr<T>(), s.data_ptr<T>(), B, f, P, K, T(scale));
  } else {
    const auto a2 = a_rows(a, M, K);
    if (t.own_wide_products)
      wide_product<T, kWideForward>(v.data_ptr<T>(), M, 1, B, a2.data_ptr<T>(), a2.stride(0), K, M, s.data_ptr<T>(), K);
    else
      at::mm_out(s, v.reshape({B, M}), a2);
    s.mul_(scale);
    if (!a2.is_alias_of(a)) copy = a2;
  }
  return s;
}

template <typename T>
void gradients_typed(const at::Tensor& a, const at::Tensor& v, const at::Tensor& g, double scale, bool maps,
                     bool need_a, at::Tensor& gv, at::Tensor& ga) {
  const int64_t B = v.size(0), P = a.size(0), f = a.size(1), K = a.size(2), M = P * f;
  const Tuning& t = tuning();
  const T sc = T(scale);
  const T* gp = g.data_ptr<T>();
  if (small_product(M, K)) {
    std::vector<T> coef(B * K);
    if (maps) {  // ∂V_b = scale · Σ_k g_bk Aᵀ_k
      const auto at = pack_at<T>(a);
      gv = at::empty({B, P, f}, v.options());
      for (int64_t b = 0; b < B; ++b)
        for (int64_t k = 0; k < K; ++k) coef[k * B + b] = sc * gp[b * K + k];
      small_updates<T>(at.get(), K, coef.data(), gv.data_ptr<T>(), B, M);
    }
    if (need_a) {  // ∂Aᵀ_k = scale · Σ_b g_bk V_b, then transposed into (P, f, K)
      ga = at::empty({P, f, K}, v.options());
      for (int64_t k = 0; k < B * K; ++k) coef[k] = sc * gp[k];
      std::unique_ptr<T[]> gat(new T[K * M]);  // (small_updates writes every number)
      small_updates<T>(v.data_ptr<T>(), B, coef.data(), gat.get(), K, M);
      copy_tiles_parallel(gat.get(), 0, 1, M, ga.data_ptr<T>(), 0, K, 1, 1, M, K);
    }
    return;
  }
  const auto gs = g.mul(scale);  // (on g, B × K, not on the M × K products)
  if (!t.own_wide_products) {
    if (maps) gv = at::mm(gs, a_rows(a, M, K).t()).view({B, P, f});
    if (need_a) ga = at::mm(v.reshape({B, M}).t(), gs).view({P, f, K});
    return;
  }
  if (grouped_layout<T>(a)) {  // A as a contiguous (f, K, P), read in place (see grouped_gradients)
    if (maps) gv = at::empty({B, P, f}, v.options());
    if (need_a) ga = at::empty({f, K, P}, v.options()).permute({2, 0, 1});
    grouped_gradients<T>(a.data_ptr<T>(), v.data_ptr<T>(), gs.data_ptr<T>(), maps ? gv.data_ptr<T>() : nullptr,
                         need_a ? ga.data_ptr<T>() : nullptr, B, f, P, K);
    return;
  }
  if (maps) {  // ∂Vᵀ (M, B) = A gsᵀ, rows of A read in place, then transposed into ∂V (B, P, f)
    const auto a2 = a_rows(a, M, K);
    const auto gst = gs.t().contiguous();
    std::unique_ptr<T[]> gvt(new T[M * B]);  // (written whole)
    wide_product<T, kWideGradV>(a2.data_ptr<T>(), a2.stride(0), 1, M, gst.data_ptr<T>(), B, B, K, gvt.get(), B);
    gv = at::empty({B, P, f}, v.options());
    copy_tiles_parallel(gvt.get(), 0, B, 1, gv.data_ptr<T>(), 0, 1, M, 1, M, B);
  }
  if (need_a) {  // ∂A (M, K) = Vᵀ gs: rows m of Vᵀ, V's columns in place or V transposed to (M, B) first
    ga = at::empty({P, f, K}, v.options());
    const bool alias = steps_alias<T>(M);
    std::unique_ptr<T[]> vt(alias ? new T[M * B] : nullptr);  // (written whole)
    if (alias) copy_tiles_parallel(v.data_ptr<T>(), 0, 1, M, vt.get(), 0, B, 1, 1, M, B);
    const T* w = alias ? vt.get() : v.data_ptr<T>();
    wide_product<T, kWideBackward>(w, alias ? B : 1, alias ? 1 : M, M, gs.data_ptr<T>(), K, K, B, ga.data_ptr<T>(), K);
  }
}

}  // namespace

at::Tensor scores_of_maps(const at::Tensor& v, const at::Tensor& a, double scale, at::Tensor& copy) {
  if (v.scalar_type() == at::kDouble) return scores_typed<double>(v, a, scale, copy);
  return scores_typed<float>(v, a, scale, copy);
}

void gradients_of_products(const at::Tensor& a, const at::Tensor& v, const at::Tensor& g, double scale, bool maps,
                           bool need_a, at::Tensor& gv, at::Tensor& ga) {
  if (v.scalar_type() == at::kDouble)
    gradients_typed<double>(a, v, g, scale, maps, need_a, gv, ga);
  else
    gradients_typed<float>(a, v, g, scale, maps, need_a, gv, ga);
}

}  // namespace lp
