"""The contracts every pooling function and every layer honours, written once and run by each public name's own
test class: a class inherits a contract and names its cases (``variants``: keys of ``cases.layouts.POOLS``, or
``configs``: keys of ``cases.nn.CONFIGS``); ``conftest.pytest_generate_tests`` parametrizes the contract's tests
with them, so a failure names the function or layer and the case."""

from __future__ import annotations

import copy
import io
import math
import pickle
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
from cases.autodiff import ATTENTIONS, FIRST, GRAD_DEVICES, LAYOUTS, SECOND, _grad_forms, _grad_inputs, _plain_form  # noqa: E402
from cases.fusion import CONFIGS as FUSIONS  # noqa: E402
from cases.fusion import TERMS, reference  # noqa: E402
from cases.fusion import F as FUSION_F  # noqa: E402
from cases.fusion import G as FUSION_G  # noqa: E402
from cases.fusion import K as FUSION_K  # noqa: E402
from cases.fusion import _inputs as fusion_inputs  # noqa: E402
from cases.fusion import make as make_fusion  # noqa: E402
from cases.identities import check_homogeneous, check_invariant_to_permutation_of_positions  # noqa: E402
from cases.layouts import POOLS, pool_factors  # noqa: E402
from cases.nn import CONFIGS, DEVICES, F_IN, K, _close, _inputs, functional, gen, make, scores  # noqa: E402
from helpers import check_named_error, sizes  # noqa: E402

import lowrank_pool as lp  # noqa: E402
from lowrank_pool.nn import MCB, BilinearPool, CompactBilinearPool  # noqa: E402
from lowrank_pool.testing import assert_close, to_numpy  # noqa: E402


def keep(predicate: Callable[[str], bool]) -> Callable[[Any], Any]:
    """Run a contract test only on the class's cases the predicate keeps (a class must keep at least one)."""

    def mark(fn: Any) -> Any:
        fn.keep = predicate
        return fn

    return mark


def configs_of(layer_class: type) -> tuple[str, ...]:
    """The layer configurations (keys of cases.nn.CONFIGS) built by one layer class."""
    return tuple(name for name, (cls, _) in CONFIGS.items() if cls is layer_class)


class PoolingFunctionContract:
    """A pooling function's layout rule, backend parity, empty batches and derivatives, per variant."""

    variants: ClassVar[tuple[str, ...]] = ()

    @given(
        B=st.integers(0, 2),
        f=st.integers(1, 6),
        spatial=st.sampled_from([(3, 4), (2, 3, 2), (5,)]),
        seed=st.integers(0, 99),
    )
    def test_channel_first_equals_channels_last(self, bk, dtype, variant, B, f, spatial, seed):
        """(B, f, *spatial) with channel_axis=1 (or, for 4-D/5-D input, by default) gives the (B, n, f) result."""
        rng = np.random.default_rng(seed)
        x_last = rng.standard_normal((B, *spatial, f))
        x_first = np.moveaxis(x_last, -1, 1).copy()  # C-contiguous NCHW / NCDHW
        n = int(np.prod(spatial))
        fn = POOLS[variant]
        fac = [bk(a, dtype) for a in pool_factors(rng, f)]
        ref = fn(bk(x_last.reshape(B, n, f), dtype), -1, *fac)
        inputs = [(x_first, 1), (x_last, -1)] + ([(x_first, None)] if len(spatial) > 1 else [])
        for x, ax in inputs:
            got = fn(bk(x, dtype), ax, *fac)
            scale = np.abs(to_numpy(ref)).max(initial=0.0) + 1.0
            assert_close(got, ref, terms=4 * (f * f + n + 8), scale=scale, like=ref, label=f"channel_axis={ax}")

    @given(B=st.integers(0, 3), f=st.integers(1, 6), n=st.integers(1, 8), seed=st.integers(0, 99))
    def test_torch_equals_numpy(self, dtype, variant, B, f, n, seed):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((B, n, f)).astype(dtype)
        fac = [a.astype(dtype) for a in pool_factors(rng, f)]
        got = POOLS[variant](torch.from_numpy(x), -1, *(torch.from_numpy(a) for a in fac))
        want = POOLS[variant](x, -1, *fac)
        assert isinstance(want, np.ndarray)
        scale = np.abs(want).max(initial=0.0) + 1.0
        assert_close(got, want, terms=4 * (f * f + n + 8), scale=scale, like=torch.from_numpy(x))

    @pytest.mark.parametrize("dtype", ["float32", "float64"])
    def test_empty_batch_gives_an_empty_result(self, bk, dtype, variant):
        x = bk(np.zeros((0, 5, 4)), dtype)
        fac = [bk(a, dtype) for a in pool_factors(np.random.default_rng(0), 4)]
        out = POOLS[variant](x, -1, *fac)
        full = POOLS[variant](bk(np.ones((2, 5, 4)), dtype), -1, *fac)
        assert tuple(out.shape) == (0, *tuple(full.shape)[1:]) and out.dtype == x.dtype

    @pytest.mark.parametrize("channel_axis", [-1, 1])
    def test_gradients_match_finite_differences(self, variant, channel_axis):
        """gradcheck with respect to X and every factor (float64), on (B, n, f) and NCHW input."""
        g = torch.Generator().manual_seed(0)
        shape = (2, 5, 3) if channel_axis == -1 else (2, 3, 2, 2)
        x = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
        fac = [torch.from_numpy(a).requires_grad_() for a in pool_factors(np.random.default_rng(0), 3)]
        assert torch.autograd.gradcheck(lambda x, *fac: POOLS[variant](x, channel_axis, *fac), (x, *fac))


class LayerContract:
    """A layer against its functional form in every layout; gradients, state, dtype rule, bias, maps, initial
    scale, optimisers, autocast, compile, empty batches, CUDA: per configuration."""

    configs: ClassVar[tuple[str, ...]] = ()

    @pytest.mark.parametrize("layout", ["bnf", "nchw", "channels_last", "video"])
    def test_layer_matches_its_functional_form(self, config, layout):
        layer = make(config)
        x = _inputs(layout)
        got = scores(layer, x)
        assert got.shape == (3, K) and got.dtype == torch.float64
        _close(got, functional(config, layer, x.contiguous()), f"{config} vs functional, {layout}")
        # every layout gives the scores of the (B, n, f) layout
        bnf = x.contiguous().flatten(2).mT if x.ndim > 3 else x
        _close(got, scores(layer, bnf.contiguous()), f"{config}, {layout} vs (B, n, f)")

    def test_layer_channel_axis_option(self, config):
        """channel_axis=-1 reads (B, H, W, f) images, which the default rule would read as NCHW."""
        layer = make(config, channel_axis=-1)
        ref = make(config)
        x = _inputs("nchw")
        _close(scores(layer, x.permute(0, 2, 3, 1)), scores(ref, x), config)
        assert "channel_axis=-1" in repr(layer)

    @pytest.mark.parametrize("device", DEVICES)
    def test_layer_gradients(self, config, device):
        """gradcheck of the scores with respect to the input and every parameter (float64)."""
        layer = make(config).to(device)
        x = _inputs("nchw")[:2, :, :, :3].to(device).requires_grad_()
        params = dict(layer.named_parameters())

        def fn(x, *values):
            out = torch.func.functional_call(layer, dict(zip(params, values, strict=True)), (x,))
            return out.scores if hasattr(out, "scores") else out

        assert torch.autograd.gradcheck(fn, (x, *(p.detach().clone().requires_grad_() for p in params.values())))

    def test_layer_state_pickle_and_determinism(self, config):
        layer, twin = make(config), make(config)
        for p, q in zip(layer.parameters(), twin.parameters(), strict=True):
            assert torch.equal(p, q), config  # the same generator seed gives the same init
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

    def test_layer_dtype_rule(self, config):
        """The functions' rule: float32/float64 promote; float16/bfloat16 compute and return float32."""
        x64 = _inputs("nchw")
        single = make(config, dtype=torch.float32)
        assert scores(single, x64.float()).dtype == torch.float32
        assert scores(single, x64).dtype == torch.float64  # float64 input promotes a float32 head
        double = make(config)
        assert scores(double, x64.float()).dtype == torch.float64
        for half in (torch.float16, torch.bfloat16):
            out = scores(single, x64.to(half))
            assert out.dtype == torch.float32 and torch.isfinite(out).all(), (config, half)
            low = make(config, dtype=half)
            out = scores(low, x64.to(half))
            assert out.dtype == torch.float32 and torch.isfinite(out).all(), (config, half)

    def test_layer_bias_default_and_value(self, config):
        """Every head has bias=True by default, initialised to 0, and adds it once."""
        cls, kw = CONFIGS[config]
        layer = cls(F_IN, K, **kw, generator=gen(), dtype=torch.float64)
        assert layer.bias is not None and layer.bias.shape == (K,) and torch.equal(layer.bias, torch.zeros(K).double())
        plain = cls(F_IN, K, **kw, bias=False, generator=gen(), dtype=torch.float64)
        assert plain.bias is None and "bias=False" in repr(plain)
        x = _inputs("nchw")
        with torch.no_grad():
            layer.bias.fill_(2.5)
        _close(scores(layer, x), scores(plain, x) + 2.5, config)

    def test_initial_scores_are_order_one_on_relu_features(self, config):
        """On ReLU features of unit-variance pre-activations the first loss is close to ln K."""
        f, k = 64, 10
        layer = make(config, dtype=torch.float32, in_channels=f, num_classes=k, bias=False)
        x = torch.relu(torch.randn(64, f, 7, 7, generator=gen(5)))
        with torch.no_grad():
            s = scores(layer, x)
        std = s.std().item()
        loss = torch.nn.functional.cross_entropy(s, torch.arange(64) % k).item()
        if config == "first_sum":  # a sum over positions grows with n by definition (here 49)
            assert 49 * 0.02 < std < 49 * 3.0, (config, std)
            return
        if config == "first_max":  # the max of 49 ReLU(N(0, 1)) values is about 2.5, not 1
            assert std < 2.5 * 3.0, (config, std)
            return
        assert std < 3.0, (config, std)
        assert abs(loss - math.log(k)) < 1.0, (config, loss)
        assert std > 0.02, (config, std)  # not dead either
        if isinstance(layer, BilinearPool | CompactBilinearPool):  # every normalisation, thanks to weight_scale
            assert std > 0.1, (config, std)

    def test_parameters_work_with_flat_vector_tools(self, config):
        """Every head's parameters take `.view(-1)`: parameters_to_vector / vector_to_parameters and
        torch.optim.LBFGS (which flattens each gradient with .view) run on them. (A parameter stored as a
        permuted view of another layout, tried once for speed, broke both.)"""
        layer = make(config)
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

    @pytest.mark.parametrize("device", DEVICES)
    def test_training_under_autocast_with_backward_outside_the_block(self, config, device):
        """The usual bfloat16 loop: forward under autocast, loss and backward() after it; gradients close to float32."""
        layer = make(config, dtype=torch.float32).to(device)
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
            assert got is not None and got.dtype == ref.dtype and torch.isfinite(got).all(), config
            # bfloat16 keeps 8 significant bits: every product is off by a few 2^-8 of its scale (the compact
            # sketch and a bilinear M followed by a signed square root stay in float32 under autocast: the
            # root's derivative 1/(2√|m|) would magnify that rounding on their near-zero entries)
            assert (got - ref).abs().max() <= 0.1 * ref.abs().max() + 1e-6, (config, (got - ref).abs().max())

    # torch 2.13's dynamo instantiates autograd.Function classes while tracing them and warns about it
    @pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")
    @keep(
        lambda config: (
            config
            in {
                "first_mean",
                "bilinear",
                "bilinear_msqrt_reduce",
                "compact",
                "attn3_softmax",
                "cp",
                "tucker",
                "eig",
                "pose_hidden_softmax",
            }
        )
    )
    def test_every_head_compiles_without_warnings(self, config):
        """pytest turns warnings into errors: dynamo's warnings about lru_cache-wrapped helpers would fail this."""
        torch._dynamo.reset()
        layer = make(config, dtype=torch.float32)
        x = torch.randn(2, F_IN, 3, 3)
        compiled = torch.compile(layer, backend="aot_eager")
        _close(scores(compiled, x), scores(layer, x), config)

    def test_autocast_bfloat16(self, config):
        x = torch.randn(4, F_IN, 5, 5)
        layer = make(config, dtype=torch.float32)
        ref = scores(layer, x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = scores(layer, x)
        assert torch.isfinite(got).all()
        # bfloat16 rounds every GEMM input to 8 significant bits: a few 2^-8 of the score scale, summed over the
        # f = 6 channels' products (0.1 = 25 · 2^-8)
        assert (got.float() - ref).abs().max() <= 0.1 * (ref.abs().max() + 1)

    def test_empty_batch_gives_empty_scores(self, config):
        out = make(config)(torch.zeros(0, F_IN, 3, 3, dtype=torch.float64))
        s = out.scores if hasattr(out, "scores") else out
        assert s.shape == (0, K)

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
    def test_float16_autocast_training_with_a_grad_scaler_on_cuda(self, config):  # pragma: no cover - needs a GPU
        x = torch.randn(4, F_IN, 5, 5, device="cuda")
        y = torch.arange(4, device="cuda") % K
        layer = make(config, dtype=torch.float32).cuda()
        scaler = torch.amp.GradScaler("cuda")
        opt = torch.optim.SGD(layer.parameters(), lr=0.1)
        with torch.autocast("cuda", dtype=torch.float16):
            s = scores(layer, x)
        loss = torch.nn.functional.cross_entropy(s.float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        assert all(torch.isfinite(p).all() for p in layer.parameters())

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
    def test_on_cuda(self, config):  # pragma: no cover - needs a GPU
        x = torch.randn(2, F_IN, 4, 4, device="cuda")
        layer = make(config, dtype=torch.float32).cuda()
        out = scores(layer, x)
        assert out.device.type == "cuda"
        out.sum().backward()


class MapsLayerContract(LayerContract):
    """The attentional layers' maps (``return_maps=True``) against the functional maps, and their dtype rule."""

    def test_layer_maps_are_the_functional_maps(self, config):
        layer = make(config, return_maps=True)
        x = _inputs("nchw")
        out = layer(x)
        if config.startswith("pose"):
            s, top, bottom = out.scores, out.top_down, out.bottom_up
            assert top.shape == (3, K, 2, 5) and bottom.shape == (3, 2, 5)
            _close((top * bottom[:, None]).mean((2, 3)) + layer.bias, s, config)
            _close(top, lp.project_channels(x, layer.A, keep_spatial=True), config)
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
        _close(inner + layer.bias, s, config)
        ref = lp.attention_maps(x, layer.A, layer.B, attention=layer.attention, keep_spatial=True)
        if rank > 1:
            assert torch.equal(ref.top_down, top) and torch.equal(ref.bottom_up, bottom)
        assert torch.equal(layer(x, return_maps=False), s)

    @pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
    def test_layer_maps_follow_the_dtype_rule(self, config, half):
        """Maps of half-precision input come back in float32, like the scores (no crash, no other path)."""
        for head_dtype in (torch.float32, half):
            layer = make(config, dtype=head_dtype, return_maps=True)
            out = layer(_inputs("nchw").to(half))
            tensors = [out.scores, out.top_down, out.bottom_up] if hasattr(out, "scores") else [out[0], *out[1]]
            for t in tensors:
                assert t.dtype == torch.float32 and torch.isfinite(t).all(), (config, head_dtype)


class AttentionDerivativesContract:
    """The fused attentional Function (``form``: "rank1" or "rankp") against plain autograd of the literal formula
    s_k = (1/n) Σ_p (X a_kp)ᵀ σ(X b_p): second derivatives (gradgradcheck, gradient penalties) and forward mode
    (jvp, jacfwd, hessian), on every attention, layout and device."""

    form: ClassVar[str] = ""

    @pytest.mark.parametrize("attention", ATTENTIONS)
    @pytest.mark.parametrize("layout", LAYOUTS)
    @pytest.mark.parametrize("device", GRAD_DEVICES)
    def test_gradgradcheck(self, attention, layout, device):
        x, A, B = (t.requires_grad_() for t in _grad_inputs(layout, device=device))
        assert torch.autograd.gradgradcheck(_grad_forms(attention)[self.form], (x, A, B))

    @pytest.mark.parametrize("attention", ATTENTIONS)
    @pytest.mark.parametrize("layout", LAYOUTS)
    @pytest.mark.parametrize("device", GRAD_DEVICES)
    def test_gradient_penalty_matches_plain_autograd(self, attention, layout, device):
        """g = ∇_X Σ s², then ∇ of Σ g² with respect to X, A and B, as a gradient penalty computes it."""
        name, fn = self.form, _grad_forms(attention)[self.form]
        ref_fn = _plain_form(name, attention)
        results = []
        for f in (fn, ref_fn):
            x, A, B = (t.requires_grad_() for t in _grad_inputs(layout, device=device))
            s = f(x, A, B)
            (g,) = torch.autograd.grad(s.square().sum(), x, create_graph=True)
            results.append(torch.autograd.grad(g.square().sum(), (x, A, B)))
        for got, ref in zip(*results, strict=True):
            assert_close(got, ref, terms=SECOND, scale="max", label=name)

    # torch's forward_ad module scripts a helper with torch.jit.script, which torch 2.13 deprecates
    @pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
    @pytest.mark.parametrize("attention", ATTENTIONS)
    @pytest.mark.parametrize("layout", LAYOUTS)
    @pytest.mark.parametrize("device", GRAD_DEVICES)
    def test_forward_mode_matches_plain(self, attention, layout, device):
        x, A, B = _grad_inputs(layout, device=device)
        tangents = _grad_inputs(layout, seed=1, device=device)
        name, fn = self.form, _grad_forms(attention)[self.form]
        ref_fn = _plain_form(name, attention)
        # the dual-tensor API, with inputs that require grad (the fused kernel runs, through its jvp)
        fwd = torch.autograd.forward_ad
        with fwd.dual_level():
            duals = [fwd.make_dual(t.clone().requires_grad_(), d) for t, d in zip((x, A, B), tangents, strict=True)]
            got = fwd.unpack_dual(fn(*duals)).tangent
        _, ref = torch.func.jvp(ref_fn, (x, A, B), tangents)
        assert_close(got, ref, terms=FIRST, scale="max", label=name)
        # torch.func.jacfwd and hessian (forward over reverse)
        xr = x.clone().requires_grad_()
        jac = torch.func.jacfwd(lambda x, fn=fn: fn(x, A, B))(xr)
        ref_jac = torch.func.jacfwd(lambda x, f=ref_fn: f(x, A, B))(x)
        assert_close(jac, ref_jac, terms=FIRST, scale="max", label=name)
        hess = torch.func.hessian(lambda x, fn=fn: fn(x, A, B).sum())(xr)
        ref_hess = torch.func.hessian(lambda x, f=ref_fn: f(x, A, B).sum())(x)
        assert_close(hess, ref_hess, terms=SECOND, scale="max", label=name)


class FusionContract:
    """A two-input head against its documented decomposition written out in float64 (vectors and maps of every
    layout); gradients, state, pickling, initial scale and a learning step: per configuration (``configs``: keys
    of ``cases.fusion.CONFIGS``)."""

    configs: ClassVar[tuple[str, ...]] = ()

    def test_factors_and_to_dense_say_what_a_two_input_head_has(self, config):
        """No one-input HeadForm; W (K, f, g) where the scores are bilinear in x and y (activation=None), a named
        refusal where they are not (tanh, MFB's and MCB's normalisations)."""
        layer = make_fusion(config)
        with pytest.raises(lp.ArgumentTypeError, match=r"a two-input head has no one-input factor form"):
            layer.factors()
        if type(layer).__name__ in ("MLB", "Mutan", "Block") and getattr(layer, "activation", None) is None:
            assert tuple(layer.to_dense().shape) == (FUSION_K, FUSION_F, FUSION_G)
        else:
            with pytest.raises(lp.ArgumentTypeError, match=r"not bilinear in x and y"):
                layer.to_dense()

    @pytest.mark.parametrize("kind", ["vectors", "nchw", "bnf"])
    def test_fusion_head_is_its_decomposition(self, config, kind):
        layer = make_fusion(config)
        x, y = fusion_inputs(kind)
        got = layer(x, y)
        want = reference(config, layer, x, y, kind)
        want, scale = want if isinstance(want, tuple) else (want, "max")
        assert got.shape == (4, FUSION_K) and got.dtype == torch.float64
        assert_close(got, want, terms=TERMS, scale=scale, like=x)

    def test_fusion_gradients_state_and_pickle(self, config):
        layer = make_fusion(config)
        x, y = (t.requires_grad_() for t in fusion_inputs("nchw"))
        assert torch.autograd.gradcheck(lambda a, b: layer(a, b), (x, y))
        names = [n for n, _ in layer.named_parameters()]

        def by_parameters(*ps):
            return torch.func.functional_call(layer, dict(zip(names, ps, strict=True)), (x.detach(), y.detach()))

        assert torch.autograd.gradcheck(by_parameters, tuple(layer.parameters()))
        twin = make_fusion(config, seed=5)
        twin.load_state_dict(layer.state_dict())
        assert_close(twin(x, y), layer(x, y), terms=0)
        import pickle

        assert_close(pickle.loads(pickle.dumps(layer))(x, y), layer(x, y), terms=0)

    def test_fusion_initial_scores_are_order_one_and_a_step_learns(self, config):
        cls, kw = FUSIONS[config]
        f, g, k = 64, 48, 10
        kw = {**kw, **({"dim": 256} if cls is MCB else {})}
        layer = cls(f, g, k, **kw, generator=torch.Generator().manual_seed(0))
        gen = torch.Generator().manual_seed(1)
        x, y = torch.relu(torch.randn(64, f, generator=gen)), torch.randn(64, g, generator=gen)
        labels = torch.arange(64) % k
        with torch.no_grad():
            std = layer(x, y).std().item()
        assert 0.05 < std < 3.0, (config, std)
        opt = torch.optim.AdamW(layer.parameters(), lr=1e-3)
        losses = []
        for _ in range(15):
            loss = torch.nn.functional.cross_entropy(layer(x, y), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert max(losses) <= losses[0] + 0.2 and losses[-1] < losses[0], (config, losses)


class BilinearFusionContract(FusionContract):
    """A bilinear two-input head (activation=None) scores like bilinear_pool of the W (K, f, g) it holds."""

    @keep(lambda config: config in {"mlb", "mutan", "block"})
    def test_bilinear_fusions_are_bilinear_pool_of_their_w(self, config):
        """Without the tanh, MLB / Mutan / Block score (1/n) Σ_i x_iᵀ W_k y_i for the W their factors make."""
        layer = make_fusion(config)
        x, y = fusion_inputs("nchw")
        p = {k: v.detach() for k, v in layer.named_parameters()}
        if config == "mlb":
            w = torch.einsum("kr,fr,gr->kfg", p["P"], p["U"], p["V"])
        elif config == "mutan":
            w = torch.einsum("qrs,kq,fr,gs->kfg", p["core"], p["U"], p["A"], p["C"])
        else:
            _, rx, ry = layer.ranks
            w = sum(
                torch.einsum(
                    "qrs,kq,fr,gs->kfg",
                    p["core"][i],
                    p["U"][i],
                    p["A"][:, i * rx : (i + 1) * rx],
                    p["C"][:, i * ry : (i + 1) * ry],
                )
                for i in range(layer.blocks)
            )
        want = lp.bilinear_pool(x, w, Y=y) + p["bias"]
        assert_close(layer(x, y), want, terms=TERMS, scale="max")
        assert_close(layer.to_dense(), w, terms=2 * 6, scale="max")  # the head's own W: the same sums of ≤ 6 terms


class NamedErrorsContract:
    """Each bad call a class names (``bad_calls``: (call, exception type, message regex), from the tables in
    ``cases.errors``, ``cases.factorized`` and ``cases.nn``) raises that package error, which is also a ValueError
    or TypeError, with a message that names the argument, what was expected and what was given."""

    bad_calls: ClassVar[tuple[Any, ...]] = ()

    def test_bad_input_raises_a_named_error(self, bad_call):
        check_named_error(*bad_call)


class IdentityContract:
    """Identities several functions share, on the cases a class names (keys of ``cases.identities``' tables): the
    scores do not depend on the order of the positions, and score(cX) = c^degree · score(X)."""

    permutation_cases: ClassVar[tuple[str, ...]] = ()
    homogeneous_cases: ClassVar[tuple[str, ...]] = ()

    @given(s=sizes(), data=st.data())
    def test_invariant_to_permutation_of_positions(self, bk, dtype, s, data):
        check_invariant_to_permutation_of_positions(bk, dtype, s, data, self.permutation_cases)

    @given(s=sizes(), c=st.floats(0.25, 4.0))
    def test_homogeneous_in_x(self, bk, dtype, s, c):
        check_homogeneous(bk, dtype, s, c, self.homogeneous_cases)
