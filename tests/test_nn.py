"""torch layers: one shared tester (every layer against its functional form, gradients, state,
dtype rule, bias, maps, init scale), conversions, the fused kernel, compile, vmap, errors."""

from __future__ import annotations

import copy
import io
import math
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import lowrank_pool as lp  # noqa: E402
from lowrank_pool.nn import (  # noqa: E402
    AttentionalPool,
    BilinearPool,
    CompactBilinearPool,
    CPPool,
    EigPool,
    FirstOrderPool,
    PoolingHead,
    PoseAttentionalPool,
    TuckerPool,
    keypoint_heatmaps,
    pose_loss,
    replace_head,
)
from lowrank_pool.testing import assert_close, eps_of  # noqa: E402

F_IN, K = 6, 4
# the tests that take a device run on the CPU, and on CUDA where a GPU answers (tests/test_cuda.py has more)
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
    ),
]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- the registry
# name -> (constructor keyword arguments, class). Every configuration has a functional form below.
CONFIGS = {
    "first_mean": (FirstOrderPool, {}),
    "first_sum": (FirstOrderPool, {"reduce": "sum"}),
    "first_max": (FirstOrderPool, {"reduce": "max"}),
    "bilinear": (BilinearPool, {}),
    "bilinear_plain": (BilinearPool, {"normalize": None}),
    "bilinear_l2": (BilinearPool, {"normalize": "l2"}),
    "bilinear_ssqrt": (BilinearPool, {"normalize": "signed_sqrt"}),
    "bilinear_msqrt": (BilinearPool, {"normalize": "matrix_sqrt"}),
    "bilinear_msqrt_reduce": (BilinearPool, {"normalize": "matrix_sqrt+l2", "reduce_dim": 3}),
    "attn1": (AttentionalPool, {}),
    "attn3_softmax": (AttentionalPool, {"rank": 3, "attention": "softmax"}),
    "attn2_perclass_relu": (AttentionalPool, {"rank": 2, "bottom_up": "per_class", "attention": "relu"}),
    "cp": (CPPool, {"rank": 3}),
    "cp_dense": (CPPool, {"rank": 3, "path": "dense"}),
    "tucker": (TuckerPool, {"rank": (2, 3, 3)}),
    "eig": (EigPool, {"rank": 2}),
    "eig_dense": (EigPool, {"rank": 2, "path": "dense"}),
    "compact": (CompactBilinearPool, {"dim": 64}),
    "compact_plain": (CompactBilinearPool, {"dim": 32, "normalize": None, "seed": 3}),
    "pose": (PoseAttentionalPool, {"num_keypoints": 3}),
    "pose_hidden_softmax": (PoseAttentionalPool, {"num_keypoints": 3, "hidden": 5, "attention": "softmax"}),
}


def make(name, dtype=torch.float64, seed=0, in_channels=F_IN, num_classes=K, **extra):
    cls, kw = CONFIGS[name]
    layer = cls(in_channels, num_classes, **kw, **extra, generator=gen(seed), dtype=dtype)
    if layer.bias is not None:  # a non-zero bias, so that tests see whether it is added once
        with torch.no_grad():
            layer.bias.copy_(torch.linspace(-1, 1, num_classes, dtype=dtype))
    return layer


def scores(layer, x):
    out = layer(x)
    return out.scores if hasattr(out, "scores") else out


def functional(name, layer, x, ax=None):
    """The layer's scores from the public functions (and, where possible, from a dense W)."""
    c = layer.bias if layer.bias is not None else 0.0
    if name.startswith("first"):
        return lp.first_order_pool(x, layer.weight, reduce=layer.reduce, channel_axis=ax) + c
    if name.startswith("bilinear"):
        if layer.reduction is not None:
            x, ax = lp.project_channels(x, layer.reduction, channel_axis=ax), -1
        kw = {"normalize": layer.normalize, "eps": layer.eps, "num_iters": layer.num_iters}
        return lp.bilinear_pool(x, layer.weight * layer.weight_scale, channel_axis=ax, **kw) + c
    if name.startswith("attn"):
        return lp.rankp_pool(x, layer.A, layer.B, attention=layer.attention, channel_axis=ax) + c
    if name.startswith("cp"):
        return lp.bilinear_pool(x, lp.to_dense((None, [layer.U, layer.A, layer.C])), channel_axis=ax) + c
    if name == "tucker":
        return lp.bilinear_pool(x, lp.to_dense((layer.core, [layer.U, layer.A, layer.C])), channel_axis=ax) + c
    if name.startswith("eig"):
        W = lp.to_dense(lp.EigTensor(layer.eigenvalues, layer.eigenvectors))
        return lp.bilinear_pool(x, W, channel_axis=ax) + c
    if name.startswith("compact"):
        psi = lp.compact_bilinear_pool(x, layer.dim, seed=layer.seed, channel_axis=ax)
        if layer.normalize:
            psi = lp.l2_normalize(lp.signed_sqrt(psi, eps=layer.eps))
        return psi @ (layer.weight * layer.weight_scale) + c
    if name.startswith("pose"):
        if layer.hidden_weight is None:
            u = lp.project_channels(x, layer.head_weight, bias=layer.head_bias, channel_axis=ax)[:, :, -1]
        else:
            h = torch.relu(lp.project_channels(x, layer.hidden_weight, bias=layer.hidden_bias, channel_axis=ax))
            u = (h @ layer.head_weight + layer.head_bias)[:, :, -1]
        w = lp.attention_weights(u, attention=layer.attention)
        return lp.first_order_pool(x, layer.A, weights=w, channel_axis=ax) + c
    raise AssertionError(name)


def _inputs(layout, seed=1, dtype=torch.float64):
    g = gen(seed)
    if layout == "bnf":
        return torch.randn(3, 10, F_IN, generator=g, dtype=dtype)
    if layout == "video":
        return torch.randn(3, F_IN, 2, 3, 2, generator=g, dtype=dtype)
    x = torch.randn(3, F_IN, 2, 5, generator=g, dtype=dtype)
    return x.to(memory_format=torch.channels_last) if layout == "channels_last" else x


def _close(got, ref, label="", terms=400):
    assert_close(got, ref, terms=terms, scale=ref.detach().abs().max().item() + 1, label=label)


def _within_the_fit(head, W, x):
    """A head fitted to W scores like W within what the fit left: |⟨ΔW_k, M_b⟩| ≤ ‖ΔW_k‖_F ‖M_b‖_F
    (Cauchy-Schwarz), plus the rounding of either side."""
    want = lp.bilinear_pool(x, W)
    gap = (head(x) - want).abs()
    fit = torch.linalg.matrix_norm(head.to_dense() - W)  # (K,)
    moments = torch.linalg.matrix_norm(lp.gram(x))  # (B,)
    bound = moments[:, None] * fit[None, :] + 400 * eps_of(x.dtype) * (want.abs().max() + 1)
    assert (gap <= bound).all(), (gap - bound).max()


# ----------------------------------------------------------------------------- the shared tester
@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("layout", ["bnf", "nchw", "channels_last", "video"])
def test_layer_matches_its_functional_form(name, layout):
    layer = make(name)
    x = _inputs(layout)
    got = scores(layer, x)
    assert got.shape == (3, K) and got.dtype == torch.float64
    _close(got, functional(name, layer, x.contiguous()), f"{name} vs functional, {layout}")
    # every layout gives the scores of the (B, n, f) layout
    bnf = x.contiguous().flatten(2).mT if x.ndim > 3 else x
    _close(got, scores(layer, bnf.contiguous()), f"{name}, {layout} vs (B, n, f)")


@pytest.mark.parametrize("name", CONFIGS)
def test_layer_channel_axis_option(name):
    """channel_axis=-1 reads (B, H, W, f) images, which the default rule would read as NCHW."""
    layer = make(name, channel_axis=-1)
    ref = make(name)
    x = _inputs("nchw")
    _close(scores(layer, x.permute(0, 2, 3, 1)), scores(ref, x), name)
    assert "channel_axis=-1" in repr(layer)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("device", DEVICES)
def test_layer_gradients(name, device):
    """gradcheck of the scores with respect to the input and every parameter (float64)."""
    layer = make(name).to(device)
    x = _inputs("nchw")[:2, :, :, :3].to(device).requires_grad_()
    params = dict(layer.named_parameters())

    def fn(x, *values):
        out = torch.func.functional_call(layer, dict(zip(params, values, strict=True)), (x,))
        return out.scores if hasattr(out, "scores") else out

    assert torch.autograd.gradcheck(fn, (x, *(p.detach().clone().requires_grad_() for p in params.values())))


@pytest.mark.parametrize("name", CONFIGS)
def test_layer_state_pickle_and_determinism(name):
    layer, twin = make(name), make(name)
    for p, q in zip(layer.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q), name  # the same generator seed gives the same init
    x = _inputs("nchw")
    ref = scores(layer, x)
    for p in twin.parameters():
        torch.nn.init.zeros_(p)
    twin.load_state_dict(layer.state_dict())
    assert torch.equal(scores(twin, x), ref)
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    buf.seek(0)
    assert set(torch.load(buf)) == set(layer.state_dict())
    assert torch.equal(scores(pickle.loads(pickle.dumps(layer)), x), ref)
    assert torch.equal(scores(copy.deepcopy(layer), x), ref)
    assert repr(layer).startswith(f"{type(layer).__name__}({F_IN}, {K}")


@pytest.mark.parametrize("name", CONFIGS)
def test_layer_dtype_rule(name):
    """The functions' rule: float32/float64 promote; float16/bfloat16 compute and return float32."""
    x64 = _inputs("nchw")
    single = make(name, dtype=torch.float32)
    assert scores(single, x64.float()).dtype == torch.float32
    assert scores(single, x64).dtype == torch.float64  # float64 input promotes a float32 head
    double = make(name)
    assert scores(double, x64.float()).dtype == torch.float64
    for half in (torch.float16, torch.bfloat16):
        out = scores(single, x64.to(half))
        assert out.dtype == torch.float32 and torch.isfinite(out).all(), (name, half)
        low = make(name, dtype=half)
        out = scores(low, x64.to(half))
        assert out.dtype == torch.float32 and torch.isfinite(out).all(), (name, half)


@pytest.mark.parametrize("name", CONFIGS)
def test_layer_bias_default_and_value(name):
    """Every head has bias=True by default, initialised to 0, and adds it once."""
    cls, kw = CONFIGS[name]
    layer = cls(F_IN, K, **kw, generator=gen(), dtype=torch.float64)
    assert layer.bias is not None and layer.bias.shape == (K,) and torch.equal(layer.bias, torch.zeros(K).double())
    plain = cls(F_IN, K, **kw, bias=False, generator=gen(), dtype=torch.float64)
    assert plain.bias is None and "bias=False" in repr(plain)
    x = _inputs("nchw")
    with torch.no_grad():
        layer.bias.fill_(2.5)
    _close(scores(layer, x), scores(plain, x) + 2.5, name)


@pytest.mark.parametrize("name", CONFIGS)
def test_initial_scores_are_order_one_on_relu_features(name):
    """On ReLU features of unit-variance pre-activations the first loss is close to ln K."""
    f, k = 64, 10
    layer = make(name, dtype=torch.float32, in_channels=f, num_classes=k, bias=False)
    x = torch.relu(torch.randn(64, f, 7, 7, generator=gen(5)))
    with torch.no_grad():
        s = scores(layer, x)
    std = s.std().item()
    loss = torch.nn.functional.cross_entropy(s, torch.arange(64) % k).item()
    if name == "first_sum":  # a sum over positions grows with n by definition (here 49)
        assert 49 * 0.02 < std < 49 * 3.0, (name, std)
        return
    if name == "first_max":  # the max of 49 ReLU(N(0, 1)) values is about 2.5, not 1
        assert std < 2.5 * 3.0, (name, std)
        return
    assert std < 3.0, (name, std)
    assert abs(loss - math.log(k)) < 1.0, (name, loss)
    assert std > 0.02, (name, std)  # not dead either
    if isinstance(layer, BilinearPool | CompactBilinearPool):  # every normalisation, thanks to weight_scale
        assert std > 0.1, (name, std)


SCALED = [name for name, (cls, _) in CONFIGS.items() if cls in (BilinearPool, CompactBilinearPool)]


@pytest.mark.parametrize("name", SCALED)
def test_bilinear_heads_train_at_the_other_heads_learning_rate(name):
    """AdamW at 1e-3 (a first-order head's rate) on 256 channels: the loss never jumps and falls. Without the
    weight scale an Adam step moved an unnormalised d×d head's scores by lr·d²: here the loss of the plain and
    signed-sqrt heads jumped from 1.6 to 10 and 20 (to 10²–10³ at 2048 channels)."""
    f, k, b = 256, 4, 64
    g = gen(11)
    y = torch.arange(b) % k
    centres = torch.randn(k, f, generator=g)
    x = torch.relu(torch.randn(b, f, 5, 5, generator=g) + 0.3 * centres[y][:, :, None, None])
    y = torch.where(torch.rand(b, generator=g) < 0.3, torch.randint(0, k, (b,), generator=g), y)  # label noise
    layer = make(name, dtype=torch.float32, in_channels=f, num_classes=k)
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-3)
    losses = []
    for _ in range(25):
        loss = torch.nn.functional.cross_entropy(layer(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert max(losses) <= losses[0] + 0.5, (name, [round(v, 2) for v in losses])
    assert losses[-1] < 0.9 * losses[0], (name, [round(v, 2) for v in losses])


def test_weight_scale_is_saved_and_old_states_convert():
    """weight_scale (a power of two) travels in the state dict as weight_scale_bits; a state dict of the same
    head saved before the scale existed (its weight was W) is converted to the same scores, with a warning;
    a malformed one is refused by name."""
    x = _inputs("nchw")
    for name in ("bilinear_plain", "compact"):
        layer = make(name)
        c = layer.weight_scale
        assert c > 0 and math.log2(c) == round(math.log2(c)), (name, c)
        state = layer.state_dict()
        assert torch.equal(state["weight_scale_bits"].view(torch.float64), torch.tensor(c, dtype=torch.float64))
        twin = make(name, seed=3)
        twin._weight_scale = 2.0 * c  # a head built with another scale adopts the saved one
        twin.load_state_dict(state)
        assert twin.weight_scale == c
        assert torch.equal(twin(x), layer(x)), name
        old = {key: v for key, v in state.items() if key != "weight_scale_bits"}
        old["weight"] = state["weight"] * c  # what an earlier version saved: W itself
        fresh = make(name, seed=4)
        with pytest.warns(UserWarning, match="holds no weight_scale_bits"):
            fresh.load_state_dict(old)
        _close(fresh(x), layer(x), f"{name} from a state dict without weight_scale_bits")
        for bad, why in [
            (torch.tensor(1.0), "one-element int64"),
            (torch.tensor(-1.0, dtype=torch.float64).view(torch.int64), "positive"),
        ]:
            with pytest.raises(lp.ArgumentError, match=why):
                make(name).load_state_dict({**state, "weight_scale_bits": bad})


@pytest.mark.parametrize("name", [n for n in CONFIGS if n.startswith(("attn", "pose"))])
def test_layer_maps_are_the_functional_maps(name):
    layer = make(name, return_maps=True)
    x = _inputs("nchw")
    out = layer(x)
    if name.startswith("pose"):
        s, top, bottom = out.scores, out.top_down, out.bottom_up
        assert top.shape == (3, K, 2, 5) and bottom.shape == (3, 2, 5)
        _close((top * bottom[:, None]).mean((2, 3)) + layer.bias, s, name)
        _close(top, lp.project_channels(x, layer.A, keep_spatial=True), name)
        return
    s, maps = out
    assert isinstance(maps, lp.AttentionMaps)
    top, bottom = maps
    rank = layer.rank
    if rank == 1:
        assert top.shape == (3, K, 2, 5) and bottom.shape == (3, 2, 5)
        inner = (top * bottom[:, None]).mean((2, 3))
    else:
        assert top.shape == (3, K, rank, 2, 5)
        b = bottom if layer.bottom_up == "per_class" else bottom[:, None]
        assert b.shape[-4:] == (K if layer.bottom_up == "per_class" else 1, rank, 2, 5)
        inner = (top * b).sum(2).mean((2, 3))
    _close(inner + layer.bias, s, name)
    ref = lp.attention_maps(x, layer.A, layer.B, attention=layer.attention, keep_spatial=True)
    if rank > 1:
        assert torch.equal(ref.top_down, top) and torch.equal(ref.bottom_up, bottom)
    assert torch.equal(layer(x, return_maps=False), s)


@pytest.mark.parametrize("name", [n for n in CONFIGS if n.startswith(("attn", "pose"))])
@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_layer_maps_follow_the_dtype_rule(name, half):
    """Maps of half-precision input come back in float32, like the scores (no crash, no other path)."""
    for head_dtype in (torch.float32, half):
        layer = make(name, dtype=head_dtype, return_maps=True)
        out = layer(_inputs("nchw").to(half))
        tensors = [out.scores, out.top_down, out.bottom_up] if hasattr(out, "scores") else [out[0], *out[1]]
        for t in tensors:
            assert t.dtype == torch.float32 and torch.isfinite(t).all(), (name, head_dtype)


# ----------------------------------------------------------------------------- conversions
def _trained_bilinear(reduce_dim=None, seed=0, cp_rank=None):
    """A plain bilinear head with a non-zero bias (and, with ``cp_rank``, a W of that exact CP rank)."""
    head = BilinearPool(F_IN, K, normalize=None, reduce_dim=reduce_dim, generator=gen(seed), dtype=torch.float64)
    with torch.no_grad():
        head.bias.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64))
        if cp_rank is not None:
            d, g = head.weight.shape[1], gen(seed + 1)
            u, a = (torch.randn(m, cp_rank, generator=g, dtype=torch.float64) for m in (K, d))
            head.weight.copy_(torch.einsum("kr,ir,jr->kij", u, a, a) / head.weight_scale)
    return head


@pytest.mark.parametrize("reduce_dim", [None, 4])
def test_bilinear_head_converts_exactly_at_full_rank(reduce_dim):
    """CPPool / TuckerPool / EigPool.from_dense(head) keep the scores, bias, scale and layout."""
    head = _trained_bilinear(reduce_dim)
    x = _inputs("nchw")
    ref = head(x)
    d = reduce_dim or F_IN
    conv = {"eig": EigPool.from_dense(head, d), "tucker": TuckerPool.from_dense(head, (K, d, d))}
    # CP at full rank is an ALS fit; a W of exact CP rank 2 is recovered to ~1e-12
    low = _trained_bilinear(reduce_dim, cp_rank=2)
    conv_cp = CPPool.from_dense(low, 2, fit={"n_restarts": 3, "stall": 1e-12, "n_iter_max": 5000})
    for name, layer, src in [*((n, c, head) for n, c in conv.items()), ("cp", conv_cp, low)]:
        assert layer.bias is not None and torch.equal(layer.bias, src.bias), name
        assert layer.in_channels == F_IN and layer.num_classes == K, name
        terms = 10**4 if name == "cp" else 2000
        _close(layer(x), src(x), f"{name} from a BilinearPool (reduce_dim={reduce_dim})", terms=terms)
    # a W tensor converts too, without a bias
    eig = EigPool.from_dense(head.to_dense() if reduce_dim is None else head.weight * head.weight_scale, d, bias=False)
    if reduce_dim is None:
        _close(eig(x), ref - head.bias, "EigPool from W")


def test_normalised_bilinear_head_refuses_conversion():
    head = BilinearPool(F_IN, K, generator=gen())
    for cls, rank in ((CPPool, 3), (TuckerPool, 2), (EigPool, 2)):
        with pytest.raises(lp.ArgumentError, match=r"normalize='signed_sqrt\+l2' has no factorised equivalent"):
            cls.from_dense(head, rank)


def test_factor_layers_from_factors_and_conversions():
    g = np.random.default_rng(0)
    a = g.standard_normal((F_IN, 2))
    W = torch.from_numpy(np.einsum("kr,ir,jr->kij", g.standard_normal((K, 2)), a, a))
    x = torch.randn(2, 7, F_IN, dtype=torch.float64)
    ref = lp.bilinear_pool(x, W)
    cp = CPPool.from_dense(W, 2, bias=False)
    assert cp.A.shape == (F_IN, 2)
    _within_the_fit(cp, W, x)
    tk = TuckerPool.from_dense(W, (K, 2, 2), fit={"n_iter_max": 200}, path="factorized", bias=False)
    assert tk.path == "factorized"
    _within_the_fit(tk, W, x)
    again = CPPool.from_factors(lp.cp_approx(W, 2), path="factorized", bias=False)
    assert again.path == "factorized"
    _within_the_fit(again, W, x)
    eig = EigPool.from_factors(lp.eig_approx(W, 2), bias=False)
    _close(eig(x), ref, "eig")  # W is symmetric of rank 2: its two eigenpairs are W, to rounding
    # a CP head is a rank-R attentional head with shared bottom-up B = C: the same scores as the head, to rounding
    rp = lp.cp_to_rankp((None, [cp.U, cp.A, cp.C]))
    _close(lp.rankp_pool(x, rp.A, rp.B), cp(x), "rankp")
    _close(lp.cp_pool(x, lp.rankp_to_cp(rp)), cp(x), "cp")


def test_rank_profile_reports_the_heads_accuracy():
    head = _trained_bilinear()
    x = torch.randn(40, F_IN, 3, 3, generator=gen(3), dtype=torch.float64)
    labels = head(x).argmax(1)
    prof = lp.rank_profile(head, [1, F_IN], features=x, labels=labels, progress=False)
    assert prof.dense_accuracy == 1.0 and prof.accuracy[-1] == 1.0  # the head itself, bias included
    norm = BilinearPool(F_IN, K, generator=gen(1), dtype=torch.float64)
    with torch.no_grad():
        norm.bias.copy_(torch.tensor([3.0, -3.0, 0.0, 0.0], dtype=torch.float64))
    y = norm(x).argmax(1)
    prof = lp.rank_profile(norm, [F_IN], features=x, labels=y, progress=False)
    assert prof.dense_accuracy == 1.0 and prof.accuracy == [1.0]


# ----------------------------------------------------------------------------- the fused kernel
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
    fn = lambda x, A, B: lp.rankp_pool(x, A, B, attention=attention)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, A, B))
    xb = x.flatten(2).mT if nchw else x
    n = xb.shape[1]
    z = torch.einsum("bnf,fp->bnp", xb, B)
    u = {"linear": z, "relu": torch.relu(z), "softmax": n * torch.softmax(z, dim=1)}[attention]
    plain = torch.einsum("bnf,fkp,bnp->bk", xb, A, u) / n
    w = torch.randn(2, K, dtype=torch.float64)
    grads = torch.autograd.grad((fn(x, A, B) * w).sum(), (x, A, B))
    plain_grads = torch.autograd.grad((plain * w).sum(), (x, A, B))
    for a, b in zip(grads, plain_grads, strict=True):
        _close(a, b)


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
    """AttentionalPool(512, 100) on (32, 512, 14, 14): the yardstick shape."""
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


@pytest.mark.parametrize("name", list(CONFIGS))
def test_parameters_work_with_flat_vector_tools(name):
    """Every head's parameters take `.view(-1)`: parameters_to_vector / vector_to_parameters and
    torch.optim.LBFGS (which flattens each gradient with .view) run on them. (A parameter stored as a
    permuted view of another layout, tried once for speed, broke both.)"""
    layer = make(name)
    vec = torch.nn.utils.parameters_to_vector(layer.parameters())
    torch.nn.utils.vector_to_parameters(vec * 1.0, layer.parameters())
    x = torch.randn(2, F_IN, 3, 3, dtype=torch.float64, generator=gen(1))
    opt = torch.optim.LBFGS(layer.parameters(), max_iter=2)

    def closure():
        opt.zero_grad()
        out = layer(x)
        loss = (out[0] if isinstance(out, tuple) else out).square().mean()
        loss.backward()
        return loss

    opt.step(closure)
    assert all(torch.isfinite(p).all() for p in layer.parameters())


def _gemm_form(x, a, b):
    z = torch.cat([a, b[:, None]], 1).mT @ x.flatten(2)  # (B, K+1, n)
    return (z[:, :-1] * z[:, -1:]).mean(-1)


def test_autocast_bfloat16():
    x = torch.randn(4, F_IN, 5, 5)
    for name in CONFIGS:
        layer = make(name, dtype=torch.float32)
        ref = scores(layer, x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = scores(layer, x)
        assert torch.isfinite(got).all(), name
        # bfloat16 rounds every GEMM input: errors of a few 2^-8 of the score scale
        assert (got.float() - ref).abs().max() <= 0.1 * (ref.abs().max() + 1), name


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("device", DEVICES)
def test_training_under_autocast_with_backward_outside_the_block(name, device):
    """The usual bfloat16 loop: forward under autocast, loss and backward() after it; gradients close to float32."""
    layer = make(name, dtype=torch.float32).to(device)
    x = torch.randn(4, F_IN, 5, 5, generator=gen(7)).to(device)
    w = torch.randn(4, K, generator=gen(8)).to(device)
    grads = []
    for amp in (False, True):
        layer.zero_grad()
        xi = x.clone().requires_grad_()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            s = scores(layer, xi)
        (s.float() * w).sum().backward()
        grads.append([xi.grad, *(p.grad for p in layer.parameters())])
    for ref, got in zip(*grads, strict=True):
        assert got is not None and got.dtype == ref.dtype and torch.isfinite(got).all(), name
        # bfloat16 keeps 8 significant bits: every product is off by a few 2^-8 of its scale (the compact
        # sketch and a bilinear M followed by a signed square root stay in float32 under autocast: the
        # root's derivative 1/(2√|m|) would magnify that rounding on their near-zero entries)
        assert (got - ref).abs().max() <= 0.1 * ref.abs().max() + 1e-6, (name, (got - ref).abs().max())


@pytest.mark.parametrize("name", ["bilinear", "bilinear_ssqrt", "compact", "compact_plain"])
def test_signed_sqrt_heads_keep_their_gradients_under_autocast(name):
    """The signed square root's derivative 1/(2√(|m|+ε)) magnifies the rounding of its argument: with M
    or ψ in bfloat16, ∂X of both bilinear heads was off by up to 30 % of its largest entry over these 20
    seeds (234 % at worst over 30 others). M and ψ are computed in float32 under
    autocast: the worst seed stays within 10 %."""
    worst = 0.0
    for seed in range(20):
        layer = make(name, dtype=torch.float32, seed=seed)
        x = torch.randn(4, F_IN, 5, 5, generator=gen(seed))
        w = torch.randn(4, K, generator=gen(seed + 100))
        grads = []
        for amp in (False, True):
            xi = x.clone().requires_grad_()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                s = scores(layer, xi)
            (s.float() * w).sum().backward()
            grads.append(xi.grad)
        worst = max(worst, ((grads[1] - grads[0]).abs().max() / grads[0].abs().max()).item())
    assert worst <= 0.1, worst


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
    _close(out, ref, "scores")
    _close(x.grad, ref_x.grad, "dx")


# torch 2.13's dynamo instantiates autograd.Function classes while tracing them and warns about it
@pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")
@pytest.mark.parametrize(
    "name",
    [
        "first_mean",
        "bilinear",
        "bilinear_msqrt_reduce",
        "compact",
        "attn3_softmax",
        "cp",
        "tucker",
        "eig",
        "pose_hidden_softmax",
    ],
)
def test_every_head_compiles_without_warnings(name):
    """pytest turns warnings into errors: dynamo's warnings about lru_cache-wrapped helpers would fail this."""
    torch._dynamo.reset()
    layer = make(name, dtype=torch.float32)
    x = torch.randn(2, F_IN, 3, 3)
    compiled = torch.compile(layer, backend="aot_eager")
    _close(scores(compiled, x), scores(layer, x), name)


def test_torch_func_grad_and_vmap():
    A = torch.randn(F_IN, K, 1, dtype=torch.float64)
    B = torch.randn(F_IN, 1, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 5, F_IN, dtype=torch.float64)
    gA = torch.func.grad(lambda a: lp.rankp_pool(x, a, B).sum())(A.requires_grad_())
    ref = torch.autograd.grad(lp.rankp_pool(x, A, B).sum(), A)[0]
    _close(gA, ref)
    # vmap over samples, one (1, n, f) batch each, through the fused kernel and through a layer
    per_sample = torch.func.vmap(lambda xi: lp.rankp_pool(xi[None], A, B)[0])(x)
    _close(per_sample, lp.rankp_pool(x, A, B))
    layer = AttentionalPool(F_IN, K, 2, attention="softmax", generator=gen(), dtype=torch.float64)
    xn = torch.randn(3, F_IN, 2, 3, dtype=torch.float64)
    _close(torch.func.vmap(lambda xi: layer(xi[None])[0])(xn), layer(xn))
    # per-sample gradients of the loss with respect to A (vmap of grad)
    grads = torch.func.vmap(torch.func.grad(lambda a, xi: lp.rankp_pool(xi[None], a, B).sum()), in_dims=(None, 0))(A, x)
    _close(grads.sum(0), ref)


def test_pose_head_is_rank1_attention_without_hidden_layer():
    layer = PoseAttentionalPool(F_IN, K, num_keypoints=3, bias=False, generator=gen(), dtype=torch.float64)
    x = torch.randn(2, F_IN, 4, 4, dtype=torch.float64)
    out = layer(x, return_maps=True)
    b = layer.head_weight[:, 3]
    _close(out.scores, lp.rank1_pool(x, layer.A, b))
    assert out.keypoint_maps.shape == (2, 3, 4, 4) and out.top_down.shape == (2, K, 4, 4)
    _close((out.top_down * out.bottom_up[:, None]).mean((2, 3)), out.scores)
    # the J keypoint maps are 1x1 convolutions of X
    _close(out.keypoint_maps, torch.einsum("bfhw,fj->bjhw", x, layer.head_weight[:, :3]))


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


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("call", "exc", "pattern"),
    [
        (
            lambda: AttentionalPool(8, 3)(torch.randn(2, 6, 4, 4)),
            lp.ShapeError,
            r"A: expected shape \(f, K, P\) with f = 6, got \(8, 3, 1\); f is the channel count of X, read by the "
            r"default rule \(channel_axis=None\) as a \(B, f, H, W\) input of shape \(2, 6, 4, 4\), channels on axis "
            r"1; pass channel_axis=-1 if the channels are last",
        ),
        (
            lambda: AttentionalPool(8, 3)(torch.randn(2, 4, 6)),
            lp.ShapeError,
            r"f = 6, got \(8, 3, 1\); f is the channel count of X, read .* as a \(B, n, f\) input of shape "
            r"\(2, 4, 6\), channels on axis 2; pass channel_axis=1 if the channels come first",
        ),
        (
            lambda: FirstOrderPool(8, 3)(torch.randn(2, 8)),
            lp.ShapeError,
            r"X: expected a batch of feature maps with at least 3 dimensions, \(B, n, f\) or \(B, f, H, W\), got "
            r"shape \(2, 8\)",
        ),
        (lambda: BilinearPool(8, 3)(np.ones((2, 4, 8))), lp.BackendError, r"x: expected a torch.Tensor, got ndarray"),
        (lambda: AttentionalPool(8, 3, rank=0), lp.ArgumentError, r"rank: expected a positive int, got 0"),
        (lambda: AttentionalPool(8, 3, rank=1.5), lp.ArgumentTypeError, r"rank: expected a positive int, got float"),
        (lambda: EigPool(8, 3, rank=9), lp.ArgumentError, r"rank: expected at most f = 8 eigenpairs per class"),
        (
            lambda: TuckerPool(8, 3, rank=(4, 2, 2)),
            lp.ArgumentError,
            r"rank: expected \(R_K, R_f, R_f\) <= \(3, 8, 8\)",
        ),
        (
            lambda: CPPool.from_factors((None, [torch.ones(3, 2), torch.ones(4, 3), torch.ones(4, 2)])),
            lp.ShapeError,
            r"cp factor A: expected shape \(f, R\) with R = 2, got \(4, 3\)",
        ),
        (
            lambda: CPPool.from_factors(torch.ones(4, 3)),
            lp.ArgumentTypeError,
            r"form: CPPool cannot hold first-order weights \(f, K\)",
        ),
        (
            lambda: CPPool.from_factors(lp.HeadForm(torch.ones(2, 4, 4), normalize="l2")),
            lp.ArgumentError,
            r"form: scores of a normalised M \(normalize='l2'\) have no cp form",
        ),
        (lambda: CPPool.from_dense(np.ones((2, 3, 3)), 2), lp.ArgumentTypeError, r"W: expected a torch.Tensor"),
        (lambda: AttentionalPool(8, 3, bottom_up="global"), lp.ArgumentError, r"bottom_up: expected one of"),
        (lambda: AttentionalPool(8, 3, return_maps="yes"), lp.ArgumentTypeError, r"return_maps: expected True or"),
        (lambda: BilinearPool(8, 3, normalize="power"), lp.ArgumentError, r"normalize: expected one of"),
        (lambda: BilinearPool(8, 3, eps=-1.0), lp.ArgumentError, r"eps: expected a finite number >= 0"),
        (lambda: FirstOrderPool(8, 3, channel_axis=1.0), lp.ArgumentTypeError, r"channel_axis: expected an int"),
        (lambda: FirstOrderPool(8, 3, dtype=torch.int64), lp.DTypeError, r"dtype: expected a floating torch.dtype"),
        (lambda: FirstOrderPool(8, 3)(torch.ones(2, 8, 3, 3, dtype=torch.int64)), lp.DTypeError, r"X: expected a real"),
        (
            lambda: keypoint_heatmaps(torch.tensor([[[5.0, 1.0]]]), (4, 5)),
            lp.ArgumentError,
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
            lp.ArgumentError,
            r"model: found no global-pool \+ classifier pair",
        ),
        (
            lambda: replace_head(_TimmLike(), AttentionalPool(7, 2)),
            lp.ArgumentError,
            r"pool: expected in_channels = 8 \(the in_features of model.head\), got 7",
        ),
        (
            lambda: replace_head(_TimmLike(), torch.nn.Linear(8, 2)),
            lp.ArgumentTypeError,
            r"pool: expected a lowrank_pool.nn pooling layer",
        ),
    ],
)
def test_bad_input_is_named(call, exc, pattern):
    with pytest.raises(exc, match=pattern) as info:
        call()
    assert isinstance(info.value, lp.LowRankPoolError) and isinstance(info.value, ValueError | TypeError)


class _TimmLike(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 1)
        self.global_pool = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.global_pool(self.stem(x)))


def test_compact_layer_holds_its_hashes_and_follows_its_seed():
    """The sketch (seed, bins, signs) is part of the state: saved, loaded with the weights (a state dict of another
    seed brings its own sketch, never a mix), on the layer's device, following .to(); a changed seed or a weight of
    another sketch size rebuilds it; the sketch size follows the weight."""
    layer = make("compact")
    assert {"sketch_seed", "sketch_bins", "sketch_signs"} <= set(layer.state_dict())
    assert layer.sketch_bins.shape == (2, F_IN) and layer.sketch_signs.dtype == torch.float64
    assert layer.float().sketch_signs.dtype == torch.float32
    layer.double()
    x = _inputs("nchw")
    layer.seed = 5
    assert int(layer.sketch_seed) == 5
    _close(scores(layer, x), functional("compact", layer, x), "compact after seed = 5")
    layer.weight = torch.nn.Parameter(torch.randn(16, K, dtype=torch.float64, generator=gen(2)))
    assert layer.dim == 16
    _close(scores(layer, x), functional("compact", layer, x), "compact after a weight of d = 16")
    with pytest.raises(AttributeError):
        layer.dim = 8  # the sketch size is the weight's
    other = make("compact", seed=1)  # (make's seed draws the weights)
    other.seed = 7
    twin = make("compact", seed=0)
    twin.load_state_dict(other.state_dict())
    assert twin.seed == 7
    _close(scores(twin, x), scores(other, x), "compact after load_state_dict of another seed")
    # X with another channel count than the layer was built for is refused (it was sketched silently)
    with pytest.raises(lp.ShapeError, match=r"^hashes: expected shape \(f,\) with f = 4, got \(6,\); f is the"):
        twin(x[:, :4])


def test_replace_head_timm_convention_trains():
    model = replace_head(_TimmLike(), CPPool(8, 5, 4, generator=gen()))
    x = torch.randn(4, 3, 6, 6)
    out = model(x)
    assert out.shape == (4, 5) and isinstance(model.global_pool, PoolingHead)
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 3])).backward()
    assert model.stem.weight.grad is not None and model.global_pool.U.grad is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_float16_autocast_training_with_a_grad_scaler_on_cuda():  # pragma: no cover - needs a GPU
    x = torch.randn(4, F_IN, 5, 5, device="cuda")
    y = torch.arange(4, device="cuda") % K
    for name in CONFIGS:
        layer = make(name, dtype=torch.float32).cuda()
        scaler = torch.amp.GradScaler("cuda")
        opt = torch.optim.SGD(layer.parameters(), lr=0.1)
        with torch.autocast("cuda", dtype=torch.float16):
            s = scores(layer, x)
        loss = torch.nn.functional.cross_entropy(s.float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        assert all(torch.isfinite(p).all() for p in layer.parameters()), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_layers_on_cuda():  # pragma: no cover - needs a GPU
    x = torch.randn(2, F_IN, 4, 4, device="cuda")
    for name in CONFIGS:
        layer = make(name, dtype=torch.float32).cuda()
        out = scores(layer, x)
        assert out.device.type == "cuda", name
        out.sum().backward()
