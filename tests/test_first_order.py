"""Tests of lowrank_pool.first_order's public names, one class each: first_order_pool and project_channels."""

from __future__ import annotations

import numpy as np
from cases.errors import ERRORS
from cases.identities import _data
from contracts import (
    IdentityContract,
    NamedErrorsContract,
    PoolingFunctionContract,
)
from helpers import (
    absolute,
    oracle_rank1_trace,
    sizes,
)
from hypothesis import given

import lowrank_pool as lp
from lowrank_pool.testing import assert_close


class TestFirstOrderPool(PoolingFunctionContract, NamedErrorsContract, IdentityContract):
    """lowrank_pool.first_order_pool: mean, sum or max pooling, then A."""

    variants = (
        "first_mean",
        "first_sum",
        "first_max",
    )

    bad_calls = tuple(ERRORS["first_order_pool"])

    permutation_cases = ("first_max", "first_mean", "first_sum")
    homogeneous_cases = ("first_mean",)

    @given(s=sizes())
    def test_first_order_is_rank1_with_uniform_bottom_up(self, bk, dtype, s):
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


class TestProjectChannels(PoolingFunctionContract):
    """lowrank_pool.project_channels: a 1×1 convolution of the feature map."""

    variants = ("projection",)

    @given(s=sizes())
    def test_project_channels_is_a_1x1_convolution_and_commutes_with_pooling(self, bk, dtype, s):
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
