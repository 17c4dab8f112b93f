"""Building the compiled CPU kernel: explicit, idempotent, safe against concurrent and killed builds.

One binary per CPU capability (``avx2``, ``avx512``), named after everything that makes it differ (the
sources, the flags, torch's version and C++ ABI, the Python ABI, the machine and the capability), so
that binaries of different environments can share a directory without ever loading one another's.
The translation units compile in parallel into objects named after their inputs (a one-file change
recompiles that file and links), the binary is linked under a temporary name and renamed into place
atomically, and builds of one binary exclude each other with an advisory lock that the operating
system releases when its holder dies (a lock left by a killed build is reported and taken over). No
function here runs at call time: :func:`lowrank_pool._native.kernel` only loads what this built.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import hashlib
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CAPABILITIES",
    "INTERFACE",
    "Capability",
    "KernelBuildError",
    "binary_name",
    "build_binary",
    "kernel_directories",
    "sources",
]

SOURCE_DIR = Path(__file__).with_name("src")
INTERFACE = 2  # the bindings' `interface` attribute this Python side speaks
_PREFIX = "lowrank_pool_attn"


@dataclass(frozen=True)
class Capability:
    """An instruction-set level the kernel is built for: the compiler flags and the CPU flags it needs."""

    name: str
    cflags: tuple[str, ...]
    cpu_flags: frozenset[str]  # as /proc/cpuinfo names them


# best first
CAPABILITIES: dict[str, Capability] = {
    "avx512": Capability(
        "avx512",
        ("-mavx2", "-mfma", "-mavx512f", "-mavx512vl", "-mavx512dq", "-mavx512bw", "-DLP_CAPABILITY_AVX512"),
        frozenset({"avx2", "fma", "avx512f", "avx512vl", "avx512dq", "avx512bw"}),
    ),
    "avx2": Capability("avx2", ("-mavx2", "-mfma", "-DLP_CAPABILITY_AVX2"), frozenset({"avx2", "fma"})),
}

# -mtune=native: instruction scheduling for the CPU that builds; the ISA stays the capability's, so the binary is
# correct on any CPU that has it (docs/performance.md, "Build flags")
_COMMON = ("-O3", "-mtune=native", "-std=c++20", "-fPIC", "-fvisibility=hidden", "-fopenmp")
# built for the baseline ISA: the module checks the CPU before any of the kernel's vector code runs
_BASELINE = ("bindings.cpp", "module.cpp")
_MODULE = "module.cpp"  # the one unit that depends on the binary's name


class KernelBuildError(RuntimeError):
    """The kernel could not be built (no compiler, a compile error, a lock held too long)."""


def sources() -> tuple[list[Path], list[Path]]:
    """The kernel's translation units and headers."""
    units = sorted(SOURCE_DIR.glob("*.cpp"))
    headers = sorted(SOURCE_DIR.glob("*.h"))
    if not units:
        raise KernelBuildError(f"no kernel sources in {SOURCE_DIR}")
    return units, headers


def _torch_identity() -> str:
    import torch

    abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", 1))
    return f"torch {torch.__version__} abi {abi}"


def _python_identity() -> str:
    return f"{sys.implementation.cache_tag} {sysconfig.get_config_var('SOABI')} {platform.machine()}"


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        data = p.encode() if isinstance(p, str) else p
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def _source_digest() -> str:
    units, headers = sources()
    return _digest(*(f"{p.name}\0".encode() + p.read_bytes() for p in (*units, *headers)))


def _unit_flags(unit: Path, cap: Capability) -> tuple[str, ...]:
    kernel = f"-DLP_KERNEL_{cap.name.upper()}"
    if unit.name in _BASELINE:
        return (*_COMMON, kernel, "-DLP_CAPABILITY_BASELINE")
    return (*_COMMON, kernel, *cap.cflags)


def binary_name(capability: str) -> str:
    """The file name (without suffix) of the kernel built for ``capability`` in this environment: a digest of the
    sources, the flags of every unit, torch's version and ABI, the Python ABI and the machine."""
    cap = CAPABILITIES[capability]
    units, _ = sources()
    flags = "\n".join(f"{u.name}: {' '.join(_unit_flags(u, cap))}" for u in units)
    key = _digest(_source_digest(), flags, _torch_identity(), _python_identity(), str(INTERFACE))
    return f"{_PREFIX}_{capability}_{key[:16]}"


def kernel_directories() -> list[Path]:
    """Where binaries are looked for, in order: ``$LOWRANK_POOL_KERNEL_DIR`` alone when set; else this
    environment's ``<sys.prefix>/share/lowrank_pool/kernels`` (private to the environment) and the user's cache
    (``$XDG_CACHE_HOME/lowrank_pool/kernels``, for environments whose prefix cannot be written)."""
    env = os.environ.get("LOWRANK_POOL_KERNEL_DIR")
    if env:
        return [Path(env).expanduser()]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return [Path(sys.prefix) / "share" / "lowrank_pool" / "kernels", cache / "lowrank_pool" / "kernels"]


def _writable_directory() -> Path:
    for directory in kernel_directories():
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(directory, os.W_OK | os.X_OK):
            return directory
    raise KernelBuildError(f"no writable kernel directory among {[str(d) for d in kernel_directories()]}")


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(fd: int) -> tuple[int, str, str]:
    """(pid, host, text) written in a lock file by its holder; pid 0 when empty or unreadable."""
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode(errors="replace").strip()
    fields = text.split()
    try:
        return int(fields[0]), fields[1], text
    except (IndexError, ValueError):
        return 0, "", text


@contextmanager
def _lock(path: Path, say: Callable[[str], None], timeout: float) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (fcntl.flock: released by the OS when its holder dies)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    acquired = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, host, _ = _holder(fd)
            say(f"another build of this kernel is running (pid {pid} on {host or 'an unknown host'}); waiting")
            deadline = time.monotonic() + timeout
            while True:
                time.sleep(0.5)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise KernelBuildError(
                            f"{path} is still held by pid {pid} after {timeout:.0f} s; "
                            "stop that build, or build into another LOWRANK_POOL_KERNEL_DIR"
                        ) from None
        else:
            pid, host, _ = _holder(fd)
            if pid and host == socket.gethostname() and not _pid_running(pid):
                say(f"a lock left by a build that did not finish (pid {pid}, no longer running) was taken over")
        acquired = True
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()} {socket.gethostname()} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
        yield
    finally:
        try:
            if acquired:
                os.ftruncate(fd, 0)  # an empty lock file: nobody building
        finally:
            os.close(fd)  # (closing releases the flock)


def _compiler() -> list[str]:
    cxx = shlex.split(os.environ.get("CXX") or "c++")
    if not cxx or shutil.which(cxx[0]) is None:
        raise KernelBuildError(f"no C++ compiler: {cxx[0] if cxx else 'CXX'!r} was not found (set CXX)")
    return cxx


def _includes() -> list[str]:
    from torch.utils.cpp_extension import include_paths

    paths = [*include_paths(), sysconfig.get_paths()["include"]]
    return [f"-isystem{p}" for p in paths]


def _link_flags() -> list[str]:
    from torch.utils.cpp_extension import library_paths

    return [*(f"-L{p}" for p in library_paths()), "-lc10", "-ltorch", "-ltorch_cpu", "-ltorch_python"]


def _run(cmd: Sequence[str], what: str) -> None:
    result = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise KernelBuildError(f"{what} failed ({shlex.join(cmd)}):\n{result.stderr[-6000:]}")


def _remove_leftovers(directory: Path, say: Callable[[str], None]) -> None:
    """Temporary files of builds whose process is gone (killed while compiling or linking)."""
    for tmp in directory.rglob("*.tmp-*"):
        try:
            pid = int(tmp.name.rsplit(".tmp-", 1)[1].split("-")[0])
        except ValueError:
            continue
        if not _pid_running(pid):
            tmp.unlink(missing_ok=True)
            say(f"removed {tmp.name}, left by a build that did not finish")


def build_binary(
    capability: str,
    *,
    jobs: int | None = None,
    force: bool = False,
    say: Callable[[str], None] = lambda _: None,
    lock_timeout: float = 1800.0,
    extra_cflags: Sequence[str] = (),
) -> Path:
    """Build (or find up to date) the kernel for ``capability``; the binary's path.

    ``extra_cflags`` (e.g. ``-DLP_VEC_BYTES=32``) become part of the binary's name, so an experiment never
    replaces the default binary.
    """
    cap = CAPABILITIES[capability]
    if extra_cflags:
        cap = Capability(cap.name, (*cap.cflags, *extra_cflags), cap.cpu_flags)
    directory = _writable_directory()
    units, headers = sources()
    name = binary_name(capability) if not extra_cflags else _experiment_name(capability, cap)
    target = directory / f"{name}.so"
    if target.is_file() and not force:
        say(f"{capability}: up to date ({target})")
        return target
    cxx = _compiler()
    includes = _includes()
    headers_digest = _digest(*(h.read_bytes() for h in headers))
    objects = directory / "objects" / (capability if not extra_cflags else name.rsplit("_", 1)[1] + "-" + capability)
    objects.mkdir(parents=True, exist_ok=True)
    with _lock(directory / f"{name}.lock", say, lock_timeout):
        _remove_leftovers(directory, say)
        if target.is_file() and not force:  # built by the holder we waited for
            say(f"{capability}: up to date ({target})")
            return target
        plan = []
        for unit in units:
            flags = [*_unit_flags(unit, cap), *((f"-DLP_MODULE_NAME={name}",) if unit.name == _MODULE else ())]
            key = _digest(unit.read_bytes(), headers_digest, " ".join(flags), _torch_identity(), _python_identity())
            plan.append((unit, objects / f"{unit.stem}-{key[:16]}.o", flags))
        todo = [(u, o, f) for u, o, f in plan if force or not o.is_file()]
        say(f"{capability}: compiling {len(todo)} of {len(plan)} files with {cxx[0]} ({jobs or os.cpu_count()} jobs)")
        started = time.monotonic()

        def compile_one(item: tuple[Path, Path, list[str]]) -> None:
            unit, obj, flags = item
            tmp = obj.with_name(f"{obj.name}.tmp-{os.getpid()}")
            _run([*cxx, *flags, *includes, "-c", str(unit), "-o", str(tmp)], f"compiling {unit.name}")
            os.replace(tmp, obj)
            say(f"  {unit.name} ({time.monotonic() - started:.0f} s)")

        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs or os.cpu_count() or 1)) as pool:
            for future in [pool.submit(compile_one, item) for item in todo]:
                future.result()
        # the baseline units first: where units share an inline function, the linker keeps the first copy it meets
        ordered = sorted(plan, key=lambda item: item[0].name not in _BASELINE)
        tmp = directory / f"{name}.so.tmp-{os.getpid()}"
        _run([*cxx, "-shared", *(str(o) for _, o, _ in ordered), "-fopenmp", *_link_flags(), "-o", str(tmp)], "linking")
        os.replace(tmp, target)
        used = {o.name for _, o, _ in plan}
        for stale in objects.glob("*.o"):  # objects of earlier sources (this capability)
            if stale.name not in used:
                stale.unlink(missing_ok=True)
        say(f"{capability}: built {target.name} in {time.monotonic() - started:.0f} s")
    return target


def _experiment_name(capability: str, cap: Capability) -> str:
    return f"{binary_name(capability)}_x{_digest(' '.join(cap.cflags))[:8]}"
