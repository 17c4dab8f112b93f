"""The one backend/dtype fixture pair, hypothesis profiles and thread settings shared by the tests.

``bk`` runs a test once per array library (numpy, torch, array_api_strict; torch on CUDA and CuPy
where a GPU answers) and
``dtype`` once per float32/float64. Both are session-scoped, so hypothesis' ``@given``
can draw many examples under one fixture value. A test that needs other dtypes
parametrizes ``dtype`` itself, which overrides the fixture.
"""

from __future__ import annotations

import os
import sys

import pytest
from hypothesis import HealthCheck, settings

# On a GPU, JAX would take 75 % of the device's memory when first used, and the torch and CuPy tests in
# the same process would then fail to allocate cuBLAS workspaces: JAX allocates as it goes here.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
sys.path.insert(0, os.path.dirname(__file__))
from helpers import BACKENDS, DTYPES

settings.register_profile(
    "ci", derandomize=True, max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.register_profile("thorough", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(scope="session", params=BACKENDS)
def bk(request: pytest.FixtureRequest):
    """An array library (a ``helpers.Backend``): ``bk(numpy_array, dtype)`` converts test data into it."""
    return request.param


@pytest.fixture(scope="session", params=DTYPES)
def dtype(request: pytest.FixtureRequest) -> str:
    """A floating dtype name, float32 or float64."""
    return request.param


@pytest.fixture(autouse=True)
def _torch_threads() -> None:
    try:
        import torch

        torch.set_num_threads(min(2, os.cpu_count() or 1))
    except ImportError:  # pragma: no cover
        pass


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Report how many hostile-input cases the generated suite tried, and how they ended."""
    module = sys.modules.get("test_hostile")
    counts = getattr(module, "COUNTS", None)
    if counts:
        terminalreporter.write_line(
            f"hostile-input cases: {counts['cases']} tried, {counts['results']} answered (checked against float64), "
            f"{counts['named errors']} refused with a LowRankPoolError naming the argument"
        )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run a contract's tests (tests/contracts.py) once per case its test class names: ``variant`` over the class's
    ``variants``, ``config`` over its ``configs`` (a test marked with ``contracts.keep`` over those it keeps),
    ``bad_call`` over its ``bad_calls``."""
    cls = metafunc.cls
    if cls is not None and "bad_call" in metafunc.fixturenames and hasattr(cls, "bad_calls"):
        if not cls.bad_calls:
            raise pytest.UsageError(f"{cls.__name__}: no bad call to run")
        metafunc.parametrize("bad_call", cls.bad_calls, ids=[f"call{i}" for i in range(len(cls.bad_calls))])
    for arg, attr in (("variant", "variants"), ("config", "configs")):
        if cls is None or arg not in metafunc.fixturenames or not hasattr(cls, attr):
            continue
        keep = getattr(metafunc.function, "keep", None)
        cases = [c for c in getattr(cls, attr) if keep is None or keep(c)]
        if not cases:
            raise pytest.UsageError(f"{cls.__name__}.{metafunc.function.__name__}: no case of {attr} to run")
        metafunc.parametrize(arg, cases)
