"""Run the ```python blocks of Markdown files as a reader would: in order, one namespace per file, in
an empty temporary directory (files the examples write land there). Used by the tests (README.md and
docs/index.md against the checkout) and by `make dist` (against an installed wheel).

    python .ci/run_markdown.py README.md docs/index.md
"""

from __future__ import annotations

import os
import pathlib
import re
import sys
import tempfile
import time

BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def run(path: pathlib.Path) -> int:
    blocks = BLOCK.findall(path.read_text(encoding="utf-8"))
    namespace: dict[str, object] = {"__name__": "__main__"}
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            for i, code in enumerate(blocks, 1):
                start = time.perf_counter()
                try:
                    exec(compile(code, f"{path.name} block {i}", "exec"), namespace)
                except Exception as err:
                    raise SystemExit(f"{path}: python block {i} failed: {type(err).__name__}: {err}") from err
                print(f"{path.name}: block {i} ran in {time.perf_counter() - start:.1f} s")
        finally:
            os.chdir(here)
    return len(blocks)


if __name__ == "__main__":
    paths = [pathlib.Path(p).resolve() for p in sys.argv[1:]]
    if not paths:
        sys.exit("usage: run_markdown.py FILE.md ...")
    for p in paths:
        if run(p) == 0:
            sys.exit(f"{p}: no python blocks")
