"""The bad calls of each public function (the exception type and a regex of its message that names the argument,
the expectation and what was given), run by the function's test class, and the small arrays they use."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import lowrank_pool as lp  # noqa: E402

X = np.ones((2, 5, 4))
A = np.ones((4, 3))
b = np.ones(4)
AP = np.ones((4, 3, 2))


# The bad calls of each public name, the exception type and a regex of its message: run by the name's test class
ERRORS = {
    "rank1_pool": [
        (
            lambda: lp.rank1_pool(np.ones((5, 4)), A, b),
            lp.ShapeError,
            r"X: expected .*at least 3 dimensions.*got shape \(5, 4\)",
        ),
        (
            lambda: lp.rank1_pool(np.ones((2, 0, 4)), A, b),
            lp.ShapeError,
            r"X: expected at least one channel and one position, got shape \(2, 0, 4\)",
        ),
        (lambda: lp.rank1_pool(np.ones((2, 5, 0)), np.ones((0, 3)), np.ones(0)), lp.ShapeError, r"X: .*f = 0"),
        (
            lambda: lp.rank1_pool(np.ones((2, 5, 4), int), A, b),
            lp.DTypeError,
            r"X: expected a real floating dtype.*got int64",
        ),
        (
            lambda: lp.rank1_pool(X.astype(complex), A, b),
            lp.DTypeError,
            r"X: expected a real floating dtype.*complex128",
        ),
        (lambda: lp.rank1_pool(X, A.astype(bool), b), lp.DTypeError, r"A: expected a real floating dtype.*bool"),
        (lambda: lp.rank1_pool(X.tolist(), A, b), lp.BackendError, r"X: expected an array.*got list"),
        (lambda: lp.rank1_pool(X, A, 1.0), lp.BackendError, r"b: expected an array.*got float"),
        (lambda: lp.rank1_pool(torch.ones(2, 5, 4), A, b), lp.BackendError, r"different libraries.*X: torch.*A: numpy"),
        (lambda: lp.rank1_pool(X, A, b, channel_axis=0), lp.ShapeError, r"channel_axis: axis 0 is the batch axis"),
        (
            lambda: lp.rank1_pool(X, A, b, channel_axis=3),
            lp.ShapeError,
            r"channel_axis: expected an axis of X with shape \(2, 5, 4\), got 3",
        ),
        (lambda: lp.rank1_pool(X, A, b, channel_axis=1.0), TypeError, r"channel_axis: expected an int, got float"),
        (
            lambda: lp.rank1_pool(X, np.ones((5, 3)), b),
            lp.ShapeError,
            r"A: expected shape \(f, K\) with f = 4, got \(5, 3\)",
        ),
        (
            lambda: lp.rank1_pool(X, np.ones(4), b),
            lp.ShapeError,
            r"A: expected 2 dimensions \(f, K\) with f = 4, got shape \(4,\)",
        ),
        (lambda: lp.rank1_pool(X, np.ones((4, 0)), b), lp.ShapeError, r"A: .*every size positive, got \(4, 0\)"),
        (lambda: lp.rank1_pool(X, A, np.ones(3)), lp.ShapeError, r"b: expected shape \(f,\) with f = 4, got \(3,\)"),
        (
            lambda: lp.rank1_pool(X, A, b, attention="sigmoid"),
            ValueError,
            r"attention: expected one of \['linear', 'softmax', 'relu'\], got 'sigmoid'",
        ),
        (
            lambda: lp.rank1_pool(np.full((1, 2, 4), np.nan), A, b, check_finite=True),
            ValueError,
            r"X: expected finite values, got 8 NaN/inf",
        ),
        (
            lambda: lp.rank1_pool(np.ones((2, 7, 7, 16)), np.ones((16, 5)), np.ones(16)),
            lp.ShapeError,
            r"A: expected shape \(f, K\) with f = 7, got \(16, 5\); f is the channel count of X, read by the "
            r"default rule \(channel_axis=None\) as a \(B, f, H, W\) input of shape \(2, 7, 7, 16\), channels on "
            r"axis 1; pass channel_axis=-1 if the channels are last",
        ),
        (lambda: lp.rank1_pool(X, A, b, check_finite="yes"), lp.ArgumentTypeError, r"check_finite: expected True"),
    ],
    "attention_maps": [
        (lambda: lp.attention_maps(X, A, np.ones((4, 1))), lp.ShapeError, r"b: expected 1 dimension \(f,\)"),
        (lambda: lp.attention_maps(X, A, b, keep_spatial=1), lp.ArgumentTypeError, r"keep_spatial: expected True"),
    ],
    "rankp_pool": [
        (
            lambda: lp.rankp_pool(X, A, b),
            lp.ShapeError,
            r"A: expected 3 dimensions \(f, K, P\) with f = 4, got shape \(4, 3\)",
        ),
        (
            lambda: lp.rankp_pool(X, AP, np.ones((4, 3))),
            lp.ShapeError,
            r"B: expected shape \(f, P\) with f = 4, P = 2, got \(4, 3\)",
        ),
        (
            lambda: lp.rankp_pool(X, AP, np.ones((4, 2, 2))),
            lp.ShapeError,
            r"B: expected shape \(f, K, P\) with f = 4, K = 3, P = 2, got \(4, 2, 2\)",
        ),
        (
            lambda: lp.rankp_pool(X, AP, np.ones(4)),
            lp.ShapeError,
            r"B: expected 2 dimensions \(f, P\) \(shared\) or 3 dimensions \(f, K, P\)",
        ),
    ],
    "bilinear_pool": [
        (
            lambda: lp.bilinear_pool(X, np.ones((3, 4, 5))),
            lp.ShapeError,
            r"W: expected shape \(K, f, f\) with f = 4, got \(3, 4, 5\)",
        ),
        (lambda: lp.bilinear_pool(X, np.ones((4, 4))), lp.ShapeError, r"W: expected 3 dimensions \(K, f, f\)"),
        (
            lambda: lp.bilinear_pool(X, np.full((1, 4, 4), np.inf), check_finite=True),
            ValueError,
            r"W: expected finite values",
        ),
        (
            lambda: lp.bilinear_pool(np.ones((2, 3, 5, 5)), np.ones((2, 5, 5)), channel_axis=1),
            lp.ShapeError,
            r"W: expected shape \(K, f, f\) with f = 3, got \(2, 5, 5\); .* with channel_axis=1 as",
        ),
        (lambda: lp.bilinear_pool(X, np.ones((2, 4, 4)), normalize="power"), lp.ArgumentError, r"normalize:"),
    ],
    "first_order_pool": [
        (
            lambda: lp.first_order_pool(X, np.ones((3, 4))),
            lp.ShapeError,
            r"W: expected shape \(f, K\) with f = 4, got \(3, 4\)",
        ),
        (lambda: lp.first_order_pool(X, A, reduce="min"), ValueError, r"reduce: expected one of .*got 'min'"),
        (
            lambda: lp.first_order_pool(X, A, reduce="max", weights=np.ones((2, 5))),
            lp.ArgumentError,
            r"weights: a spatial weighting needs reduce='sum' or 'mean'",
        ),
    ],
    "gram": [
        (
            lambda: lp.gram(X, normalize="trace"),
            ValueError,
            r"normalize: expected one of \[None, 'mean'\], got 'trace'",
        ),
    ],
    "matrix_sqrt": [
        (
            lambda: lp.matrix_sqrt(np.ones((2, 3, 4))),
            lp.ShapeError,
            r"G: expected square matrices \(\.\.\., f, f\).*got shape \(2, 3, 4\)",
        ),
        (lambda: lp.matrix_sqrt(np.ones((3, 3)), method="svd"), ValueError, r"method: expected one of"),
        (
            lambda: lp.matrix_sqrt(np.ones((3, 3)), method="newton_schulz", num_iters=0),
            ValueError,
            r"num_iters: expected a positive int, got 0",
        ),
        (
            lambda: lp.matrix_sqrt(np.ones((3, 3)), num_iters=2.5),
            TypeError,
            r"num_iters: expected a positive int, got float",
        ),
    ],
    "signed_sqrt": [
        (lambda: lp.signed_sqrt(np.ones(3), eps=-1.0), ValueError, r"eps: expected a finite number >= 0, got -1.0"),
        (lambda: lp.signed_sqrt(np.ones(3, int)), lp.DTypeError, r"G: expected a real floating dtype"),
    ],
    "l2_normalize": [
        (lambda: lp.l2_normalize(np.ones(3), eps=0.0), ValueError, r"eps: expected a number > 0"),
        (
            lambda: lp.l2_normalize(np.ones((2, 3)), axis=2),
            lp.ShapeError,
            r"axis: expected axes of x with shape \(2, 3\), got 2",
        ),
        (lambda: lp.l2_normalize(np.ones((2, 3)), axis="x"), lp.ShapeError, r"axis: expected axes of x"),
    ],
    "cp_pool": [
        (
            lambda: lp.cp_pool(np.ones((2, 9, 3)), (None, [np.ones((2, 1)), np.ones((9, 1)), np.ones((9, 1))])),
            lp.ShapeError,
            r"cp factor A: .*f = 3, got \(9, 1\); .*\(B, n, f\) input.*pass channel_axis=1 if the channels come first",
        ),
        (
            lambda: lp.cp_pool(X, lp.EigTensor(np.ones((3, 2)), np.ones((4, 3, 2)))),
            lp.ArgumentTypeError,
            r"cp: expected a CPTensor or a \(weights, \[U, A, C\]\) tuple, got an eigen form .*\(use eig_pool\)",
        ),
        (
            lambda: lp.cp_pool(X, (None, [None, A, A])),
            lp.BackendError,
            r"cp factor U: expected an array, got NoneType",
        ),
        (
            lambda: lp.cp_pool(X, (None, [A, A])),
            lp.ShapeError,
            r"cp: expected 3 factor matrices \[U \(K, R\), A \(f, R\), C \(f, R\)\], got 2 items",
        ),
    ],
    "tucker_pool": [
        (
            lambda: lp.tucker_pool(X, (None, [A, A, A])),
            lp.ArgumentTypeError,
            r"tucker: expected a TuckerTensor .*got a CP form",
        ),
    ],
    "eig_pool": [
        (lambda: lp.eig_pool(X, np.ones((3, 4, 4))), lp.ArgumentTypeError, r"eig: expected an EigTensor.*dense W"),
        (lambda: lp.eig_pool(X, lp.eig_approx(np.ones((2, 4, 4)), 1), path="fast"), lp.ArgumentError, r"path:"),
    ],
    "to_dense": [
        (lambda: lp.to_dense("W"), lp.ArgumentTypeError, r"obj: expected a CPTensor.*got str"),
    ],
    "rankp_to_cp": [
        (lambda: lp.rankp_to_cp(np.ones((4, 3, 2))), lp.ArgumentTypeError, r"A: expected a RankP"),
    ],
    "pool_cost": [
        (
            lambda: lp.pool_cost("cp", batch=1, positions=1, channels=0, classes=1, ranks=1),
            lp.ArgumentError,
            r"channels: expected a positive int, got 0",
        ),
        (
            lambda: lp.pool_cost("tucker", batch=1, positions=1, channels=2, classes=1, ranks=2),
            lp.ArgumentTypeError,
            r"ranks: expected a tuple \(R_K, R_a, R_c\) for kind='tucker'",
        ),
    ],
    "eig_approx": [
        (lambda: lp.eig_approx(np.ones((2, 4, 4)), 5), lp.ArgumentError, r"rank: expected at most f = 4"),
    ],
    "cp_approx": [
        (lambda: lp.cp_approx(np.ones((2, 4, 4)), 0), lp.ArgumentError, r"rank: expected a positive int, got 0"),
    ],
    "tucker_approx": [
        (lambda: lp.tucker_approx(np.ones((2, 4, 4)), "2"), lp.ArgumentTypeError, r"rank: expected an int or a tuple"),
    ],
    "rank_profile": [
        (lambda: lp.rank_profile(np.ones((2, 4, 4)), []), lp.ArgumentError, r"ranks: expected at least one rank"),
        (
            lambda: lp.rank_profile(np.ones((2, 4, 4)), [1], features=np.ones((3, 5, 4))),
            lp.ArgumentError,
            r"features, labels: pass both",
        ),
        (
            lambda: lp.rank_profile(np.ones((2, 4, 4)), [1], bias=np.ones(3)),
            lp.ShapeError,
            r"bias: expected shape \(K,\) with K = 2, got \(3,\)",
        ),
    ],
    "attention_weights": [
        (lambda: lp.attention_weights(np.ones((2, 3)), axis=5), lp.ArgumentError, r"axis: expected an axis of U"),
    ],
    "load_factors": [
        (
            lambda: lp.load_factors(1),
            lp.ArgumentTypeError,
            r"path: expected a file path \(str or os.PathLike\) or a binary file object, got int",
        ),
        (lambda: lp.load_factors("/nonexistent/head"), lp.FactorFileNotFoundError, r"no such factor file"),
    ],
    "save_factors": [
        (
            lambda: lp.save_factors("x", object()),
            lp.ArgumentTypeError,
            r"obj: expected a lowrank_pool.nn head, a HeadForm, a CPTensor.*got object",
        ),
    ],
}
