// What the bindings (bindings.cpp, built for the baseline instruction set) call in the kernel's translation units
// (built for the capability): tensors and raw pointers only, no vector types.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "tuning.h"

namespace lp {

// Z, U = σ(Z), V = U Xᵀ of every sample (passes.cpp); x (B, n, f) or channels-first (B, f, n), bm (f, P), u (B, P, n),
// v (B, P, f), all contiguous
template <typename T>
void maps_forward(const T* x, const T* bm, T* u, T* v, int64_t B, int64_t n, int64_t f, int64_t P, bool cf, int att);
// ∂X (gx, X's layout; nullptr: not wanted) and ∂B (gbm (f, P); nullptr: not wanted) from ∂V (gv (B, P, f))
template <typename T>
void maps_backward(const T* x, const T* bm, const T* u, const T* gv, T* gx, T* gbm, int64_t B, int64_t n, int64_t f,
                   int64_t P, bool cf, int att);

// s (B, K) = scale · vec(V) A for A as a (P, f, K) view, any strides (products.cpp); `copy` receives A as a contiguous
// (P·f, K) copy where one was made (the backward reuses it)
at::Tensor scores_of_maps(const at::Tensor& v, const at::Tensor& a, double scale, at::Tensor& copy);
// ∂V (B, P, f) where `maps`, ∂A (P, f, K) where `need_a`, from g = ∂L/∂s (B, K, contiguous)
void gradients_of_products(const at::Tensor& a, const at::Tensor& v, const at::Tensor& g, double scale, bool maps,
                           bool need_a, at::Tensor& gv, at::Tensor& ga);

// ∂X buffers (cache.cpp)
at::Tensor cached_empty_like(const at::Tensor& like);
int64_t cache_bytes(bool release);  // bytes held; release = true frees them first (returns what was freed)
int64_t cache_blocks();             // freed blocks held
void set_cache_limit(int64_t bytes);
int64_t cache_limit();

// what the kernel's translation units were built with (tuning.cpp)
const char* built_capability();
int built_vector_bytes();

}  // namespace lp
