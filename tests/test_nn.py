"""torch layers: parity with the functional core, gradients, memory, state, autocast, compile, errors."""

from __future__ import annotations

import copy
import io
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import lowrank_pool as lp  # noqa: E402
from lowrank_pool.nn import (  # noqa: E402
    AttentionalPool,
    BilinearPool,
    CPPool,
    FirstOrderPool,
    PoseAttentionalPool,
    TuckerPool,
    keypoint_heatmaps,
    pose_loss,
    replace_head,
)
from lowrank_pool.testing import assert_close  # noqa: E402

F_IN, K = 6, 4


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def make_layers(dtype=torch.float64):
    kw = {"generator": gen(), "dtype": dtype}
    return {
        "first_mean": FirstOrderPool(F_IN, K, **kw),
        "first_max": FirstOrderPool(F_IN, K, reduce="max", **kw),
        "bilinear": BilinearPool(F_IN, K, **kw),
        "bilinear_msqrt": BilinearPool(F_IN, K, normalize="matrix_sqrt+l2", reduce_dim=3, **kw),
        "attn1": AttentionalPool(F_IN, K, **kw),
        "attn3_softmax": AttentionalPool(F_IN, K, 3, attention="softmax", **kw),
        "attn2_perclass": AttentionalPool(F_IN, K, 2, bottom_up="per_class", attention="relu", bias=True, **kw),
        "cp": CPPool(F_IN, K, 3, **kw),
        "cp_dense": CPPool(F_IN, K, 3, path="dense", **kw),
        "tucker": TuckerPool(F_IN, K, (2, 3, 3), **kw),
        "pose": PoseAttentionalPool(F_IN, K, num_keypoints=3, **kw),
        "pose_hidden": PoseAttentionalPool(F_IN, K, num_keypoints=3, hidden=5, attention="softmax", **kw),
    }


def scores(layer, x):
    out = layer(x)
    return out.scores if isinstance(out, tuple) and hasattr(out, "scores") else out


def functional(name, layer, x):
    """The same scores from the functional core on the (B, n, f) layout."""
    ax = 1 if x.ndim > 3 else -1
    b = getattr(layer, "bias", None)
    add = (lambda s: s + b) if b is not None else (lambda s: s)
    if name.startswith("first"):
        return add(lp.first_order_pool(x, layer.weight, reduce=layer.reduce, channel_axis=ax))
    if name == "bilinear":
        g = lp.l2_normalize(lp.signed_sqrt(lp.gram(x, normalize="mean", channel_axis=ax)), axis=(-2, -1))
        return add(torch.einsum("bij,kij->bk", g, layer.weight))
    if name.startswith("attn"):
        return add(lp.rankp_pool(x, layer.A, layer.B, attention=layer.attention, channel_axis=ax))
    if name.startswith("cp"):
        return lp.bilinear_pool(x, lp.to_dense((None, [layer.U, layer.A, layer.C])), channel_axis=ax)
    if name == "tucker":
        return lp.bilinear_pool(x, lp.to_dense((layer.core, [layer.U, layer.A, layer.C])), channel_axis=ax)
    return None


@pytest.mark.parametrize("layout", ["bnf", "nchw", "channels_last", "video"])
def test_layers_match_the_functional_core(layout):
    g = gen(1)
    if layout == "bnf":
        x = torch.randn(3, 10, F_IN, generator=g, dtype=torch.float64)
    elif layout == "video":
        x = torch.randn(3, F_IN, 2, 3, 2, generator=g, dtype=torch.float64)
    else:
        x = torch.randn(3, F_IN, 2, 5, generator=g, dtype=torch.float64)
        if layout == "channels_last":
            x = x.to(memory_format=torch.channels_last)
    ref_x = x.contiguous()
    for name, layer in make_layers().items():
        got = scores(layer, x)
        assert got.shape == (3, K) and got.dtype == torch.float64, name
        ref = functional(name, layer, ref_x)
        if ref is not None:
            assert_close(got, ref, terms=200, scale=ref.abs().max().item() + 1), name
        # every layout gives the same scores as the (B, n, f) layout
        bnf = ref_x.flatten(2).mT if ref_x.ndim > 3 else ref_x
        assert_close(got, scores(layer, bnf.contiguous()), terms=200, scale=got.abs().max().item() + 1), name


def test_attentional_maps_on_the_grid():
    layer = AttentionalPool(F_IN, K, generator=gen(), dtype=torch.float64, return_maps=True)
    x = torch.randn(2, F_IN, 3, 5, dtype=torch.float64)
    s, (top, bottom) = layer(x)
    assert top.shape == (2, K, 3, 5) and bottom.shape == (2, 3, 5)
    assert torch.allclose((top * bottom[:, None]).sum((2, 3)), s)
    assert torch.allclose(s, layer(x, return_maps=False))
    lay3 = AttentionalPool(F_IN, K, 3, generator=gen(), dtype=torch.float64)
    s3, (top3, bottom3) = lay3(x, return_maps=True)
    assert top3.shape == (2, K, 3, 3, 5) and bottom3.shape == (2, 3, 3, 5)
    assert torch.allclose(s3, lay3(x))
    pc = AttentionalPool(F_IN, K, 2, bottom_up="per_class", generator=gen(), dtype=torch.float64)
    sp, (tp, bp) = pc(x, return_maps=True)
    assert tp.shape == (2, K, 2, 3, 5) and bp.shape == (2, K, 2, 3, 5) and torch.allclose(sp, pc(x))


@pytest.mark.parametrize("attention", ["linear", "softmax", "relu"])
@pytest.mark.parametrize("nchw", [False, True])
def test_fused_kernel_gradients(attention, nchw):
    """gradcheck of the custom autograd Function, and equality with plain autograd of the einsum form."""
    g = gen(2)
    x = (
        torch.randn(2, F_IN, 2, 3, generator=g, dtype=torch.float64)
        if nchw
        else torch.randn(2, 6, F_IN, generator=g, dtype=torch.float64)
    )
    x.requires_grad_()
    A = torch.randn(F_IN, K, 2, generator=g, dtype=torch.float64, requires_grad=True)
    B = torch.randn(F_IN, 2, generator=g, dtype=torch.float64, requires_grad=True)
    ax = 1 if nchw else -1
    fn = lambda x, A, B: lp.rankp_pool(x, A, B, attention=attention, channel_axis=ax)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, A, B))
    xb = x.flatten(2).mT if nchw else x
    z = torch.einsum("bnf,fp->bnp", xb, B)
    u = {"linear": z, "relu": torch.relu(z), "softmax": torch.softmax(z, dim=1)}[attention]
    plain = torch.einsum("bnf,fkp,bnp->bk", xb, A, u)
    w = torch.randn(2, K, dtype=torch.float64)
    grads = torch.autograd.grad((fn(x, A, B) * w).sum(), (x, A, B))
    plain_grads = torch.autograd.grad((plain * w).sum(), (x, A, B))
    for a, b in zip(grads, plain_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def _saved_bytes(fn, *inputs):
    """Bytes autograd keeps for backward, beyond storages the inputs/parameters already own."""
    owned = {t.untyped_storage().data_ptr() for t in inputs}
    total = 0

    def pack(t):
        nonlocal total
        if t.untyped_storage().data_ptr() not in owned:
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return total, out


def test_fused_kernel_saves_almost_nothing_for_backward():
    """AttentionalPool(512, 100) on (32, 512, 14, 14): the yardstick shape of the issue."""
    layer = AttentionalPool(512, 100, generator=gen())
    x = torch.randn(32, 512, 14, 14, requires_grad=True)
    saved, out = _saved_bytes(lambda: layer(x), x, layer.A, layer.B)
    # U (B, 1, n) and V (B, 1, f), plus the (P·f, K) re-layout of A: 0.27 MiB
    assert saved < 0.5 * 2**20, saved
    out.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape and x.grad.is_contiguous()
    # plain autograd of the one-GEMM form keeps the (B, K+1, n) projection and more
    a, b = layer.A[:, :, 0], layer.B[:, 0]
    saved_plain, _ = _saved_bytes(lambda: _gemm_form(x, a, b), x, layer.A, layer.B)
    assert saved_plain > 5 * saved


def _gemm_form(x, a, b):
    z = torch.cat([a, b[:, None]], 1).mT @ x.flatten(2)  # (B, K+1, n)
    return (z[:, :-1] * z[:, -1:]).sum(-1)


def test_state_dict_dtype_pickle_and_determinism():
    x = torch.randn(2, F_IN, 3, 3, dtype=torch.float64)
    for name, layer in make_layers().items():
        twin = make_layers()[name]
        for p, q in zip(layer.parameters(), twin.parameters(), strict=True):
            assert torch.equal(p, q), name  # the same generator seed gives the same init
        ref = scores(layer, x)
        for p in twin.parameters():
            torch.nn.init.zeros_(p)
        twin.load_state_dict(layer.state_dict())
        assert torch.equal(scores(twin, x), ref), name
        buf = io.BytesIO()
        torch.save(layer.state_dict(), buf)
        clone = pickle.loads(pickle.dumps(layer))
        assert torch.equal(scores(clone, x), ref) and torch.equal(scores(copy.deepcopy(layer), x), ref), name
        single = layer.to(torch.float32)
        assert scores(single, x.float()).dtype == torch.float32, name
        assert repr(layer).startswith(type(layer).__name__ + "(" + str(F_IN)), name


def test_autocast_bfloat16():
    x = torch.randn(4, F_IN, 5, 5)
    for name, layer in make_layers(torch.float32).items():
        ref = scores(layer, x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = scores(layer, x)
        assert torch.isfinite(got).all(), name
        # bfloat16 rounds every GEMM input: errors of a few 2^-8 of the score scale
        assert (got.float() - ref).abs().max() <= 0.1 * (ref.abs().max() + 1), name
    half = torch.randn(4, F_IN, 5, 5).to(torch.bfloat16)
    layer = AttentionalPool(F_IN, K, generator=gen(), dtype=torch.bfloat16)
    assert layer(half).dtype == torch.float32  # Gram-like sums accumulate in float32


# torch 2.13's dynamo instantiates autograd.Function classes while tracing them and warns about it
@pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")
def test_compile_has_no_graph_breaks():
    """Dynamo traces the whole forward+backward of the fused path (fullgraph=True raises on a break)."""
    layer = AttentionalPool(F_IN, K, 2, attention="softmax", generator=gen())
    x = torch.randn(3, F_IN, 4, 4, requires_grad=True)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.sum().backward()
    ref_x = x.detach().clone().requires_grad_()
    ref = layer(ref_x)
    ref.sum().backward()
    assert torch.allclose(out, ref, atol=1e-5) and torch.allclose(x.grad, ref_x.grad, atol=1e-5)


def test_torch_func_grad_and_vmap():
    A = torch.randn(F_IN, K, 1, dtype=torch.float64)
    B = torch.randn(F_IN, 1, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 5, F_IN, dtype=torch.float64)
    gA = torch.func.grad(lambda a: lp.rankp_pool(x, a, B).sum())(A.requires_grad_())
    ref = torch.autograd.grad(lp.rankp_pool(x, A, B).sum(), A)[0]
    assert torch.allclose(gA, ref)


def test_cp_and_tucker_layers_from_dense_and_factors():
    g = np.random.default_rng(0)
    a = g.standard_normal((F_IN, 2))
    W = torch.from_numpy(np.einsum("kr,ir,jr->kij", g.standard_normal((K, 2)), a, a))
    x = torch.randn(2, 7, F_IN, dtype=torch.float64)
    ref = lp.bilinear_pool(x, W)
    cp = CPPool.from_dense(W, 2)
    assert cp.A.shape == (F_IN, 2) and torch.allclose(cp(x), ref, atol=1e-8)
    tk = TuckerPool.from_dense(W, (K, 2, 2), fit={"n_iter_max": 200}, path="factorized")
    assert tk.path == "factorized"
    assert torch.allclose(tk(x), ref, atol=1e-8)
    again = CPPool.from_factors(lp.cp_approx(W, 2), path="factorized")
    assert torch.allclose(again(x), ref, atol=1e-8) and again.path == "factorized"


def test_pose_head_is_rank1_attention_without_hidden_layer():
    layer = PoseAttentionalPool(F_IN, K, num_keypoints=3, generator=gen(), dtype=torch.float64)
    x = torch.randn(2, F_IN, 4, 4, dtype=torch.float64)
    out = layer(x, return_maps=True)
    b = layer.head_weight[:, 3]
    assert torch.allclose(out.scores, lp.rank1_pool(x, layer.A, b, channel_axis=1))
    assert out.keypoint_maps.shape == (2, 3, 4, 4) and out.top_down.shape == (2, K, 4, 4)
    assert torch.allclose((out.top_down * out.bottom_up[:, None]).sum((2, 3)), out.scores)
    # the J keypoint maps are 1x1 convolutions of X
    assert torch.allclose(out.keypoint_maps, torch.einsum("bfhw,fj->bjhw", x, layer.head_weight[:, :3]))


def test_keypoint_heatmaps_and_loss():
    kp = torch.tensor([[[1.0, 2.0], [-1.0, -1.0]]])  # (B=1, J=2): second is not annotated
    vis = torch.tensor([[True, False]])
    maps, mask = keypoint_heatmaps(kp, (4, 5), visible=vis, sigma=1.0)
    assert maps.shape == (1, 2, 4, 5) and mask.tolist() == [[1.0, 0.0]]
    assert maps[0, 0, 2, 1] == 1.0 and maps[0, 0].argmax() == 2 * 5 + 1 and (maps[0, 1] == 0).all()
    assert torch.isclose(maps[0, 0, 2, 2], torch.exp(torch.tensor(-0.5)))
    pred = maps.clone().requires_grad_()
    assert pose_loss(pred, maps, mask) == 0
    other = torch.zeros_like(maps)
    other[0, 1] = 5.0  # the invisible keypoint's prediction does not count
    assert pose_loss(other, maps, mask) == (maps[0, 0] ** 2).mean()


@pytest.mark.parametrize(
    ("call", "exc", "pattern"),
    [
        (
            lambda: AttentionalPool(8, 3)(torch.randn(2, 6, 4, 4)),
            lp.ShapeError,
            r"x: expected 8 channels on axis 1 of a \(B, f, \.\.\.\) input, got shape \(2, 6, 4, 4\)",
        ),
        (
            lambda: AttentionalPool(8, 3)(torch.randn(2, 4, 6)),
            lp.ShapeError,
            r"x: expected 8 channels on axis -1 of a \(B, n, f\) input",
        ),
        (
            lambda: FirstOrderPool(8, 3)(torch.randn(2, 8)),
            lp.ShapeError,
            r"x: expected \(B, n, f\), \(B, f, H, W\) or \(B, f, T, H, W\) with f = 8, got shape \(2, 8\)",
        ),
        (lambda: BilinearPool(8, 3)(np.ones((2, 4, 8))), TypeError, r"x: expected a torch.Tensor, got ndarray"),
        (lambda: AttentionalPool(8, 3, rank=0), ValueError, r"rank: expected a positive int, got 0"),
        (
            lambda: CPPool.from_factors((None, [torch.ones(3, 2), torch.ones(4, 3), torch.ones(4, 2)])),
            lp.ShapeError,
            r"cp factor A: expected shape \(f, R\) with R = 2, got \(4, 3\)",
        ),
        (lambda: AttentionalPool(8, 3, bottom_up="global"), ValueError, r"bottom_up: expected one of"),
        (lambda: BilinearPool(8, 3, normalize="power"), ValueError, r"normalize: expected one of"),
        (
            lambda: keypoint_heatmaps(torch.tensor([[[5.0, 1.0]]]), (4, 5)),
            ValueError,
            r"keypoints: visible keypoint \(0, 0\) at \(x, y\) = \(5.0, 1.0\) is outside the 4x5 grid",
        ),
        (
            lambda: keypoint_heatmaps(torch.zeros(1, 2, 3), (4, 5)),
            lp.ShapeError,
            r"keypoints: expected shape \(B, J, 2\)",
        ),
        (
            lambda: keypoint_heatmaps(torch.zeros(1, 2, 2), (4, 5), visible=torch.ones(2, 2)),
            lp.ShapeError,
            r"visible: expected shape \(1, 2\)",
        ),
        (
            lambda: replace_head(torch.nn.Linear(3, 3), AttentionalPool(3, 2)),
            ValueError,
            r"model: found no global-pool \+ classifier pair",
        ),
        (
            lambda: replace_head(_TimmLike(), AttentionalPool(7, 2)),
            ValueError,
            r"pool: expected in_channels = 8 \(the in_features of model.head\), got 7",
        ),
        (
            lambda: replace_head(_TimmLike(), torch.nn.Linear(8, 2)),
            TypeError,
            r"pool: expected a lowrank_pool.nn pooling layer",
        ),
    ],
)
def test_bad_input_is_named(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


class _TimmLike(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 1)
        self.global_pool = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.global_pool(self.stem(x)))


def test_replace_head_timm_convention_trains():
    model = replace_head(_TimmLike(), CPPool(8, 5, 4, generator=gen()))
    x = torch.randn(4, 3, 6, 6)
    out = model(x)
    assert out.shape == (4, 5)
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 3])).backward()
    assert model.stem.weight.grad is not None and model.global_pool.U.grad is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_layers_on_cuda():  # pragma: no cover - needs a GPU
    x = torch.randn(2, F_IN, 4, 4, device="cuda")
    for name, layer in make_layers(torch.float32).items():
        layer = layer.cuda()
        out = scores(layer, x)
        assert out.device.type == "cuda", name
        out.sum().backward()
