"""How the code reads: public names documented and exported, the functional API without torch. (The import
structure itself, layers included, is checked by import-linter's contracts in pyproject.toml: ``make lint``.)"""

from __future__ import annotations

import lowrank_pool as lp


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


def test_every_module_exports_only_public_names():
    """A module's __all__ holds only names the package publishes (lowrank_pool, or the public submodules)."""
    import importlib
    import pkgutil

    import lowrank_pool.nn
    import lowrank_pool.testing
    import lowrank_pool.validation

    public = set(lp.__all__) | set(lowrank_pool.nn.__all__)
    public |= set(lowrank_pool.testing.__all__) | set(lowrank_pool.validation.__all__)
    for info in pkgutil.iter_modules(lp.__path__):
        if info.name.startswith("_") or info.name in ("nn", "demo", "testing", "validation"):
            continue
        module = importlib.import_module(f"lowrank_pool.{info.name}")
        extra = sorted(set(getattr(module, "__all__", ())) - public)
        assert not extra, f"lowrank_pool.{info.name} exports names the package does not publish: {extra}"


def test_every_public_name_has_its_test_place():
    """tests/places.py names the test class of each public name; the class exists, holds tests (its own or a
    contract's), and its source or its docstring names what it tests."""
    import ast
    import pathlib
    import re

    from places import PLACES

    import lowrank_pool.nn

    names = {n for n in lp.__all__ if not n.startswith("__")} | {f"nn.{n}" for n in lowrank_pool.nn.__all__}
    missing = sorted(names - set(PLACES))
    assert not missing, f"public names without a test place in tests/places.py: {missing}"
    stale = sorted(set(PLACES) - names)
    assert not stale, f"tests/places.py names what is no longer public: {stale}"
    here = pathlib.Path(__file__).parent
    for name, place in PLACES.items():
        module, _, cls = place.partition("::")
        path = here / module
        assert path.is_file(), f"{name}: {module} does not exist"
        source = path.read_text()
        found = [n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == cls]
        assert found, f"{name}: {module} has no class {cls}"
        node = found[0]
        tests = [f for f in node.body if isinstance(f, ast.FunctionDef) and f.name.startswith("test_")]
        assert tests or node.bases, f"{name}: {module}::{cls} holds no test"
        short = name.split(".")[-1]
        text = ast.get_source_segment(source, node) or ""
        assert re.search(rf"\b{short}\b", text), f"{name}: {module}::{cls} does not name it"


def test_the_layers_contract_forbids_every_private_module():
    """lowrank_pool.nn (and the demo) may import only the public API: import-linter's forbidden contract lists
    the private modules one by one, so a new private module must join the list (and a removed one leave it)."""
    import pathlib
    import pkgutil
    import tomllib

    root = pathlib.Path(lp.__file__).parent
    config = tomllib.loads((root.parent / "pyproject.toml").read_text())
    contract = next(
        c
        for c in config["tool"]["importlinter"]["contracts"]
        if c.get("source_modules") == ["lowrank_pool.nn", "lowrank_pool.demo"]
    )
    private = {f"lowrank_pool.{m.name}" for m in pkgutil.iter_modules([str(root)]) if m.name.startswith("_")}
    private -= {"lowrank_pool.__main__"}
    assert set(contract["forbidden_modules"]) == private
