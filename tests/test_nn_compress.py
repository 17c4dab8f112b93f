"""Tests of lowrank_pool.nn.compress and match_scores (and MatchReport)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from cases.compress import D, F, K, _rel, _subspace_head  # noqa: E402

import lowrank_pool as lp  # noqa: E402
from lowrank_pool.nn import BilinearPool, CPPool, EigPool, MatchReport, TuckerPool, compress, match_scores  # noqa: E402


class TestCompress:
    """lowrank_pool.nn.compress."""

    @pytest.mark.parametrize(("form", "rank"), [("eig", D), ("cp", 2 * D * K), ("tucker", (K, D, D))])
    def test_score_matching_recovers_what_the_frobenius_fit_misses(self, form, rank):
        head, x, _ = _subspace_head()
        ref = head(x)
        frob = compress(head, rank, form=form)  # no features: the Frobenius fit
        matched = compress(head, rank, form=form, features=x, epochs=60, tol=1e-6, patience=5)
        assert isinstance(matched, {"eig": EigPool, "cp": CPPool, "tucker": TuckerPool}[form])
        assert torch.equal(frob.bias, head.bias)  # carried over before matching
        err_frob, err_matched = _rel(frob(x), ref), _rel(matched(x), ref)
        assert err_frob > 0.5, err_frob  # the Frobenius fit spent its rank on the part the features never see
        assert err_matched < 0.02, err_matched
        # on fresh features from the same subspace the matched head generalises (it learned the S part of W)
        _, x_new, _ = _subspace_head(seed=0)
        g = torch.Generator().manual_seed(9)
        x_new = torch.randn(32, 5, D, generator=g, dtype=torch.float64) @ _subspace_head()[2].T
        assert _rel(matched(x_new), head(x_new)) < 0.05

    def test_normalised_heads_compress_by_matching_only(self):
        head = BilinearPool(F, K, normalize="signed_sqrt+l2", dtype=torch.float64)
        x = torch.relu(torch.randn(48, F, 3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
        with pytest.raises(lp.ArgumentError, match="features: a head with normalize='signed_sqrt\\+l2' has no exact"):
            compress(head, 4)
        small = compress(head, F, features=x, epochs=50)
        assert small(x).shape == (48, K) and torch.isfinite(small(x)).all()

    @pytest.mark.parametrize(
        ("call", "exc", "pattern"),
        [
            (lambda: compress(torch.nn.Linear(2, 2), 2), lp.ArgumentTypeError, r"head: expected a lowrank_pool.nn.Bil"),
            (
                lambda: compress(BilinearPool(4, 2, normalize=None), 2, form="svd"),
                lp.ArgumentError,
                r"form: expected one",
            ),
            (
                lambda: match_scores(EigPool(4, 2, 1), torch.ones(3, 4, 2, 2), torch.ones(3, 5)),
                lp.ShapeError,
                r"targets: expected shape \(N, K\) = \(3, 2\), got \(3, 5\)",
            ),
            (
                lambda: match_scores(EigPool(4, 2, 1), torch.ones(3, 4, 2, 2), torch.ones(3, 2), lr=-1.0),
                lp.ArgumentError,
                r"lr: expected a finite number >= 0",
            ),
        ],
    )
    def test_bad_input_is_named(self, call, exc, pattern):
        with pytest.raises(exc, match=pattern):
            call()


class TestMatchScores:
    """lowrank_pool.nn.match_scores and MatchReport."""

    def test_match_scores_reports_and_stops(self):
        head, x, _ = _subspace_head(1)
        # a random start (a Frobenius start would sit at the saddle where X v = 0 and nothing moves)
        student = EigPool(F, K, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        report = match_scores(student, x, head(x).detach(), epochs=40, tol=1e-3, patience=2, batch_size=16)
        assert isinstance(report, MatchReport)
        assert report["final"] <= report["initial"] and report["final"] <= min(report["history"]) * (1 + 1e-3)
        assert report["stopped"] in ("converged", "max_epochs") and report["epochs"] == len(report["history"]) - 1
        assert report["epochs"] < 40 or report["stopped"] == "max_epochs"
        # from a random start L-BFGS finds a local minimum (here ~0.22): why compress starts from a fit
        assert report["final"] < 0.25 * report["initial"], report
