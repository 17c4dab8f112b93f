"""Two inputs and centring: M = XᵀY / n (B-CNN [D, M], the fusion models) and the covariance
(1/n) Xᵀ(I − 11ᵀ/n)Y (MPN-COV / iSQRT-COV), on every backend and dtype, against literal float64 oracles.

Tolerances: a result that chains m sums of products is within m·eps·Σ|terms| of the exact value;
Σ|terms| is the oracle evaluated on |inputs| (centred data: on |X − x̄|).
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import expect_errors, sizes
from hypothesis import given
from hypothesis import strategies as st

import lowrank_pool as lp
from lowrank_pool.testing import assert_close, to_numpy


@st.composite
def pairs(draw):
    s = draw(sizes())
    s["g"] = draw(st.integers(1, 7))
    return s


def _data(s):
    rng = np.random.default_rng(s["seed"])
    B, n, f, g, K = s["B"], s["n"], s["f"], s["g"], s["K"]
    return {
        "X": rng.standard_normal((B, n, f)) + 2.0,  # a mean far from 0: centring matters
        "Y": rng.standard_normal((B, n, g)) - 1.0,
        "W": rng.standard_normal((K, f, g)),
        "A": rng.standard_normal((f, K)),
        "b": rng.standard_normal(g),
        "U": rng.standard_normal((K, 3)),
        "Af": rng.standard_normal((f, 3)),
        "Cg": rng.standard_normal((g, 3)),
        "core": rng.standard_normal((2, 3, 2)),
        "Ut": rng.standard_normal((K, 2)),
        "Ct": rng.standard_normal((g, 2)),
    }


def _cross(X, Y, center=False):
    X, Y = to_numpy(X), to_numpy(Y)
    if center and X.shape[1]:
        X, Y = X - X.mean(1, keepdims=True), Y - Y.mean(1, keepdims=True)
    return np.einsum("bnf,bng->bfg", X, Y) / max(X.shape[1], 1)


@given(s=pairs(), center=st.booleans())
def test_gram_of_two_inputs_and_the_covariance(bk, dtype, s, center):
    """gram(X, Y) = XᵀY / n; centred: (1/n) Xᵀ(I − 11ᵀ/n)Y = (1/n) Σ (x_i − x̄)(y_i − ȳ)ᵀ; gram(X, X) = gram(X)."""
    d = _data(s)
    X, Y = bk(d["X"], dtype), bk(d["Y"], dtype)
    got = lp.gram(X, Y, center=center)
    want = _cross(X, Y, center)
    xs, ys = (np.abs(to_numpy(v) - (to_numpy(v).mean(1, keepdims=True) if center else 0)) for v in (X, Y))
    terms = s["n"] + 4
    assert_close(got, want, terms=terms, scale=_cross(xs, ys) + 4.0 * center, like=got)
    plain = lp.gram(X, Y, center=center, normalize=None)
    assert_close(plain, want * s["n"], terms=terms, scale=s["n"] * (_cross(xs, ys) + 4.0 * center), like=plain)
    one = lp.gram(X, center=center)
    assert_close(lp.gram(X, X, center=center), one, terms=2 * terms, scale=_cross(xs, xs) + 8.0 * center)
    if center and s["B"]:  # the covariance is symmetric PSD
        m = to_numpy(one)
        assert_close(m, np.swapaxes(m, 1, 2), terms=2 * terms, scale=_cross(xs, xs) + 8.0)


@given(s=pairs())
def test_two_input_trace_identity(bk, dtype, s):
    """Tr(XᵀY W_kᵀ) / n with W_k = a_k bᵀ (K, f, g) equals (X a_k)ᵀ(Y b) / n: rank1_pool with Y, bilinear_pool
    with Y, cp_pool with Y and tucker_pool with Y agree with the literal trace."""
    d = _data(s)
    X, Y, A, b = (bk(d[k], dtype) for k in ("X", "Y", "A", "b"))
    M = _cross(X, Y)
    W = np.einsum("fk,g->kfg", d["A"], d["b"])
    trace = np.einsum("bfg,kfg->bk", M, W)
    scale = np.einsum("bfg,kfg->bk", _cross(np.abs(d["X"]), np.abs(d["Y"])), np.abs(W)) + 1.0
    terms = 2 * (s["f"] + s["g"]) + s["n"] + 4
    got = lp.rank1_pool(X, A, b, Y=Y)
    assert_close(got, trace, terms=terms, scale=scale, like=got, label="rank1_pool(Y=)")
    got = lp.bilinear_pool(X, bk(W, dtype), Y=Y)
    assert_close(got, trace, terms=terms + s["f"] * s["g"], scale=scale, like=got, label="bilinear_pool(Y=)")
    u, a, c = d["U"], d["Af"], d["Cg"]
    Wcp = np.einsum("kr,fr,gr->kfg", u, a, c)
    want = np.einsum("bfg,kfg->bk", M, Wcp)
    cscale = np.einsum(
        "bfg,kfg->bk", _cross(np.abs(d["X"]), np.abs(d["Y"])), np.einsum("kr,fr,gr->kfg", *map(np.abs, (u, a, c)))
    )
    for path in ("factorized", "dense"):
        got = lp.cp_pool(X, (None, [bk(u, dtype), bk(a, dtype), bk(c, dtype)]), Y=Y, path=path)
        assert_close(got, want, terms=terms + 3 * s["f"] * s["g"], scale=cscale + 1.0, like=got, label=f"cp {path}")
    core, ut, ct = d["core"], d["Ut"], d["Ct"]
    a3 = d["Af"]
    Wt = np.einsum("qrs,kq,fr,gs->kfg", core, ut, a3, ct)
    want = np.einsum("bfg,kfg->bk", M, Wt)
    tscale = np.einsum(
        "bfg,kfg->bk",
        _cross(np.abs(d["X"]), np.abs(d["Y"])),
        np.einsum("qrs,kq,fr,gs->kfg", *map(np.abs, (core, ut, a3, ct))),
    )
    for path in ("factorized", "dense"):
        tk = (bk(core, dtype), [bk(ut, dtype), bk(a3, dtype), bk(ct, dtype)])
        got = lp.tucker_pool(X, tk, Y=Y, path=path)
        assert_close(
            got, want, terms=terms + 20 * s["f"] * s["g"], scale=tscale + 1.0, like=got, label=f"tucker {path}"
        )


@given(s=pairs())
def test_centred_bilinear_pool_is_the_covariance_contracted(bk, dtype, s):
    d = _data(s)
    X, Y = bk(d["X"], dtype), bk(d["Y"], dtype)
    square = np.random.default_rng(s["seed"]).standard_normal((s["K"], s["f"], s["f"]))
    xs = np.abs(d["X"] - d["X"].mean(1, keepdims=True)) if s["n"] else np.abs(d["X"])
    ys = np.abs(d["Y"] - d["Y"].mean(1, keepdims=True)) if s["n"] else np.abs(d["Y"])
    for y, W, yabs in ((None, square, xs), (Y, d["W"], ys)):
        got = lp.bilinear_pool(X, bk(W, dtype), Y=y, center=True)
        want = np.einsum("bfg,kfg->bk", _cross(X, X if y is None else y, center=True), W)
        scale = np.einsum("bfg,kfg->bk", _cross(xs, yabs), np.abs(W)) + 8.0
        assert_close(got, want, terms=s["n"] + s["f"] * W.shape[2] + 8, scale=scale, like=got)


def _isqrt_reference(X, num_iters):
    """iSQRT-COV in float64, from the paper's equations (Li et al., CVPR 2018): the covariance
    Σ = (1/n) Xᵀ Ī X with Ī = I − 11ᵀ/n; A = Σ / tr Σ; Y_0 = A, Z_0 = I; T = (3I − Z Y)/2, Y ← Y T, Z ← T Z for
    N iterations; the root √(tr Σ) Y_N; the upper triangle row by row."""
    n = X.shape[1]
    ibar = np.eye(n) - np.ones((n, n)) / n
    sigma = np.einsum("bnf,nm,bmg->bfg", X, ibar, X) / n
    tr = np.trace(sigma, axis1=1, axis2=2)[:, None, None]
    y, z, eye = sigma / tr, np.broadcast_to(np.eye(X.shape[2]), sigma.shape), np.eye(X.shape[2])
    for _ in range(num_iters):
        t = 0.5 * (3.0 * eye - z @ y)
        y, z = y @ t, t @ z
    root = y * np.sqrt(tr)
    rows, cols = np.triu_indices(X.shape[2])
    return root[:, rows, cols]


@pytest.mark.parametrize("num_iters", [1, 3, 5])
def test_isqrt_cov_descriptor_equals_the_paper_to_rounding(num_iters):
    """triu_vec(N_isqrt(gram(X, center=True))) equals iSQRT-COV's descriptor in float64, values and gradients."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(num_iters)
    X = np.maximum(rng.standard_normal((3, 20, 6)), 0)  # ReLU features
    want = _isqrt_reference(X, num_iters)
    xt = torch.tensor(X, requires_grad=True)
    m = lp.gram(xt, center=True)
    got = lp.triu_vec(lp.matrix_sqrt(m, method="newton_schulz", num_iters=num_iters))
    # float64: the centred Gram matrix (n = 20), then num_iters Newton-Schulz steps of two 6×6 products each,
    # the same operations in the same order up to the GEMMs' summation order
    terms = 2 * (20 + 6 + 2 * 6 * (num_iters + 1))
    assert_close(got, want, terms=terms, scale="max", like=xt)
    # the same chain as a head's scores: ⟨N(Σ), W_k⟩ with W upper triangular = triu(N(Σ)) @ w
    w = rng.standard_normal((21, 4))
    wfull = np.zeros((4, 6, 6))
    rows, cols = np.triu_indices(6)
    wfull[:, rows, cols] = w.T
    scores = lp.bilinear_pool(xt, torch.tensor(wfull), center=True, normalize="isqrt", num_iters=num_iters)
    assert_close(scores, want @ w, terms=terms + 2 * 21, scale=np.abs(want) @ np.abs(w), like=xt)
    # gradients: autograd of the reference chain written in torch, against ours
    (g_ours,) = torch.autograd.grad(scores.sum(), xt)
    xr = torch.tensor(X, requires_grad=True)
    n = X.shape[1]
    ibar = torch.eye(n, dtype=torch.float64) - 1.0 / n
    sigma = torch.einsum("bnf,nm,bmg->bfg", xr, ibar, xr) / n
    tr = torch.diagonal(sigma, dim1=1, dim2=2).sum(-1)[:, None, None]
    y, z, eye = sigma / tr, torch.eye(6, dtype=torch.float64).expand(3, 6, 6), torch.eye(6, dtype=torch.float64)
    for _ in range(num_iters):
        t = 0.5 * (3.0 * eye - z @ y)
        y, z = y @ t, t @ z
    ref = (y * tr.sqrt())[:, rows, cols] @ torch.tensor(w)
    (g_ref,) = torch.autograd.grad(ref.sum(), xr)
    assert_close(g_ours, g_ref, terms=2 * terms, scale="max")  # the backward walks the chain once more


@given(s=pairs())
def test_compact_sketch_of_two_inputs_is_the_count_sketch_convolution(bk, dtype, s):
    """ψ(X, Y)[t] = (1/n) Σ_i Σ_{(h1(a) + h2(b)) mod d = t} s1(a) s2(b) x_ia y_ib, literally; Y = X is the one-input
    sketch."""
    d = _data(s)
    X, Y = bk(d["X"], dtype), bk(d["Y"], dtype)
    dim = 16
    got = lp.compact_bilinear_pool(X, dim, Y=Y, seed=3)
    (h1, s1), _ = lp.sketch_hashes(s["f"], dim, 3)
    _, (h2, s2) = lp.sketch_hashes(s["g"], dim, 3)
    onehot = np.zeros((s["f"], s["g"], dim))
    for a in range(s["f"]):
        for b in range(s["g"]):
            onehot[a, b, (h1[a] + h2[b]) % dim] = s1[a] * s2[b]
    want = np.einsum("bfg,fgt->bt", _cross(X, Y), onehot)
    scale = np.einsum("bfg,fgt->bt", _cross(np.abs(d["X"]), np.abs(d["Y"])), np.abs(onehot)) + 1.0
    assert_close(got, want, terms=8 * dim + s["n"], scale=scale, like=got)
    same = lp.compact_bilinear_pool(X, dim, Y=X, seed=3)
    # the one-input sketch of X: the same count sketches and FFTs (length 16), compared normwise
    assert_close(same, lp.compact_bilinear_pool(X, dim, seed=3), terms=8 * dim + s["n"], scale="max")


@pytest.mark.parametrize("layout", ["bnf", "nchw"])
def test_two_inputs_follow_the_layout_rule_and_differentiate(layout):
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randn(2, 2, 4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    if layout == "bnf":
        x, y = (t.detach().flatten(2).transpose(1, 2).requires_grad_() for t in (x, y))
    w = torch.randn(4, 3, 2, dtype=torch.float64, generator=g, requires_grad=True)
    a, b = torch.randn(3, 4, dtype=torch.float64, generator=g), torch.randn(2, dtype=torch.float64, generator=g)
    cp = (None, [torch.randn(4, 2, dtype=torch.float64, generator=g), torch.randn(3, 2, dtype=torch.float64),
                 torch.randn(2, 2, dtype=torch.float64)])  # fmt: skip
    funcs = {
        "gram": lambda x, y: lp.gram(x, y, center=True),
        "bilinear": lambda x, y: lp.bilinear_pool(x, w, Y=y, normalize="signed_sqrt+l2"),
        "rank1": lambda x, y: lp.rank1_pool(x, a, b, Y=y, attention="softmax"),
        "cp": lambda x, y: lp.cp_pool(x, cp, Y=y),
        "compact": lambda x, y: lp.compact_bilinear_pool(x, 8, Y=y),
    }
    for name, fn in funcs.items():
        assert torch.autograd.gradcheck(fn, (x, y)), name
    xn = to_numpy(x.detach()).reshape(2, 3, 20).transpose(0, 2, 1) if layout == "nchw" else to_numpy(x.detach())
    yn = to_numpy(y.detach()).reshape(2, 2, 20).transpose(0, 2, 1) if layout == "nchw" else to_numpy(y.detach())
    assert_close(lp.gram(x, y), _cross(xn, yn), terms=20 + 2, scale=_cross(np.abs(xn), np.abs(yn)), like=x)


def test_two_input_errors_name_the_argument():
    X, Y = np.ones((2, 5, 3)), np.ones((2, 5, 4))
    W = np.ones((6, 3, 4))
    cases = [
        (lambda: lp.gram(X, np.ones((3, 5, 4))), lp.ShapeError, r"^Y: expected 2 samples of n = 5 positions"),
        (lambda: lp.gram(X, np.ones((2, 6, 4))), lp.ShapeError, r"^Y: expected 2 samples of n = 5 .* n = 6"),
        (
            lambda: lp.bilinear_pool(X, np.ones((6, 3, 3)), Y=Y),
            lp.ShapeError,
            r"^W: expected shape \(K, f, g\) with g = 4",
        ),
        (
            lambda: lp.bilinear_pool(X, W, Y=Y, normalize="isqrt"),
            lp.ArgumentError,
            r"^normalize: 'isqrt' .* needs one input",
        ),
        (lambda: lp.bilinear_pool(X, W[:, :, :3], center="yes"), lp.ArgumentTypeError, r"^center"),
        (lambda: lp.rank1_pool(X, np.ones((3, 2)), np.ones(3), Y=Y), lp.ShapeError, r"^b: expected shape \(g,\)"),
        (
            lambda: lp.cp_pool(X, (None, [np.ones((6, 2)), np.ones((3, 2)), np.ones((3, 2))]), Y=Y),
            lp.ShapeError,
            r"^cp factor C: expected shape \(g, R\) with g = 4",
        ),
        (
            lambda: lp.tucker_pool(X, (np.ones((1, 1, 1)), [np.ones((6, 1)), np.ones((3, 1)), np.ones((5, 1))]), Y=Y),
            lp.ShapeError,
            r"^tucker factor C: expected shape \(g, R\) with g = 4",
        ),
        (lambda: lp.compact_bilinear_pool(X, 8, Y="y"), lp.LowRankPoolError, r"Y"),
        (lambda: lp.triu_vec(np.ones((2, 3))), lp.ShapeError, r"^G: expected square matrices"),
    ]
    expect_errors(cases)


def test_the_uncentred_root_is_far_from_isqrt_cov_as_documented():
    """docs/conventions.md ("Centring"): on ReLU(N(0, 1)) features, f = 64, n = 196, the uncentred root's upper
    triangle is 56 % (relative l2) away from iSQRT-COV's descriptor."""
    X = np.maximum(np.random.default_rng(0).standard_normal((8, 196, 64)), 0)
    plain = lp.triu_vec(lp.matrix_sqrt(lp.gram(X), method="newton_schulz"))
    cov = lp.triu_vec(lp.matrix_sqrt(lp.gram(X, center=True), method="newton_schulz"))
    rel = float(np.mean(np.linalg.norm(plain - cov, axis=1) / np.linalg.norm(cov, axis=1)))
    assert round(rel, 2) == 0.56, rel
