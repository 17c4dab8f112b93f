"""Layouts (NCHW, channels-last, video), backend parity, dtypes, empty batches, gradients."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import lowrank_pool as lp
from lowrank_pool.testing import assert_close, to_numpy

torch = pytest.importorskip("torch")


def _all_pools(A, b, AP, BP, Bs, W):
    """name -> function of (X, channel_axis) for every pooling function."""
    return {
        "first_mean": lambda x, ax: lp.first_order_pool(x, A, channel_axis=ax),
        "first_sum": lambda x, ax: lp.first_order_pool(x, A, reduce="sum", channel_axis=ax),
        "first_max": lambda x, ax: lp.first_order_pool(x, A, reduce="max", channel_axis=ax),
        "gram": lambda x, ax: lp.gram(x, channel_axis=ax),
        "bilinear": lambda x, ax: lp.bilinear_pool(x, W, channel_axis=ax),
        "rank1": lambda x, ax: lp.rank1_pool(x, A, b, channel_axis=ax),
        "rank1_softmax": lambda x, ax: lp.rank1_pool(x, A, b, attention="softmax", channel_axis=ax),
        "rankp_shared": lambda x, ax: lp.rankp_pool(x, AP, Bs, channel_axis=ax),
        "rankp_perclass": lambda x, ax: lp.rankp_pool(x, AP, BP, attention="relu", channel_axis=ax),
        "maps": lambda x, ax: lp.attention_maps(x, A, b, channel_axis=ax)[0],
        "maps_rankp": lambda x, ax: lp.attention_maps(x, AP, Bs, attention="softmax", channel_axis=ax).bottom_up,
        "cp": lambda x, ax: lp.cp_pool(x, (None, [AP[0, ...], AP[:, 0, :], Bs]), channel_axis=ax),
        "eig": lambda x, ax: lp.eig_pool(x, (AP[0, ...], AP), path="factorized", channel_axis=ax),
        "projection": lambda x, ax: lp.project_channels(x, AP[:, 0, :], channel_axis=ax),
    }


def _factors(rng, f, K=3, P=2):
    return [rng.standard_normal(s) for s in [(f, K), (f,), (f, K, P), (f, K, P), (f, P), (K, f, f)]]


@given(
    B=st.integers(0, 2),
    f=st.integers(1, 6),
    spatial=st.sampled_from([(3, 4), (2, 3, 2), (5,)]),
    seed=st.integers(0, 99),
)
def test_channel_first_equals_channels_last(bk, dtype, B, f, spatial, seed):
    """(B, f, *spatial) with channel_axis=1 (or, for 4-D/5-D input, by default) gives the (B, n, f) result."""
    rng = np.random.default_rng(seed)
    x_last = rng.standard_normal((B, *spatial, f))
    x_first = np.moveaxis(x_last, -1, 1).copy()  # C-contiguous NCHW / NCDHW
    n = int(np.prod(spatial))
    fac = [bk(a, dtype) for a in _factors(rng, f)]
    ref_pools = _all_pools(*fac)
    scale_terms = 4 * (f * f + n + 8)
    for name, fn in ref_pools.items():
        ref = fn(bk(x_last.reshape(B, n, f), dtype), -1)
        inputs = [(x_first, 1), (x_last, -1)] + ([(x_first, None)] if len(spatial) > 1 else [])
        for x, ax in inputs:
            got = fn(bk(x, dtype), ax)
            scale = np.abs(to_numpy(ref)).max(initial=0.0) + 1.0
            assert_close(got, ref, terms=scale_terms, scale=scale, like=ref, label=f"{name}, channel_axis={ax}")


def test_nchw_is_read_without_a_copy():
    """The (B, f, n) view of a contiguous NCHW tensor shares memory with it."""
    from lowrank_pool._backend import namespace
    from lowrank_pool._layout import features

    xp = namespace(X=torch.zeros(1))
    x = torch.randn(2, 5, 3, 4)
    v = features(xp, x, 1)
    assert v.layout == "bfn" and v.data.data_ptr() == x.data_ptr()
    cl = x.to(memory_format=torch.channels_last)
    v = features(xp, cl, 1)
    assert v.layout == "bnf" and v.data.data_ptr() == cl.data_ptr()
    video = torch.randn(2, 5, 2, 3, 4).to(memory_format=torch.channels_last_3d)
    v = features(xp, video, 1)
    assert v.layout == "bnf" and v.data.data_ptr() == video.data_ptr()
    xn = np.zeros((2, 5, 3, 4))
    vn = features(namespace(X=xn), xn, 1)
    assert vn.layout == "bfn" and np.shares_memory(vn.data, xn)
    xl = np.moveaxis(np.zeros((2, 3, 4, 5)), -1, 1)  # numpy channels-last memory
    vl = features(namespace(X=xl), xl, 1)
    assert vl.layout == "bnf" and np.shares_memory(vl.data, xl)


@given(B=st.integers(0, 3), f=st.integers(1, 6), n=st.integers(1, 8), seed=st.integers(0, 99))
def test_torch_equals_numpy(dtype, B, f, n, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, n, f)).astype(dtype)
    fac_np = [a.astype(dtype) for a in _factors(rng, f)]
    fac_t = [torch.from_numpy(a) for a in fac_np]
    pools_np, pools_t = _all_pools(*fac_np), _all_pools(*fac_t)
    for name in pools_np:
        a, e = pools_t[name](torch.from_numpy(x), -1), pools_np[name](x, -1)
        assert isinstance(a, torch.Tensor) and isinstance(e, np.ndarray), name
        scale = np.abs(e).max(initial=0.0) + 1.0
        assert_close(a, e, terms=4 * (f * f + n + 8), scale=scale, like=torch.from_numpy(x), label=name)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_empty_batch_returns_empty_scores(bk, dtype):
    rng = np.random.default_rng(0)
    f, K = 4, 3
    x = bk(np.zeros((0, 5, f)), dtype)
    A, b, AP, BP, Bs, W = (bk(a, dtype) for a in _factors(rng, f, K))
    for out in (
        lp.rank1_pool(x, A, b),
        lp.rankp_pool(x, AP, BP),
        lp.rankp_pool(x, AP, Bs),
        lp.bilinear_pool(x, W),
        lp.first_order_pool(x, A, reduce="max"),
    ):
        assert tuple(out.shape) == (0, K) and out.dtype == x.dtype
    assert tuple(lp.gram(x).shape) == (0, f, f)


def test_mixed_float_dtypes_promote():
    x = np.ones((1, 2, 3), np.float32)
    assert lp.rank1_pool(x, np.ones((3, 2)), np.ones(3)).dtype == np.float64
    xt = torch.ones(1, 2, 3)
    assert lp.rank1_pool(xt, torch.ones(3, 2, dtype=torch.float64), torch.ones(3)).dtype == torch.float64


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_low_precision_accumulates_in_float32(half):
    """XᵀX of float16 data overflows float16 (max 65504); results come back in float32."""
    dt = getattr(torch, half)
    x = torch.full((1, 400, 4), 20.0, dtype=dt)  # Gram entries 400·400 = 160000 > 65504
    g = lp.gram(x, normalize=None)
    assert g.dtype == torch.float32 and torch.isfinite(g).all() and g[0, 0, 0].item() == 160000.0
    assert lp.gram(x).dtype == torch.float32 and lp.gram(x)[0, 0, 0].item() == 400.0
    s = lp.rank1_pool(x, torch.ones(4, 2, dtype=dt), torch.ones(4, dtype=dt))  # mean of (X a)(X b) = 80 · 80
    assert_close(s, torch.full((1, 2), 80.0 * 80.0), terms=0)  # float32, and exact: every term is an integer


def test_attention_transforms():
    rng = np.random.default_rng(1)
    x, A, b = rng.standard_normal((2, 7, 3)), rng.standard_normal((3, 4)), rng.standard_normal(3)
    _, soft = lp.attention_maps(x, A, b, attention="softmax")
    # softmax weights average 1 over the n = 7 positions: uniform logits give mean pooling
    # float64, n = 7 positions, f = 3 channels: exp, a 7-term sum and a division, each side
    terms = 2 * (3 + 7 + 4)
    assert (soft > 0).all()
    assert_close(soft.mean(1), np.ones((2,)), terms=terms)
    assert_close(lp.attention_weights(x @ b, attention="softmax"), soft, terms=terms)
    e = np.exp(x @ b - (x @ b).max(1, keepdims=True))
    assert_close(soft, 7 * e / e.sum(1, keepdims=True), terms=terms)
    _, relu = lp.attention_maps(x, A, b, attention="relu")
    assert np.array_equal(relu, np.maximum(x @ b, 0))
    for att in ("softmax", "relu"):
        top, bottom = lp.attention_maps(x, A, b, attention=att)
        assert_close(lp.rank1_pool(x, A, b, attention=att), (top * bottom[..., None]).mean(1), terms=terms, scale="max")
    # softmax is exactly weighted-average pooling: shifting X b by a constant changes nothing
    x1 = np.concatenate([x, np.ones((2, 7, 1))], axis=2)
    A1 = np.concatenate([A, np.zeros((1, 4))])
    s0 = lp.rank1_pool(x1, A1, np.append(b, 0.0), attention="softmax")
    s1 = lp.rank1_pool(x1, A1, np.append(b, 5.0), attention="softmax")
    assert_close(s0, s1, terms=terms, scale="max")


def test_keep_spatial_maps_follow_the_grid():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 4, 5))  # NCHW: f=3, H=4, W=5
    A, b = rng.standard_normal((3, 6)), rng.standard_normal(3)
    top, bottom = lp.attention_maps(x, A, b, channel_axis=1, keep_spatial=True)
    assert top.shape == (2, 6, 4, 5) and bottom.shape == (2, 4, 5)
    # f = 3 products each way
    assert_close(top, np.einsum("bfhw,fk->bkhw", x, A), terms=2 * 3, scale=np.einsum("bfhw,fk->bkhw", abs(x), abs(A)))
    assert_close(bottom, np.einsum("bfhw,f->bhw", x, b), terms=2 * 3, scale=np.einsum("bfhw,f->bhw", abs(x), abs(b)))


@pytest.mark.parametrize("channel_axis", [-1, 1])
def test_torch_gradients_match_finite_differences(channel_axis):
    g = torch.Generator().manual_seed(0)
    shape = (2, 5, 3) if channel_axis == -1 else (2, 3, 2, 2)
    f = 3
    x = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    A = torch.randn(f, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(f, generator=g, dtype=torch.float64, requires_grad=True)
    AP = torch.randn(f, 4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    BP = torch.randn(f, 4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    Bs = torch.randn(f, 2, generator=g, dtype=torch.float64, requires_grad=True)
    kw = {"channel_axis": channel_axis}
    for att in ("linear", "softmax", "relu"):
        assert torch.autograd.gradcheck(lambda *t, att=att: lp.rank1_pool(*t, attention=att, **kw), (x, A, b))
        for B in (BP, Bs):
            assert torch.autograd.gradcheck(lambda *t, att=att: lp.rankp_pool(*t, attention=att, **kw), (x, AP, B))
        assert torch.autograd.gradcheck(lambda *t, att=att: lp.attention_maps(*t, attention=att, **kw), (x, A, b))
    assert torch.autograd.gradcheck(lambda *t: lp.first_order_pool(*t, reduce="mean", **kw), (x, A))
    W = torch.randn(4, f, f, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: lp.bilinear_pool(x, w, channel_axis=channel_axis), (x, W))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_results_stay_on_the_device():  # pragma: no cover - needs a GPU
    x = torch.randn(2, 5, 3, device="cuda")
    A, b = torch.randn(3, 4, device="cuda"), torch.randn(3, device="cuda")
    s = lp.rank1_pool(x, A, b)
    assert s.device == x.device
    assert_close(s, lp.rank1_pool(x.cpu(), A.cpu(), b.cpu()), terms=16, scale=s.abs().max().item() + 1)
