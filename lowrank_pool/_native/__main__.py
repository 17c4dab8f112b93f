"""python -m lowrank_pool._native: build the compiled kernel (make setup does)."""

from . import _build_dir, build

try:
    build(verbose=False)
    print(f"lowrank_pool: compiled kernel ready ({_build_dir()})")
except Exception as err:  # any failure: the torch path is used, say why
    print(f"lowrank_pool: the compiled kernel could not be built ({err}); the torch path will be used")
