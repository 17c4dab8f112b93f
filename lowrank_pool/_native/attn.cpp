// Fused CPU kernels of attention-weighted pooling with a shared bottom-up basis B (f, P).
//
// Per sample, X (n, f) rows (layout "bnf") or X (f, n) rows (layout "bfn", NCHW):
//   forward   Z = Bᵀ X (P, n), U = σ(Z), V = U Xᵀ (P, f)           — X read twice, the second read from cache
//   backward  ∂U = ∂V X, ∂Z = σ'(∂U), ∂X = ∂Vᵀ U + B ∂Z, ∂B += X ∂Zᵀ — X read twice, ∂X written once
// The (B, K) products with A stay GEMMs in PyTorch. Samples run in parallel (at::parallel_for); the inner
// loops run over the contiguous axis with `omp simd` reductions. The math: docs/math.md.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <limits>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace {

enum Attention { kLinear = 0, kRelu = 1, kSoftmax = 2 };

template <typename T>
inline T dot(const T* a, const T* b, int64_t len) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < len; ++j) acc += a[j] * b[j];
  return acc;
}

template <typename T>
inline void axpy(T alpha, const T* x, T* y, int64_t len) {
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) y[j] += alpha * x[j];
}

// σ over the n positions of one map z (in place -> u)
template <typename T>
void activate(T* z, int64_t n, int att) {
  if (att == kRelu) {
    for (int64_t i = 0; i < n; ++i) z[i] = (z[i] > 0 || std::isnan(z[i])) ? z[i] : T(0);
  } else if (att == kSoftmax) {
    T m = -std::numeric_limits<T>::infinity();
    bool nan = false;
    for (int64_t i = 0; i < n; ++i) {
      nan |= std::isnan(z[i]);
      m = std::max(m, z[i]);
    }
    if (nan) {
      std::fill(z, z + n, std::numeric_limits<T>::quiet_NaN());
      return;
    }
    T s = 0;
    for (int64_t i = 0; i < n; ++i) {
      z[i] = std::exp(z[i] - m);
      s += z[i];
    }
    const T scale = T(n) / s;
    for (int64_t i = 0; i < n; ++i) z[i] *= scale;
  }
}

// σ'(Z) applied to du (in place -> dz), given u = σ(z)
template <typename T>
void activation_derivative(const T* u, T* du, int64_t n, int att) {
  if (att == kRelu) {
    for (int64_t i = 0; i < n; ++i) du[i] = u[i] > 0 ? du[i] : T(0);
  } else if (att == kSoftmax) {
    const T c = dot(du, u, n) / T(n);
    for (int64_t i = 0; i < n; ++i) du[i] = u[i] * (du[i] - c);
  }
}

template <typename T>
void forward_impl(const T* x, const T* bm, T* u, T* v, int64_t B, int64_t n, int64_t f, int64_t P, bool cf,
                  int att) {
  // bt (P, f): B transposed once so that each map's weights are contiguous
  std::vector<T> bt(P * f);
  for (int64_t c = 0; c < f; ++c)
    for (int64_t p = 0; p < P; ++p) bt[p * f + c] = bm[c * P + p];
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const T* xs = x + b * n * f;
      T* us = u + b * P * n;
      T* vs = v + b * P * f;
      if (!cf) {  // X (n, f)
        for (int64_t i = 0; i < n; ++i)
          for (int64_t p = 0; p < P; ++p) us[p * n + i] = dot(xs + i * f, bt.data() + p * f, f);
        for (int64_t p = 0; p < P; ++p) activate(us + p * n, n, att);
        std::fill(vs, vs + P * f, T(0));
        for (int64_t i = 0; i < n; ++i)
          for (int64_t p = 0; p < P; ++p) axpy(us[p * n + i], xs + i * f, vs + p * f, f);
      } else {  // X (f, n)
        std::fill(us, us + P * n, T(0));
        for (int64_t c = 0; c < f; ++c)
          for (int64_t p = 0; p < P; ++p) axpy(bm[c * P + p], xs + c * n, us + p * n, n);
        for (int64_t p = 0; p < P; ++p) activate(us + p * n, n, att);
        for (int64_t c = 0; c < f; ++c)
          for (int64_t p = 0; p < P; ++p) vs[p * f + c] = dot(us + p * n, xs + c * n, n);
      }
    }
  });
}

template <typename T>
void backward_impl(const T* x, const T* bm, const T* u, const T* gv, T* gx, T* gbm, int64_t B, int64_t n, int64_t f,
                   int64_t P, bool cf, int att) {
  std::vector<T> bt(P * f);
  for (int64_t c = 0; c < f; ++c)
    for (int64_t p = 0; p < P; ++p) bt[p * f + c] = bm[c * P + p];
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(B, at::get_num_threads()));
  const int64_t per = (B + chunks - 1) / chunks;
  // one ∂B accumulator per chunk, summed at the end (no atomics, deterministic for a thread count)
  std::vector<T> gbm_parts(gbm ? chunks * f * P : 0, T(0));
  at::parallel_for(0, chunks, 1, [&](int64_t k0, int64_t k1) {
    std::vector<T> gz(P * n);
    for (int64_t k = k0; k < k1; ++k) {
      T* gb = gbm ? gbm_parts.data() + k * f * P : nullptr;
      for (int64_t b = k * per; b < std::min(B, (k + 1) * per); ++b) {
        const T* xs = x + b * n * f;
        const T* us = u + b * P * n;
        const T* gvs = gv + b * P * f;
        T* gxs = gx ? gx + b * n * f : nullptr;
        if (!cf) {  // X (n, f)
          for (int64_t i = 0; i < n; ++i)
            for (int64_t p = 0; p < P; ++p) gz[p * n + i] = dot(xs + i * f, gvs + p * f, f);
          for (int64_t p = 0; p < P; ++p) activation_derivative(us + p * n, gz.data() + p * n, n, att);
          for (int64_t i = 0; i < n; ++i) {
            if (gxs) {
              T* row = gxs + i * f;
              std::fill(row, row + f, T(0));
              for (int64_t p = 0; p < P; ++p) {
                axpy(us[p * n + i], gvs + p * f, row, f);
                axpy(gz[p * n + i], bt.data() + p * f, row, f);
              }
            }
            if (gb)  // ∂Bᵀ (P, f) accumulated row-wise, transposed at the end
              for (int64_t p = 0; p < P; ++p) axpy(gz[p * n + i], xs + i * f, gb + p * f, f);
          }
        } else {  // X (f, n)
          std::fill(gz.begin(), gz.end(), T(0));
          for (int64_t c = 0; c < f; ++c)
            for (int64_t p = 0; p < P; ++p) axpy(gvs[p * f + c], xs + c * n, gz.data() + p * n, n);
          for (int64_t p = 0; p < P; ++p) activation_derivative(us + p * n, gz.data() + p * n, n, att);
          for (int64_t c = 0; c < f; ++c) {
            if (gxs) {
              T* row = gxs + c * n;
              std::fill(row, row + n, T(0));
              for (int64_t p = 0; p < P; ++p) {
                axpy(gvs[p * f + c], us + p * n, row, n);
                axpy(bm[c * P + p], gz.data() + p * n, row, n);
              }
            }
            if (gb)
              for (int64_t p = 0; p < P; ++p) gb[p * f + c] += dot(xs + c * n, gz.data() + p * n, n);
          }
        }
      }
    }
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

// A fresh multi-MB output (∂X) is paid for in page faults on its first write (measured here: 11-13 ms for
// 51 MB with 4 KiB pages, 4-5 ms with 2 MiB pages, 2.2 ms to overwrite a reused buffer). With
// LOWRANK_POOL_HUGEPAGES=1, and where the kernel grants transparent huge pages on request (THP "madvise"
// mode), ask for them on the buffer's aligned interior. Off by default: with THP defrag "madvise" the
// request can stall on synchronous compaction (measured here, fwd+bwd at (196, 2048, 600): median
// 20.7 ms against 31.6 ms, but single steps of 68-125 ms, so the mean gained little and the jitter grew).
void prefer_huge_pages(const torch::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  static const bool enabled = [] {
    const char* v = std::getenv("LOWRANK_POOL_HUGEPAGES");
    return v != nullptr && std::string(v) == "1";
  }();
  if (!enabled) return;
  constexpr std::uintptr_t kHuge = std::uintptr_t(1) << 21;
  const auto begin = reinterpret_cast<std::uintptr_t>(t.data_ptr());
  const auto end = begin + static_cast<std::uintptr_t>(t.nbytes());
  const std::uintptr_t lo = (begin + kHuge - 1) & ~(kHuge - 1), hi = end & ~(kHuge - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#else
  (void)t;
#endif
}

void check(const torch::Tensor& x, const torch::Tensor& bm, bool cf) {
  TORCH_CHECK(x.device().is_cpu() && bm.device().is_cpu(), "lowrank_pool native kernel: CPU tensors only");
  TORCH_CHECK(x.dim() == 3 && x.is_contiguous() && bm.dim() == 2 && bm.is_contiguous(),
              "lowrank_pool native kernel: contiguous x (B, n, f) / (B, f, n) and bm (f, P)");
  TORCH_CHECK(x.scalar_type() == bm.scalar_type(), "lowrank_pool native kernel: one dtype");
  TORCH_CHECK(bm.size(0) == (cf ? x.size(1) : x.size(2)), "lowrank_pool native kernel: channel mismatch");
}

}  // namespace

// returns (U (B, P, n), V (B, P, f))
std::vector<torch::Tensor> maps_forward(torch::Tensor x, torch::Tensor bm, bool cf, int64_t att) {
  check(x, bm, cf);
  const int64_t B = x.size(0), f = bm.size(0), P = bm.size(1), n = cf ? x.size(2) : x.size(1);
  auto u = torch::empty({B, P, n}, x.options());
  auto v = torch::empty({B, P, f}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "maps_forward", [&] {
    forward_impl<scalar_t>(x.data_ptr<scalar_t>(), bm.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(),
                           v.data_ptr<scalar_t>(), B, n, f, P, cf, static_cast<int>(att));
  });
  return {u, v};
}

// returns (∂X in X's layout or an empty tensor, ∂B (f, P) or an empty tensor)
std::vector<torch::Tensor> maps_backward(torch::Tensor x, torch::Tensor bm, torch::Tensor u, torch::Tensor gv, bool cf,
                                         int64_t att, bool need_x, bool need_b) {
  check(x, bm, cf);
  TORCH_CHECK(u.is_contiguous() && gv.is_contiguous() && u.scalar_type() == x.scalar_type() &&
                  gv.scalar_type() == x.scalar_type(),
              "lowrank_pool native kernel: contiguous u, gv in x's dtype");
  const int64_t B = x.size(0), f = bm.size(0), P = bm.size(1), n = cf ? x.size(2) : x.size(1);
  auto gx = need_x ? torch::empty_like(x) : torch::Tensor();
  if (need_x) prefer_huge_pages(gx);
  auto gbm = need_b ? torch::empty_like(bm) : torch::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "maps_backward", [&] {
    backward_impl<scalar_t>(x.data_ptr<scalar_t>(), bm.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(),
                            gv.data_ptr<scalar_t>(), need_x ? gx.data_ptr<scalar_t>() : nullptr,
                            need_b ? gbm.data_ptr<scalar_t>() : nullptr, B, n, f, P, cf, static_cast<int>(att));
  });
  return {gx, gbm};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("maps_forward", &maps_forward, "U, V of attention-weighted pooling with a shared B");
  m.def("maps_backward", &maps_backward, "dX, dB of attention-weighted pooling with a shared B");
}
