"""Loading the compiled kernel never compiles, waits or crashes: a first call in a changed environment, beside a
planted or held lock, with a binary of another capability or a damaged one, returns the right scores at once (through
the kernel or the torch path). Each case runs in a subprocess with a private kernel directory and a private torch
extensions directory. Building is explicit, idempotent and atomic; the ∂X cache is bounded."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import lowrank_pool as lp  # noqa: E402
from lowrank_pool import _native  # noqa: E402
from lowrank_pool._native import _build  # noqa: E402

# A first call: scores through whatever loads, compared with the torch path in the same process, and the status
PROBE = textwrap.dedent(
    """
    import json, sys, time, warnings
    start = time.monotonic()
    import torch, lowrank_pool as lp
    from lowrank_pool import _native
    g = torch.Generator().manual_seed(0)
    X = torch.randn(4, 7, 9, 1, generator=g, dtype=torch.float64)
    A, b = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randn(7, generator=g, dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = lp.rank1_pool(X, A, b)
    elapsed = time.monotonic() - start
    st = _native.status()
    _native.kernel = lambda: None
    want = lp.rank1_pool(X, A, b)
    print(json.dumps({
        "elapsed": elapsed, "available": st.available, "capability": st.capability, "reason": st.reason,
        "error": float((s - want).abs().max()), "warnings": [str(w.message) for w in caught],
    }))
    """
)


def _built(capability: str) -> Path:
    """The binary make setup built for ``capability`` (built now where it is missing)."""
    if capability not in _native.cpu_capabilities():
        pytest.skip(f"this CPU does not run the {capability} kernel")
    return _build.build_binary(capability)


def _probe(kernel_dir: Path, tmp_path: Path, **env: str) -> dict:
    extensions = tmp_path / "torch_extensions"
    extensions.mkdir(exist_ok=True)
    environ = {
        k: v for k, v in os.environ.items() if not k.startswith("LOWRANK_POOL_") and k not in ("CXX", "CC", "CFLAGS")
    }
    environ.update({"LOWRANK_POOL_KERNEL_DIR": str(kernel_dir), "TORCH_EXTENSIONS_DIR": str(extensions), **env})
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=environ, capture_output=True, text=True, timeout=120, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["error"] < 1e-12, result
    assert result["elapsed"] < 60, result  # an import and one call; a compile takes minutes
    assert not any(extensions.iterdir()), "something was built in the extensions directory"
    return result


def _install(binary: Path, directory: Path, name: str | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / (name or binary.name)
    shutil.copy2(binary, target)
    return target


def test_first_call_in_a_changed_environment_loads_the_binary_at_once(tmp_path):
    """Compiler, flags and paths changed (a compiler that does not exist): the binary loads as it is."""
    capability = _native.cpu_capabilities()[0] if _native.cpu_capabilities() else pytest.skip("no capability")
    kernels = tmp_path / "kernels"
    _install(_built(capability), kernels)
    result = _probe(kernels, tmp_path, CXX="/nonexistent/c++", CC="/nonexistent/cc", CFLAGS="-O0 -march=i386")
    assert result["available"] and result["capability"] == capability, result


def test_a_planted_or_held_lock_never_blocks_a_call(tmp_path):
    """A lock file left by a killed build, and one held right now by a live build: the first call does not look at
    either (only builds take the lock)."""
    capability = _native.cpu_capabilities()[0] if _native.cpu_capabilities() else pytest.skip("no capability")
    kernels = tmp_path / "kernels"
    binary = _install(_built(capability), kernels)
    lock = kernels / f"{binary.stem}.lock"
    lock.write_text("999999 somehost 2026-01-01T00:00:00\n")
    (tmp_path / "torch_extensions").mkdir()
    assert _probe(kernels, tmp_path)["available"]
    with lock.open("r+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert _probe(kernels, tmp_path)["available"]


def test_a_binary_for_another_capability_is_never_loaded(tmp_path):
    """A directory shared with a machine that runs AVX-512 (simulated: this process is told its CPU has AVX2 only):
    the AVX-512 binary is not loaded; the AVX2 one is where it exists, else the torch path runs. An AVX-512 binary
    under the AVX2 name is refused too (its module has another name, and each module says what it was built for)."""
    avx512, avx2 = _built("avx512"), _built("avx2")
    only512 = tmp_path / "only512"
    _install(avx512, only512)
    result = _probe(only512, tmp_path, LOWRANK_POOL_CPU_CAPABILITY="avx2")
    assert not result["available"] and "not built" in result["reason"] and avx512.name in result["reason"], result
    both = tmp_path / "both"
    _install(avx512, both)
    _install(avx2, both)
    result = _probe(both, tmp_path, LOWRANK_POOL_CPU_CAPABILITY="avx2")
    assert result["available"] and result["capability"] == "avx2", result
    swapped = tmp_path / "swapped"
    _install(avx512, swapped, avx2.name)
    result = _probe(swapped, tmp_path, LOWRANK_POOL_CPU_CAPABILITY="avx2")
    assert not result["available"] and "did not load" in result["reason"], result
    assert any("did not load" in w for w in result["warnings"]), result


def test_no_capability_or_turned_off_runs_the_torch_path(tmp_path):
    capability = _native.cpu_capabilities()[0] if _native.cpu_capabilities() else pytest.skip("no capability")
    kernels = tmp_path / "kernels"
    _install(_built(capability), kernels)
    result = _probe(kernels, tmp_path, LOWRANK_POOL_CPU_CAPABILITY="none")
    assert not result["available"] and "capabilities" in result["reason"], result
    result = _probe(kernels, tmp_path, LOWRANK_POOL_NATIVE="0")
    assert not result["available"] and "LOWRANK_POOL_NATIVE" in result["reason"], result


def test_a_damaged_binary_warns_once_and_runs_the_torch_path(tmp_path):
    capability = _native.cpu_capabilities()[0] if _native.cpu_capabilities() else pytest.skip("no capability")
    kernels = tmp_path / "kernels"
    binary = _install(_built(capability), kernels)
    binary.write_bytes(b"\x7fELF" + b"\0" * 100)
    result = _probe(kernels, tmp_path)
    assert not result["available"] and "did not load" in result["reason"], result
    assert sum("did not load" in w for w in result["warnings"]) == 1, result


def test_other_machines_run_the_torch_path(monkeypatch):
    monkeypatch.setattr(_native.platform, "machine", lambda: "aarch64")
    assert _native.cpu_capabilities() == ()
    _native.kernel.cache_clear()
    try:
        assert _native.kernel() is None
        assert "aarch64" in _native.status().reason
    finally:
        monkeypatch.undo()
        _native.kernel.cache_clear()


def test_loading_never_builds(monkeypatch):
    """kernel() neither runs a compiler nor calls the builder (both replaced by functions that fail the test)."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the loader must not build")

    monkeypatch.setattr(_build, "build_binary", forbidden)
    monkeypatch.setattr(subprocess, "run", forbidden)
    monkeypatch.setattr(subprocess, "Popen", forbidden)
    _native.kernel.cache_clear()
    try:
        _native.kernel()
        _native.status()
    finally:
        _native.kernel.cache_clear()


@pytest.mark.parametrize(
    "change",
    ["_source_digest", "_torch_identity", "_python_identity"],
)
def test_the_binary_name_covers_what_makes_it_differ(monkeypatch, change):
    """Sources, flags, torch's version and ABI, the Python ABI and the machine, and the capability each change it."""
    before = {cap: _build.binary_name(cap) for cap in _build.CAPABILITIES}
    assert len(set(before.values())) == len(before)
    monkeypatch.setattr(_build, change, lambda: "something else")
    after = {cap: _build.binary_name(cap) for cap in _build.CAPABILITIES}
    assert all(after[cap] != before[cap] for cap in before)
    monkeypatch.undo()
    flags = _build.CAPABILITIES["avx2"]
    monkeypatch.setitem(_build.CAPABILITIES, "avx2", _build.Capability("avx2", (*flags.cflags, "-O2"), flags.cpu_flags))
    assert _build.binary_name("avx2") != before["avx2"]


def test_building_is_idempotent_and_links_atomically(tmp_path, monkeypatch):
    """An up-to-date binary is kept (no compiler runs); with the objects in place a build only links, into a
    temporary name renamed over the target; the temporary files of a killed build are removed."""
    capability = _native.cpu_capabilities()[0] if _native.cpu_capabilities() else pytest.skip("no capability")
    built = _built(capability)
    kernels = tmp_path / "kernels"
    monkeypatch.setenv("LOWRANK_POOL_KERNEL_DIR", str(kernels))
    shutil.copytree(built.parent / "objects" / capability, kernels / "objects" / capability)
    said: list[str] = []
    path = _build.build_binary(capability, say=said.append)
    assert path == kernels / built.name and path.is_file()
    assert any("compiling 0 of" in s for s in said), said
    assert not list(kernels.glob("*.tmp-*"))
    leftover = kernels / f"{built.name}.tmp-999999"
    leftover.write_bytes(b"partial")

    def no_compiler(*args, **kwargs):
        raise AssertionError("an up-to-date binary must not be rebuilt")

    monkeypatch.setattr(_build, "_run", no_compiler)
    said.clear()
    assert _build.build_binary(capability, say=said.append) == path
    assert any("up to date" in s for s in said), said
    monkeypatch.undo()
    monkeypatch.setenv("LOWRANK_POOL_KERNEL_DIR", str(kernels))
    path.unlink()  # the binary gone, its objects there: the next build links again, and clears what was left
    said.clear()
    assert _build.build_binary(capability, say=said.append, jobs=1) == path
    assert not leftover.exists() and any("did not finish" in s for s in said), said
    assert _native.load_binary(path, capability).capability == capability


def test_the_build_lock_waits_for_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    lock = tmp_path / "k.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, socket, sys, time\n"
            f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.write(fd, f'{os.getpid()} {socket.gethostname()} now'.encode())\n"
            "print('held', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        said: list[str] = []
        start = time.monotonic()
        with pytest.raises(_build.KernelBuildError, match=f"pid {holder.pid}"), _build._lock(lock, said.append, 1.0):
            pass
        assert time.monotonic() - start >= 1.0 and "waiting" in said[0]
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    said = []
    with _build._lock(lock, said.append, 5.0):
        assert lock.read_text().split()[0] == str(os.getpid())
    assert any("taken over" in s for s in said), said
    assert lock.read_text() == ""  # released: an empty lock file


@pytest.mark.parametrize(
    ("value", "mib", "warns"),
    [
        (None, 1024, False),
        ("0", 0, False),
        (" 64 ", 64, False),
        ("-1", 1024, True),
        ("abc", 1024, True),
        ("1e3", 1024, True),
        ("2^44", 1024, True),
        (str(2**44), 1024, True),
        ("12.5", 1024, True),
    ],
)
def test_cache_limit_is_parsed_strictly(monkeypatch, value, mib, warns):
    if value is None:
        monkeypatch.delenv("LOWRANK_POOL_CACHE_MIB", raising=False)
    else:
        monkeypatch.setenv("LOWRANK_POOL_CACHE_MIB", value)
    _native._warn_once.cache_clear()
    if warns:
        with pytest.warns(RuntimeWarning, match="LOWRANK_POOL_CACHE_MIB"):
            assert _native.cache_limit_bytes() == mib << 20
    else:
        assert _native.cache_limit_bytes() == mib << 20


def test_the_dx_cache_stays_bounded_when_sizes_change():
    """Multi-scale training: 40 steps whose map size changes every step leave at most 4 freed ∂X buffers (2 of a
    size), and the limit in bytes holds too."""
    module = _native.kernel() or pytest.skip(_native.status().reason)
    lp.empty_cache()
    A, b = torch.randn(256, 5), torch.randn(256)
    for step in range(40):
        X = torch.randn(4, 256, 16 + step, 16, requires_grad=True)  # ∂X of 1-3.6 MiB, a new size each step
        lp.rank1_pool(X, A, b).sum().backward()
        del X
        assert module.cache_blocks() <= 4
    sizes = 4 * 256 * 16 * 4 * torch.arange(16 + 36, 16 + 40)
    assert module.cache_bytes(False) <= int(sizes.sum())
    X = torch.randn(4, 256, 20, 16, requires_grad=True)
    for _ in range(5):  # one size again and again: its buffer is reused, never more than 2 kept
        lp.rank1_pool(X, A, b).sum().backward()
        X.grad = None
    assert module.cache_blocks() <= 4
    limit = module.cache_limit()
    try:
        module.set_cache_limit(1 << 20)  # below one ∂X: nothing is kept
        assert module.cache_bytes(False) == 0
        lp.rank1_pool(X, A, b).sum().backward()
        X.grad = None
        assert module.cache_bytes(False) == 0
    finally:
        module.set_cache_limit(limit)
    lp.empty_cache()
    assert module.cache_blocks() == 0


class TestKernelStatus:
    """lowrank_pool.kernel_status and KernelStatus."""

    def test_kernel_status_says_what_the_loader_found(self):
        st = lp.kernel_status()
        assert isinstance(st, lp.KernelStatus) and st.available == (st.path is not None)
        assert set(st.cpu) <= set(_build.CAPABILITIES) and st.reason


class TestBuildKernel:
    """lowrank_pool.build_kernel and KernelBuildError."""

    def test_an_up_to_date_binary_is_found_without_compiling(self, monkeypatch):
        if not _native.cpu_capabilities():
            pytest.skip("this CPU has no capability the kernel is built for")
        _built(_native.cpu_capabilities()[0])

        def no_compiler(*args, **kwargs):
            raise AssertionError("up to date: nothing to compile")

        monkeypatch.setattr(_build, "_run", no_compiler)
        again = lp.build_kernel(verbose=False)
        assert again.available and again.capability == _native.cpu_capabilities()[0]

    def test_a_failing_build_raises_kernel_build_error_with_the_reason(self, monkeypatch, tmp_path):
        monkeypatch.setenv("LOWRANK_POOL_KERNEL_DIR", str(tmp_path))
        monkeypatch.setenv("CXX", "/nonexistent/c++")
        try:
            with pytest.raises(lp.KernelBuildError, match="no C\\+\\+ compiler"):
                lp.build_kernel(verbose=False)
            with pytest.raises(lp.KernelBuildError, match="capabilities"):
                lp.build_kernel("sse2", verbose=False)
        finally:
            _native.kernel.cache_clear()  # (the next call loads the real binary again)
