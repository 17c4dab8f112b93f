"""Tests of lowrank_pool.approx's public names, one class each: cp_approx, tucker_approx, eig_approx,
block_term_approx."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
tl = pytest.importorskip("tensorly")
from cases.errors import ERRORS  # noqa: E402
from cases.factorized import (  # noqa: E402
    FACTOR_ERRORS,
    SMALL,
    _cp,
    _dense_cp,
    _dense_tucker,
    _orthonormal,
    _tucker,
)
from cases.fusion import F, G, K, _inputs, _within_the_fit  # noqa: E402
from contracts import NamedErrorsContract  # noqa: E402
from helpers import (  # noqa: E402
    expect_errors,
)

import lowrank_pool as lp  # noqa: E402
from lowrank_pool.nn import Block  # noqa: E402
from lowrank_pool.testing import assert_close, to_numpy  # noqa: E402


class TestCpApprox(NamedErrorsContract):
    """lowrank_pool.cp_approx."""

    bad_calls = tuple(ERRORS["cp_approx"] + FACTOR_ERRORS["cp_approx"])

    @pytest.mark.parametrize("symmetric", [True, False])
    @given(K=st.integers(1, 6), f=st.integers(2, 10), seed=st.integers(0, 999), data=st.data())
    def test_cp_approx_recovers_an_exact_cp_tensor(self, symmetric, K, f, seed, data):
        """Well-conditioned factors (orthonormal columns, weights 1..R) are recovered to ~1e-12."""
        R = data.draw(st.integers(1, min(K, f, 4)), label="R")
        rng = np.random.default_rng(seed)
        u, a, c = _orthonormal(rng, K, R), _orthonormal(rng, f, R), _orthonormal(rng, f, R)
        w = np.arange(1.0, R + 1)
        W = _dense_cp(w, [u, a, a if symmetric else c])  # a symmetric W when fitting the symmetric part
        cp = lp.cp_approx(W, R, symmetric=symmetric)
        err = np.linalg.norm(lp.to_dense(cp) - W) / np.linalg.norm(W)
        assert err < 1e-10, err

    def test_cp_approx_restarts_get_out_of_a_swamp(self):
        """An ill-conditioned exact rank-3 W where ALS from the SVD start stalls at 2e-2."""
        rng = np.random.default_rng(0)
        w, fac = _cp(rng, 3, 3, 3)
        W = _dense_cp(w, fac)
        stalled = lp.cp_approx(W, 3, symmetric=False)
        assert np.linalg.norm(lp.to_dense(stalled) - W) > 1e-4 * np.linalg.norm(W)
        cp = lp.cp_approx(W, 3, symmetric=False, n_restarts=4, n_iter_max=3000)
        assert np.linalg.norm(lp.to_dense(cp) - W) < 1e-6 * np.linalg.norm(W)

    @pytest.mark.parametrize("backend", ["numpy", "torch"])
    @pytest.mark.parametrize("extra", [1, 2])
    def test_cp_approx_of_a_lower_rank_w(self, backend, extra):
        """W of CP rank 1 asked at rank 1 + extra: ALS's normal equations turn exactly singular (torch's
        solver raised here); the answer is the exact fit with the spare components at weight 0."""
        rng = np.random.default_rng(1)
        u, a = rng.standard_normal(3), rng.standard_normal(4)
        W = np.einsum("k,i,j->kij", u, a, a)
        if backend == "torch":
            torch = pytest.importorskip("torch")
            W = torch.from_numpy(W)
        cp = lp.cp_approx(W, 1 + extra)
        assert tuple(cp.weights.shape) == (1 + extra,)
        dense, want = to_numpy(lp.to_dense(cp)), to_numpy(W)
        assert np.linalg.norm(dense - want) <= 1e-10 * np.linalg.norm(want)
        for factor in cp.factors:  # normalised columns, spare ones too
            norms = np.linalg.norm(to_numpy(factor), axis=0)
            assert_close(norms, np.ones_like(norms), terms=2 * factor.shape[0] + 2, dtype=factor.dtype)

    def test_symmetric_fit_ignores_the_antisymmetric_part(self):
        rng = np.random.default_rng(5)
        w, (u, a, _) = _cp(rng, 4, 6, 3)
        S = _dense_cp(w, [u, a, a])
        N = rng.standard_normal((4, 6, 6))
        W = S + (N - N.transpose(0, 2, 1))  # same scores as S
        x = rng.standard_normal((3, 7, 6))
        assert_close(lp.bilinear_pool(x, W), lp.bilinear_pool(x, S), terms=SMALL, scale="max")
        cp = lp.cp_approx(W, 3)
        fit_error = np.linalg.norm(lp.to_dense(cp) - S)
        assert fit_error < 1e-8 * np.linalg.norm(S)
        # |Δs_bk| = |⟨ΔW_k, M_b⟩| ≤ ‖ΔW‖·‖M_b‖ (Cauchy-Schwarz), plus the rounding of either side
        moments = np.linalg.norm(np.einsum("bni,bnj->bij", x, x) / x.shape[1], axis=(1, 2))
        gap = np.abs(lp.cp_pool(x, cp) - lp.bilinear_pool(x, W))
        assert (gap <= fit_error * moments[:, None] + SMALL * 2.0**-52 * np.abs(lp.bilinear_pool(x, W)).max()).all()
        # fitting all of W at the same rank cannot be exact: the antisymmetric part costs rank
        full = lp.cp_approx(W, 3, symmetric=False)
        assert np.linalg.norm(lp.to_dense(full) - W) > 1e-3 * np.linalg.norm(W)
        tk = lp.tucker_approx(W, (4, 3, 3))
        assert np.linalg.norm(lp.to_dense(tk) - S) < 1e-8 * np.linalg.norm(S)

    def test_fits_report_progress_through_logging(self, caplog):
        """An INFO record when a fit starts and ends (sweeps, seconds, error), a DEBUG record per sweep."""
        import logging

        W = np.random.default_rng(0).standard_normal((4, 6, 6))
        for call, name in [
            (lambda: lp.cp_approx(W, 3, progress=False), "cp_approx"),
            (lambda: lp.tucker_approx(W, 3, progress=False), "tucker_approx"),
            (lambda: lp.eig_approx(W, 3, progress=False), "eig_approx"),
        ]:
            caplog.clear()
            with caplog.at_level(logging.DEBUG, logger="lowrank_pool"):
                call()
            records = [r for r in caplog.records if r.name == "lowrank_pool" and r.getMessage().startswith(name)]
            infos = [r.getMessage() for r in records if r.levelno == logging.INFO]
            steps = [r.getMessage() for r in records if r.levelno == logging.DEBUG]
            assert len(infos) == 2 and "started" in infos[0] and "done" in infos[1], infos
            assert steps and all("error" in m or "class" in m for m in steps), steps
            assert f"{len(steps)} " in infos[1]
        with pytest.raises(lp.ArgumentTypeError, match=r"^progress: expected True, False or None, got str"):
            lp.cp_approx(W, 2, progress="yes")

    def test_memory_of_a_100x512x512_weight_stays_within_a_few_gib(self):
        """eig_approx (streamed) and cp_approx at rank 8 on W (100, 512, 512) float64, peak RSS in a subprocess."""
        if not os.path.exists("/proc/self/clear_refs"):
            pytest.skip("needs Linux /proc to reset the peak RSS")
        code = textwrap.dedent(
            """
        import numpy as np, lowrank_pool as lp
        def kib(field):  # the child's own peak: ru_maxrss can report the parent's resident set
            return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1])
        W = np.random.default_rng(0).standard_normal((100, 512, 512))
        open("/proc/self/clear_refs", "w").write("5")
        base = kib("VmRSS")
        eig = lp.eig_approx(W, 8)
        x = np.random.default_rng(1).standard_normal((4, 49, 512))
        lp.eig_pool(x, eig)
        cp = lp.cp_approx(W, 8, n_iter_max=5)
        lp.cp_pool(x, cp)
        print((kib("VmHWM") - base) / 2**20)
        """
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        extra_gib = float(out.stdout.strip().splitlines()[-1])
        # W itself is 0.2 GiB; the fit holds a few copies of it (symmetric part, unfoldings)
        assert extra_gib < 2.0, f"peak memory beyond W: {extra_gib:.2f} GiB"

    # ----------------------------------------------------------------------------- tensorly's global backend
    def test_fits_ignore_and_keep_the_global_tensorly_backend(self, tmp_path):
        W = np.random.default_rng(0).standard_normal((4, 6, 6))
        before = tl.get_backend()
        try:
            tl.set_backend("pytorch")
            cp, tk = lp.cp_approx(W, 3), lp.tucker_approx(W, 2)
            assert isinstance(cp.weights, np.ndarray) and isinstance(tk.core, np.ndarray)
            assert isinstance(lp.rankp_to_cp(np.ones((3, 2, 1)), np.ones((3, 1))).weights, np.ndarray)
            for name, form in (("cp", cp), ("tucker", tk)):
                back = lp.load_factors(lp.save_factors(tmp_path / name, form))
                assert_close(lp.to_dense(back), lp.to_dense(form), terms=0)  # a file holds the factors exactly
            assert tl.get_backend() == "pytorch"  # untouched
            torch_cp = lp.cp_approx(torch.from_numpy(W), 3)
            assert isinstance(torch_cp.weights, torch.Tensor)
            tl.set_backend("numpy")
            assert isinstance(lp.cp_approx(torch.from_numpy(W), 2).weights, torch.Tensor)
            assert tl.get_backend() == "numpy"
        finally:
            tl.set_backend(before)

    def test_fits_in_two_threads_do_not_interfere(self):
        rng = np.random.default_rng(1)
        inputs = [rng.standard_normal((3, 5, 5)), torch.from_numpy(rng.standard_normal((3, 5, 5)))]
        errors: list[BaseException] = []
        results: dict[int, list[type]] = {0: [], 1: []}

        def work(i: int) -> None:
            try:
                for _ in range(6):
                    results[i].append(type(lp.cp_approx(inputs[i], 2, n_iter_max=30).weights))
                    results[i].append(type(lp.tucker_approx(inputs[i], 2).core))
            except BaseException as err:  # reported below
                errors.append(err)

        before = tl.get_backend()
        threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert set(results[0]) == {np.ndarray} and set(results[1]) == {torch.Tensor}
        assert tl.get_backend() == before

    # ----------------------------------------------------------------------------- sizes
    def test_cp_init_grows_with_the_problem_not_with_k_squared(self):
        """W (20000, 3, 3) is 1.4 MB; the init used to build a 20000x20000 matrix (3 GiB).

        The peak is read from /proc after a reset (ru_maxrss of a child started from a large
        parent can report the parent's resident set, which made this test depend on what ran before).
        """
        if not os.path.exists("/proc/self/clear_refs"):
            pytest.skip("needs Linux /proc to reset the peak RSS")
        code = (
            "import numpy as np, lowrank_pool as lp\n"
            "def kib(field):\n"
            "    return int(next(l for l in open('/proc/self/status') if l.startswith(field)).split()[1])\n"
            "W = np.random.default_rng(0).standard_normal((20000, 3, 3))\n"
            "lp.cp_approx(np.ones((2, 3, 3)), 1, n_iter_max=2)  # imports and one-time buffers\n"
            "open('/proc/self/clear_refs', 'w').write('5'); base = kib('VmRSS')\n"
            "lp.cp_approx(W, 2, n_iter_max=3); lp.tucker_approx(W, (3, 3, 3), n_iter_max=3)\n"
            "print(kib('VmHWM') - base)\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
        peak_mib = int(out.stdout.split()[-1]) / 1024
        assert peak_mib < 100, peak_mib  # W is 1.4 MB; a K×K init would take 3 GiB

    @pytest.mark.parametrize(
        ("kwargs", "exc", "pattern"),
        [
            ({"n_iter_max": -1}, lp.ArgumentError, r"n_iter_max: expected a positive int, got -1"),
            ({"n_iter_max": 2.5}, lp.ArgumentTypeError, r"n_iter_max: expected a positive int, got float"),
            ({"tol": "small"}, lp.ArgumentError, r"tol: expected a finite number >= 0, got 'small'"),
            ({"tol": float("inf")}, lp.ArgumentError, r"tol: expected a finite number >= 0, got inf"),
            ({"random_state": 1.5}, lp.ArgumentTypeError, r"random_state: expected an int or None"),
        ],
    )
    def test_fit_options_are_validated(self, kwargs, exc, pattern):
        W = np.ones((2, 3, 3))
        for fit in (lp.cp_approx, lp.tucker_approx):
            with pytest.raises(exc, match=pattern):
                fit(W, 2, **kwargs)
        assert lp.cp_approx(W, np.int64(2)).rank == 2  # numpy integers are ints

    # ----------------------------------------------------------------------------- weights at any scale
    @pytest.mark.filterwarnings("ignore::RuntimeWarning")
    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    @pytest.mark.parametrize("fit", ["cp", "tucker", "eig"])
    def test_fits_are_scale_equivariant_over_the_dtype_range(self, dtype, fit):
        """fit(W · s) = fit(W) · s for s over the dtype's whole range (the norm of W · 1e-170 underflows, that of
        float32 W · 1e20 overflows): never a zero form for a nonzero W, never an error about an internal rank."""
        rng = np.random.default_rng(3)
        W = rng.standard_normal((3, 5, 5)).astype(dtype)
        if fit == "cp":
            # an exact rank-3 W, where ALS converges: a W of higher rank stops early on a slowly moving
            # path, and two runs that differ by W's rounding at a scale part by more than rounding
            q = [np.linalg.qr(rng.standard_normal((m, 3)))[0] for m in (3, 5)]
            W = np.einsum("r,kr,ir,jr->kij", np.arange(1.0, 4.0), q[0], q[1], q[1]).astype(dtype)
        approx = {
            "cp": lambda w: lp.to_dense(lp.cp_approx(w, 3)),
            "tucker": lambda w: lp.to_dense(lp.tucker_approx(w, 3)),
            "eig": lambda w: lp.to_dense(lp.eig_approx(w, 3)),
        }[fit]
        ref = approx(W).astype(np.float64)
        info = np.finfo(dtype)
        scales = [2.0**e for e in range(int(np.log2(info.tiny)) + 8, int(np.log2(info.max)) - 8, 37)]
        scales += [1e-170, 1e-160, 1e170] if dtype == np.float64 else [1e-25, 1e-30, 1e20, 1e30]
        for s in scales:
            got = approx((W.astype(np.float64) * s).astype(dtype)).astype(np.float64) / s
            assert np.isfinite(got).all(), (fit, s)
            # the same fit up to the rounding of W · s (ALS: a few sweeps' worth of the dtype's precision)
            assert np.abs(got - ref).max() <= 1e3 * info.eps * np.abs(ref).max() + 1e-2 * (dtype == np.float32), (
                fit,
                s,
            )

    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    def test_an_early_stopped_cp_fit_has_the_same_error_at_every_scale(self, dtype):
        """W of higher CP rank than asked: ALS stops on its stall rule; at any scale it stops after the same
        number of sweeps, with the same relative error (to the dtype's rounding)."""
        W = np.random.default_rng(3).standard_normal((3, 5, 5)).astype(dtype)
        info = np.finfo(dtype)

        def error(scale):
            w = (W.astype(np.float64) * scale).astype(dtype)
            got = lp.to_dense(lp.cp_approx(w, 3)).astype(np.float64) / scale
            sym = (w.astype(np.float64) + w.transpose(0, 2, 1)) / 2 / scale
            return np.linalg.norm(got - sym) / np.linalg.norm(sym)

        ref = error(1.0)
        for s in [1e-170, 1e-160, 1e170, 2.0**-900] if dtype == np.float64 else [1e-25, 1e-30, 1e20, 1e30, 2.0**-100]:
            assert abs(error(s) - ref) <= 1e3 * info.eps, (s, error(s), ref)


class TestTuckerApprox(NamedErrorsContract):
    """lowrank_pool.tucker_approx."""

    bad_calls = tuple(ERRORS["tucker_approx"] + FACTOR_ERRORS["tucker_approx"])

    @given(K=st.integers(1, 6), f=st.integers(2, 10), seed=st.integers(0, 999), data=st.data())
    def test_tucker_approx_recovers_an_exact_tucker_tensor(self, K, f, seed, data):
        rng = np.random.default_rng(seed)
        r = (data.draw(st.integers(1, K)), data.draw(st.integers(1, f)), data.draw(st.integers(1, f)))
        r = (min(r[0], r[1] * r[2]), min(r[1], r[0] * r[2]), min(r[2], r[0] * r[1]))
        r = (min(r[0], r[1] * r[2]), min(r[1], r[0] * r[2]), min(r[2], r[0] * r[1]))  # valid multilinear ranks
        core, fac = _tucker(rng, K, f, r)
        W = _dense_tucker(core, fac)
        tk = lp.tucker_approx(W, r, symmetric=False)
        assert np.linalg.norm(lp.to_dense(tk) - W) <= 1e-10 * np.linalg.norm(W)

    @pytest.mark.parametrize("fit", ["cp", "tucker"])
    @given(K=st.integers(1, 5), f=st.integers(2, 9), seed=st.integers(0, 999))
    @example(K=3, f=2, seed=503)  # a stalled ALS whose stop moved by a sweep between libraries
    def test_fits_agree_across_libraries(self, bk, fit, K, f, seed):
        """The same ALS / HOOI runs on every library's arrays (numpy, torch, array_api_strict, JAX, CuPy), in the
        input's library: a fit that converges (HOOI; CP of an exact rank-2 W) gives numpy's to float64 rounding,
        and on a W of higher rank the same sweeps give the same error. (Where ALS stops on its stall rule, a
        rounding-level difference can move the stop, or an extrapolation's acceptance, by a sweep: the
        fixed-sweep runs are the comparison that holds.)"""
        rng = np.random.default_rng(seed)
        W = rng.standard_normal((K, f, f))
        S = (W + W.transpose(0, 2, 1)) / 2
        if fit == "tucker":
            ref, got = lp.to_dense(lp.tucker_approx(W, 2)), lp.to_dense(lp.tucker_approx(bk(W), 2))
            assert type(got) is type(bk(W))
            assert np.abs(to_numpy(got) - ref).max() <= 1e-9 * np.abs(ref).max()
            return
        r = min(2, K, f)
        u, a = _orthonormal(rng, K, r), _orthonormal(rng, f, r)
        exact = _dense_cp(np.arange(1.0, r + 1), [u, a, a])
        got = lp.to_dense(lp.cp_approx(bk(exact), r))
        assert type(got) is type(bk(exact))
        assert np.abs(to_numpy(got) - lp.to_dense(lp.cp_approx(exact, r))).max() <= 1e-9

        def error(dense):
            return np.linalg.norm(to_numpy(dense) - S) / np.linalg.norm(S)

        # five sweeps (extrapolation starts at the sixth), no stopping rule: the same arithmetic in each library
        fixed = {"n_iter_max": 5, "tol": 0.0, "stall": 0.0}
        want = error(lp.to_dense(lp.cp_approx(W, 2, **fixed)))
        assert abs(error(lp.to_dense(lp.cp_approx(bk(W), 2, **fixed))) - want) <= 1e-9 * max(want, 1e-3)

    @pytest.mark.parametrize("symmetric", [True, False])
    def test_fits_reach_tensorlys_error_at_the_same_rank(self, symmetric):
        """The three-way ALS and HOOI reach at least the fit of tensorly's parafac and tucker at the same rank
        and stopping tolerance (same starts: the leading subspaces of the unfoldings)."""
        from tensorly.decomposition import parafac, tucker

        rng = np.random.default_rng(1)
        W = rng.standard_normal((6, 9, 9)) + _dense_cp(*_cp(rng, 6, 9, 3))
        T = (W + W.transpose(0, 2, 1)) / 2 if symmetric else W

        def err(dense):
            return np.linalg.norm(dense - T) / np.linalg.norm(T)

        ours = err(lp.to_dense(lp.cp_approx(W, 4, symmetric=symmetric, stall=1e-12, n_iter_max=3000)))
        theirs = err(lp.to_dense(parafac(T, 4, init="svd", n_iter_max=3000, tol=1e-12)))
        assert ours <= theirs + 1e-6, (ours, theirs)
        ours = err(lp.to_dense(lp.tucker_approx(W, (3, 4, 4), symmetric=symmetric, tol=1e-12)))
        theirs = err(lp.to_dense(tucker(T, [3, 4, 4], init="svd", n_iter_max=300, tol=1e-12)))
        assert ours <= theirs + 1e-9, (ours, theirs)

    def test_zero_and_antisymmetric_weights_fit_exactly(self):
        W = np.random.default_rng(2).standard_normal((3, 4, 4))
        for target in (np.zeros((3, 4, 4)), W - W.transpose(0, 2, 1)):
            cp = lp.cp_approx(target, 2)
            tk = lp.tucker_approx(target, 2)
            assert np.array_equal(lp.to_dense(cp), np.zeros((3, 4, 4)))
            assert np.array_equal(lp.to_dense(tk), np.zeros((3, 4, 4)))
            assert np.all(np.isfinite(lp.cp_pool(np.ones((1, 2, 4)), cp)))


class TestEigApprox(NamedErrorsContract):
    """lowrank_pool.eig_approx."""

    bad_calls = tuple(ERRORS["eig_approx"] + FACTOR_ERRORS["eig_approx"])

    @given(K=st.integers(1, 4), f=st.integers(1, 9), seed=st.integers(0, 999))
    def test_eig_approx_is_the_eckart_young_optimum(self, bk, K, f, seed):
        W = np.random.default_rng(seed).standard_normal((K, f, f))
        S = (W + W.transpose(0, 2, 1)) / 2
        mu = np.linalg.eigvalsh(S)
        energy = np.sort(mu**2, axis=1)[:, ::-1]
        errors = []
        for P in range(1, f + 1):
            approx = to_numpy(lp.to_dense(lp.eig_approx(bk(W), P)))
            err = np.linalg.norm(approx - S)
            optimum = np.sqrt(energy[:, P:].sum())
            assert abs(err - optimum) <= 1e-10 * np.linalg.norm(S) * f
            errors.append(err)
        assert all(e1 >= e2 - 1e-12 for e1, e2 in itertools.pairwise(errors))
        assert errors[-1] <= 1e-12 * f * np.linalg.norm(S)

    @pytest.mark.parametrize("P", [1, 2, 3])
    def test_eig_approx_partial_decomposition_matches_the_full_one(self, P):
        """numpy at 32·P <= f takes scipy's partial eigh (largest and smallest P): same truncation as the full eigh."""
        torch = pytest.importorskip("torch")
        rng = np.random.default_rng(P)
        W = rng.standard_normal((3, 96, 96))
        W[1] -= 8 * np.eye(96)[None, 0]  # a dominant negative eigenvalue in class 1
        part = lp.eig_approx(W, P)  # numpy: partial path
        full = lp.eig_approx(torch.from_numpy(W), P)  # torch: full eigh
        # both are backward stable: eigenvalues within f·eps·‖W_k‖₂ of each other (Weyl), the P-term truncations
        # within f·eps·‖W_k‖₂ / gap (Davis-Kahan; these gaps are ≥ 1/f·‖W_k‖₂)
        norm2 = np.linalg.norm(W, 2, axis=(1, 2))
        assert_close(part.eigenvalues, full.eigenvalues.numpy(), terms=4 * 96, scale=norm2[:, None])
        assert_close(lp.to_dense(part), lp.to_dense(full).numpy(), terms=4 * 96 * 96, scale=norm2[:, None, None])
        prof = lp.rank_profile(W, [P], progress=False)
        S = (W + W.transpose(0, 2, 1)) / 2
        err = np.linalg.norm(lp.to_dense(part) - S) / np.linalg.norm(S)
        assert abs(prof.errors[0] - err) < 1e-9

    def test_eig_approx_streams_a_sequence_of_classes(self):
        W = np.random.default_rng(0).standard_normal((3, 5, 5))
        a, b = lp.eig_approx(W, 2), lp.eig_approx([W[0], W[1], W[2]], 2)
        assert_close(a.eigenvalues, b.eigenvalues, terms=0)  # the same eigh on the same class: equal
        assert_close(np.abs(a.eigenvectors), np.abs(b.eigenvectors), terms=0)

    def test_approximations_keep_the_torch_library_and_dtype(self):
        torch = pytest.importorskip("torch")
        W = torch.randn(3, 6, 6, dtype=torch.float32, requires_grad=True)
        for approx in (lp.cp_approx(W, 2), lp.tucker_approx(W, 2), lp.eig_approx(W, 2)):
            leaves = [approx[0], *approx[1]] if not isinstance(approx, lp.EigTensor) else list(approx)
            assert all(isinstance(t, torch.Tensor) and t.dtype == torch.float32 for t in leaves)
        x = torch.randn(2, 4, 6)
        cp = lp.cp_approx(W, 6)
        # float32: n = 4 positions, f = 6 channels, rank 6
        assert_close(lp.cp_pool(x, cp), lp.bilinear_pool(x, lp.to_dense(cp)), terms=SMALL, scale="max")

    def test_half_precision_weights_fit_in_float32(self):
        W = torch.randn(3, 5, 5, generator=torch.Generator().manual_seed(0))
        for half in (torch.float16, torch.bfloat16):
            assert lp.cp_approx(W.to(half), 2).weights.dtype == torch.float32
            assert lp.tucker_approx(W.to(half), 2).core.dtype == torch.float32
            assert lp.eig_approx(W.to(half).float(), 2).eigenvalues.dtype == torch.float32


class TestBlockTermApprox:
    """lowrank_pool.block_term_approx (and Block.from_dense, which holds its fit)."""

    def test_block_term_fit_and_block_from_dense(self):
        """block_term_approx recovers a W that is a sum of small Tuckers (bad arguments refused by name);
        Block.from_dense holds the fit and scores like bilinear_pool(x, W, Y=y)."""
        g = torch.Generator().manual_seed(5)

        def term():
            core = torch.randn(1, 2, 2, generator=g, dtype=torch.float64)
            return torch.einsum("qrs,kq,fr,gs->kfg", core, *(torch.randn(m, r, generator=g, dtype=torch.float64)
                                                              for m, r in ((K, 1), (F, 2), (G, 2))))  # fmt: skip

        w = term() + term()
        layer = Block.from_dense(w, (1, 2, 2), blocks=2, fit={"n_iter_max": 4000, "tol": 1e-15})
        p = {k: v.detach() for k, v in layer.named_parameters()}
        fitted = sum(
            torch.einsum(
                "qrs,kq,fr,gs->kfg", p["core"][i], p["U"][i], p["A"][:, 2 * i : 2 * i + 2], p["C"][:, 2 * i : 2 * i + 2]
            )
            for i in range(2)
        )
        assert (fitted - w).norm() / w.norm() < 1e-6
        x, y = _inputs("vectors")
        _within_the_fit(layer, w, x, y)
        one = lp.block_term_approx(w, 1, (1, 2, 2))
        assert len(one) == 1 and (lp.to_dense(one[0]) - w).norm() / w.norm() > 1e-3  # one block cannot hold two
        expect_errors(
            [
                (lambda: lp.block_term_approx(w, 0, 2), lp.ArgumentError, r"^blocks"),
                (lambda: lp.block_term_approx(w, 2, (4, 2, 2)), lp.ArgumentError, r"^rank"),
                (lambda: lp.block_term_approx(w[0], 2, 2), lp.ShapeError, r"^W"),
            ]
        )
