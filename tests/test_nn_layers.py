"""Tests of lowrank_pool.nn's pooling heads, one class each, and of the PoolingHead protocol (factors, to_dense,
from_factors, from_dense) every head follows."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from cases.autodiff import ATTENTIONS, F_GRAD, GRAD_DEVICES, K_GRAD, P_GRAD, SECOND, _grad_inputs, _plain  # noqa: E402
from cases.heads import ALL, BILINEAR, CLASSES, F_HEAD, K_HEAD, NO_FORM, _gen, _head_close, _head_x, _with_bias  # noqa: E402
from cases.nn import (  # noqa: E402
    F_IN,
    LAYER_ERRORS,
    SCALED,
    K,
    _close,
    _gemm_form,
    _inputs,
    _saved_bytes,
    _trained_bilinear,
    _within_the_fit,
    functional,
    gen,
    make,
    scores,
)
from contracts import (  # noqa: E402
    LayerContract,
    MapsLayerContract,
    NamedErrorsContract,
    configs_of,
)
from helpers import expect_errors  # noqa: E402

import lowrank_pool as lp  # noqa: E402
import lowrank_pool.nn as lnn  # noqa: E402
from lowrank_pool.nn import (  # noqa: E402
    AttentionalPool,
    BilinearPool,
    CompactBilinearPool,
    CPPool,
    EigPool,
    FirstOrderPool,
    TuckerPool,
)
from lowrank_pool.testing import (  # noqa: E402
    assert_close,
)


class TestAttentionalPool(MapsLayerContract, NamedErrorsContract):
    """lowrank_pool.nn.AttentionalPool."""

    configs = configs_of(AttentionalPool)

    bad_calls = tuple(LAYER_ERRORS["AttentionalPool"])

    @pytest.mark.parametrize("attention", ATTENTIONS)
    @pytest.mark.parametrize("device", GRAD_DEVICES)
    def test_layer_hessian_vector_product(self, attention, device):
        """A Hessian-vector product through AttentionalPool's parameters equals that of the plain formula."""
        layer = AttentionalPool(F_GRAD, K_GRAD, P_GRAD, attention=attention, bias=False, dtype=torch.float64).to(device)
        x, _, _ = _grad_inputs("nchw", device=device)
        params = (layer.A, layer.B)
        vec = tuple(torch.randn_like(p) for p in params)
        s = layer(x)
        grads = torch.autograd.grad(s.square().sum(), params, create_graph=True)
        hvp = torch.autograd.grad(sum((g * v).sum() for g, v in zip(grads, vec, strict=True)), params)
        A, B = (p.detach().clone().requires_grad_() for p in params)
        ref_s = _plain(x, A, B, attention)
        ref_grads = torch.autograd.grad(ref_s.square().sum(), (A, B), create_graph=True)
        ref_hvp = torch.autograd.grad(sum((g * v).sum() for g, v in zip(ref_grads, vec, strict=True)), (A, B))
        for got, ref in zip(hvp, ref_hvp, strict=True):
            assert_close(got, ref, terms=SECOND, scale="max")

    def test_fused_kernel_saves_almost_nothing_for_backward(self):
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

    # torch 2.13's dynamo instantiates autograd.Function classes while tracing them and warns about it
    @pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")
    def test_compile_has_no_graph_breaks(self):
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


class TestPoolingHead:
    """lowrank_pool.nn.PoolingHead: the protocol every head follows (factors, to_dense, from_factors, from_dense)."""

    def test_layers_refuse_parameters_that_cannot_fit(self):
        from lowrank_pool.nn import AttentionalPool, BilinearPool, CPPool, EigPool, TuckerPool

        for build in (
            lambda: CPPool(8, 3, rank=10**12),
            lambda: BilinearPool(10**6, 10),
            lambda: AttentionalPool(8, 10**6, rank=10**6),
            lambda: EigPool(10**6, 10**6, rank=4),
            lambda: TuckerPool(10**6, 10**6, rank=(10**6, 10**6, 10**6)),
        ):
            with pytest.raises(
                lp.ArgumentError, match=r"need [\d.e+]+ GiB, more than the [\d.]+ GiB of memory available"
            ):
                build()

    @pytest.mark.parametrize("name", sorted(BILINEAR))
    def test_to_dense_scores_like_the_head(self, name):
        head = _with_bias(BILINEAR[name](_gen(2)), 2)
        x = _head_x(1)
        w = head.to_dense()
        assert w.shape == (K_HEAD, F_HEAD, F_HEAD)
        bias = 0 if head.bias is None else head.bias
        _head_close(lp.bilinear_pool(x, w) + bias, head(x), name)

    @pytest.mark.parametrize("name", ["first-order mean", "normalised", "softmax attention"])
    def test_heads_without_a_w_say_so(self, name):
        head = ALL[name](_gen(3))
        with pytest.raises(lp.ArgumentError, match=r"^obj: .*no W"):
            head.to_dense()

    @pytest.mark.parametrize("name", sorted(NO_FORM))
    def test_heads_without_a_form_say_why(self, name):
        head = NO_FORM[name](_gen(4))
        expect_errors(
            [
                (head.factors, lp.ArgumentTypeError, "no factor form"),
                (head.to_dense, lp.ArgumentTypeError, "no factor form"),
                (lambda: type(head).from_factors(np.ones((K_HEAD, F_HEAD, F_HEAD))), lp.ArgumentTypeError, "not from"),
            ]
        )

    @pytest.mark.parametrize(("source", "target"), list(itertools.product(sorted(BILINEAR), sorted(CLASSES))))
    def test_every_head_converts_to_every_form_and_back(self, source, target):
        """S → T (from_factors, exact) → S's class again: the scores are S's all the way (bias and reduction kept)."""
        head = _with_bias(BILINEAR[source](_gen(5)), 5)
        x = _head_x(2)
        want = head(x)
        converted = CLASSES[target].from_factors(head.factors())
        assert isinstance(converted, CLASSES[target])
        _head_close(converted(x), want, f"{source} as {target}")
        back = type(head).from_factors(converted.factors())
        _head_close(back(x), want, f"{source} as {target} and back")

    @pytest.mark.parametrize("name", ["first-order mean", "first-order max", "softmax attention", "normalised"])
    def test_other_heads_rebuild_from_their_own_factors(self, name):
        head = _with_bias(ALL[name](_gen(6)), 6)
        x = _head_x(3)
        again = type(head).from_factors(head.factors())
        _head_close(again(x), head(x), name)

    def test_conversions_that_would_change_the_scores_are_refused(self):
        first = lnn.FirstOrderPool(F_HEAD, K_HEAD).factors()
        softmax = lnn.AttentionalPool(F_HEAD, K_HEAD, attention="softmax").factors()
        projected_max = lp.HeadForm(np.ones((3, K_HEAD)), projection=np.ones((F_HEAD, 3)), reduce="max")
        expect_errors(
            [
                (lambda: lnn.CPPool.from_factors(first), lp.ArgumentTypeError, "cannot hold first-order weights"),
                (
                    lambda: lnn.EigPool.from_factors(lnn.BilinearPool(F_HEAD, K_HEAD).factors()),
                    lp.ArgumentError,
                    "normalised M",
                ),
                (lambda: lnn.CPPool.from_factors(softmax), lp.ArgumentError, "attention='softmax'"),
                (
                    lambda: lnn.FirstOrderPool.from_factors(projected_max),
                    lp.ArgumentError,
                    "reduce='max' cannot fold a projection",
                ),
            ]
        )

    @pytest.mark.parametrize("target", sorted(CLASSES))
    def test_from_dense_is_one_table(self, target):
        """from_dense of a head (bias, channel_axis, reduction carried over) at full rank reproduces its scores."""
        head = _with_bias(BILINEAR["dense reduced"](_gen(7)), 7)
        head.channel_axis = 1
        x = _head_x(4)
        full = {"dense": None, "cp": 3 * 3 * 3, "tucker": (3, 3, 3), "eig": 3, "rankp": 3}[target]  # W lives on d = 3
        if target == "cp":
            pytest.skip("ALS does not promise an exact fit at full CP rank; convert exactly with from_factors")
        converted = CLASSES[target].from_dense(head, full)
        assert converted.channel_axis == 1 and converted.bias is not None
        _head_close(converted(x), head(x), target)

    # ----------------------------------------------------------------------------- layers: state and facts
    def test_layer_facts_follow_their_parameters(self):
        """Ranks and sizes are read from the parameters: replacing them (another rank, another sketch size) changes what
        the layer reports and does, consistently; a size that is the parameters' cannot be set on its own."""
        from lowrank_pool import nn as lnn

        x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
        layer = lnn.AttentionalPool(8, 4, rank=1).double()
        layer.A = torch.nn.Parameter(torch.randn(8, 4, 3, dtype=torch.float64))
        layer.B = torch.nn.Parameter(torch.randn(8, 3, dtype=torch.float64))
        _, (top, bottom) = layer(x, return_maps=True)
        assert layer.rank == 3 and top.shape == (2, 4, 3, 3, 3) and bottom.shape == (2, 3, 3, 3)
        layer.B = torch.nn.Parameter(torch.randn(8, 4, 3, dtype=torch.float64))
        assert layer.bottom_up == "per_class"
        cases = [
            (lnn.CPPool(8, 4, 2), "U", (4, 5), "rank", 5),
            (lnn.EigPool(8, 4, 2), "eigenvalues", (4, 3), "rank", 3),
            (lnn.TuckerPool(8, 4, 2), "core", (2, 3, 3), "ranks", (2, 3, 3)),
            (lnn.BilinearPool(8, 4, reduce_dim=3), "reduction", (8, 5), "reduce_dim", 5),
            (lnn.CompactBilinearPool(8, 4, dim=16), "weight", (32, 4), "dim", 32),
        ]
        for head, name, shape, fact, value in cases:
            setattr(head, name, torch.nn.Parameter(torch.zeros(shape)))
            assert getattr(head, fact) == value, (type(head).__name__, fact)
            with pytest.raises(AttributeError):
                setattr(head, fact, value)

    def test_every_head_state_dict_determines_its_scores(self):
        """Two heads of a class built with different seeds and options that are state: loading one's state_dict into the
        other makes the scores equal (the sketch of compact bilinear pooling included), never a mix."""
        from lowrank_pool import nn as lnn

        x = torch.randn(2, 8, 3, 3)
        builders = {
            "first": lambda g: lnn.FirstOrderPool(8, 4, generator=g),
            "bilinear": lambda g: lnn.BilinearPool(8, 4, reduce_dim=3, generator=g),
            "attentional": lambda g: lnn.AttentionalPool(8, 4, rank=2, generator=g),
            "pose": lambda g: lnn.PoseAttentionalPool(8, 4, 3, generator=g),
            "cp": lambda g: lnn.CPPool(8, 4, 3, generator=g),
            "tucker": lambda g: lnn.TuckerPool(8, 4, 2, generator=g),
            "eig": lambda g: lnn.EigPool(8, 4, 2, generator=g),
            "compact": lambda g: lnn.CompactBilinearPool(8, 4, dim=32, seed=int(g.initial_seed()), generator=g),
        }
        for name, build in builders.items():
            a, b = build(torch.Generator().manual_seed(1)), build(torch.Generator().manual_seed(2))
            with torch.no_grad():
                if a.bias is not None:
                    a.bias.normal_(generator=torch.Generator().manual_seed(3))
            b.load_state_dict(a.state_dict())
            sa, sb = a(x), b(x)
            sa, sb = (s[0] if isinstance(s, tuple) else getattr(s, "scores", s) for s in (sa, sb))
            assert torch.equal(sa, sb), name


class TestBilinearPool(LayerContract, NamedErrorsContract):
    """lowrank_pool.nn.BilinearPool: weight scale, conversions, normalisations under autocast."""

    configs = configs_of(BilinearPool)

    bad_calls = tuple(LAYER_ERRORS["BilinearPool"])

    @pytest.mark.parametrize("name", SCALED)
    def test_bilinear_heads_train_at_the_other_heads_learning_rate(self, name):
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

    def test_weight_scale_is_saved_and_old_states_convert(self):
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

    @pytest.mark.parametrize("reduce_dim", [None, 4])
    def test_bilinear_head_converts_exactly_at_full_rank(self, reduce_dim):
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
        eig = EigPool.from_dense(
            head.to_dense() if reduce_dim is None else head.weight * head.weight_scale, d, bias=False
        )
        if reduce_dim is None:
            _close(eig(x), ref - head.bias, "EigPool from W")

    def test_normalised_bilinear_head_refuses_conversion(self):
        head = BilinearPool(F_IN, K, generator=gen())
        for cls, rank in ((CPPool, 3), (TuckerPool, 2), (EigPool, 2)):
            with pytest.raises(lp.ArgumentError, match=r"normalize='signed_sqrt\+l2' has no factorised equivalent"):
                cls.from_dense(head, rank)

    @pytest.mark.parametrize("name", ["bilinear", "bilinear_ssqrt", "compact", "compact_plain"])
    def test_signed_sqrt_heads_keep_their_gradients_under_autocast(self, name):
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


class TestCPPool(LayerContract, NamedErrorsContract):
    """lowrank_pool.nn.CPPool."""

    configs = configs_of(CPPool)

    bad_calls = tuple(LAYER_ERRORS["CPPool"])

    def test_factor_layers_from_factors_and_conversions(self):
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


class TestCompactBilinearPool(LayerContract):
    """lowrank_pool.nn.CompactBilinearPool: its hashes and seed."""

    configs = configs_of(CompactBilinearPool)

    def test_compact_layer_holds_its_hashes_and_follows_its_seed(self):
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


class TestFirstOrderPool(LayerContract, NamedErrorsContract):
    """lowrank_pool.nn.FirstOrderPool."""

    configs = configs_of(FirstOrderPool)

    bad_calls = tuple(LAYER_ERRORS["FirstOrderPool"])


class TestTuckerPool(LayerContract, NamedErrorsContract):
    """lowrank_pool.nn.TuckerPool."""

    configs = configs_of(TuckerPool)

    bad_calls = tuple(LAYER_ERRORS["TuckerPool"])


class TestEigPool(LayerContract, NamedErrorsContract):
    """lowrank_pool.nn.EigPool."""

    configs = configs_of(EigPool)

    bad_calls = tuple(LAYER_ERRORS["EigPool"])
