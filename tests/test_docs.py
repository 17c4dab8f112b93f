"""The documentation's contract with the code: every public name is documented (numpy style, every
parameter, an example) and appears in the site's API reference. The site itself is built and opened
in a browser by `make docs` / `make docs-check`."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

numpydoc_validate = pytest.importorskip("numpydoc.validate", reason="numpydoc is in the test extra")
pytest.importorskip("torch")

API_DIR = Path(__file__).resolve().parents[1] / "docs" / "api"
MODULES = ["lowrank_pool", "lowrank_pool.nn", "lowrank_pool.validation", "lowrank_pool.testing"]
# numpydoc codes that are defects here: no docstring, undocumented or unknown parameters, no example,
# no summary
REQUIRED = {"GL08", "PR01", "PR02", "EX01", "SS01"}


def _public() -> list[tuple[str, str, object]]:
    out = []
    for mod_name in MODULES:
        mod = importlib.import_module(mod_name)
        for name in mod.__all__:
            obj = getattr(mod, name)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                out.append((mod_name, name, obj))
    return out


PUBLIC = _public()


@pytest.mark.parametrize(("module", "name", "obj"), PUBLIC, ids=[f"{m}.{n}" for m, n, _ in PUBLIC])
def test_public_name_is_documented(module, name, obj):
    required = set(REQUIRED)
    if isinstance(obj, type) and issubclass(obj, Exception):
        required.discard("EX01")  # an error class is shown by the functions that raise it
    result = numpydoc_validate.validate(f"{module}.{name}")
    problems = [f"{code}: {message}" for code, message in result["errors"] if code in required]
    assert not problems, f"{module}.{name}: " + "; ".join(problems)


def test_every_layer_documents_every_constructor_parameter():
    import lowrank_pool.nn as lnn

    for name in lnn.__all__:
        cls = getattr(lnn, name)
        if not (isinstance(cls, type) and issubclass(cls, lnn.PoolingHead)):
            continue
        doc = inspect.getdoc(cls) or ""
        for param in inspect.signature(cls.__init__).parameters:
            if param in ("self", "args", "kwargs"):
                continue
            assert re.search(rf"(^|[\s,]){param}([\s,:]|$)", doc, re.M), f"{name}: parameter {param} not documented"


def test_every_public_name_is_in_the_api_reference():
    pages = "\n".join(p.read_text() for p in API_DIR.glob("*.rst"))
    missing = []
    for module in MODULES:
        mod = importlib.import_module(module)
        current = None
        for name in mod.__all__:
            if name.startswith("__"):
                continue
            # a name is referenced by an auto* or data directive under a currentmodule of its module
            found = False
            for block in re.split(r"\.\. currentmodule:: ", pages)[1:]:
                current, _, body = block.partition("\n")
                if current.strip() == module and re.search(rf"^\.\. (auto\w+|data):: {name}\s*$", body, re.M):
                    found = True
                    break
            if not found:
                missing.append(f"{module}.{name}")
    assert not missing, f"public names missing from docs/api: {missing}"


def test_readme_and_docs_home_code_runs_as_written():
    """The Python blocks of README.md and docs/index.md, in order, one namespace per file, in an empty directory
    (what a reader pastes); `make dist` runs the same against the installed wheel."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    cmd = [
        sys.executable,
        str(root / ".ci" / "run_markdown.py"),
        str(root / "README.md"),
        str(root / "docs" / "index.md"),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-3000:])
    assert "README.md: block 3 ran" in out.stdout and "index.md: block 1 ran" in out.stdout


@pytest.mark.parametrize(
    "name",
    [
        "AttentionalPool",
        "BilinearPool",
        "CPPool",
        "TuckerPool",
        "EigPool",
        "CompactBilinearPool",
        "FirstOrderPool",
        "PoseAttentionalPool",
        "CovariancePool",
        "MLB",
        "MFB",
        "Mutan",
        "Block",
        "MCB",
    ],
)
def test_every_layer_documents_its_forward(name):
    """The API pages list each layer's forward: its own docstring, not nn.Module's boilerplate."""
    import lowrank_pool.nn as lpnn

    doc = inspect.getdoc(getattr(lpnn, name).forward) or ""
    assert "Define the computation" not in doc and ":math:" in doc and "Returns" in doc, name
