// The Python module: checks, the scores and their gradients, the ∂X cache, the tuning. Built for the baseline
// instruction set (the other translation units for the capability this binary is named after): its initialisation
// refuses to load on a CPU without that capability, before any of the kernel's code runs.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/utils/pybind.h>

#include <string>
#include <utility>
#include <vector>

#include "kernel.h"

namespace lp {
namespace {

#if defined(LP_KERNEL_AVX512)
constexpr const char* kKernelCapability = "avx512";
#elif defined(LP_KERNEL_AVX2)
constexpr const char* kKernelCapability = "avx2";
#else
#error "build with LP_KERNEL_AVX512 or LP_KERNEL_AVX2"
#endif

// Whether this CPU (and its operating system: GCC's test includes the saved register state) runs the capability
bool cpu_supports_kernel() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#if defined(LP_KERNEL_AVX512)
  return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw");
#else
  return avx2;
#endif
#else
  return false;
#endif
}

void check(const at::Tensor& x, const at::Tensor& bm, bool cf) {
  TORCH_CHECK(x.device().is_cpu() && bm.device().is_cpu(), "lowrank_pool native kernel: CPU tensors only");
  TORCH_CHECK(x.dim() == 3 && x.is_contiguous() && bm.dim() == 2 && bm.is_contiguous(),
              "lowrank_pool native kernel: contiguous x (B, n, f) / (B, f, n) and bm (f, P)");
  TORCH_CHECK(x.scalar_type() == bm.scalar_type() &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble),
              "lowrank_pool native kernel: x and bm of one dtype, float32 or float64");
  TORCH_CHECK(!x.is_neg() && !bm.is_neg() && !x.is_conj() && !bm.is_conj(),
              "lowrank_pool native kernel: tensors with the negative or conjugate bit (resolve them first)");
  TORCH_CHECK(bm.size(0) == (cf ? x.size(1) : x.size(2)), "lowrank_pool native kernel: channel mismatch");
}

void check_a(const at::Tensor& a, const at::Tensor& bm, const at::Tensor& x) {
  TORCH_CHECK(a.device().is_cpu() && a.dim() == 3 && a.size(0) == bm.size(1) && a.size(1) == bm.size(0) &&
                  a.scalar_type() == x.scalar_type() && !a.is_neg() && !a.is_conj(),
              "lowrank_pool native kernel: a (P, f, K) on the CPU in x's dtype, without a negative or conjugate bit");
}

// returns (s (B, K) = scale · vec(V) A, U (B, P, n), V (B, P, f), A as a contiguous (M, K) copy or None); a: A as a
// (P, f, K) view, any strides. The copy exists where the wide products needed one; the caller keeps it for the
// backward, which would otherwise copy A again.
std::vector<at::Tensor> scores_forward(const at::Tensor& x, const at::Tensor& bm, const at::Tensor& a, bool cf,
                                       int64_t att, double scale) {
  check(x, bm, cf);
  check_a(a, bm, x);
  TORCH_CHECK(att >= 0 && att <= 2, "lowrank_pool native kernel: attention code 0, 1 or 2");
  const int64_t B = x.size(0), f = bm.size(0), P = bm.size(1), n = cf ? x.size(2) : x.size(1);
  const int64_t K = a.size(2);
  auto u = at::empty({B, P, n}, x.options());
  auto v = at::empty({B, P, f}, x.options());
  if (P == 0 || B == 0) return {at::zeros({B, K}, x.options()), u, v.zero_(), at::Tensor()};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "scores_forward", [&] {
    maps_forward<scalar_t>(x.data_ptr<scalar_t>(), bm.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(),
                           v.data_ptr<scalar_t>(), B, n, f, P, cf, static_cast<int>(att));
  });
  at::Tensor copy;
  auto s = scores_of_maps(v, a, scale, copy);
  return {s, u, v, copy};
}

// Inference: s (B, K) alone, from the tensors as the caller holds them (one call from Python, no views made there).
// x: (B, n, f), or channels-first (B, f, ...) contiguous; b: (f,) or (f, P); a: (f, K) with a (f,) b, else (f, K, P).
at::Tensor scores_inference(at::Tensor x, const at::Tensor& b, const at::Tensor& a, bool cf, int64_t att,
                            double scale) {
  if (cf && x.dim() > 3) x = x.view({x.size(0), x.size(1), -1});
  const bool rank1 = b.dim() == 1;
  TORCH_CHECK(a.dim() == (rank1 ? 2 : 3), "lowrank_pool native kernel: a (f, K) with b (f,), (f, K, P) with B (f, P)");
  return scores_forward(x, rank1 ? b.view({b.size(0), 1}) : b, rank1 ? a.unsqueeze(0) : a.permute({2, 0, 1}), cf, att,
                        scale)[0];
}

// returns (∂X in X's layout, ∂B (f, P), ∂A (P, f, K)), each None where not needed; g: ∂L/∂s (B, K)
std::vector<at::Tensor> scores_backward(const at::Tensor& x, const at::Tensor& bm, const at::Tensor& a,
                                        const at::Tensor& u, const at::Tensor& v, at::Tensor g, bool cf, int64_t att,
                                        double scale, bool need_x, bool need_b, bool need_a) {
  check(x, bm, cf);
  check_a(a, bm, x);
  g = g.resolve_conj().resolve_neg().contiguous();
  TORCH_CHECK(u.is_contiguous() && v.is_contiguous() && u.scalar_type() == x.scalar_type() &&
                  v.scalar_type() == x.scalar_type() && g.scalar_type() == x.scalar_type() && !u.is_neg() &&
                  !v.is_neg(),
              "lowrank_pool native kernel: contiguous u, v and g in x's dtype");
  const int64_t B = x.size(0), f = bm.size(0), P = bm.size(1), n = cf ? x.size(2) : x.size(1);
  const int64_t K = a.size(2);
  auto gx = need_x ? cached_empty_like(x) : at::Tensor();
  auto gbm = need_b ? at::empty_like(bm) : at::Tensor();
  at::Tensor ga, gv;  // ∂A (P, f, K), ∂V (B, P, f): made by the products
  if (P == 0 || B == 0) {
    if (need_a) ga = at::zeros({P, f, K}, x.options());
    for (auto* t : {&gx, &gbm})
      if (t->defined()) t->zero_();
    return {gx, gbm, ga};
  }
  const bool maps = need_x || need_b;
  gradients_of_products(a, v, g, scale, maps, need_a, gv, ga);
  if (maps) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "scores_backward", [&] {
      maps_backward<scalar_t>(x.data_ptr<scalar_t>(), bm.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(),
                              gv.data_ptr<scalar_t>(), need_x ? gx.data_ptr<scalar_t>() : nullptr,
                              need_b ? gbm.data_ptr<scalar_t>() : nullptr, B, n, f, P, cf, static_cast<int>(att));
    });
  }
  return {gx, gbm, ga};
}

// The tuning's fields by name (tuning.h)
const std::vector<std::pair<const char*, int64_t Tuning::*>>& fields() {
  static const std::vector<std::pair<const char*, int64_t Tuning::*>> all = {
#define LP_FIELD(name) {#name, &Tuning::name}
      LP_FIELD(sequential_min_bytes), LP_FIELD(sequential_max_bytes), LP_FIELD(ahead_rows),
      LP_FIELD(ahead_bytes),          LP_FIELD(spread_bytes),         LP_FIELD(per_line_bytes),
      LP_FIELD(l2_bytes),             LP_FIELD(l2_hot_bytes),         LP_FIELD(l3_bytes),
      LP_FIELD(l3_share_bytes),       LP_FIELD(l3_row_bytes),         LP_FIELD(block_min_positions),
      LP_FIELD(short_max_vectors),    LP_FIELD(flat_min_vectors),     LP_FIELD(flat_min_vectors_3),
      LP_FIELD(rows4_min_positions),  LP_FIELD(stream_min_bytes),     LP_FIELD(staging_bytes),
      LP_FIELD(small_max_classes),    LP_FIELD(small_max_numbers),    LP_FIELD(transpose_v_min_bytes),
      LP_FIELD(copy_grain),           LP_FIELD(own_wide_products),
#undef LP_FIELD
  };
  return all;
}

py::dict get_tuning() {
  py::dict out;
  const Tuning& t = tuning();
  for (const auto& [name, member] : fields()) out[name] = t.*member;
  return out;
}

// Replaces the named fields (the others keep their values); unknown names and negative values are refused
void update_tuning(const py::dict& values) {
  Tuning t = tuning();
  for (const auto& item : values) {
    const auto name = py::cast<std::string>(item.first);
    const auto value = py::cast<int64_t>(item.second);
    bool known = false;
    for (const auto& [field, member] : fields())
      if (name == field) {
        TORCH_CHECK(value >= 0, "lowrank_pool native kernel: tuning ", name, " must be >= 0, got ", value);
        t.*member = value;
        known = true;
      }
    TORCH_CHECK(known, "lowrank_pool native kernel: no tuning field named ", name);
  }
  TORCH_CHECK(t.staging_bytes >= kLineBytes && t.copy_grain >= 1,
              "lowrank_pool native kernel: staging_bytes >= 64 and copy_grain >= 1");
  set_tuning(t);
}

void reset_tuning() { set_tuning(Tuning{}); }

}  // namespace
}  // namespace lp

namespace lp {
// The module's contents (module.cpp names the module after the binary)
void define_module(py::module_& m) {
  if (!lp::cpu_supports_kernel())
    throw py::import_error(std::string("lowrank_pool native kernel: built for ") + lp::kKernelCapability +
                           ", which this CPU does not support");
  m.attr("capability") = lp::kKernelCapability;
  m.attr("vector_bytes") = lp::built_vector_bytes();
  m.attr("interface") = 2;  // the Python side checks it (lowrank_pool/_native/__init__.py)
  m.def("scores_forward", &lp::scores_forward, "s, U, V (and A's copy) of attention-weighted pooling with a shared B");
  m.def("scores_inference", &lp::scores_inference, "s alone, from X, b or B, and A as the caller holds them");
  m.def("scores_backward", &lp::scores_backward, "dX, dB, dA of attention-weighted pooling with a shared B");
  m.def("cache_bytes", &lp::cache_bytes, "bytes held by the dX cache; release=True frees them");
  m.def("cache_blocks", &lp::cache_blocks, "freed dX blocks held by the cache");
  m.def("set_cache_limit", &lp::set_cache_limit, "the cache's limit in bytes (0: no cache)");
  m.def("cache_limit", &lp::cache_limit, "the cache's limit in bytes");
  m.def("tuning", &lp::get_tuning, "the tuning's fields and values");
  m.def("update_tuning", &lp::update_tuning, "set the named tuning fields");
  m.def("reset_tuning", &lp::reset_tuning, "the default tuning");
}
}  // namespace lp
