"""How the code reads: the layers use only public functions, one module names the array backends."""

from __future__ import annotations

import pathlib
import re

import lowrank_pool as lp

ROOT = pathlib.Path(lp.__file__).parent


def _imports(path: pathlib.Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if re.match(r"\s*(from|import)\s", line)]


def test_layers_import_only_public_modules():
    for path in (ROOT / "nn").glob("*.py"):
        for line in _imports(path):
            assert not re.search(
                r"from \.\.|lowrank_pool\._|from \.\w+ import _|lowrank_pool\.(attention|second_order)", line
            ), f"{path.name}: {line}"


def test_only_the_dispatch_module_names_array_backends():
    """torch and backend tests appear in _xp (and the torch-only kernel, I/O and test helpers), nowhere else."""
    allowed = {"_xp.py", "_torch_kernels.py", "testing.py", "io.py", "demo.py"}
    pattern = re.compile(
        r"^\s*(import torch|from torch|import array_api_compat\.torch)|is_torch_namespace|isinstance\(.*np\.ndarray"
    )
    for path in ROOT.glob("*.py"):
        if path.name in allowed:
            continue
        offenders = [line for line in path.read_text().splitlines() if pattern.search(line)]
        assert not offenders, f"{path.name}: {offenders}"


def test_public_names_are_documented_and_exported():
    for name in lp.__all__:
        obj = getattr(lp, name)
        assert obj is not None, name
        if callable(obj) and not isinstance(obj, type(lp)):
            assert (obj.__doc__ or "").strip(), f"{name} has no docstring"
    assert sorted(lp.__all__) == lp.__all__


def test_the_functional_api_imports_without_torch_and_nn_says_what_to_install():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None\n"  # import torch now fails
        "import numpy as np, lowrank_pool as lp\n"
        "print(lp.rank1_pool(np.ones((1, 2, 3)), np.ones((3, 2)), np.ones(3)).shape)\n"
        "try:\n    import lowrank_pool.nn\nexcept ImportError as err:\n    print('ImportError:', err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "(1, 2)" in out.stdout
    assert "ImportError: lowrank_pool.nn needs PyTorch" in out.stdout and "lowrank_pool[torch]" in out.stdout
