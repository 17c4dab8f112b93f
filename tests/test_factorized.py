"""CP / Tucker / eigen forms: pooling from factors, approximations, conversions, files."""

from __future__ import annotations

import itertools
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import absolute, oracle_bilinear
from hypothesis import example, given
from hypothesis import strategies as st

import lowrank_pool as lp
from lowrank_pool.testing import assert_close, to_numpy

PATHS = ["factorized", "dense", "auto"]
# float64 scores of the small fixed problems below (n ≤ 7 positions, f ≤ 6 channels, rank ≤ 6) computed two ways:
# each a chain of at most n + f² + R + 4 roundings, both sides rounding; compared normwise
SMALL = 2 * (7 + 6 * 6 + 6 + 4)


def _cp(rng, K, f, R):
    return rng.standard_normal(R), [
        rng.standard_normal((K, R)),
        rng.standard_normal((f, R)),
        rng.standard_normal((f, R)),
    ]


def _tucker(rng, K, f, r):
    core = rng.standard_normal(r)
    return core, [rng.standard_normal((K, r[0])), rng.standard_normal((f, r[1])), rng.standard_normal((f, r[2]))]


def _dense_cp(w, fac):
    return np.einsum("r,kr,ir,jr->kij", w, *fac)


def _dense_tucker(core, fac):
    return np.einsum("qrs,kq,ir,js->kij", core, *fac)


sizes = st.fixed_dictionaries(
    {
        "B": st.integers(0, 3),
        "n": st.integers(1, 8),
        "f": st.integers(1, 7),
        "K": st.integers(1, 4),
        "R": st.integers(1, 5),
        "seed": st.integers(0, 2**32 - 1),
        "nchw": st.booleans(),
    }
)


def _x(bk, dtype, s, rng):
    x = rng.standard_normal((s["B"], s["n"], s["f"]))
    if s["nchw"]:  # (B, f, n, 1) with channel_axis=1
        return x, bk(np.ascontiguousarray(np.swapaxes(x, 1, 2))[..., None], dtype), 1
    return x, bk(x, dtype), -1


@given(s=sizes)
def test_cp_pool_equals_dense_bilinear(bk, dtype, s):
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


@given(s=sizes, ranks=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)))
def test_tucker_pool_equals_dense_bilinear(bk, dtype, s, ranks):
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


@given(s=sizes)
def test_eig_pool_equals_dense_bilinear(bk, dtype, s):
    rng = np.random.default_rng(s["seed"])
    x, X, ax = _x(bk, dtype, s, rng)
    P = min(s["R"], s["f"])
    W = rng.standard_normal((s["K"], s["f"], s["f"]))
    eig = lp.eig_approx(bk(W, dtype), P)
    assert tuple(eig.eigenvalues.shape) == (s["K"], P) and tuple(eig.eigenvectors.shape) == (s["f"], s["K"], P)
    dense = lp.to_dense(eig)
    got = lp.eig_pool(X, eig, channel_axis=ax)
    scale = oracle_bilinear(np.abs(x), np.abs(to_numpy(dense))) + oracle_bilinear(np.abs(x), np.abs(W))
    assert_close(got, oracle_bilinear(x, to_numpy(dense)), terms=2 * (s["n"] + s["f"] ** 2 + 4), scale=scale, like=X)
    # the same form through rankp_pool: A = V·μ, B = V
    rp = lp.rankp_pool(X, eig.eigenvectors * eig.eigenvalues[None, ...], eig.eigenvectors, channel_axis=ax)
    assert_close(rp, got, terms=4 * (s["n"] + s["f"] ** 2 + 4), scale=scale)


def test_tensorly_objects_are_accepted():
    from tensorly.cp_tensor import CPTensor
    from tensorly.tucker_tensor import TuckerTensor

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 4))
    w, fac = _cp(rng, 3, 4, 2)
    for cp in (CPTensor((w, fac)), (w, fac), [w, fac]):
        assert_close(lp.cp_pool(x, cp), oracle_bilinear(x, _dense_cp(w, fac)), terms=SMALL, scale="max")
    assert_close(lp.cp_pool(x, (None, fac)), oracle_bilinear(x, _dense_cp(np.ones(2), fac)), terms=SMALL, scale="max")
    core, tf = _tucker(rng, 3, 4, (2, 2, 3))
    want = oracle_bilinear(x, _dense_tucker(core, tf))
    assert_close(lp.tucker_pool(x, TuckerTensor((core, tf))), want, terms=SMALL, scale="max")


# ------------------------------------------------------------------ approximations
def _orthonormal(rng, rows, cols):
    q, _ = np.linalg.qr(rng.standard_normal((rows, cols)))
    return q


@pytest.mark.parametrize("symmetric", [True, False])
@given(K=st.integers(1, 6), f=st.integers(2, 10), seed=st.integers(0, 999), data=st.data())
def test_cp_approx_recovers_an_exact_cp_tensor(symmetric, K, f, seed, data):
    """Well-conditioned factors (orthonormal columns, weights 1..R) are recovered to ~1e-12."""
    R = data.draw(st.integers(1, min(K, f, 4)), label="R")
    rng = np.random.default_rng(seed)
    u, a, c = _orthonormal(rng, K, R), _orthonormal(rng, f, R), _orthonormal(rng, f, R)
    w = np.arange(1.0, R + 1)
    W = _dense_cp(w, [u, a, a if symmetric else c])  # a symmetric W when fitting the symmetric part
    cp = lp.cp_approx(W, R, symmetric=symmetric)
    err = np.linalg.norm(lp.to_dense(cp) - W) / np.linalg.norm(W)
    assert err < 1e-10, err


def test_cp_approx_restarts_get_out_of_a_swamp():
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
def test_cp_approx_of_a_lower_rank_w(backend, extra):
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


@given(K=st.integers(1, 6), f=st.integers(2, 10), seed=st.integers(0, 999), data=st.data())
def test_tucker_approx_recovers_an_exact_tucker_tensor(K, f, seed, data):
    rng = np.random.default_rng(seed)
    r = (data.draw(st.integers(1, K)), data.draw(st.integers(1, f)), data.draw(st.integers(1, f)))
    r = (min(r[0], r[1] * r[2]), min(r[1], r[0] * r[2]), min(r[2], r[0] * r[1]))
    r = (min(r[0], r[1] * r[2]), min(r[1], r[0] * r[2]), min(r[2], r[0] * r[1]))  # valid multilinear ranks
    core, fac = _tucker(rng, K, f, r)
    W = _dense_tucker(core, fac)
    tk = lp.tucker_approx(W, r, symmetric=False)
    assert np.linalg.norm(lp.to_dense(tk) - W) <= 1e-10 * np.linalg.norm(W)


def test_symmetric_fit_ignores_the_antisymmetric_part():
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


@given(K=st.integers(1, 4), f=st.integers(1, 9), seed=st.integers(0, 999))
def test_eig_approx_is_the_eckart_young_optimum(bk, K, f, seed):
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
def test_eig_approx_partial_decomposition_matches_the_full_one(P):
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


def test_eig_approx_streams_a_sequence_of_classes():
    W = np.random.default_rng(0).standard_normal((3, 5, 5))
    a, b = lp.eig_approx(W, 2), lp.eig_approx([W[0], W[1], W[2]], 2)
    assert_close(a.eigenvalues, b.eigenvalues, terms=0)  # the same eigh on the same class: equal
    assert_close(np.abs(a.eigenvectors), np.abs(b.eigenvectors), terms=0)


def test_approximations_keep_the_torch_library_and_dtype():
    torch = pytest.importorskip("torch")
    W = torch.randn(3, 6, 6, dtype=torch.float32, requires_grad=True)
    for approx in (lp.cp_approx(W, 2), lp.tucker_approx(W, 2), lp.eig_approx(W, 2)):
        leaves = [approx[0], *approx[1]] if not isinstance(approx, lp.EigTensor) else list(approx)
        assert all(isinstance(t, torch.Tensor) and t.dtype == torch.float32 for t in leaves)
    x = torch.randn(2, 4, 6)
    cp = lp.cp_approx(W, 6)
    # float32: n = 4 positions, f = 6 channels, rank 6
    assert_close(lp.cp_pool(x, cp), lp.bilinear_pool(x, lp.to_dense(cp)), terms=SMALL, scale="max")


@pytest.mark.parametrize("fit", ["cp", "tucker"])
@given(K=st.integers(1, 5), f=st.integers(2, 9), seed=st.integers(0, 999))
@example(K=3, f=2, seed=503)  # a stalled ALS whose stop moved by a sweep between libraries
def test_fits_agree_across_libraries(bk, fit, K, f, seed):
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
def test_fits_reach_tensorlys_error_at_the_same_rank(symmetric):
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


def test_fits_report_progress_through_logging(caplog):
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


# ------------------------------------------------------------------ conversions
@given(K=st.integers(1, 3), f=st.integers(1, 6), P=st.integers(1, 3), shared=st.booleans(), seed=st.integers(0, 999))
def test_rankp_and_cp_convert_both_ways(bk, K, f, P, shared, seed):
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


def test_factor_forms_round_trip_through_each_other(tmp_path):
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


def _edit_member(src_path, dst_path, member, old, new):
    """A copy of the archive at src_path with ``old`` replaced by ``new`` in one member (e.g. its .npy header)."""
    import zipfile

    with zipfile.ZipFile(src_path) as src, zipfile.ZipFile(dst_path, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info.filename, data.replace(old, new) if info.filename == member else data)
    return dst_path


def test_factor_files_are_checked_before_anything_is_allocated(tmp_path):
    """Headers are read first: a file that declares more than it holds, or holds what no form has, is refused."""
    import resource
    import zipfile

    tags = {"__format__": np.array("lowrank_pool.factors"), "__version__": np.array(1), "kind": np.array("dense")}
    good = tmp_path / "good.npz"
    np.savez(good, **tags, W=np.ones((1, 2, 2)))
    # a 1 KB file whose W declares (20000, 20000, 20000) float64
    liar = _edit_member(good, tmp_path / "liar.npz", "W.npy", b"(1, 2, 2)", b"(20000, 20000, 20000)")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(lp.FactorFileError, match=r"declares shape \(20000, 20000, 20000\)"):
        lp.load_factors(liar)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB: nothing allocated
    # an extra member, a tag that inflates to 1 MiB, a deflated data member that lies about its size
    extra = tmp_path / "extra.npz"
    np.savez(extra, **tags, W=np.ones((1, 2, 2)), payload=np.ones(3))
    with pytest.raises(lp.FactorFileError, match=r"unexpected members \['payload'\]"):
        lp.load_factors(extra)
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("__format__.npy", b"\x93NUMPY" + b"\0" * 2**20)
    with pytest.raises(lp.FactorFileError, match=r"would expand to 1048\d+ bytes from a \d+-byte file"):
        lp.load_factors(bomb)
    # a tag whose header declares a billion elements in a few bytes
    big_tag = _edit_member(good, tmp_path / "big_tag.npz", "__version__.npy", b"'shape': ()", b"'shape': (1000000000,)")
    with pytest.raises(lp.FactorFileError, match=r"tag '__version__' has shape \(1000000000,\)"):
        lp.load_factors(big_tag)
    # file objects, both ways
    import io

    buf = io.BytesIO()
    lp.save_factors(buf, lp.RankP(np.ones((3, 2, 1)), np.ones((3, 1))))
    buf.seek(0)
    assert isinstance(lp.load_factors(buf), lp.RankP)


def test_inconsistent_factor_files_are_refused(tmp_path):
    tags = {"__format__": np.array("lowrank_pool.factors"), "__version__": np.array(1)}
    bad = {
        "eig_shapes": {"kind": np.array("eig"), "eigenvalues": np.ones((3, 2)), "eigenvectors": np.ones((4, 3, 1))},
        "non_square": {"kind": np.array("dense"), "W": np.ones((2, 3, 4))},
        "int_dtype": {"kind": np.array("dense"), "W": np.ones((2, 3, 3), int)},
        "complex": {"kind": np.array("dense"), "W": np.ones((2, 3, 3), complex)},
        "cp_f": {
            "kind": np.array("cp"),
            "factor_0": np.ones((3, 2)),
            "factor_1": np.ones((4, 2)),
            "factor_2": np.ones((5, 2)),
        },
        "unknown": {"kind": np.array("magic")},
    }
    for name, arrays in bad.items():
        np.savez(tmp_path / name, **tags, **arrays)
        with pytest.raises(lp.FactorFileError, match=name):
            lp.load_factors(tmp_path / name)
    for version in (np.array("abc"), np.array(True), np.array(1.7)):
        np.savez(tmp_path / "v", **{**tags, "__version__": version}, kind=np.array("dense"), W=np.ones((1, 2, 2)))
        with pytest.raises(lp.FactorFileError, match="format version"):
            lp.load_factors(tmp_path / "v")


# ------------------------------------------------------------------ cost model
def test_auto_path_follows_the_measured_crossover():
    big_f = lp.pool_cost("cp", batch=32, positions=196, channels=512, classes=100, ranks=(16, 16, 16))
    assert big_f["factorized"] < big_f["dense"] / 10
    small_f = lp.pool_cost("cp", batch=32, positions=4096, channels=128, classes=10, ranks=(64, 64, 64))
    assert small_f["dense"] < small_f["factorized"]


# ------------------------------------------------------------------ rank profile
def test_rank_profile_reports_error_size_and_accuracy(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    rng = np.random.default_rng(0)
    K, f = 4, 8
    W = rng.standard_normal((K, f, f))
    x = rng.standard_normal((20, 6, f))
    labels = np.argmax(lp.bilinear_pool(x, W), axis=1)
    prof = lp.rank_profile(W, [1, 2, 4, 8], method="eig", features=x, labels=labels)
    assert isinstance(prof, lp.RankProfile)
    assert prof.errors == sorted(prof.errors, reverse=True) and prof.errors[-1] < 1e-12
    assert prof.params == [r * K * (f + 1) for r in (1, 2, 4, 8)] and prof.dense_accuracy == 1.0
    assert prof.accuracy is not None and prof.accuracy[-1] == 1.0
    assert "rel. error" in str(prof) and len(prof.rows()) == 4
    # the rank-8 eigen form holds more numbers than W (8·4·9 = 288 > 256): it must not print "1.0x"
    assert prof.compression[-1] < 1 and "0.889x" in str(prof)
    for method, ranks in (("cp", [1, 3]), ("tucker", [2, (4, 8, 8)])):
        p = lp.rank_profile(W, ranks, method=method, features=x, labels=labels, progress=True)
        assert len(p.errors) == 2 and p.errors[-1] <= p.errors[0] + 1e-12
    assert p.errors[-1] < 1e-10 and p.ranks == [(2, 2, 2), (4, 8, 8)]
    ax = prof.plot()
    ax.figure.savefig(tmp_path / "profile.png")
    assert (tmp_path / "profile.png").stat().st_size > 0


# ------------------------------------------------------------------ files
def _forms(rng):
    from tensorly.cp_tensor import CPTensor
    from tensorly.tucker_tensor import TuckerTensor

    W = rng.standard_normal((3, 5, 5))
    return [
        CPTensor(_cp(rng, 3, 5, 2)),
        TuckerTensor(_tucker(rng, 3, 5, (2, 2, 2))),
        lp.eig_approx(W, 2),
        lp.RankP(rng.standard_normal((5, 3, 2)), rng.standard_normal((5, 2))),
        W,
    ]


def test_factor_files_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    for i, form in enumerate(_forms(rng)):
        path = tmp_path / f"f{i}.npz"
        lp.save_factors(path, form)
        back = lp.load_factors(path)
        assert type(back).__name__ == type(form).__name__
        assert np.array_equal(lp.to_dense(back) if i < 4 else back, lp.to_dense(form) if i < 4 else form)


def test_torch_factors_are_saved():
    torch = pytest.importorskip("torch")
    import tempfile

    eig = lp.eig_approx(torch.randn(2, 4, 4), 2)
    with tempfile.TemporaryDirectory() as d:
        lp.save_factors(f"{d}/t.npz", eig)
        back = lp.load_factors(f"{d}/t.npz")
    assert_close(back.eigenvalues, eig.eigenvalues.numpy(), terms=0)  # saved as numpy, exactly


def _heads(torch):
    from lowrank_pool import nn

    g = torch.Generator().manual_seed(0)
    opts = {"dtype": torch.float64, "generator": g}
    return [
        nn.FirstOrderPool(6, 3, reduce="max", **opts),
        nn.BilinearPool(6, 3, **opts),  # signed_sqrt+l2
        nn.BilinearPool(6, 3, normalize="matrix_sqrt", num_iters=7, eps=1e-4, **opts),
        nn.BilinearPool(6, 3, reduce_dim=4, normalize=None, **opts),
        nn.BilinearPool(6, 3, normalize=None, bias=False, **opts),
        nn.AttentionalPool(6, 3, rank=2, attention="softmax", **opts),
        nn.AttentionalPool(6, 3, rank=1, bottom_up="per_class", attention="relu", **opts),
        nn.CPPool(6, 3, rank=4, **opts),
        nn.TuckerPool(6, 3, rank=(3, 2, 2), **opts),
        nn.EigPool(6, 3, rank=2, **opts),
    ]


@pytest.mark.parametrize("index", range(10))
@pytest.mark.parametrize("what", ["head", "factors", "file object"])
def test_heads_are_saved_with_everything_that_sets_their_scores(tmp_path, index, what):
    """save_factors(head) stores the form, bias, projection and options; from_factors(load_factors(...)) scores
    exactly as the head did (trained parameters: perturbed from their initial values)."""
    import io

    torch = pytest.importorskip("torch")
    head = _heads(torch)[index]
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.1 * torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(1)))
    obj = head.factors() if what == "factors" else head
    if what == "file object":
        target = io.BytesIO()
        lp.save_factors(target, obj)
        target.seek(0)
        back = lp.load_factors(target)
    else:
        back = lp.load_factors(lp.save_factors(tmp_path / "head", obj))
    assert isinstance(back, lp.HeadForm) and all(
        isinstance(a, np.ndarray) for a in (back.bias, back.projection) if a is not None
    )
    saved = head.factors()
    assert (back.bias is None) == (saved.bias is None) and (back.projection is None) == (saved.projection is None)
    assert (back.normalize, back.attention, back.reduce) == (saved.normalize, saved.attention, saved.reduce)
    assert (back.eps, back.num_iters) == (saved.eps, saved.num_iters)
    x = torch.randn(4, 6, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    rebuilt = type(head).from_factors(back, dtype=torch.float64)
    assert torch.equal(rebuilt(x), head(x))
    # and the numpy arrays of the file score like the head on numpy input (another library's rounding)
    want = lp.head_scores(x, saved).detach().numpy()
    assert_close(lp.head_scores(x.numpy(), back), want, terms=400, scale=np.abs(want).max() + 1)


def test_heads_without_a_factor_form_and_bad_head_files_are_refused(tmp_path):
    torch = pytest.importorskip("torch")
    from lowrank_pool import nn

    with pytest.raises(lp.ArgumentTypeError, match=r"^CompactBilinearPool: .* it has no factor form"):
        lp.save_factors(tmp_path / "c", nn.CompactBilinearPool(6, 3, dim=32))
    eig = lp.eig_approx(np.eye(3)[None].repeat(2, axis=0), 2)
    with pytest.raises(lp.ShapeError, match=r"^obj: bias: expected shape \(K,\) with K = 2, got \(3,\)"):
        lp.save_factors(tmp_path / "b", lp.HeadForm(eig, bias=np.zeros(3)))
    with pytest.raises(lp.ArgumentError, match=r"^obj: normalize: only a dense W is normalised"):
        lp.save_factors(tmp_path / "n", lp.HeadForm(eig, normalize="signed_sqrt"))
    with pytest.raises(lp.ArgumentError, match=r"^obj: num_iters"):
        lp.save_factors(tmp_path / "i", lp.HeadForm(np.zeros((2, 3, 3)), num_iters=0))
    del torch

    # files written by hand: head fields in a version-1 file, a version-2 file without them, a bias that
    # does not fit, an unknown attention, bare first-order weights
    good = {"eigenvalues": np.ones((2, 2)), "eigenvectors": np.ones((3, 2, 2))}
    tags = {"__format__": np.array("lowrank_pool.factors"), "kind": np.array("eig")}
    head = {
        "head": np.array(True),
        "normalize": np.array(""),
        "attention": np.array("linear"),
        "reduce": np.array("mean"),
        "eps": np.array(1e-6),
        "num_iters": np.array(5),
    }
    cases = {
        "v1 with head": ({**tags, "__version__": np.array(1), **head}, good, "head fields"),
        "v2 bare": ({**tags, "__version__": np.array(2)}, good, "head fields"),
        "bias": ({**tags, "__version__": np.array(2), **head}, {**good, "head_bias": np.ones(3)}, "bias"),
        "attention": (
            {**tags, "__version__": np.array(2), **head, "attention": np.array("tanh")},
            good,
            "attention",
        ),
        "eps": ({**tags, "__version__": np.array(2), **head, "eps": np.array("x")}, good, "eps"),
        "first order": (
            {**tags, "kind": np.array("first_order"), "__version__": np.array(1)},
            {"weights": np.ones((3, 2))},
            "first-order weights are saved as a head only",
        ),
    }
    for name, (t, arrays, pattern) in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, **t, **arrays)
        with pytest.raises(lp.FactorFileError, match=pattern):
            lp.load_factors(path)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_foreign_and_corrupt_files_are_refused(tmp_path, capsys):
    pkl = tmp_path / "evil.npz"
    pkl.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(lp.FactorFileError, match=r"evil\.npz: not a readable lowrank_pool factor file"):
        lp.load_factors(pkl)
    assert "pwned" not in capsys.readouterr().out
    obj = tmp_path / "obj.npz"
    np.savez(obj, __format__=np.array("lowrank_pool.factors"), __version__=np.array(1), kind=np.array("dense"),
             W=np.array([{"a": 1}], dtype=object))  # fmt: skip
    with pytest.raises(lp.FactorFileError, match="array 'W' has dtype object, expected a real floating dtype"):
        lp.load_factors(obj)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, x=np.ones(3))
    with pytest.raises(lp.FactorFileError, match=r"no 'lowrank_pool\.factors' tag"):
        lp.load_factors(foreign)
    newer = tmp_path / "newer.npz"
    np.savez(newer, __format__=np.array("lowrank_pool.factors"), __version__=np.array(99), kind=np.array("eig"))
    with pytest.raises(lp.FactorFileError, match="format version 99, this lowrank_pool reads 1"):
        lp.load_factors(newer)
    good = tmp_path / "good.npz"
    lp.save_factors(good, lp.eig_approx(np.eye(3)[None], 1))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[:100])
    with pytest.raises(lp.FactorFileError, match=r"cut\.npz"):
        lp.load_factors(cut)
    missing = tmp_path / "missing.npz"
    np.savez(missing, __format__=np.array("lowrank_pool.factors"), __version__=np.array(1), kind=np.array("cp"))
    with pytest.raises(lp.FactorFileError, match="cp factor file is incomplete"):
        lp.load_factors(missing)
    with pytest.raises(TypeError, match=r"obj: expected a lowrank_pool\.nn head, a HeadForm, a CPTensor"):
        lp.save_factors(tmp_path / "x.npz", "W")


# ------------------------------------------------------------------ errors
W0 = np.ones((3, 4, 4))


@pytest.mark.parametrize(
    ("call", "exc", "pattern"),
    [
        (lambda: lp.cp_approx(W0, 0), ValueError, r"rank: expected a positive int, got 0"),
        (lambda: lp.cp_approx(W0, -2), ValueError, r"rank: expected a positive int, got -2"),
        (lambda: lp.cp_approx(W0, 17), ValueError, r"rank: expected at most min\(K·f, f²\) = 12 .*got 17"),
        (lambda: lp.cp_approx(W0, 2.0), TypeError, r"rank: expected a positive int, got float"),
        (lambda: lp.tucker_approx(W0, 5), ValueError, r"rank: expected at most f = 4 .*got 5"),
        (
            lambda: lp.tucker_approx(W0, (4, 2, 2)),
            ValueError,
            r"rank: expected \(R_K, R_f, R_f\) <= \(3, 4, 4\).*got \(4, 2, 2\)",
        ),
        (lambda: lp.tucker_approx(W0, (1, 2)), ValueError, r"rank: expected an int or a tuple"),
        (lambda: lp.tucker_approx(W0, (1, 1, 2)), ValueError, r"rank: multilinear ranks .* got \(1, 1, 2\) \(2 > 1\)"),
        (lambda: lp.eig_approx(W0, 5), ValueError, r"rank: expected at most f = 4 eigenpairs per class, got 5"),
        (
            lambda: lp.cp_approx(np.ones((3, 4)), 2),
            lp.ShapeError,
            r"W: expected 3 dimensions \(K, f, g\), got shape \(3, 4\)",
        ),
        (
            lambda: lp.eig_approx(np.ones((3, 4, 5)), 2),
            lp.ShapeError,
            r"W: expected shape \(K, f, f\).*got \(3, 4, 5\)",
        ),
        (lambda: lp.cp_approx(np.full((2, 3, 3), np.nan), 2), ValueError, r"W: expected finite values"),
        (lambda: lp.eig_approx(np.full((2, 3, 3), np.inf), 2), ValueError, r"W\[0\]: expected finite values"),
        (lambda: lp.tucker_approx(np.ones((2, 3, 3), int), 2), lp.DTypeError, r"W: expected a real floating dtype"),
        (
            lambda: lp.cp_pool(np.ones((2, 5, 4)), (None, [np.ones((3, 2)), np.ones((5, 2)), np.ones((5, 2))])),
            lp.ShapeError,
            r"cp factor A: expected shape \(f, R\) with f = 4, got \(5, 2\)",
        ),
        (
            lambda: lp.cp_pool(np.ones((2, 5, 4)), (None, [np.ones((3, 2)), np.ones((4, 3)), np.ones((4, 2))])),
            lp.ShapeError,
            r"cp factor A: expected shape \(f, R\) with R = 2, got \(4, 3\)",
        ),
        (
            lambda: lp.cp_pool(np.ones((2, 5, 4)), (np.ones(3), [np.ones((3, 2)), np.ones((4, 2)), np.ones((4, 2))])),
            lp.ShapeError,
            r"cp weights: expected shape \(R,\) with R = 2, got \(3,\)",
        ),
        (
            lambda: lp.cp_pool(np.ones((2, 5, 4)), (None, [np.ones((3, 2))])),
            lp.ShapeError,
            r"cp: expected 3 factor matrices",
        ),
        (
            lambda: lp.cp_pool(np.ones((2, 5, 4)), 3),
            TypeError,
            r"cp: expected a CPTensor or a \(weights, \[U, A, C\]\) tuple, got int",
        ),
        (
            lambda: lp.cp_pool(
                np.ones((2, 5, 4)), (None, [np.ones((3, 2)), np.ones((4, 2)), np.ones((4, 2))]), path="fast"
            ),
            ValueError,
            r"path: expected one of \['auto', 'factorized', 'dense'\]",
        ),
        (
            lambda: lp.tucker_pool(
                np.ones((2, 5, 4)), (np.ones((2, 2, 3)), [np.ones((3, 2)), np.ones((4, 2)), np.ones((4, 2))])
            ),
            lp.ShapeError,
            r"tucker core: expected shape \(R_K, R_a, R_c\) with R_K = 2, R_a = 2, R_c = 2, got \(2, 2, 3\)",
        ),
        (
            lambda: lp.eig_pool(np.ones((2, 5, 4)), lp.EigTensor(np.ones((3, 2)), np.ones((4, 3, 1)))),
            lp.ShapeError,
            r"eigenvalues: expected shape \(K, P\) with K = 3, P = 1, got \(3, 2\)",
        ),
        (lambda: lp.to_dense("W"), TypeError, r"obj: expected a CPTensor"),
        (lambda: lp.rank_profile(W0, []), ValueError, r"ranks: expected at least one rank"),
        (lambda: lp.rank_profile(W0, [1], features=np.ones((2, 3, 4))), ValueError, r"features, labels: pass both"),
        (
            lambda: lp.rank_profile(W0, [1], features=np.ones((2, 3, 4)), labels=np.ones(2)),
            TypeError,
            r"labels: expected integer class indices",
        ),
        (
            lambda: lp.rank_profile(W0, [1], features=np.ones((2, 3, 4)), labels=np.ones(3, int)),
            lp.ShapeError,
            r"labels: expected shape \(2,\)",
        ),
    ],
)
def test_bad_input_is_named(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_memory_of_a_100x512x512_weight_stays_within_a_few_gib():
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


@pytest.mark.parametrize("head", ["cp", "tucker", "eig", "project_channels"])
def test_training_on_nchw_maps_makes_no_copy_of_x(head):
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
