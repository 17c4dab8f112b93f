"""Property tests: the identities of the pooling family (docs/conventions.md), on every backend and dtype.

Tolerances: a result that chains m sums of products is within m·eps·Σ|terms| of the
exact value; Σ|terms| is the oracle evaluated on |inputs|.
"""

from __future__ import annotations

import numpy as np
from helpers import absolute, oracle_bilinear, oracle_rank1_trace, oracle_rankp, sizes
from hypothesis import given
from hypothesis import strategies as st

import lowrank_pool as lp
from lowrank_pool.testing import assert_close


def _data(s: dict[str, int]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(s["seed"])
    B, n, f, K, P = s["B"], s["n"], s["f"], s["K"], s["P"]
    return {
        "X": rng.standard_normal((B, n, f)),
        "A": rng.standard_normal((f, K)),
        "b": rng.standard_normal(f),
        "AP": rng.standard_normal((f, K, P)),
        "BP": rng.standard_normal((f, K, P)),
        "Bs": rng.standard_normal((f, P)),
        "W": rng.standard_normal((K, f, f)),
    }


@given(s=sizes())
def test_rank1_is_trace_identity(bk, dtype, s):
    """Tr(M b a_kᵀ) = (X a_k)ᵀ(X b) / n with M = XᵀX / n."""
    d = _data(s)
    X, A, b = bk(d["X"], dtype), bk(d["A"], dtype), bk(d["b"], dtype)
    got = lp.rank1_pool(X, A, b)
    terms = 2 * s["f"] + s["n"] + 2
    assert_close(got, oracle_rank1_trace(X, A, b), terms=terms, scale=oracle_rank1_trace(*absolute(X, A, b)), like=got)
    assert got.dtype == X.dtype and type(got) is type(X)


@given(s=sizes())
def test_attention_maps_inner_product_is_rank1(bk, dtype, s):
    d = _data(s)
    X, A, b = bk(d["X"], dtype), bk(d["A"], dtype), bk(d["b"], dtype)
    maps = lp.attention_maps(X, A, b)
    top, bottom = maps
    assert isinstance(maps, lp.AttentionMaps) and maps.top_down is top and maps.bottom_up is bottom
    assert tuple(top.shape) == (s["B"], s["n"], s["K"]) and tuple(bottom.shape) == (s["B"], s["n"])
    inner = bk.xp.sum(top * bottom[..., None], axis=1) / s["n"]
    terms = 2 * s["f"] + s["n"] + 2
    scale = oracle_rank1_trace(*absolute(X, A, b))
    assert_close(inner, oracle_rank1_trace(X, A, b), terms=terms, scale=scale, like=X)
    assert_close(lp.rank1_pool(X, A, b), inner, terms=2 * terms, scale=scale)


@given(s=sizes())
def test_rankp_is_bilinear_of_sum_of_outer_products(bk, dtype, s):
    """Σ_p (X a_kp)ᵀ(X b_kp) / n = ⟨M, Σ_p a_kp b_kpᵀ⟩, per-class and shared bottom-up."""
    d = _data(s)
    X = bk(d["X"], dtype)
    terms = 2 * s["f"] + s["n"] + s["P"] + 2
    for Bm in (d["BP"], d["Bs"]):
        A, B = bk(d["AP"], dtype), bk(Bm, dtype)
        W = np.einsum("ikp,jkp->kij", d["AP"], Bm if Bm.ndim == 3 else np.broadcast_to(Bm[:, None], d["AP"].shape))
        got = lp.rankp_pool(X, A, B)
        scale = oracle_rankp(*absolute(X, A, B))
        assert_close(got, oracle_rankp(X, A, B), terms=terms, scale=scale, like=got)
        # the library's own bilinear_pool on the dense W agrees as well
        dense = lp.bilinear_pool(X, bk(W, dtype))
        assert_close(got, dense, terms=2 * terms + 2 * s["f"], scale=scale)


@given(s=sizes())
def test_rank1_is_rankp_with_p1(bk, dtype, s):
    d = _data(s)
    X, A, b = bk(d["X"], dtype), bk(d["A"], dtype), bk(d["b"], dtype)
    one = lp.rankp_pool(X, bk(d["A"][:, :, None], dtype), bk(d["b"][:, None], dtype))
    scale = oracle_rank1_trace(*absolute(X, A, b))
    assert_close(one, lp.rank1_pool(X, A, b), terms=2 * (2 * s["f"] + s["n"] + 2), scale=scale)


@given(s=sizes())
def test_first_order_is_rank1_with_uniform_bottom_up(bk, dtype, s):
    """With a constant channel in X and b selecting it, X b = 1 and rank-1 = mean pooling 1ᵀ X a_k / n."""
    d = _data(s)
    B, n, f = d["X"].shape
    X1 = np.concatenate([d["X"], np.ones((B, n, 1))], axis=2)
    A1 = np.concatenate([d["A"], np.zeros((1, s["K"]))], axis=0)
    e = np.zeros(f + 1)
    e[-1] = 1.0
    X = bk(d["X"], dtype)
    first = lp.first_order_pool(X, bk(d["A"], dtype))  # reduce="mean", the default
    rank1 = lp.rank1_pool(bk(X1, dtype), bk(A1, dtype), bk(e, dtype))
    scale = np.abs(d["X"]).mean(1) @ np.abs(d["A"])
    assert_close(first, oracle_rank1_trace(X1, A1, e), terms=f + n + 2, scale=scale, like=first)
    assert_close(rank1, first, terms=2 * (2 * f + n + 4), scale=scale)


@given(s=sizes())
def test_only_symmetric_part_of_w_matters(bk, dtype, s):
    d = _data(s)
    X, W = bk(d["X"], dtype), d["W"]
    Ws = (W + W.transpose(0, 2, 1)) / 2
    got, sym = lp.bilinear_pool(X, bk(W, dtype)), lp.bilinear_pool(X, bk(Ws, dtype))
    scale = oracle_bilinear(*absolute(d["X"], W))
    terms = s["n"] + s["f"] ** 2 + 2
    assert_close(got, oracle_bilinear(X, W), terms=terms, scale=scale, like=got)
    assert_close(sym, got, terms=2 * terms, scale=scale)


@given(s=sizes(), data=st.data())
def test_invariant_to_permutation_of_positions(bk, dtype, s, data):
    d = _data(s)
    perm = np.array(data.draw(st.permutations(range(s["n"]))), dtype=np.intp)
    X, Xp = bk(d["X"], dtype), bk(d["X"][:, perm], dtype)
    A, b, W = bk(d["A"], dtype), bk(d["b"], dtype), bk(d["W"], dtype)
    AP, BP = bk(d["AP"], dtype), bk(d["BP"], dtype)
    terms = 4 * (2 * s["f"] + s["n"] + s["P"] + s["f"] ** 2 + 2)
    absx = np.abs(d["X"])
    top_max = (absx @ np.abs(d["A"])).max(1, initial=0.0)
    softmax_scale = top_max * (1 + (absx @ np.abs(d["b"])).max(1, initial=0.0))[:, None]
    cases = [
        (lambda x: lp.rank1_pool(x, A, b), oracle_rank1_trace(*absolute(X, A, b))),
        # a softmax-weighted average of X a: bounded by max_i |X||A|, its weights off by ~|X b|·eps
        (lambda x: lp.rank1_pool(x, A, b, attention="softmax"), softmax_scale),
        (lambda x: lp.rankp_pool(x, AP, BP), oracle_rankp(*absolute(X, AP, BP))),
        (lambda x: lp.bilinear_pool(x, W), oracle_bilinear(*absolute(X, W))),
        (lambda x: lp.first_order_pool(x, A, reduce="max"), np.abs(d["X"]).max(1) @ np.abs(d["A"]) + 1),
        (lambda x: lp.first_order_pool(x, A, reduce="mean"), np.abs(d["X"]).mean(1) @ np.abs(d["A"])),
        (lambda x: lp.first_order_pool(x, A, reduce="sum"), np.abs(d["X"]).sum(1) @ np.abs(d["A"])),
    ]
    for fn, scale in cases:
        assert_close(fn(Xp), fn(X), terms=terms, scale=scale)


@given(s=sizes(), c=st.floats(0.25, 4.0))
def test_second_order_scores_are_quadratic(bk, dtype, s, c):
    """score(cX) = c²·score(X) for every second-order form; c·score(X) for first order."""
    d = _data(s)
    X, Xc = bk(d["X"], dtype), bk(c * d["X"], dtype)
    A, b, W = bk(d["A"], dtype), bk(d["b"], dtype), bk(d["W"], dtype)
    AP, Bs = bk(d["AP"], dtype), bk(d["Bs"], dtype)
    terms = 4 * (2 * s["f"] + s["n"] + s["P"] + s["f"] ** 2 + 4)
    for fn, scale in [
        (lambda x: lp.rank1_pool(x, A, b), oracle_rank1_trace(*absolute(X, A, b))),
        (lambda x: lp.rankp_pool(x, AP, Bs), oracle_rankp(*absolute(X, AP, Bs))),
        (lambda x: lp.bilinear_pool(x, W), oracle_bilinear(*absolute(X, W))),
    ]:
        assert_close(fn(Xc), c**2 * lp.testing.to_numpy(fn(X)), terms=terms, scale=c**2 * scale, like=X)
    first = lp.first_order_pool(X, A)
    scale = np.abs(d["X"]).mean(1) @ np.abs(d["A"])
    assert_close(lp.first_order_pool(Xc, A), c * lp.testing.to_numpy(first), terms=terms, scale=c * scale, like=X)


@given(s=sizes())
def test_gram_is_symmetric_psd_and_matches_oracle(bk, dtype, s):
    d = _data(s)
    X = bk(d["X"], dtype)
    G = lp.gram(X, normalize=None)
    Xa = np.abs(d["X"])
    scale = np.einsum("bni,bnj->bij", Xa, Xa)
    assert_close(G, np.einsum("bni,bnj->bij", d["X"], d["X"]), terms=s["n"] + 1, scale=scale, like=G)
    Gm = lp.gram(X)  # normalize="mean", the package's scale
    assert_close(Gm, lp.testing.to_numpy(G) / s["n"], terms=s["n"] + 2, scale=scale / s["n"], like=G)
    Gn = lp.testing.to_numpy(G)
    if Gn.size:
        assert np.linalg.eigvalsh((Gn + Gn.transpose(0, 2, 1)) / 2).min() >= -(s["n"] + 1) * 1e-6 * scale.max()


@given(s=sizes())
def test_project_channels_is_a_1x1_convolution_and_commutes_with_pooling(bk, dtype, s):
    """Z = X M + 1 cᵀ on every position; first-order pooling of Z is (first-order pooling of X) M + c,
    and the second moment of X M is Mᵀ (XᵀX/n) M (bilinear pooling after a channel reduction)."""
    d = _data(s)
    M, c = d["A"], d["b"][: s["K"]] if s["K"] <= s["f"] else np.resize(d["b"], s["K"])
    X, Mb, cb = bk(d["X"], dtype), bk(M, dtype), bk(c, dtype)
    Z = lp.project_channels(X, Mb, bias=cb)
    assert tuple(Z.shape) == (s["B"], s["n"], s["K"]) and Z.dtype == X.dtype and type(Z) is type(X)
    Xa, Ma = absolute(X, Mb)
    scale = np.einsum("bnf,fk->bnk", Xa, Ma) + np.abs(c)
    assert_close(Z, np.einsum("bnf,fk->bnk", d["X"], M) + c, terms=s["f"] + 2, scale=scale, like=Z)
    # a channels-first map on a spatial grid gives the same numbers, back on its grid with keep_spatial
    grid = bk(np.ascontiguousarray(d["X"].transpose(0, 2, 1)).reshape(s["B"], s["f"], s["n"], 1), dtype)
    Zs = lp.project_channels(grid, Mb, bias=cb, keep_spatial=True)
    assert tuple(Zs.shape) == (s["B"], s["K"], s["n"], 1)
    assert_close(Z, lp.testing.to_numpy(Zs)[..., 0].transpose(0, 2, 1), terms=2 * (s["f"] + 2), scale=scale, like=X)
    # pooling commutes with the projection
    first = lp.first_order_pool(lp.project_channels(X, Mb), bk(np.eye(s["K"]), dtype))
    assert_close(first, d["X"].mean(1) @ M, terms=s["f"] + s["n"] + 3, scale=Xa.mean(1) @ Ma, like=X)
    G = lp.gram(lp.project_channels(X, Mb))
    moment = np.einsum("fi,bfg,gj->bij", M, np.einsum("bnf,bng->bfg", d["X"], d["X"]) / s["n"], M)
    scale2 = np.einsum("fi,bfg,gj->bij", Ma, np.einsum("bnf,bng->bfg", Xa, Xa) / s["n"], Ma)
    assert_close(G, moment, terms=2 * s["f"] + s["n"] + 4, scale=scale2, like=X)
