"""JAX arrays through the functional API: results equal numpy's, and jax.jit, jax.grad and jax.vmap work.

JAX is tested in its own module with a few fixed shapes (its eager dispatch compiles every new
shape, which made the generic hypothesis suites ten times slower); the math itself is covered there
on numpy, torch and array_api_strict.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
jnp = pytest.importorskip("jax.numpy")

import lowrank_pool as lp  # noqa: E402
from lowrank_pool.testing import assert_close  # noqa: E402

RNG = np.random.default_rng(0)
X = RNG.standard_normal((3, 6, 4))
X_NCHW = RNG.standard_normal((3, 4, 2, 3))
A, b = RNG.standard_normal((4, 5)), RNG.standard_normal(4)
AP, BP, BK = RNG.standard_normal((4, 5, 2)), RNG.standard_normal((4, 2)), RNG.standard_normal((4, 5, 2))
W = RNG.standard_normal((5, 4, 4))
CP = [RNG.standard_normal((5, 3)), RNG.standard_normal((4, 3)), RNG.standard_normal((4, 3))]
TK = (
    RNG.standard_normal((2, 3, 3)),
    [RNG.standard_normal((5, 2)), RNG.standard_normal((4, 3)), RNG.standard_normal((4, 3))],
)
EIG = (RNG.standard_normal((5, 2)), RNG.standard_normal((4, 5, 2)))

# name -> (function of (x, *factors), factors): every pooling function and factorised form
CASES = {
    "first_order_pool": (lambda x, w: lp.first_order_pool(x, w), (A,)),
    "first_order_pool max": (lambda x, w: lp.first_order_pool(x, w, reduce="max"), (A,)),
    "gram": (lambda x: lp.gram(x), ()),
    "bilinear_pool": (lambda x, w: lp.bilinear_pool(x, w), (W,)),
    "bilinear_pool sqrt+l2": (lambda x, w: lp.bilinear_pool(x, w, normalize="signed_sqrt+l2"), (W,)),
    "bilinear_pool matrix_sqrt": (lambda x, w: lp.bilinear_pool(x, w, normalize="matrix_sqrt"), (W,)),
    "rank1_pool": (lambda x, a, b: lp.rank1_pool(x, a, b), (A, b)),
    "rank1_pool softmax": (lambda x, a, b: lp.rank1_pool(x, a, b, attention="softmax"), (A, b)),
    "rankp_pool shared relu": (lambda x, a, b: lp.rankp_pool(x, a, b, attention="relu"), (AP, BP)),
    "rankp_pool per class": (lambda x, a, b: lp.rankp_pool(x, a, b), (AP, BK)),
    "attention_maps": (lambda x, a, b: lp.attention_maps(x, a, b).top_down, (AP, BP)),
    "project_channels": (lambda x, m: lp.project_channels(x, m), (A,)),
    "cp_pool factorized": (lambda x, u, a, c: lp.cp_pool(x, (None, [u, a, c]), path="factorized"), tuple(CP)),
    "cp_pool dense": (lambda x, u, a, c: lp.cp_pool(x, (None, [u, a, c]), path="dense"), tuple(CP)),
    "tucker_pool": (lambda x, g, u, a, c: lp.tucker_pool(x, (g, [u, a, c]), path="factorized"), (TK[0], *TK[1])),
    "eig_pool": (lambda x, m, v: lp.eig_pool(x, (m, v)), EIG),
    "compact_bilinear_pool": (lambda x: lp.compact_bilinear_pool(x, 7, seed=2), ()),  # jax scatter-add
}


def _close(got, want):
    """jax float64 against numpy float64: the same contractions in another order (n ≤ 6 positions, f = 4 channels,
    ≤ 5·2 class factors, a few chained steps), compared normwise."""
    assert_close(got, want, terms=8 * (6 + 4 * 4 + 10), scale="max", like=jnp.zeros(0, jnp.float64))


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("x", [X, X_NCHW], ids=["bnf", "nchw"])
def test_jax_matches_numpy_under_jit_grad_and_vmap(name, x):
    fn, factors = CASES[name]
    jargs = [jnp.asarray(a) for a in (x, *factors)]
    ref = fn(x, *factors)
    out = fn(*jargs)
    assert isinstance(out, jax.Array) and out.dtype == jnp.float64
    _close(out, ref)
    _close(jax.jit(fn)(*jargs), ref)
    per_sample = jax.vmap(lambda xi: fn(xi[None], *jargs[1:])[0])(jargs[0])
    _close(per_sample, ref)
    grads = jax.grad(lambda *a: fn(*a).sum(), argnums=tuple(range(len(jargs))))(*jargs)
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)
    # the gradient with respect to X against a central finite difference along a random direction
    d = np.random.default_rng(1).standard_normal(x.shape)
    h = 1e-6
    fd = (fn(x + h * d, *factors).sum() - fn(x - h * d, *factors).sum()) / (2 * h)
    # a central difference is off by the rounding of either sum divided by 2h (each sum chains ~32 roundings: the
    # scores' f- and n-term sums, then B·K scores, of its absolute terms' size) plus h²·|third derivative|
    f_plus, f_minus = np.abs(fn(x + h * d, *factors)).sum(), np.abs(fn(x - h * d, *factors)).sum()
    bound = 32 * np.finfo(np.float64).eps * (f_plus + f_minus) / (2 * h) + h**2 * (abs(fd) + 1)
    assert abs(float(jnp.vdot(grads[0], jnp.asarray(d))) - fd) <= bound


def test_jax_check_finite_inside_jit_is_named():
    fn = jax.jit(lambda x: lp.rank1_pool(x, jnp.asarray(A), jnp.asarray(b), check_finite=True))
    with pytest.raises(lp.ArgumentError, match="check_finite: the values of X cannot be checked inside a traced"):
        fn(jnp.asarray(X))
    assert np.isfinite(
        np.asarray(lp.rank1_pool(jnp.asarray(X), jnp.asarray(A), jnp.asarray(b), check_finite=True))
    ).all()


def test_jax_fits_and_factor_forms():
    w = jnp.asarray(W)
    eig = lp.eig_approx(w, 2)
    assert isinstance(eig.eigenvalues, jax.Array)
    _close(lp.to_dense(eig), lp.to_dense(lp.eig_approx(W, 2)))
    cp = lp.cp_approx(w, 3, n_iter_max=50)
    assert isinstance(cp.weights, jax.Array)
    tk = lp.tucker_approx(w, (5, 4, 4))
    _close(lp.to_dense(tk), (W + W.transpose(0, 2, 1)) / 2)


def test_jax_and_numpy_cannot_be_mixed():
    with pytest.raises(lp.BackendError, match="arrays of different libraries cannot be mixed"):
        lp.rank1_pool(jnp.asarray(X), A, b)
