"""lowrank_pool: first-order, bilinear and low-rank attentional pooling on any array backend.

The functional API works on numpy, torch (CPU/CUDA, differentiable), array_api_strict
and other array-API libraries; results come back in the library, device and dtype
of the inputs. The torch layers live in :mod:`lowrank_pool.nn` (imported separately;
this package never imports torch itself).
"""

from collections.abc import Sequence

from ._errors import ArgumentError, ArgumentTypeError, BackendError, DTypeError, LowRankPoolError, ShapeError
from ._native import KernelBuildError, KernelStatus
from ._native import build as _build_kernel
from ._native import empty_cache as _empty_cache
from ._native import status as _kernel_status
from .approx import block_term_approx, cp_approx, eig_approx, tucker_approx
from .attention import AttentionMaps, attention_maps, attention_weights, rank1_pool, rankp_pool
from .compact import compact_bilinear_pool, count_sketches, sketch_hashes
from .factorized import EigTensor, RankP, cp_pool, cp_to_rankp, eig_pool, pool_cost, rankp_to_cp, tucker_pool
from .first_order import first_order_pool, project_channels
from .heads import (
    HeadForm,
    approx_form,
    convert_form,
    head_scores,
    moment_weighted_approx,
    project_factors,
    to_dense,
)
from .io import FactorFileError, FactorFileNotFoundError, load_factors, save_factors
from .normalize import l2_normalize, matrix_sqrt, signed_sqrt, triu_vec
from .profile import RankProfile, rank_profile
from .second_order import bilinear_pool, gram

__version__ = "0.1.0"


def empty_cache() -> int:
    """Release the memory the compiled CPU kernel keeps between training steps.

    The kernel behind :func:`rank1_pool`, :func:`rankp_pool` with a shared B and
    :class:`lowrank_pool.nn.AttentionalPool` (CPU, float32/float64) writes ∂X into buffers it
    allocates itself; when autograd frees one, the kernel keeps it (at most
    ``LOWRANK_POOL_CACHE_MIB`` MiB, default 1024, 0 to turn the cache off) so that the next step
    reuses its already-mapped pages instead of paying a fresh buffer's page faults, as much time as
    the backward's arithmetic at large maps. The peak memory of a step is unchanged; between steps
    the cache holds at most two freed ∂X of one size and four in all. Like ``torch.cuda.empty_cache``,
    this returns them to the system. See :doc:`/kernel`.

    Returns
    -------
    int
        The number of bytes released (0 when the kernel is not built or torch was never imported).

    Examples
    --------
    >>> import lowrank_pool as lp
    >>> lp.empty_cache() >= 0
    True
    """
    return _empty_cache()


def kernel_status() -> KernelStatus:
    """Whether the compiled CPU kernel runs in this process, and why (or why not).

    The kernel behind :func:`rank1_pool`, :func:`rankp_pool` with a shared B and
    :class:`lowrank_pool.nn.AttentionalPool` on the CPU (float32/float64) is optional: it is built by
    :func:`build_kernel` (``python -m lowrank_pool build-kernel``; ``make setup`` does it) and only ever
    *loaded* at run time, never compiled. Where it does not load, the torch path computes the same
    values; the reason says why and what to run. Looking imports torch and loads the kernel.
    ``python -m lowrank_pool kernel-status`` prints the same. See :doc:`/limits`.

    Returns
    -------
    KernelStatus
        ``available``, the loaded binary's ``capability`` (``"avx512"``, ``"avx2"``) and ``path``, the
        ``reason``, the capabilities this CPU supports (``cpu``) and the ``directories`` searched.

    Examples
    --------
    >>> import lowrank_pool as lp
    >>> status = lp.kernel_status()
    >>> status.available == (status.path is not None)
    True
    """
    return _kernel_status()


def build_kernel(
    capabilities: str | Sequence[str] = "native",
    *,
    jobs: int | None = None,
    force: bool = False,
    verbose: bool = True,
) -> KernelStatus:
    """Build the optional compiled CPU kernel into this environment, then load it.

    One binary per CPU capability, named after its sources, flags, torch's version and C++ ABI, the
    Python ABI and the capability, so environments and machines sharing a directory never load one
    another's. The build is explicit (nothing compiles at call time), idempotent, runs the compiler on
    ``jobs`` files at once, and is safe against concurrent and killed builds. Needs a C++ compiler
    (``CXX``, default ``c++``) with OpenMP, and torch.

    Parameters
    ----------
    capabilities : str or sequence of str, default "native"
        ``"native"``: the best capability this CPU runs; ``"all"``: every one (``"avx512"``, ``"avx2"``,
        e.g. for a directory shared by several kinds of machine); or the names.
    jobs : int, optional
        Compiler processes at once (default: one per core).
    force : bool, default False
        Recompile even when an up-to-date binary exists.
    verbose : bool, default True
        Report each step on stderr.

    Returns
    -------
    KernelStatus
        As :func:`kernel_status`, after the build.

    Raises
    ------
    KernelBuildError
        No compiler, a compile error (its message included), or a lock held by another build for 30 minutes.

    Examples
    --------
    >>> import lowrank_pool as lp
    >>> lp.build_kernel(verbose=False).available  # doctest: +SKIP
    True
    """
    return _build_kernel(capabilities, jobs=jobs, force=force, verbose=verbose)


__all__ = [
    "ArgumentError",
    "ArgumentTypeError",
    "AttentionMaps",
    "BackendError",
    "DTypeError",
    "EigTensor",
    "FactorFileError",
    "FactorFileNotFoundError",
    "HeadForm",
    "KernelBuildError",
    "KernelStatus",
    "LowRankPoolError",
    "RankP",
    "RankProfile",
    "ShapeError",
    "__version__",
    "approx_form",
    "attention_maps",
    "attention_weights",
    "bilinear_pool",
    "block_term_approx",
    "build_kernel",
    "compact_bilinear_pool",
    "convert_form",
    "count_sketches",
    "cp_approx",
    "cp_pool",
    "cp_to_rankp",
    "eig_approx",
    "eig_pool",
    "empty_cache",
    "first_order_pool",
    "gram",
    "head_scores",
    "kernel_status",
    "l2_normalize",
    "load_factors",
    "matrix_sqrt",
    "moment_weighted_approx",
    "pool_cost",
    "project_channels",
    "project_factors",
    "rank1_pool",
    "rank_profile",
    "rankp_pool",
    "rankp_to_cp",
    "save_factors",
    "signed_sqrt",
    "sketch_hashes",
    "to_dense",
    "triu_vec",
    "tucker_approx",
    "tucker_pool",
]
