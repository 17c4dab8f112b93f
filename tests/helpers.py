"""Backends, strategies and the float64 brute-force einsum oracles (tests only)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import strategies as st

from lowrank_pool.testing import to_numpy


@dataclass(frozen=True)
class Backend:
    """One array library: how to move float64 numpy test data into it."""

    name: str
    xp: Any
    convert: Callable[[np.ndarray, str], Any]

    def __call__(self, a: np.ndarray, dtype: str = "float64") -> Any:
        return self.convert(np.asarray(a), dtype)

    def __repr__(self) -> str:
        return self.name


def _backends() -> list[Any]:
    out: list[Any] = [pytest.param(Backend("numpy", np, lambda a, dt: a.astype(dt)), id="numpy")]
    try:
        import torch

        out.append(
            pytest.param(
                Backend("torch", torch, lambda a, dt: torch.from_numpy(a.astype(dt))),
                id="torch",
            )
        )
        out.append(_torch_cuda(torch))
    except ImportError:  # pragma: no cover - torch is in the test set-up
        out.append(pytest.param(None, id="torch", marks=pytest.mark.skip(reason="torch not installed")))
    try:
        import array_api_strict as xps

        out.append(
            pytest.param(
                Backend("array_api_strict", xps, lambda a, dt: xps.asarray(a.astype(dt))),
                id="array_api_strict",
            )
        )
    except ImportError:  # pragma: no cover
        out.append(pytest.param(None, id="array_api_strict", marks=pytest.mark.skip(reason="not installed")))
    out.append(_cupy())
    return out


def _torch_cuda(torch: Any) -> Any:
    """torch tensors on the first CUDA device (the path every GPU user runs), or a skip that says why not."""
    if not torch.cuda.is_available():
        return pytest.param(None, id="torch_cuda", marks=pytest.mark.skip(reason="no CUDA device on this machine"))
    return pytest.param(
        Backend("torch_cuda", torch, lambda a, dt: torch.from_numpy(a.astype(dt)).to("cuda")), id="torch_cuda"
    )


def _cupy() -> Any:
    """CuPy where it is installed and a CUDA device answers; a skip that says which is missing otherwise."""
    try:
        import cupy
    except ImportError:
        return pytest.param(None, id="cupy", marks=pytest.mark.skip(reason="CuPy is not installed (it needs CUDA)"))
    try:
        cupy.cuda.runtime.getDeviceCount()
    except Exception as err:
        return pytest.param(None, id="cupy", marks=pytest.mark.skip(reason=f"no CUDA device for CuPy: {err}"))
    return pytest.param(Backend("cupy", cupy, lambda a, dt: cupy.asarray(a.astype(dt))), id="cupy")


BACKENDS = _backends()
DTYPES = ["float32", "float64"]


# --------------------------------------------------------------------------- data
@st.composite
def sizes(draw: Any, *, batch_min: int = 0) -> dict[str, int]:
    """Random problem sizes: batch B (may be 0), positions n, channels f, classes K, rank P."""
    return {
        "B": draw(st.integers(batch_min, 3)),
        "n": draw(st.integers(1, 9)),
        "f": draw(st.integers(1, 8)),
        "K": draw(st.integers(1, 4)),
        "P": draw(st.integers(1, 3)),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def normal(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape)


# ------------------------------------------------------------------------ oracles
# float64, literal formulas, einsum: slow and obviously right. The package's scale:
# the descriptor is the mean outer product M = XᵀX / n.
def second_moment(X: Any) -> np.ndarray:
    X = to_numpy(X)
    return np.einsum("bni,bnj->bij", X, X) / X.shape[1]


def oracle_bilinear(X: Any, W: Any) -> np.ndarray:
    return np.einsum("bij,kij->bk", second_moment(X), to_numpy(W))


def oracle_rank1_trace(X: Any, A: Any, b: Any) -> np.ndarray:
    """Tr(M b a_kᵀ) with M = XᵀX / n, literally."""
    A, b = to_numpy(A), to_numpy(b)
    G = second_moment(X)
    return np.stack([np.trace(G @ np.outer(b, A[:, k]), axis1=1, axis2=2) for k in range(A.shape[1])], axis=1)


def oracle_rankp(X: Any, A: Any, B: Any) -> np.ndarray:
    X, A, B = to_numpy(X), to_numpy(A), to_numpy(B)
    if B.ndim == 2:
        B = np.broadcast_to(B[:, None, :], A.shape)
    W = np.einsum("ikp,jkp->kij", A, B)
    return oracle_bilinear(X, W)


def absolute(*arrays: Any) -> list[np.ndarray]:
    """|a| of each array in float64: oracles on these give the error scale Σ|terms|."""
    return [np.abs(to_numpy(a)) for a in arrays]


def expect_errors(cases: list[tuple[Callable[[], Any], type, str]]) -> None:
    """Run every (call, exception type, message regex) case and report all failures together (the first failure
    of a serial ``pytest.raises`` chain would hide the rest)."""
    import re

    failures = []
    for i, (call, exc, pattern) in enumerate(cases):
        try:
            call()
        except exc as err:
            if not re.search(pattern, str(err)):
                failures.append(f"case {i}: {err!s} does not match {pattern}")
        except Exception as err:
            failures.append(f"case {i}: raised {type(err).__name__}: {err}")
        else:
            failures.append(f"case {i}: did not raise")
    assert not failures, "\n".join(failures)


def check_named_error(call: Callable[[], Any], exc: type, pattern: str) -> None:
    """The bad call raises ``exc`` (a LowRankPoolError and a ValueError or TypeError) with a message matching
    ``pattern`` (which names the argument, what was expected and what was given)."""
    from lowrank_pool import LowRankPoolError

    with pytest.raises(exc, match=pattern) as info:
        call()
    assert isinstance(info.value, LowRankPoolError), type(info.value)
    assert isinstance(info.value, ValueError | TypeError), type(info.value)
