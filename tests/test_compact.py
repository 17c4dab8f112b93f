"""Tests of lowrank_pool.compact's public names, one class each: compact_bilinear_pool, sketch_hashes,
count_sketches."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from cases.compact import _estimates, _pair
from cases.two_inputs import _cross, _pair_data, pairs
from contracts import PoolingFunctionContract
from hypothesis import given
from hypothesis import strategies as st

import lowrank_pool as lp
from lowrank_pool.compact import sketch_hashes
from lowrank_pool.testing import assert_close, to_numpy


class TestCompactBilinearPool(PoolingFunctionContract):
    """lowrank_pool.compact_bilinear_pool: the Tensor Sketch of M (one or two inputs)."""

    variants = ("compact",)

    @pytest.mark.parametrize("data_seed", [0, 1, 2])
    def test_inner_products_are_unbiased(self, data_seed):
        """Over the sketch's random hashes, the mean of ⟨ψ(M₁), ψ(M₂)⟩ is ⟨M₁, M₂⟩ (within 4 standard errors)."""
        x, exact = _pair(data_seed)
        est = _estimates(x, 16, range(1500))
        stderr = est.std(ddof=1) / np.sqrt(est.size)
        assert abs(est.mean() - exact) < 4 * stderr + 1e-12, (est.mean(), exact, stderr)

    def test_variance_falls_as_one_over_dim(self):
        x, _ = _pair(7, f=8)
        var = {d: _estimates(x, d, range(600)).var() for d in (16, 64)}
        ratio = var[16] / var[64]
        assert 2.0 < ratio < 8.0, ratio  # 4 expected

    @given(seed=st.integers(0, 2**31 - 1), dim=st.integers(1, 40))
    def test_same_seed_same_sketch_on_every_backend_and_layout(self, bk, dtype, seed, dim):
        x = np.random.default_rng(seed % 1000).standard_normal((2, 3, 2, 5))  # NCHW: f = 3
        ref = lp.compact_bilinear_pool(x, dim, seed=seed)
        got = lp.compact_bilinear_pool(bk(x, dtype), dim, seed=seed)
        bnf = lp.compact_bilinear_pool(
            bk(np.ascontiguousarray(x.reshape(2, 3, 10).transpose(0, 2, 1)), dtype), dim, seed=seed
        )
        # M (n = 10 positions, f = 3), then the sketch's FFTs of length ≤ 64: a chain of at most n + f² + 2·64 roundings
        terms, xin = 2 * (10 + 9 + 2 * 64), bk(x, dtype)
        assert_close(got, ref, terms=terms, scale="max", like=xin)
        assert_close(bnf, ref, terms=terms, scale="max", like=xin)
        other = lp.compact_bilinear_pool(x, dim, seed=seed + 1)
        assert dim < 2 or not np.array_equal(other, ref)  # another seed, another sketch

    def test_sketch_is_linear_in_the_second_moment(self):
        """ψ(M) depends on X only through M = XᵀX/n: duplicating every position leaves it unchanged."""
        x = np.random.default_rng(3).standard_normal((2, 5, 4))
        twice, once = lp.compact_bilinear_pool(np.concatenate([x, x], axis=1), 32), lp.compact_bilinear_pool(x, 32)
        assert_close(twice, once, terms=2 * (10 + 16 + 2 * 32), scale="max")

    @pytest.mark.parametrize(
        ("kwargs", "exc", "pattern"),
        [
            ({"dim": 0}, lp.ArgumentError, r"dim: expected a positive int, got 0"),
            ({"dim": 2.0}, lp.ArgumentTypeError, r"dim: expected a positive int, got float"),
            ({"dim": 8, "seed": "a"}, lp.ArgumentTypeError, r"seed: expected an int, got str"),
        ],
    )
    def test_bad_input_is_named(self, kwargs, exc, pattern):
        dim = kwargs.pop("dim")
        with pytest.raises(exc, match=pattern):
            lp.compact_bilinear_pool(np.ones((1, 2, 3)), dim, **kwargs)

    def test_function_and_layer_take_the_same_seeds(self):
        """One validator for the seed: numpy integers work in both, bools and floats are refused by both."""
        pytest.importorskip("torch")
        from lowrank_pool.nn import CompactBilinearPool

        X = np.random.default_rng(0).random((2, 5, 3))
        assert np.array_equal(lp.compact_bilinear_pool(X, 8, seed=np.int64(3)), lp.compact_bilinear_pool(X, 8, seed=3))
        assert CompactBilinearPool(3, 2, dim=8, seed=np.int64(3)).seed == 3
        for bad in (True, 1.5):
            with pytest.raises(lp.ArgumentTypeError, match="seed: expected an int"):
                lp.compact_bilinear_pool(X, 8, seed=bad)
            with pytest.raises(lp.ArgumentTypeError, match="seed: expected an int"):
                CompactBilinearPool(3, 2, dim=8, seed=bad)

    def test_the_sketch_costs_o_of_n_f_not_n_f_d(self):
        """A (4, 49, 512) batch into d = 2¹⁶ bins: a dense (f, 2d) sketch matrix would be 512 MiB and
        7 GFLOP; the scatter-add reads X once per sketch (timing-free: the peak memory tells)."""
        pytest.importorskip("torch")
        if not os.path.exists("/proc/self/clear_refs"):
            pytest.skip("needs Linux /proc to reset the peak RSS")
        code = textwrap.dedent(
            """
        import torch, lowrank_pool as lp
        def kib(field):
            return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1])
        x = torch.randn(4, 512, 7, 7)
        lp.compact_bilinear_pool(x[:1], 16)
        open("/proc/self/clear_refs", "w").write("5")
        base = kib("VmRSS")
        lp.compact_bilinear_pool(x, 2**16)
        print((kib("VmHWM") - base) / 1024)
        """
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        mib = float(out.stdout.strip().splitlines()[-1])
        # B·n·d float32 sketches and their complex spectra: 4 · 49 · 65536 · 4 B = 49 MiB each
        assert mib < 400, f"peak memory of the sketch: {mib:.0f} MiB"

    @given(s=pairs())
    def test_compact_sketch_of_two_inputs_is_the_count_sketch_convolution(self, bk, dtype, s):
        """ψ(X, Y)[t] = (1/n) Σ_i Σ_{(h1(a) + h2(b)) mod d = t} s1(a) s2(b) x_ia y_ib, literally; Y = X is the one-input
        sketch."""
        d = _pair_data(s)
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


class TestSketchHashes:
    """lowrank_pool.sketch_hashes: the seeded hashes and signs of the sketch."""

    @given(seed=st.integers(0, 2**31 - 1), dim=st.integers(1, 40))
    def test_given_hashes_equal_their_seed_on_every_backend(self, bk, dtype, seed, dim):
        """hashes=sketch_hashes(f, d, seed) is the seed's sketch, as numpy arrays or as arrays of X's library."""
        x = np.random.default_rng(seed % 1000).standard_normal((2, 3, 2, 5))  # NCHW: f = 3
        ref = lp.compact_bilinear_pool(bk(x, dtype), dim, seed=seed)
        pairs = sketch_hashes(3, dim, seed)
        for hashes in (pairs, [(bk(b, "int64"), bk(s, dtype)) for b, s in pairs]):
            got = lp.compact_bilinear_pool(bk(x, dtype), dim, hashes=hashes)
            assert np.array_equal(to_numpy(got), to_numpy(ref))

    def test_given_hashes_are_checked(self):
        X = np.ones((1, 2, 3))
        pairs = sketch_hashes(3, 8, 0)
        cases = [
            ({"hashes": pairs[:1]}, lp.ArgumentError, r"hashes: expected two \(bins, signs\) pairs, got 1"),
            ({"hashes": 5}, lp.ArgumentTypeError, r"hashes: expected two \(bins, signs\) pairs as sketch_hashes"),
            (
                {"hashes": sketch_hashes(4, 8, 0)},
                lp.ShapeError,
                r"hashes: expected shape \(f,\) with f = 3, got \(4,\)",
            ),
            (
                {"hashes": [(pairs[0][0] + 8, pairs[0][1]), pairs[1]]},
                lp.ArgumentError,
                r"hashes: expected bins in \[0, 8\)",
            ),
            ({"hashes": pairs, "seed": 2}, lp.ArgumentError, r"seed: the hashes were given, so seed must be left at 0"),
            ({"hashes": [(b, s) for b in (1, 2) for s in (3,)]}, lp.BackendError, r"hashes: expected an array"),
        ]
        torch = pytest.importorskip("torch")
        mixed = [(torch.as_tensor(b), torch.as_tensor(s)) for b, s in pairs]
        with pytest.raises(lp.BackendError, match="arrays of different libraries cannot be mixed"):
            lp.compact_bilinear_pool(X, 8, hashes=mixed)
        for kwargs, exc, pattern in cases:
            with pytest.raises(exc, match=pattern):
                lp.compact_bilinear_pool(X, 8, **kwargs)


class TestCountSketches:
    """lowrank_pool.count_sketches: the count sketches of the rows of X."""

    @given(
        B=st.integers(0, 3),
        n=st.integers(1, 7),
        f=st.integers(1, 9),
        dim=st.integers(1, 24),
        seed=st.integers(0, 2**31 - 1),
        nchw=st.booleans(),
    )
    def test_sketch_is_the_definition_with_dense_count_sketch_matrices(self, bk, dtype, B, n, f, dim, seed, nchw):
        """ψ(M_b) = mean_i IFFT(FFT(C₁ x_i) ⊙ FFT(C₂ x_i)) with the dense (f, d) matrices of ``count_sketches``
        (repeated bins included: small d), whatever the scatter-add of the backend and the layout."""
        from lowrank_pool.compact import count_sketches

        x = np.random.default_rng(seed % 997).standard_normal((B, n, f))
        c1, c2 = count_sketches(f, dim, seed)
        z1, z2 = x @ c1, x @ c2
        want = np.fft.irfft(np.fft.rfft(z1, n=dim) * np.fft.rfft(z2, n=dim), n=dim).mean(axis=1)
        arg = np.ascontiguousarray(x.transpose(0, 2, 1))[..., None] if nchw else x  # (B, f, n, 1): channels first
        got = to_numpy(lp.compact_bilinear_pool(bk(arg, dtype), dim, seed=seed))
        assert got.shape == (B, dim)
        eps = np.finfo(dtype).eps
        scale = (np.abs(x) ** 2).sum(axis=2).mean(axis=1).max(initial=0.0) + 1  # |ψ| <= mean_i |x_i|² (Young)
        assert np.abs(got - want).max(initial=0.0) <= 64 * eps * scale * np.log2(dim + 1) + 64 * eps * scale
