"""Hostile and edge-case input: global state, sizes, dtypes at the edges, NaN, memory refusals."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from helpers import absolute, oracle_rank1_trace

import lowrank_pool as lp
from lowrank_pool.testing import assert_close

torch = pytest.importorskip("torch")
tl = pytest.importorskip("tensorly")


# ----------------------------------------------------------------------------- tensorly's global backend
def test_fits_ignore_and_keep_the_global_tensorly_backend(tmp_path):
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


def test_fits_in_two_threads_do_not_interfere():
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
def test_cp_init_grows_with_the_problem_not_with_k_squared():
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


def test_zero_and_antisymmetric_weights_fit_exactly():
    W = np.random.default_rng(2).standard_normal((3, 4, 4))
    for target in (np.zeros((3, 4, 4)), W - W.transpose(0, 2, 1)):
        cp = lp.cp_approx(target, 2)
        tk = lp.tucker_approx(target, 2)
        assert np.array_equal(lp.to_dense(cp), np.zeros((3, 4, 4)))
        assert np.array_equal(lp.to_dense(tk), np.zeros((3, 4, 4)))
        assert np.all(np.isfinite(lp.cp_pool(np.ones((1, 2, 4)), cp)))


def test_half_precision_weights_fit_in_float32():
    W = torch.randn(3, 5, 5, generator=torch.Generator().manual_seed(0))
    for half in (torch.float16, torch.bfloat16):
        assert lp.cp_approx(W.to(half), 2).weights.dtype == torch.float32
        assert lp.tucker_approx(W.to(half), 2).core.dtype == torch.float32
        assert lp.eig_approx(W.to(half).float(), 2).eigenvalues.dtype == torch.float32


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
def test_fit_options_are_validated(kwargs, exc, pattern):
    W = np.ones((2, 3, 3))
    for fit in (lp.cp_approx, lp.tucker_approx):
        with pytest.raises(exc, match=pattern):
            fit(W, 2, **kwargs)
    assert lp.cp_approx(W, np.int64(2)).rank == 2  # numpy integers are ints


def test_layers_refuse_parameters_that_cannot_fit():
    from lowrank_pool.nn import AttentionalPool, BilinearPool, CPPool, EigPool, TuckerPool

    for make in (
        lambda: CPPool(8, 3, rank=10**12),
        lambda: BilinearPool(10**6, 10),
        lambda: AttentionalPool(8, 10**6, rank=10**6),
        lambda: EigPool(10**6, 10**6, rank=4),
        lambda: TuckerPool(10**6, 10**6, rank=(10**6, 10**6, 10**6)),
    ):
        with pytest.raises(lp.ArgumentError, match=r"need [\d.e+]+ GiB, more than the [\d.]+ GiB of memory available"):
            make()


# ----------------------------------------------------------------------------- dtypes at the edges
def test_wide_and_foreign_byte_order_floats():
    rng = np.random.default_rng(3)
    X, A, b = rng.standard_normal((2, 5, 4)), rng.standard_normal((4, 3)), rng.standard_normal(4)
    ref = lp.rank1_pool(X, A, b)
    wide = lp.rank1_pool(*(a.astype(np.longdouble) for a in (X, A, b)))
    terms = 2 * (2 * 4 + 5 + 2)  # rank-1 scores: two f-term products and an n-term mean, both sides
    scale = oracle_rank1_trace(*absolute(X, A, b))
    assert_close(wide, ref, terms=terms, scale=scale)  # float64: never silently float32
    big = lp.rank1_pool(*(a.astype(">f8") for a in (X, A, b)))
    assert_close(big, ref, terms=terms, scale=scale)
    big32 = lp.rank1_pool(*(a.astype(">f4") for a in (X, A, b)))
    # float32, native byte order; the inputs' own rounding to float32 adds three steps
    assert_close(big32, ref, terms=terms + 3, scale=scale, like=X.astype(np.float32))


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_normalisations_of_long_float16_vectors(lib):
    x = np.full((2, 100_000), 1000.0, np.float16)
    x = torch.from_numpy(x) if lib == "torch" else x
    out = lp.l2_normalize(x)
    assert out.dtype == x.dtype
    # accumulated in float32 (in float16 the norm overflows: zeros), rounded once to float16
    assert_close(out, np.full(x.shape, 1 / np.sqrt(100_000)), terms=2, like=x)
    root = lp.signed_sqrt(x)
    assert_close(root, np.full(x.shape, np.sqrt(1000.0)), terms=2, like=x)


@pytest.mark.parametrize("attention", ["linear", "softmax", "relu"])
@pytest.mark.parametrize("grad", [False, True])
def test_nan_propagates_on_every_attention_path(attention, grad):
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    x[0, 2, 1] = float("nan")
    A = torch.randn(4, 3, dtype=torch.float64, requires_grad=grad)
    b = torch.randn(4, dtype=torch.float64, requires_grad=grad)
    s = lp.rank1_pool(x, A, b, attention=attention)
    assert torch.isnan(s[0]).all() and torch.isfinite(s[1]).all()
    with pytest.raises(lp.ArgumentError, match="X: expected finite values, got 1 NaN/inf"):
        lp.rank1_pool(x, A, b, attention=attention, check_finite=True)


def test_rank_profile_refuses_non_finite_features():
    W = np.random.default_rng(4).standard_normal((2, 3, 3))
    x = np.ones((4, 5, 3))
    x[0, 0, 0] = np.nan
    with pytest.raises(lp.ArgumentError, match="features: expected finite values"):
        lp.rank_profile(W, [1], features=x, labels=np.zeros(4, int))


def test_empty_batches_through_every_layer():
    from lowrank_pool import nn as lnn

    x = torch.zeros(0, 4, 3, 3)
    for layer in (
        lnn.FirstOrderPool(4, 3),
        lnn.BilinearPool(4, 3),
        lnn.AttentionalPool(4, 3, 2, attention="softmax"),
        lnn.CPPool(4, 3, 2),
        lnn.TuckerPool(4, 3, 2),
        lnn.EigPool(4, 3, 2),
        lnn.PoseAttentionalPool(4, 3, 2, hidden=5, return_maps=True),
    ):
        out = layer(x)
        s = out.scores if hasattr(out, "scores") else out
        assert s.shape == (0, 3), type(layer).__name__
