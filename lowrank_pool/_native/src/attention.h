// The attention σ over positions (linear, ReLU, n · softmax) and its derivative, and the softmax over positions met
// in blocks ("online": a running maximum and sum per map, V rescaled when the maximum grows), as both layouts'
// forward passes use it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace lp {

enum Attention { kLinear = 0, kRelu = 1, kSoftmax = 2 };

namespace {  // (internal linkage, as vec.h)
template <typename T>
inline T relu(T z) {
  return (z > 0 || std::isnan(z)) ? z : T(0);
}

// σ'(Z) applied to du (in place -> dz), given u = σ(z) (u = n · softmax: ∂z = u ⊙ (∂u − Σ_i ∂u_i u_i / n))
template <typename T>
void activation_derivative(const T* u, T* du, int64_t n, int att) {
  if (att == kRelu) {
    for (int64_t i = 0; i < n; ++i) du[i] = u[i] > 0 ? du[i] : T(0);
  } else if (att == kSoftmax) {
    T c = 0;
    for (int64_t i = 0; i < n; ++i) c += du[i] * u[i];
    c /= T(n);
    for (int64_t i = 0; i < n; ++i) du[i] = u[i] * (du[i] - c);
  }
}
}  // namespace

// Softmax over positions met in blocks: per map a running maximum m and sum s of exp(z - m); V accumulates
// exp(z - m) x and is rescaled when m grows. A NaN anywhere makes the map all NaN, as on the torch path; z = -inf
// weighs 0.
template <typename T>
struct OnlineSoftmax {
  std::vector<T> m, s;
  std::vector<char> nan;
  explicit OnlineSoftmax(int64_t P) : m(P), s(P), nan(P) {}
  void reset() {
    std::fill(m.begin(), m.end(), -std::numeric_limits<T>::infinity());
    std::fill(s.begin(), s.end(), T(0));
    std::fill(nan.begin(), nan.end(), 0);
  }
  // before weighing a block of map p: z[k * stride], k < count; v = V's row p (f numbers)
  void grow(int64_t p, const T* z, int64_t count, int64_t stride, T* v, int64_t f) {
    T mb = -std::numeric_limits<T>::infinity();
    for (int64_t k = 0; k < count; ++k) {
      const T zk = z[k * stride];
      nan[p] |= std::isnan(zk);
      if (zk > mb) mb = zk;
    }
    if (mb > m[p]) {
      const T scale = std::exp(m[p] - mb);
      if (s[p] != T(0))
        for (int64_t c = 0; c < f; ++c) v[c] *= scale;
      s[p] *= scale;
      m[p] = mb;
    }
  }
  T weight(int64_t p, T z) {
    const T w = z == -std::numeric_limits<T>::infinity() ? T(0) : std::exp(z - m[p]);
    s[p] += w;
    return w;
  }
  // after the last block: u = n exp(z - m) / s (us holds z), V scaled by n / s
  void finish(T* us, T* vs, int64_t n, int64_t f) const {
    for (int64_t p = 0; p < int64_t(m.size()); ++p) {
      T* u = us + p * n;
      T* v = vs + p * f;
      if (nan[p]) {
        std::fill(u, u + n, std::numeric_limits<T>::quiet_NaN());
        std::fill(v, v + f, std::numeric_limits<T>::quiet_NaN());
        continue;
      }
      const T scale = T(n) / s[p];
      for (int64_t i = 0; i < n; ++i) u[i] = std::exp(u[i] - m[p]) * scale;
      for (int64_t c = 0; c < f; ++c) v[c] *= scale;
    }
  }
};

}  // namespace lp
