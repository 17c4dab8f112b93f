"""The package's compiled CPU kernel (optional): fused attention-weighted pooling, X read once per pass.

Built explicitly — ``python -m lowrank_pool build-kernel`` or :func:`lowrank_pool.build_kernel` (``make setup``
does it) — once per CPU capability (``avx512``, ``avx2``) into a directory of this environment (see
:func:`~lowrank_pool._native._build.kernel_directories`). At run time :func:`kernel` only *loads* a binary
that is already there: the best one this CPU supports, by path, with no compiler, no lock and no wait;
anything else (not built, another environment's build, a CPU without the capability, a damaged file,
``LOWRANK_POOL_NATIVE=0``, a machine that is not x86-64) means the torch path, which computes the same
values, and :func:`status` says why. The kernel serves CPU float32/float64 tensors; every other device and
dtype takes the torch path. Its ∂X buffers come from a bounded cache it owns (see :func:`cache_limit_bytes`);
:func:`empty_cache` releases them.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import platform
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ._build import (
    CAPABILITIES,
    INTERFACE,
    KernelBuildError,
    binary_name,
    build_binary,
    kernel_directories,
)

__all__ = [
    "KernelBuildError",
    "KernelStatus",
    "available",
    "build",
    "cache_limit_bytes",
    "cpu_capabilities",
    "empty_cache",
    "kernel",
    "load_binary",
    "status",
    "tuned",
]

DEFAULT_CACHE_MIB = 1024
_MAX_CACHE_MIB = (2**63 - 1) >> 20
_TORCH_CAPABILITY = {"AVX512": "avx512", "AVX2": "avx2"}  # torch.backends.cpu.get_cpu_capability() names


@dataclass(frozen=True)
class KernelStatus:
    """Whether the compiled CPU kernel runs in this process, and why (or why not).

    Parameters
    ----------
    available : bool
        True when the kernel is loaded: CPU float32/float64 calls of the attentional path run it.
    capability : str or None
        The instruction-set level of the loaded binary (``"avx512"``, ``"avx2"``).
    path : str or None
        The loaded binary.
    reason : str
        Why it is or is not available, and what to do about it.
    cpu : tuple of str
        The capabilities this CPU supports that the kernel can be built for, best first.
    directories : tuple of str
        Where binaries are looked for, in order.

    Examples
    --------
    >>> import lowrank_pool as lp
    >>> status = lp.kernel_status()
    >>> isinstance(status.reason, str) and set(status.cpu) <= {"avx512", "avx2"}
    True
    """

    available: bool
    capability: str | None
    path: str | None
    reason: str
    cpu: tuple[str, ...]
    directories: tuple[str, ...]


_status: KernelStatus | None = None


def _cpu_flags() -> set[str] | None:
    """The CPU's feature flags as Linux reports them (None elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    match = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
    return set(match.group(1).split()) if match else None


def cpu_capabilities() -> tuple[str, ...]:
    """The capabilities the kernel can be built for that this CPU runs, best first.

    Read from the CPU's flags (Linux) and bounded by the capability torch itself uses
    (``torch.backends.cpu.get_cpu_capability()``, which ``ATEN_CPU_CAPABILITY`` lowers) and by
    ``LOWRANK_POOL_CPU_CAPABILITY`` (``avx512``, ``avx2`` or ``none``). Empty on machines that are not x86-64.
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ()
    order = list(CAPABILITIES)
    flags = _cpu_flags()
    torch = sys.modules.get("torch")
    torch_cap = None
    if torch is not None:
        torch_cap = _TORCH_CAPABILITY.get(str(torch.backends.cpu.get_cpu_capability()), "none")
    if flags is None:
        if torch_cap is None:
            return ()
        supported = [c for c in order if torch_cap != "none" and order.index(c) >= order.index(torch_cap)]
    else:
        supported = [c for c in order if CAPABILITIES[c].cpu_flags <= flags]
    for bound in (torch_cap, os.environ.get("LOWRANK_POOL_CPU_CAPABILITY", "").strip().lower() or None):
        if bound is None:
            continue
        if bound not in order:  # "none" (or a name no build has): no capability
            return ()
        supported = [c for c in supported if order.index(c) >= order.index(bound)]
    return tuple(supported)


def cache_limit_bytes() -> int:
    """The ∂X cache's limit: ``LOWRANK_POOL_CACHE_MIB`` MiB (a whole number, 0 turns the cache off), default 1024.

    Anything else (a negative or fractional number, words, a number too large for the address space) is
    refused with a warning, once, and the default is used. Whatever the limit, the cache keeps at most two
    freed buffers of one size and four in all.
    """
    raw = os.environ.get("LOWRANK_POOL_CACHE_MIB")
    if raw is None:
        return DEFAULT_CACHE_MIB << 20
    text = raw.strip()
    if re.fullmatch(r"[0-9]+", text) and int(text) <= _MAX_CACHE_MIB:
        return int(text) << 20
    _warn_once(
        f"LOWRANK_POOL_CACHE_MIB={raw!r}: expected a whole number of MiB from 0 to {_MAX_CACHE_MIB}; "
        f"using the default, {DEFAULT_CACHE_MIB}"
    )
    return DEFAULT_CACHE_MIB << 20


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


@functools.cache
def load_binary(path: str | Path, capability: str | None = None) -> ModuleType:
    """A kernel binary loaded by its path (the loader, tests, benchmarks), checked to be this package's kernel (of
    ``capability`` where given). Raises ImportError otherwise; the binary itself refuses to initialise on a CPU
    without its capability."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(path.name.split(".")[0], path)  # (the module is named as its file)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} is not a loadable extension")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if getattr(module, "interface", None) != INTERFACE:
        raise ImportError(f"{path} is not this package's kernel (interface {INTERFACE})")
    if capability is not None and getattr(module, "capability", None) != capability:
        raise ImportError(f"{path} was built for {getattr(module, 'capability', '?')}, not {capability}")
    return module


def _find() -> tuple[ModuleType | None, KernelStatus]:
    directories = kernel_directories()
    dirs = tuple(str(d) for d in directories)

    def none(reason: str, cpu: tuple[str, ...] = ()) -> tuple[None, KernelStatus]:
        return None, KernelStatus(False, None, None, reason, cpu, dirs)

    if os.environ.get("LOWRANK_POOL_NATIVE", "1").strip() == "0":
        return none("turned off by LOWRANK_POOL_NATIVE=0")
    try:
        import torch  # noqa: F401  (the binaries link against it)
    except ImportError:
        return none("torch is not installed")
    cpu = cpu_capabilities()
    if not cpu:
        return none(
            f"this machine ({platform.machine()}) has none of the CPU capabilities the kernel is built for "
            f"({', '.join(CAPABILITIES)}, or they are turned off by LOWRANK_POOL_CPU_CAPABILITY / ATEN_CPU_CAPABILITY)"
        )
    failures = []
    for cap in cpu:
        name = binary_name(cap)
        for directory in directories:
            path = directory / f"{name}.so"
            if not path.is_file():
                continue
            try:
                module = load_binary(path, cap)
            except Exception as err:  # a damaged or foreign file: the torch path, said once
                failures.append(f"{path} did not load ({err})")
                warnings.warn(
                    f"lowrank_pool: the compiled kernel {path} did not load ({err}); the torch path runs instead. "
                    "Rebuild it: python -m lowrank_pool build-kernel --force",
                    RuntimeWarning,
                    stacklevel=4,
                )
                continue
            module.set_cache_limit(cache_limit_bytes())
            return module, KernelStatus(True, cap, str(path), f"loaded the {cap} kernel", cpu, dirs)
    if failures:
        return none("; ".join(failures), cpu)
    others = sorted(p.name for d in directories if d.is_dir() for p in d.glob("lowrank_pool_attn_*.so") if p.is_file())
    seen = f" (found only other builds: {', '.join(others[:4])})" if others else ""
    return none(
        f"not built for this environment and CPU ({cpu[0]}){seen}; build it with "
        "`python -m lowrank_pool build-kernel` (the torch path computes the same values meanwhile)",
        cpu,
    )


@functools.cache
def kernel() -> Any:
    """The loaded kernel module, or None (the torch path runs; :func:`status` says why). Never builds or waits."""
    global _status
    module, _status = _find()
    return module


def status() -> KernelStatus:
    """Whether the kernel is loaded in this process, and why (loads it first where it was not looked for yet)."""
    kernel()
    if _status is None:  # kernel() was replaced (tests) or its cache cleared without a load
        return _find()[1]
    return _status


def available() -> bool:
    """Whether the compiled kernel is built and loads here."""
    return kernel() is not None


def build(
    capabilities: str | Sequence[str] = "native",
    *,
    jobs: int | None = None,
    force: bool = False,
    verbose: bool = True,
) -> KernelStatus:
    """Build the kernel for ``capabilities`` (``"native"``: the best this CPU runs; ``"all"``; or names), then load it.

    Idempotent (an up-to-date binary is kept), safe against concurrent builds (they wait for each other) and against
    a build killed midway (its lock and temporary files are taken over and removed); raises
    :class:`KernelBuildError` with the compiler's message when a build fails.
    """
    if isinstance(capabilities, str) and capabilities == "native":
        cpu = cpu_capabilities()
        if not cpu:
            raise KernelBuildError(f"this CPU ({platform.machine()}) supports none of {list(CAPABILITIES)}")
        wanted: list[str] = [cpu[0]]
    elif isinstance(capabilities, str) and capabilities == "all":
        wanted = list(CAPABILITIES)
    else:
        wanted = [capabilities] if isinstance(capabilities, str) else list(capabilities)
        unknown = [c for c in wanted if c not in CAPABILITIES]
        if unknown:
            raise KernelBuildError(
                f"capabilities: expected 'native', 'all' or names in {list(CAPABILITIES)}, got {unknown}"
            )

    def say(message: str) -> None:
        if verbose:
            print(f"lowrank_pool kernel: {message}", file=sys.stderr, flush=True)

    for cap in wanted:
        build_binary(cap, jobs=jobs, force=force, say=say)
    kernel.cache_clear()
    return status()


def empty_cache() -> int:
    """Free the ∂X buffers the kernel keeps for reuse; the number of bytes released (0 without torch)."""
    if "torch" not in sys.modules:  # nothing was ever computed with the kernel; do not import torch for it
        return 0
    module = kernel()
    return 0 if module is None else int(module.cache_bytes(True))


@contextmanager
def tuned(module: Any = None, **fields: int) -> Iterator[Any]:
    """Run the kernel with some tuning fields changed (tests force each branch this way), restored afterwards."""
    module = kernel() if module is None else module
    if module is None:
        raise RuntimeError("the compiled kernel is not loaded")
    before = module.tuning()
    module.update_tuning(fields)
    try:
        yield module
    finally:
        module.update_tuning(before)
