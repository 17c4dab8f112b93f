"""Tests of lowrank_pool.rank_profile (and RankProfile)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tl = pytest.importorskip("tensorly")
from cases.errors import ERRORS  # noqa: E402
from cases.factorized import FACTOR_ERRORS  # noqa: E402
from cases.nn import F_IN, K, _trained_bilinear, gen  # noqa: E402
from contracts import NamedErrorsContract  # noqa: E402

import lowrank_pool as lp  # noqa: E402
from lowrank_pool.nn import (  # noqa: E402
    BilinearPool,
)


class TestRankProfile(NamedErrorsContract):
    """lowrank_pool.rank_profile and RankProfile."""

    bad_calls = tuple(ERRORS["rank_profile"] + FACTOR_ERRORS["rank_profile"])

    # ------------------------------------------------------------------ rank profile
    def test_rank_profile_reports_error_size_and_accuracy(self, tmp_path):
        import matplotlib

        matplotlib.use("Agg")
        rng = np.random.default_rng(0)
        K, f = 4, 8
        W = rng.standard_normal((K, f, f))
        x = rng.standard_normal((20, 6, f))
        labels = np.argmax(lp.bilinear_pool(x, W), axis=1)
        prof = lp.rank_profile(W, [1, 2, 4, 8], method="eig", features=x, labels=labels)
        assert isinstance(prof, lp.RankProfile)
        assert prof.errors == sorted(prof.errors, reverse=True) and prof.errors[-1] < 1e-12
        assert prof.params == [r * K * (f + 1) for r in (1, 2, 4, 8)] and prof.dense_accuracy == 1.0
        assert prof.accuracy is not None and prof.accuracy[-1] == 1.0
        assert "rel. error" in str(prof) and len(prof.rows()) == 4
        # the rank-8 eigen form holds more numbers than W (8·4·9 = 288 > 256): it must not print "1.0x"
        assert prof.compression[-1] < 1 and "0.889x" in str(prof)
        for method, ranks in (("cp", [1, 3]), ("tucker", [2, (4, 8, 8)])):
            p = lp.rank_profile(W, ranks, method=method, features=x, labels=labels, progress=True)
            assert len(p.errors) == 2 and p.errors[-1] <= p.errors[0] + 1e-12
        assert p.errors[-1] < 1e-10 and p.ranks == [(2, 2, 2), (4, 8, 8)]
        ax = prof.plot()
        ax.figure.savefig(tmp_path / "profile.png")
        assert (tmp_path / "profile.png").stat().st_size > 0

    def test_rank_profile_refuses_non_finite_features(self):
        W = np.random.default_rng(4).standard_normal((2, 3, 3))
        x = np.ones((4, 5, 3))
        x[0, 0, 0] = np.nan
        with pytest.raises(lp.ArgumentError, match="features: expected finite values"):
            lp.rank_profile(W, [1], features=x, labels=np.zeros(4, int))

    def test_rank_profile_reports_the_heads_accuracy(self):
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
