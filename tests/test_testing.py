"""Tests of lowrank_pool.testing: the closeness helper every test uses."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from helpers import expect_errors  # noqa: E402

import lowrank_pool as lp  # noqa: E402
from lowrank_pool.testing import assert_close, eps_of  # noqa: E402


class TestAssertClose:
    """lowrank_pool.testing.assert_close."""

    def test_assert_close_checks_library_device_dtype_and_shape_by_default(self):
        x32, x64 = np.ones(3, np.float32), np.ones(3)
        expect_errors(
            [
                (
                    lambda: assert_close(torch.ones(3, dtype=torch.float64), x64),
                    AssertionError,
                    r"^library: expected numpy",
                ),
                (lambda: assert_close(x32, x64), AssertionError, r"^dtype: expected float64, got float32"),
                (lambda: assert_close(np.ones((3, 1)), x64), AssertionError, r"^shape: expected \(3,\), got \(3, 1\)"),
                (
                    lambda: assert_close(torch.ones(3), torch.ones(3, device="meta")),
                    AssertionError,
                    r"^device: expected meta",
                ),
                (lambda: assert_close(x32, x64, like=torch.ones(1)), AssertionError, r"^library: expected torch"),
                (lambda: assert_close(x64, x64, scale="norm"), lp.ArgumentError, r'^scale: expected .*"max"'),
            ]
        )
        # like= names what is expected instead of desired; each check can be turned off on its own
        assert_close(x32, x64, like=np.zeros(0, np.float32))
        assert_close(x32, x64, check_dtype=False)
        assert_close(torch.ones(3, dtype=torch.float64), x64, check_namespace=False, check_device=False)
        assert_close(np.float32(1), 1.0)  # a Python scalar carries no library or dtype: shape () and value only
        assert_close(np.float32(2), np.float32(2), terms=0)

    def test_assert_close_tolerance_is_terms_eps_scale(self):
        eps = eps_of(np.float64)
        assert_close(np.array([1.0 + 4 * eps]), np.array([1.0]), terms=4)
        with pytest.raises(AssertionError, match=r"1 of 1 entries differ beyond 3·eps·scale"):
            assert_close(np.array([1.0 + 4 * eps]), np.array([1.0]), terms=3)
        with pytest.raises(AssertionError, match=r"differ beyond 0·eps"):
            assert_close(np.array([1.0 + eps]), np.array([1.0]), terms=0)  # terms=0: equality
        # scale="max": every entry against the largest magnitude (a normwise bound)
        assert_close(np.array([100.0, 1e-3 + 50 * eps]), np.array([100.0, 1e-3]), terms=1, scale="max")
        with pytest.raises(AssertionError):
            assert_close(np.array([100.0, 1e-3 + 50 * eps]), np.array([100.0, 1e-3]), terms=1)
