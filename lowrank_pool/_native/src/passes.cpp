// The batch driver of the maps' passes: samples run in parallel (at::parallel_for), each with its thread's scratch;
// the backward gives each chunk of samples its own ∂Bᵀ accumulator, summed at the end (no atomics, and the same sum
// for a given thread count).
#include <ATen/Parallel.h>

#include "kernel.h"
#include "passes.h"
#include "transpose.h"

namespace lp {

template <typename T>
void maps_forward(const T* x, const T* bm, T* u, T* v, int64_t B, int64_t n, int64_t f, int64_t P, bool cf, int att) {
  std::vector<T> btv(cf ? 0 : P * f);  // (P, f): each map's weights contiguous, for the rows layout
  if (!cf) copy_tiles(bm, P, 1, btv.data(), 1, f, f, P);
  std::vector<const T*> bt(P);
  for (int64_t p = 0; p < P && !cf; ++p) bt[p] = btv.data() + p * f;
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    ForwardScratch<T> sc(P);
    for (int64_t b = b0; b < b1; ++b) {
      if (cf)
        forward_channels_sample<T>(x + b * n * f, bm, u + b * P * n, v + b * P * f, n, f, P, att, sc);
      else
        forward_rows_sample<T>(x + b * n * f, bt.data(), u + b * P * n, v + b * P * f, n, f, P, att, sc);
    }
  });
}

template <typename T>
void maps_backward(const T* x, const T* bm, const T* u, const T* gv, T* gx, T* gbm, int64_t B, int64_t n, int64_t f,
                   int64_t P, bool cf, int att) {
  std::vector<T> btv(P * f);  // B (f, P) as (P, f)
  copy_tiles(bm, P, 1, btv.data(), 1, f, f, P);
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(B, at::get_num_threads()));
  const int64_t per = (B + chunks - 1) / chunks;
  std::vector<T> gbm_parts(gbm ? chunks * f * P : 0, T(0));  // one ∂Bᵀ (P, f) per chunk
  const bool streamed = B * n * f * int64_t(sizeof(T)) >= tuning().stream_min_bytes;
  at::parallel_for(0, chunks, 1, [&](int64_t k0, int64_t k1) {
    BackwardScratch<T> sc(n, f, P, cf, streamed);
    for (int64_t k = k0; k < k1; ++k) {
      T* gb = gbm ? gbm_parts.data() + k * f * P : nullptr;
      const int64_t last = std::min(B, (k + 1) * per);
      for (int64_t b = k * per; b < last; ++b) {
        const T* xs = x + b * n * f;
        const T* us = u + b * P * n;
        const T* gvs = gv + b * P * f;
        T* gxs = gx ? gx + b * n * f : nullptr;
        if (cf)
          backward_channels_sample<T>(xs, bm, us, gvs, gxs, gb, n, f, P, att, streamed, sc);
        else
          backward_rows_sample<T>(xs, btv.data(), us, gvs, gxs, gb, n, f, P, att, streamed, sc);
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

template void maps_forward<float>(const float*, const float*, float*, float*, int64_t, int64_t, int64_t, int64_t, bool,
                                  int);
template void maps_forward<double>(const double*, const double*, double*, double*, int64_t, int64_t, int64_t, int64_t,
                                   bool, int);
template void maps_backward<float>(const float*, const float*, const float*, const float*, float*, float*, int64_t,
                                   int64_t, int64_t, int64_t, bool, int);
template void maps_backward<double>(const double*, const double*, const double*, const double*, double*, double*,
                                    int64_t, int64_t, int64_t, int64_t, bool, int);

}  // namespace lp
