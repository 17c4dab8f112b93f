// Channels-first samples with short rows (few positions: 7 × 7 = 49 numbers a row), read whole from registers. A
// sample's rows are contiguous, so a row is read as NV full vectors whose last one runs into the next row: sums over
// rows accumulate in NV registers (the lanes past n are ignored), dot products with a row mask those lanes off. The
// sample's last rows, whose overrun would leave the sample, go one number at a time.
#include "blocks.h"
#include "flat_dx.h"
#include "passes.h"
#include "write.h"

namespace lp {
namespace {

template <typename T, int NV>
struct ShortRows {
  static constexpr int L = kLanes<T>;
  const T* xs;
  int64_t n, f, safe;  // rows c < safe can be read as NV full vectors
  vmask<T> tail;       // the lanes of the last vector that are still in the row
  ShortRows(const T* xs_, int64_t n_, int64_t f_)
      : xs(xs_), n(n_), f(f_), safe(f_ * n_ < NV * L ? 0 : std::min<int64_t>(f_, (f_ * n_ - NV * L) / n_ + 1)) {
    for (int l = 0; l < L; ++l) tail[l] = (NV - 1) * L + l < n ? -1 : 0;
  }
  // out[q][:n] = Σ_c coef[q][c · step] x_c for Q maps at once, each row loaded once for all of them (out[q] holds
  // NV · L numbers; those past n are not meaningful)
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
      // unrolled, so that wv stays in registers (GCC kept the loop, and wv in memory)
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
  // The maps in pairs (one read of the sample serves two), then a last single one: body(first map, count)
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

// The forward: Z of 4 maps from one read of the sample (their sums fit in the registers; their dot products with 4
// maps' weights do not, so V goes in pairs), then pairs and a single map
template <typename T, int NV>
void forward_short(const T* xs, const T* bm, T* us, T* vs, int64_t n, int64_t f, int64_t P, int att,
                   ForwardScratch<T>& sc) {
  const ShortRows<T, NV> rows(xs, n, f);
  alignas(kVecBytes) T wbuf[4][NV * kLanes<T>];
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

// The backward: ∂Z_p = σ'(Σ_c ∂v_pc x_c) from registers, ∂B by masked dot products, then ∂X: by flat_dx (rows of
// tuning flat_min_vectors or more, up to 4 maps), else from U and ∂Z padded to whole vectors (in L1), each row
// c = Σ_p ∂v_pc u_p + b_cp ∂z_p computed whole
template <typename T, int NV>
void backward_short(const T* xs, const T* bm, const T* us, const T* gvs, T* gb, int64_t n, int64_t f, int64_t P,
                    int att, RowWriter<T>* out, BackwardScratch<T>& sc) {
  constexpr int L = kLanes<T>, W = NV * L;
  const Tuning& tune = tuning();
  const ShortRows<T, NV> rows(xs, n, f);
  T* upad = sc.pad.data();
  T* gzpad = sc.pad.data() + P * W;
  std::fill(sc.pad.begin(), sc.pad.end(), T(0));
  const int64_t flat_vectors = P <= 2 ? tune.flat_min_vectors : tune.flat_min_vectors_3;
  const bool flat = out != nullptr && n >= std::max<int64_t>(2, flat_vectors) * L && P <= 4;
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
    flat_dx_rows(bm, gvs, us, n, gzpad, W, n, f, P, out->base, out->streamed, sc.ext);
    return;
  }
  // Two rows at a time, the maps outermost: 2·NV independent FMA chains, and each vector of U and ∂Z loaded once for
  // both rows. A row's last vector runs past n; it is stored whole where the next row of the pair, written after it,
  // covers the overrun, and copied in part otherwise.
  const int64_t rem = n - (NV - 1) * L;
  const bool overrun_in_next = NV * L <= 2 * n;
  auto block = [&](int64_t c, auto rows_in_block) {
    constexpr int C = decltype(rows_in_block)::value;
    T* dst = out->rows(c, C);  // the C rows, n apart
    vec<T> acc[C][NV] = {};
    for (int64_t p = 0; p < P; ++p) {
      vec<T> g[C], b[C];
      for (int r = 0; r < C; ++r) g[r] = broadcast<T>(gvs[p * f + c + r]), b[r] = broadcast<T>(bm[(c + r) * P + p]);
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
        alignas(kVecBytes) T last[L];
        store(last, acc[r][NV - 1]);
        std::copy(last, last + rem, d + (NV - 1) * L);
      }
    }
  };
  int64_t c = 0;
  for (; c + 2 <= f; c += 2) block(c, std::integral_constant<int, 2>());
  if (c < f) block(c, std::integral_constant<int, 1>());
}

// fn(std::integral_constant<int, NV>()) for rows of NV ≤ tuning short_max_vectors vectors; false for longer rows
template <typename T, typename Fn>
bool with_short_rows(int64_t n, Fn&& fn) {
  constexpr int L = kLanes<T>;
  const int64_t most = std::min<int64_t>(kMaxShortVectors, tuning().short_max_vectors);
  switch (n <= most * L ? (n + L - 1) / L : 0) {
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
static_assert(kMaxShortVectors == 8, "with_short_rows instantiates rows of 1 ... 8 vectors");

}  // namespace

template <typename T>
bool forward_short_sample(const T* xs, const T* bm, T* us, T* vs, int64_t n, int64_t f, int64_t P, int att,
                          ForwardScratch<T>& sc) {
  return with_short_rows<T>(n, [&](auto nv) { forward_short<T, decltype(nv)::value>(xs, bm, us, vs, n, f, P, att, sc); });
}

template <typename T>
bool backward_short_sample(const T* xs, const T* bm, const T* us, const T* gvs, T* gxs, T* gb, int64_t n, int64_t f,
                           int64_t P, int att, bool streamed, BackwardScratch<T>& sc) {
  return with_short_rows<T>(n, [&](auto nv) {
    RowWriter<T> out{gxs, n, n, streamed, sc.staging};
    backward_short<T, decltype(nv)::value>(xs, bm, us, gvs, gb, n, f, P, att, gxs ? &out : nullptr, sc);
    if (gxs) out.flush();
  });
}

#define LP_INSTANTIATE(T)                                                                                             \
  template bool forward_short_sample<T>(const T*, const T*, T*, T*, int64_t, int64_t, int64_t, int,                  \
                                        ForwardScratch<T>&);                                                          \
  template bool backward_short_sample<T>(const T*, const T*, const T*, const T*, T*, T*, int64_t, int64_t, int64_t,  \
                                         int, bool, BackwardScratch<T>&);
LP_INSTANTIATE(float)
LP_INSTANTIATE(double)
#undef LP_INSTANTIATE

}  // namespace lp
