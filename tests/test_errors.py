"""Every validation path: the exception type and a message naming argument, expectation and input."""

from __future__ import annotations

import re

import numpy as np
import pytest

import lowrank_pool as lp

torch = pytest.importorskip("torch")

X = np.ones((2, 5, 4))
A = np.ones((4, 3))
b = np.ones(4)
AP = np.ones((4, 3, 2))


@pytest.mark.parametrize(
    ("call", "exc", "pattern"),
    [
        # X itself
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
        # channel_axis
        (lambda: lp.rank1_pool(X, A, b, channel_axis=0), lp.ShapeError, r"channel_axis: axis 0 is the batch axis"),
        (
            lambda: lp.rank1_pool(X, A, b, channel_axis=3),
            lp.ShapeError,
            r"channel_axis: expected an axis of X with shape \(2, 5, 4\), got 3",
        ),
        (lambda: lp.rank1_pool(X, A, b, channel_axis=1.0), TypeError, r"channel_axis: expected an int, got float"),
        # factor shapes
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
        (lambda: lp.attention_maps(X, A, np.ones((4, 1))), lp.ShapeError, r"b: expected 1 dimension \(f,\)"),
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
        (
            lambda: lp.bilinear_pool(X, np.ones((3, 4, 5))),
            lp.ShapeError,
            r"W: expected shape \(K, f, f\) with f = 4, got \(3, 4, 5\)",
        ),
        (lambda: lp.bilinear_pool(X, np.ones((4, 4))), lp.ShapeError, r"W: expected 3 dimensions \(K, f, f\)"),
        (
            lambda: lp.first_order_pool(X, np.ones((3, 4))),
            lp.ShapeError,
            r"W: expected shape \(f, K\) with f = 4, got \(3, 4\)",
        ),
        # options
        (
            lambda: lp.rank1_pool(X, A, b, attention="sigmoid"),
            ValueError,
            r"attention: expected one of \['linear', 'softmax', 'relu'\], got 'sigmoid'",
        ),
        (lambda: lp.first_order_pool(X, A, reduce="min"), ValueError, r"reduce: expected one of .*got 'min'"),
        (
            lambda: lp.gram(X, normalize="trace"),
            ValueError,
            r"normalize: expected one of \[None, 'mean'\], got 'trace'",
        ),
        # non-finite input, when asked for
        (
            lambda: lp.rank1_pool(np.full((1, 2, 4), np.nan), A, b, check_finite=True),
            ValueError,
            r"X: expected finite values, got 8 NaN/inf",
        ),
        (
            lambda: lp.bilinear_pool(X, np.full((1, 4, 4), np.inf), check_finite=True),
            ValueError,
            r"W: expected finite values",
        ),
        # normalisations
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
        (lambda: lp.signed_sqrt(np.ones(3), eps=-1.0), ValueError, r"eps: expected a finite number >= 0, got -1.0"),
        (lambda: lp.signed_sqrt(np.ones(3, int)), lp.DTypeError, r"G: expected a real floating dtype"),
        (lambda: lp.l2_normalize(np.ones(3), eps=0.0), ValueError, r"eps: expected a number > 0"),
        (
            lambda: lp.l2_normalize(np.ones((2, 3)), axis=2),
            lp.ShapeError,
            r"axis: expected axes of x with shape \(2, 3\), got 2",
        ),
    ],
)
def test_bad_input_is_named(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_errors_are_standard_exception_types():
    assert issubclass(lp.ShapeError, ValueError) and issubclass(lp.DTypeError, TypeError)
    assert issubclass(lp.BackendError, TypeError)
    for e in (lp.ShapeError, lp.DTypeError, lp.BackendError):
        assert issubclass(e, lp.LowRankPoolError)


def test_mixed_torch_devices_are_named():
    x = torch.ones(2, 5, 4)
    a = torch.ones(4, 3, device="meta")
    with pytest.raises(lp.BackendError, match=re.escape("arrays must be on one device, got X on cpu, W on meta")):
        lp.first_order_pool(x, a)
