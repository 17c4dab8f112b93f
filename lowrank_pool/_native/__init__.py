"""The package's compiled CPU kernel (optional): fused attention-weighted pooling, X read once per pass.

Built from ``attn.cpp`` with torch's extension tooling (gcc, OpenMP) by :func:`build` — ``make setup``
does it — and cached by torch (``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``).
At run time :func:`kernel` returns the module only when it is already built (a forward call never
starts a compiler); otherwise, or with ``LOWRANK_POOL_NATIVE=0``, the pure-torch path runs, which
computes the same values. The kernel serves CPU float32/float64 tensors; every other device and
dtype takes the torch path. Its ∂X buffers (1 MiB and larger) come from a cache it owns, so that a
training loop does not pay the page faults of a fresh buffer every step: at most
``LOWRANK_POOL_CACHE_MIB`` MiB (default 1024; 0 turns it off) of freed buffers are kept, and
:func:`lowrank_pool.empty_cache` releases them.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["available", "build", "empty_cache", "kernel"]

_SOURCE = Path(__file__).with_name("attn.cpp")
_FLAGS = ["-O3", "-march=native", "-fopenmp"]


def _name() -> str:
    digest = hashlib.sha256(_SOURCE.read_bytes() + " ".join(_FLAGS).encode()).hexdigest()[:12]
    return f"lowrank_pool_attn_{digest}"


def _build_dir() -> Path:
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(_name(), verbose=False))


def _load(verbose: bool = False) -> ModuleType:
    from torch.utils.cpp_extension import load

    return load(
        name=_name(),
        sources=[str(_SOURCE)],
        extra_cflags=_FLAGS,
        extra_ldflags=["-fopenmp"],
        verbose=verbose,
    )


def build(verbose: bool = True) -> ModuleType:
    """Compile (or load the cached) kernel; raises what the compiler raised."""
    module = _load(verbose)
    kernel.cache_clear()
    return module


@functools.cache
def kernel() -> Any:
    """The built module, or None (not built, disabled, or failed to load: the torch path runs)."""
    if os.environ.get("LOWRANK_POOL_NATIVE", "1") == "0":
        return None
    try:
        if not (_build_dir() / f"{_name()}.so").exists():
            return None
        return _load()
    except Exception as err:  # any failure means: use the torch path, and say why once
        print(f"lowrank_pool: the compiled kernel did not load ({err}); using the torch path", file=sys.stderr)
        return None


def available() -> bool:
    """Whether the compiled kernel is built and loads here."""
    return kernel() is not None


def empty_cache() -> int:
    """Free the ∂X buffers the kernel keeps for reuse; the number of bytes released (0 without torch)."""
    if "torch" not in sys.modules:  # nothing was ever computed with the kernel; do not import torch for it
        return 0
    module = kernel()
    return 0 if module is None else int(module.cache_bytes(True))
