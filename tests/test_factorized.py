"""Tests of lowrank_pool.factorized's public names, one class each: cp_pool, tucker_pool, eig_pool, pool_cost,
to_dense, rankp_to_cp, cp_to_rankp (and the EigTensor / RankP forms)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from cases.errors import ERRORS
from cases.factorized import (
    FACTOR_ERRORS,
    PATHS,
    SMALL,
    _cp,
    _dense_cp,
    _dense_tucker,
    _tucker,
    _x,
    factor_sizes,
)
from contracts import (
    NamedErrorsContract,
    PoolingFunctionContract,
)
from helpers import (
    absolute,
    oracle_bilinear,
)
from hypothesis import given
from hypothesis import strategies as st

import lowrank_pool as lp
from lowrank_pool.testing import assert_close, to_numpy


class TestCpPool(PoolingFunctionContract, NamedErrorsContract):
    """lowrank_pool.cp_pool."""

    variants = ("cp",)

    bad_calls = tuple(ERRORS["cp_pool"] + FACTOR_ERRORS["cp_pool"])

    @given(s=factor_sizes)
    def test_cp_pool_equals_dense_bilinear(self, bk, dtype, s):
        rng = np.random.default_rng(s["seed"])
        x, X, ax = _x(bk, dtype, s, rng)
        w, fac = _cp(rng, s["K"], s["f"], s["R"])
        W = _dense_cp(w, fac)
        cp = (bk(w, dtype), [bk(a, dtype) for a in fac])
        scale = oracle_bilinear(np.abs(x), np.einsum("r,kr,ir,jr->kij", *absolute(w, *fac)))
        terms = 2 * (s["n"] + s["f"] ** 2 + s["R"] + 4)
        for path in PATHS:
            got = lp.cp_pool(X, cp, path=path, channel_axis=ax)
            assert_close(got, oracle_bilinear(x, W), terms=terms, scale=scale, like=X)

    def test_tensorly_objects_are_accepted(self):
        from tensorly.cp_tensor import CPTensor
        from tensorly.tucker_tensor import TuckerTensor

        rng = np.random.default_rng(0)
        x = rng.standard_normal((2, 5, 4))
        w, fac = _cp(rng, 3, 4, 2)
        for cp in (CPTensor((w, fac)), (w, fac), [w, fac]):
            assert_close(lp.cp_pool(x, cp), oracle_bilinear(x, _dense_cp(w, fac)), terms=SMALL, scale="max")
        assert_close(
            lp.cp_pool(x, (None, fac)), oracle_bilinear(x, _dense_cp(np.ones(2), fac)), terms=SMALL, scale="max"
        )
        core, tf = _tucker(rng, 3, 4, (2, 2, 3))
        want = oracle_bilinear(x, _dense_tucker(core, tf))
        assert_close(lp.tucker_pool(x, TuckerTensor((core, tf))), want, terms=SMALL, scale="max")

    @pytest.mark.parametrize("head", ["cp", "tucker", "eig", "project_channels"])
    def test_training_on_nchw_maps_makes_no_copy_of_x(self, head):
        """fwd+bwd of a factorised head on an NCHW tensor with trainable factors: ∂X plus
        small buffers, no (B, n, f) copy of X saved for backward nor a transposed ∂X copied
        back to X's layout (that was 2.3 X of extra peak memory; now 1.3 X); inference under
        no_grad with the same factors copies nothing either (project_channels, handed the
        parameter itself, copied X there: 1 X)."""
        pytest.importorskip("torch")
        if not os.path.exists("/proc/self/clear_refs"):
            pytest.skip("needs Linux /proc to reset the peak RSS")
        code = textwrap.dedent(
            f"""
        import torch, lowrank_pool as lp
        def kib(field):
            return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1])
        torch.manual_seed(0)
        f, R, K = 1024, 32, 10
        X = torch.randn(16, f, 28, 28, requires_grad=True)
        p = lambda *s: torch.randn(*s, requires_grad=True)
        calls = {{
            "cp": lambda x: lp.cp_pool(x, (None, [p(K, R), p(f, R), p(f, R)]), path="factorized"),
            "tucker": lambda x: lp.tucker_pool(x, (p(R, R, R), [p(K, R), p(f, R), p(f, R)]), path="factorized"),
            "eig": lambda x: lp.eig_pool(x, (p(K, 4), p(f, K, 4)), path="factorized"),
            "project_channels": lambda x: lp.project_channels(x, p(f, 2 * R)),
        }}
        call = calls["{head}"]
        call(X[:2].detach()).sum().backward()
        size = X.numel() * X.element_size()
        open("/proc/self/clear_refs", "w").write("5")
        base = kib("VmRSS")
        with torch.no_grad():  # inference with trainable factors: torch.matmul's fold copied X here too
            call(X)
        print((kib("VmHWM") - base) * 1024 / size)
        open("/proc/self/clear_refs", "w").write("5")
        base = kib("VmRSS")
        call(X).sum().backward()
        print((kib("VmHWM") - base) * 1024 / size)
        """
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        inference, extra = (float(v) for v in out.stdout.strip().splitlines()[-2:])
        assert inference < 0.5, f"peak memory of inference beyond the inputs: {inference:.2f} X"
        assert extra < 1.7, f"peak memory of fwd+bwd beyond the inputs: {extra:.2f} X"


class TestTuckerPool(PoolingFunctionContract, NamedErrorsContract):
    """lowrank_pool.tucker_pool."""

    variants = ("tucker",)

    bad_calls = tuple(ERRORS["tucker_pool"] + FACTOR_ERRORS["tucker_pool"])

    @given(s=factor_sizes, ranks=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)))
    def test_tucker_pool_equals_dense_bilinear(self, bk, dtype, s, ranks):
        rng = np.random.default_rng(s["seed"])
        x, X, ax = _x(bk, dtype, s, rng)
        core, fac = _tucker(rng, s["K"], s["f"], ranks)
        W = _dense_tucker(core, fac)
        tk = (bk(core, dtype), [bk(a, dtype) for a in fac])
        scale = oracle_bilinear(np.abs(x), np.einsum("qrs,kq,ir,js->kij", *absolute(core, *fac)))
        terms = 2 * (s["n"] + s["f"] ** 2 + 27 + 4)
        for path in PATHS:
            got = lp.tucker_pool(X, tk, path=path, channel_axis=ax)
            assert_close(got, oracle_bilinear(x, W), terms=terms, scale=scale, like=X)


class TestEigPool(PoolingFunctionContract, NamedErrorsContract):
    """lowrank_pool.eig_pool (and EigTensor)."""

    variants = ("eig",)

    bad_calls = tuple(ERRORS["eig_pool"] + FACTOR_ERRORS["eig_pool"])

    @given(s=factor_sizes)
    def test_eig_pool_equals_dense_bilinear(self, bk, dtype, s):
        rng = np.random.default_rng(s["seed"])
        x, X, ax = _x(bk, dtype, s, rng)
        P = min(s["R"], s["f"])
        W = rng.standard_normal((s["K"], s["f"], s["f"]))
        eig = lp.eig_approx(bk(W, dtype), P)
        assert tuple(eig.eigenvalues.shape) == (s["K"], P) and tuple(eig.eigenvectors.shape) == (s["f"], s["K"], P)
        dense = lp.to_dense(eig)
        got = lp.eig_pool(X, eig, channel_axis=ax)
        scale = oracle_bilinear(np.abs(x), np.abs(to_numpy(dense))) + oracle_bilinear(np.abs(x), np.abs(W))
        assert_close(
            got, oracle_bilinear(x, to_numpy(dense)), terms=2 * (s["n"] + s["f"] ** 2 + 4), scale=scale, like=X
        )
        # the same form through rankp_pool: A = V·μ, B = V
        rp = lp.rankp_pool(X, eig.eigenvectors * eig.eigenvalues[None, ...], eig.eigenvectors, channel_axis=ax)
        assert_close(rp, got, terms=4 * (s["n"] + s["f"] ** 2 + 4), scale=scale)


class TestRankpToCp(NamedErrorsContract):
    """lowrank_pool.rankp_to_cp and to_dense of both forms."""

    bad_calls = tuple(ERRORS["rankp_to_cp"])

    # ------------------------------------------------------------------ conversions
    @given(
        K=st.integers(1, 3), f=st.integers(1, 6), P=st.integers(1, 3), shared=st.booleans(), seed=st.integers(0, 999)
    )
    def test_rankp_and_cp_convert_both_ways(self, bk, K, f, P, shared, seed):
        rng = np.random.default_rng(seed)
        A = bk(rng.standard_normal((f, K, P)))
        B = bk(rng.standard_normal((f, P) if shared else (f, K, P)))
        x = bk(rng.standard_normal((2, 5, f)))
        ref = to_numpy(lp.rankp_pool(x, A, B))
        cp = lp.rankp_to_cp(A, B)
        assert_close(lp.cp_pool(x, cp), ref, terms=SMALL, scale="max", like=x)
        assert_close(lp.to_dense(cp), lp.to_dense(lp.RankP(A, B)), terms=2 * (K * P + 2), scale="max")
        back = lp.cp_to_rankp(cp)
        assert_close(lp.rankp_pool(x, back.A, back.B), ref, terms=SMALL, scale="max", like=x)


class TestCpToRankp:
    """lowrank_pool.cp_to_rankp (and RankP)."""

    def test_factor_forms_round_trip_through_each_other(self, tmp_path):
        rng = np.random.default_rng(3)
        x = rng.standard_normal((2, 5, 4))
        cp = _cp(rng, 3, 4, 2)
        ref = lp.cp_pool(x, cp)
        rp = lp.cp_to_rankp(cp)
        assert isinstance(rp, lp.RankP)
        again = lp.rankp_to_cp(rp)  # a RankP goes back without unpacking
        for form in (again, lp.rankp_to_cp(*rp), lp.rankp_to_cp(lp.cp_to_rankp(again))):
            assert_close(lp.cp_pool(x, form), ref, terms=SMALL, scale="max")
        # files: the suffix numpy appends is found again, and the path written is returned
        written = lp.save_factors(tmp_path / "head", rp)
        assert written == str(tmp_path / "head.npz")
        for name in ("head", "head.npz"):
            back = lp.load_factors(tmp_path / name)
            assert isinstance(back, lp.RankP)
            assert_close(lp.rankp_pool(x, *back), ref, terms=SMALL, scale="max")
        # eig_pool has the three paths of the other forms, with the same scores
        eig = lp.eig_approx(rng.standard_normal((3, 4, 4)), 3)
        scores = [lp.eig_pool(x, eig, path=p) for p in PATHS]
        for s in [*scores, lp.bilinear_pool(x, lp.to_dense(eig))]:
            assert_close(s, scores[0], terms=SMALL, scale="max")


class TestPoolCost(NamedErrorsContract):
    """lowrank_pool.pool_cost: the cost model the auto path follows."""

    bad_calls = tuple(ERRORS["pool_cost"])

    # ------------------------------------------------------------------ cost model
    def test_auto_path_follows_the_measured_crossover(self):
        big_f = lp.pool_cost("cp", batch=32, positions=196, channels=512, classes=100, ranks=(16, 16, 16))
        assert big_f["factorized"] < big_f["dense"] / 10
        small_f = lp.pool_cost("cp", batch=32, positions=4096, channels=128, classes=10, ranks=(64, 64, 64))
        assert small_f["dense"] < small_f["factorized"]


class TestToDense(NamedErrorsContract):
    """lowrank_pool.ToDense."""

    bad_calls = tuple(ERRORS["to_dense"] + FACTOR_ERRORS["to_dense"])
