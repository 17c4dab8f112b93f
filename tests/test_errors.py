"""Tests of the package's exception types: the hierarchy, and that every bad-input raise uses it."""

from __future__ import annotations

import re

import pytest

torch = pytest.importorskip("torch")
import lowrank_pool as lp  # noqa: E402


class TestLowRankPoolError:
    """lowrank_pool.LowRankPoolError and the types below it."""

    def test_errors_are_standard_exception_types(self):
        assert issubclass(lp.ShapeError, ValueError) and issubclass(lp.DTypeError, TypeError)
        assert issubclass(lp.BackendError, TypeError)
        assert issubclass(lp.ArgumentError, ValueError) and issubclass(lp.ArgumentTypeError, TypeError)
        assert issubclass(lp.FactorFileError, ValueError)
        assert issubclass(lp.FactorFileNotFoundError, FileNotFoundError)
        for e in (
            lp.ShapeError,
            lp.DTypeError,
            lp.BackendError,
            lp.ArgumentError,
            lp.ArgumentTypeError,
            lp.FactorFileError,
            lp.FactorFileNotFoundError,
        ):
            assert issubclass(e, lp.LowRankPoolError)

    def test_no_bare_builtin_raise_in_the_package(self):
        """Every ``raise`` of a bad-input error uses a package error type (scanned from the source)."""
        import pathlib

        root = pathlib.Path(lp.__file__).parent
        offenders = [
            f"{path.relative_to(root)}:{i}: {line.strip()}"
            for path in root.rglob("*.py")
            for i, line in enumerate(path.read_text().splitlines(), 1)
            if re.search(r"raise (ValueError|TypeError|KeyError|IndexError|FileNotFoundError)\(", line)
            and path.name != "io.py"  # io's private validator raises builtins that load_factors wraps
        ]
        assert not offenders, offenders


class TestBackendError:
    """lowrank_pool.BackendError."""

    def test_mixed_torch_devices_are_named(self):
        x = torch.ones(2, 5, 4)
        a = torch.ones(4, 3, device="meta")
        with pytest.raises(lp.BackendError, match=re.escape("arrays must be on one device, got X on cpu, W on meta")):
            lp.first_order_pool(x, a)
