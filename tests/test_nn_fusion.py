"""Tests of lowrank_pool.nn's two-input heads and covariance pooling, one class each: MLB, MFB, Mutan, Block, MCB,
CovariancePool."""

from __future__ import annotations

import pytest
from cases.two_inputs import _isqrt_reference

torch = pytest.importorskip("torch")
from cases.fusion import TERMS, F, G, K, _inputs, _rows, _within_the_fit, make  # noqa: E402
from contracts import BilinearFusionContract, FusionContract  # noqa: E402
from helpers import expect_errors  # noqa: E402

import lowrank_pool as lp  # noqa: E402
from lowrank_pool.nn import MFB, MLB, Block, CovariancePool, Mutan  # noqa: E402
from lowrank_pool.testing import assert_close  # noqa: E402


class TestCovariancePool:
    """lowrank_pool.nn.CovariancePool."""

    @pytest.mark.parametrize("reduce_dim", [None, 3])
    @pytest.mark.parametrize("layout", ["nchw", "bnf"])
    def test_covariance_pool_is_isqrt_cov(self, reduce_dim, layout):
        """CovariancePool = a linear classifier on iSQRT-COV's descriptor (the paper's equations, float64), with the
        optional 1×1 reduction first; gradients, state and O(1) initial scores."""
        layer = CovariancePool(
            F, K, reduce_dim=reduce_dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64
        )
        x, _ = _inputs(layout)
        rows = _rows(x, layout)
        if reduce_dim:
            rows = rows @ layer.reduction.detach().numpy()
        want = layer.weight_scale * _isqrt_reference(rows, layer.num_iters) @ layer.weight.detach().numpy()
        want = want + layer.bias.detach().numpy()
        # the Newton-Schulz iterations chain num_iters matrix products of f ≤ 5 terms each
        assert_close(layer(x), want, terms=4 * (6 + F * F * (layer.num_iters + 2)), scale="max", like=x)
        xg = x.detach().requires_grad_()
        assert torch.autograd.gradcheck(layer, (xg,))
        twin = CovariancePool(F, K, reduce_dim=reduce_dim, dtype=torch.float64)
        twin.load_state_dict(layer.state_dict())
        assert_close(twin(x), layer(x), terms=0)
        big = CovariancePool(64, 10, reduce_dim=reduce_dim and 16, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            std = big(torch.relu(torch.randn(32, 64, 7, 7, generator=torch.Generator().manual_seed(2)))).std().item()
        assert 0.1 < std < 3.0, std


class TestMLB(BilinearFusionContract):
    """lowrank_pool.nn.MLB."""

    configs = ("mlb", "mlb_tanh")

    def test_errors_name_the_argument(self):
        x, y = _inputs("vectors")
        expect_errors(
            [
                (lambda: make("mlb")(x, y[:3]), lp.ShapeError, r"^Y: expected 4 samples"),
                (
                    lambda: make("mlb")(x, _inputs("nchw")[1]),
                    lp.ShapeError,
                    r"^y: expected a vector batch \(B, g\) like x",
                ),
                (lambda: make("mlb")(x, y.numpy()), lp.BackendError, r"^y: expected a torch.Tensor"),
                (lambda: make("mlb")(x, torch.randn(4, G + 1, dtype=torch.float64)), lp.ShapeError, r"g = 5|C"),
                (lambda: MLB(F, G, K, rank=2, activation="relu"), lp.ArgumentError, r"^activation"),
            ]
        )

    def test_a_trained_dense_fusion_compresses_into_mlb_and_mutan(self):
        """cp_approx / tucker_approx fit a two-input W (K, f, g); MLB.from_dense / Mutan.from_dense hold the fit and
        score like bilinear_pool(x, W, Y=y) where W has that exact rank."""
        g = torch.Generator().manual_seed(3)
        u, a, c = (torch.randn(m, 2, generator=g, dtype=torch.float64) for m in (K, F, G))
        w_cp = torch.einsum("kr,fr,gr->kfg", u, a, c)
        core = torch.randn(2, 3, 2, generator=g, dtype=torch.float64)
        w_tk = torch.einsum("qrs,kq,fr,gs->kfg", core, *(torch.randn(m, r, generator=g, dtype=torch.float64)
                                                         for m, r in ((K, 2), (F, 3), (G, 2))))  # fmt: skip
        x, y = _inputs("vectors")
        mlb = MLB.from_dense(w_cp, 2, fit={"n_restarts": 4, "stall": 1e-14, "n_iter_max": 3000}, bias=False)
        want = lp.bilinear_pool(x[:, None, :], w_cp, Y=y[:, None, :])
        _within_the_fit(mlb, w_cp, x, y)
        mutan = Mutan.from_dense(w_tk, (2, 3, 2))
        want = lp.bilinear_pool(x[:, None, :], w_tk, Y=y[:, None, :])
        _within_the_fit(mutan, w_tk, x, y)
        assert_close(mutan(x, y), want, terms=TERMS, scale="max")  # Tucker at full rank: exact up to rounding
        assert mutan.ranks == (2, 3, 2) and torch.equal(mutan.bias, torch.zeros(K, dtype=torch.float64))
        with pytest.raises(lp.ArgumentError, match=r"^rank: expected at most min\(K·f, f·g, K·g\) = 12 for W of shape"):
            lp.cp_approx(w_cp, 13)
        with pytest.raises(lp.ArgumentError, match=r"^rank: expected \(R_K, R_f, R_g\) <= \(3, 5, 4\)"):
            lp.tucker_approx(w_tk, (3, 5, 5))
        with pytest.raises(lp.ArgumentError, match=r"^activation"):
            MLB.from_dense(w_cp, 2, activation="tanh")
        with pytest.raises(lp.ShapeError, match=r"^W: expected shape \(K, f, g\)"):
            Mutan.from_dense(w_tk[0], 2)


class TestMFB(FusionContract):
    """lowrank_pool.nn.MFB."""

    configs = ("mfb", "mfb_plain")

    def test_errors_name_the_argument(self):
        expect_errors([(lambda: MFB(F, 0, K), lp.ArgumentError, r"^y_channels")])


class TestMutan(BilinearFusionContract):
    """lowrank_pool.nn.Mutan."""

    configs = ("mutan", "mutan_tanh")

    def test_errors_name_the_argument(self):
        expect_errors(
            [(lambda: Mutan(F, G, K, rank=(2, 3)), lp.ArgumentTypeError, r"^rank: expected three positive ints")]
        )


class TestBlock(BilinearFusionContract):
    """lowrank_pool.nn.Block."""

    configs = ("block",)

    def test_errors_name_the_argument(self):
        expect_errors([(lambda: Block(F, G, K, blocks=0), lp.ArgumentError, r"^blocks")])


class TestMCB(FusionContract):
    """lowrank_pool.nn.MCB."""

    configs = ("mcb", "mcb_plain")
