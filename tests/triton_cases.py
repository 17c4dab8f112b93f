"""The Triton kernel equals the torch path (run by tests/test_triton.py in a subprocess with TRITON_INTERPRET=1 and
LOWRANK_POOL_TRITON_ON_CPU=1, so that the kernels run on CPU tensors in Triton's interpreter; on a machine with a
GPU, ``pytest tests/triton_cases.py`` without those variables checks the compiled kernels on CUDA tensors)."""

from __future__ import annotations

import contextlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from cases.kernels import scores_and_gradients  # noqa: E402

import lowrank_pool as lp  # noqa: E402
import lowrank_pool.nn  # noqa: E402
from lowrank_pool import _torch_kernels  # noqa: E402
from lowrank_pool.testing import assert_close  # noqa: E402

DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
if DEVICE == "cuda" and not torch.cuda.is_available():
    pytest.skip("no CUDA device and not under Triton's interpreter", allow_module_level=True)


@contextlib.contextmanager
def triton_path():
    """Route the shared-bottom-up calls through the Triton kernel and count its calls (proof of which path ran)."""
    from lowrank_pool import _triton

    calls = {"forward": 0, "backward": 0}

    class Counting:
        @staticmethod
        def scores_forward(*args):
            calls["forward"] += 1
            return _triton.scores_forward(*args)

        @staticmethod
        def scores_backward(*args):
            calls["backward"] += 1
            return _triton.scores_backward(*args)

        available = staticmethod(_triton.available)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_torch_kernels, "_TRITON", Counting())
        mp.setattr(_torch_kernels, "_TRITON_ON_CPU", DEVICE == "cpu")
        yield calls


@contextlib.contextmanager
def torch_path():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_torch_kernels, "_TRITON_ON_CPU", False)
        mp.setattr(_torch_kernels, "_gpu_kernel", lambda *a, **k: None)
        yield


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(0, 3),
    n=st.integers(1, 40),
    f=st.integers(1, 100),  # past one and two channel tiles and their remainders
    k=st.integers(1, 4),
    p=st.integers(1, 6),  # P padded to a power of two: full and partial tiles
    attention=st.sampled_from(["linear", "relu", "softmax"]),
    layout=st.sampled_from(["bnf", "nchw", "channels_last"]),
    seed=st.integers(0, 2**16),
)
def test_triton_equals_torch_path(batch, n, f, k, p, attention, layout, seed):
    """Values and gradients (X, A, B) equal the torch path's in float32, every attention, every layout."""
    g = torch.Generator().manual_seed(seed)
    if layout == "bnf":
        X, axis = torch.randn(batch, n, f, generator=g), -1
    else:
        X, axis = torch.randn(batch, f, n, 1, generator=g), 1
        if layout == "channels_last":
            X = X.contiguous(memory_format=torch.channels_last)
    A, B = torch.randn(f, k, p, generator=g), torch.randn(f, p, generator=g)
    X, A, B = (t.to(DEVICE) for t in (X, A, B))
    with triton_path() as calls:
        s_tri, g_tri = scores_and_gradients(X, A, B, attention, axis)
    if batch:
        assert calls["forward"] == 1 and calls["backward"] == 1
    with torch_path():
        s_ref, g_ref = scores_and_gradients(X, A, B, attention, axis)
    terms = 8 * (f + n + k * p)
    for got, want in zip((s_tri, *g_tri), (s_ref, *g_ref), strict=True):
        scale = want.abs().max().item() if want.numel() else 0.0
        assert got.shape == want.shape and got.dtype == want.dtype
        assert_close(got, want, terms=terms, scale=want.abs() + max(scale, 1.0))
    if batch and layout != "bnf":  # ∂X in X's own layout (channels-last stays channels-last)
        assert g_tri[0].stride() == X.stride()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_accumulate_in_float32(dtype):
    """float16 / bfloat16 maps are read in their dtype and accumulated in float32: the scores equal the float32 torch
    path's on the same (rounded) numbers to float32 rounding."""
    from lowrank_pool import _triton

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 300, 64, generator=g).to(dtype).to(DEVICE)
    bm, a3 = (
        torch.randn(64, 2, generator=g).to(dtype).to(DEVICE),
        torch.randn(2, 64, 5, generator=g).to(dtype).to(DEVICE),
    )
    s = _triton.scores_forward(x, bm, a3, False, 0, 1 / 300)[0]
    ref = _torch_kernels._scores(_torch_kernels._maps(x.float(), bm.float(), False, "linear")[3], a3.float(), 1 / 300)
    assert s.dtype == dtype
    # rounded once to the half dtype at the end (float32 accumulation adds ≪ one half-precision step); the
    # dtype was checked above, the reference is float32
    assert_close(s, ref, terms=2, scale="max", dtype=dtype, check_dtype=False)


def test_the_layers_train_through_the_triton_kernel():
    """AttentionalPool (rank 1 and rank 3, shared bottom-up) trains through the kernel: forward, backward, a step."""
    torch.manual_seed(0)
    with triton_path() as counted:
        _train_two_heads()
    assert counted["forward"] == 2 and counted["backward"] == 2


def _train_two_heads():
    for rank in (1, 3):
        head = lp.nn.AttentionalPool(12, 4, rank=rank, attention="softmax").to(DEVICE)
        x = torch.relu(torch.randn(3, 12, 5, 5, device=DEVICE))
        loss = torch.nn.functional.cross_entropy(head(x), torch.tensor([0, 1, 2], device=DEVICE))
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())


def test_unserved_calls_take_the_torch_path():
    """float64 and a negated view take the torch path (the kernel is not called)."""
    with triton_path() as counted:
        _unserved()
    assert counted["forward"] == 0


def _unserved():
    x64 = torch.randn(2, 9, 4, dtype=torch.float64, device=DEVICE)
    lp.rank1_pool(
        x64, torch.randn(4, 3, dtype=torch.float64, device=DEVICE), torch.randn(4, dtype=torch.float64, device=DEVICE)
    )
    neg = torch._neg_view(torch.randn(2, 9, 4, device=DEVICE))
    lp.rank1_pool(neg, torch.randn(4, 3, device=DEVICE), torch.randn(4, device=DEVICE))
