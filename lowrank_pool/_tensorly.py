"""tensorly's backend, set for one thread and one call: never the global state tensorly itself keeps."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import array_api_compat as aac

from ._backend import Namespace
from ._errors import BackendError

__all__ = ["tensorly_backend", "tensorly_context"]


@contextmanager
def tensorly_context(xp: Namespace, name: str = "W", *, fit: bool = True) -> Iterator[None]:
    """tensorly's backend set to ``xp``'s for this thread only, and restored on exit.

    tensorly's own ``backend_context`` writes the *global* default backend on exit, so
    two fits in two threads (numpy and torch) could swap each other's backend, and a
    user's ``tl.set_backend`` would be overwritten. This sets the thread-local backend
    alone and puts back exactly what the thread had (nothing, or its own choice).
    ``fit=False`` (only building a ``CPTensor``/``TuckerTensor``, which reads shapes)
    falls back to tensorly's numpy backend for libraries tensorly has no backend for.
    """
    import tensorly as tl

    try:
        backend = tensorly_backend(xp, name)
    except BackendError:
        if fit:
            raise
        backend = "numpy"
    local = getattr(sys.modules.get("tensorly.backend"), "_THREAD_LOCAL_DATA", None)
    had = local is not None and "backend" in vars(local)
    old = vars(local).get("backend") if local is not None else tl.get_backend()
    tl.set_backend(backend, local_threadsafe=True)
    try:
        yield
    finally:
        if local is None:  # another tensorly layout: restore by name, thread-locally
            tl.set_backend(old, local_threadsafe=True)
        elif had:
            local.backend = old
        else:
            vars(local).pop("backend", None)


def tensorly_backend(xp: Namespace, name: str = "W") -> str:
    """tensorly's backend name for arrays of ``xp`` (used inside ``tl.backend_context``)."""
    if aac.is_numpy_namespace(xp):
        return "numpy"
    if aac.is_torch_namespace(xp):
        return "pytorch"
    if aac.is_jax_namespace(xp):
        return "jax"
    if aac.is_cupy_namespace(xp):
        return "cupy"
    raise BackendError(
        f"{name}: tensorly has no backend for {xp.__name__} arrays; pass numpy, torch, jax or cupy arrays"
    )
