"""The compiled CPU kernel equals the torch path: values and gradients, every attention, both layouts,
float32 and float64, edge shapes; it serves only the calls it can (others take the torch path)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import lowrank_pool as lp  # noqa: E402
from lowrank_pool import _native  # noqa: E402
from lowrank_pool.testing import eps_of  # noqa: E402


@pytest.fixture(scope="module")
def native():
    """Build (or load the cached) kernel: make setup builds it, so this is a cache hit there."""
    module = _native.build(verbose=False)
    assert _native.available()
    return module


@pytest.fixture
def counted(native, monkeypatch):
    """Count the kernel's calls, to prove which path ran."""
    calls = {"forward": 0, "backward": 0}

    class Counting:
        def maps_forward(self, *args):
            calls["forward"] += 1
            return native.maps_forward(*args)

        def maps_backward(self, *args):
            calls["backward"] += 1
            return native.maps_backward(*args)

    monkeypatch.setattr(_native, "kernel", lambda: Counting())
    return calls


def _torch_path(monkeypatch):
    monkeypatch.setattr(_native, "kernel", lambda: None)


def _run(X, A, B, attention, channel_axis):
    X, A, B = (t.detach().clone().requires_grad_() for t in (X, A, B))
    s = lp.rankp_pool(X, A, B, attention=attention, channel_axis=channel_axis)
    weights = torch.linspace(-1, 1, s.numel(), dtype=s.dtype).reshape(s.shape)
    grads = torch.autograd.grad((s * weights).sum(), (X, A, B))
    return s.detach(), grads


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(0, 3),
    n=st.integers(1, 12),
    f=st.integers(1, 9),
    k=st.integers(1, 4),
    p=st.integers(1, 3),
    attention=st.sampled_from(["linear", "relu", "softmax"]),
    layout=st.sampled_from(["bnf", "nchw"]),
    dtype=st.sampled_from(["float32", "float64"]),
    seed=st.integers(0, 2**16),
)
def test_native_equals_torch_path(native, batch, n, f, k, p, attention, layout, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    dt = getattr(torch, dtype)
    X = (
        torch.randn(batch, n, f, generator=g, dtype=dt)
        if layout == "bnf"
        else torch.randn(batch, f, n, 1, generator=g, dtype=dt)
    )
    A, B = torch.randn(f, k, p, generator=g, dtype=dt), torch.randn(f, p, generator=g, dtype=dt)
    axis = -1 if layout == "bnf" else 1
    with pytest.MonkeyPatch.context() as mp:
        calls = {"n": 0}
        real = native.maps_forward

        class Counting:
            maps_backward = staticmethod(native.maps_backward)

            @staticmethod
            def maps_forward(*args):
                calls["n"] += 1
                return real(*args)

        mp.setattr(_native, "kernel", lambda: Counting())
        s_native, g_native = _run(X, A, B, attention, axis)
        assert calls["n"] == 1
        mp.setattr(_native, "kernel", lambda: None)
        s_torch, g_torch = _run(X, A, B, attention, axis)
    # both paths sum ~f·n products twice (Z, then V or ∂X); scale by the absolute-value computation
    tol = 8 * (f + n + k * p) * eps_of(dt)
    for got, want in zip((s_native, *g_native), (s_torch, *g_torch), strict=True):
        scale = want.abs().max().item() if want.numel() else 0.0
        assert torch.allclose(got, want, rtol=tol, atol=tol * max(scale, 1.0)), (got - want).abs().max()


@pytest.mark.parametrize("attention", ["linear", "relu", "softmax"])
@pytest.mark.parametrize("layout", ["bnf", "nchw"])
def test_native_path_runs_and_passes_gradcheck(counted, attention, layout):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(2, 5, 4, dtype=torch.float64, generator=g)
    if layout == "nchw":
        X = torch.randn(2, 4, 3, 2, dtype=torch.float64, generator=g)
    axis = -1 if layout == "bnf" else 1
    A = torch.randn(4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, generator=g, requires_grad=True)
    X.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, a, bb: lp.rank1_pool(x, a, bb, attention=attention, channel_axis=axis), (X, A, b)
    )
    assert counted["forward"] > 0 and counted["backward"] > 0


def test_native_skips_what_it_cannot_serve(counted):
    X = torch.randn(2, 6, 3, 3)  # NCHW: the (B, f, n) view is contiguous
    A, b = torch.randn(6, 4), torch.randn(6)
    lp.rank1_pool(X, A, b)
    served = counted["forward"]
    assert served == 1  # channels-first inference (nothing needs a gradient) is served too
    lp.rank1_pool(X.to(memory_format=torch.channels_last), A, b)  # (B, n, f) inference: stock products
    assert counted["forward"] == served
    # a non-contiguous view and autocast: torch path
    leaf = torch.randn(2, 3, 9, requires_grad=True)
    lp.rank1_pool(leaf.mT, A[:3], b[:3])  # (B, n, f) on transposed storage, in the autograd Function
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp.rank1_pool(X, A, b)
        lp.rank1_pool(X.requires_grad_(), A, b)
    X.requires_grad_(False)
    assert counted["forward"] == served
    # bfloat16 input is computed in float32 (the dtype rule) before the kernel sees it: served
    lp.rank1_pool(X.to(torch.bfloat16), A, b)
    assert counted["forward"] == served + 1


def test_second_derivatives_take_the_torch_path(counted):
    X = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    A, b = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    s = lp.rank1_pool(X, A, b)
    (gx,) = torch.autograd.grad(s.square().sum(), X, create_graph=True)
    (ggx,) = torch.autograd.grad(gx.square().sum(), X)
    Xd = X.detach().requires_grad_()
    ref = ((Xd @ A) * (Xd @ b)[..., None]).mean(1)
    (rx,) = torch.autograd.grad(ref.square().sum(), Xd, create_graph=True)
    (rrx,) = torch.autograd.grad(rx.square().sum(), Xd)
    # create_graph recomputes the maps with torch ops; the native backward may still serve the
    # first-order pass through the scores that the second derivative walks back through
    assert torch.allclose(ggx, rrx, atol=1e-10)


def test_disabled_by_environment(native, monkeypatch):
    monkeypatch.setenv("LOWRANK_POOL_NATIVE", "0")
    _native.kernel.cache_clear()
    try:
        assert _native.kernel() is None
    finally:
        monkeypatch.delenv("LOWRANK_POOL_NATIVE")
        _native.kernel.cache_clear()
    assert _native.kernel() is not None


def test_nan_propagates_like_the_torch_path(native, monkeypatch):
    X = torch.randn(1, 4, 3)
    X[0, 1, 2] = float("nan")
    A, b = torch.randn(3, 2), torch.randn(3)
    for attention in ("linear", "relu", "softmax"):
        got = lp.rank1_pool(X, A, b, attention=attention)
        _torch_path(monkeypatch)
        want = lp.rank1_pool(X, A, b, attention=attention)
        monkeypatch.undo()
        np.testing.assert_array_equal(torch.isnan(got).numpy(), torch.isnan(want).numpy())
