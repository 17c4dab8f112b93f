"""lowrank_pool: first-order, bilinear and low-rank attentional pooling on any array backend.

The functional API works on numpy, torch (CPU/CUDA, differentiable), array_api_strict
and other array-API libraries; results come back in the library, device and dtype
of the inputs. The torch layers live in :mod:`lowrank_pool.nn` (imported separately;
this package never imports torch itself).
"""

from ._errors import ArgumentError, ArgumentTypeError, BackendError, DTypeError, LowRankPoolError, ShapeError
from ._native import empty_cache as _empty_cache
from .approx import cp_approx, eig_approx, tucker_approx
from .attention import AttentionMaps, attention_maps, attention_weights, rank1_pool, rankp_pool
from .compact import compact_bilinear_pool
from .factorized import EigTensor, RankP, cp_pool, cp_to_rankp, eig_pool, pool_cost, rankp_to_cp, to_dense, tucker_pool
from .first_order import first_order_pool, project_channels
from .io import FactorFileError, FactorFileNotFoundError, load_factors, save_factors
from .normalize import l2_normalize, matrix_sqrt, signed_sqrt
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
    the cache holds about one ∂X. Like ``torch.cuda.empty_cache``, this returns it to the system.
    See :doc:`/limits`.

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


__all__ = [
    "ArgumentError",
    "ArgumentTypeError",
    "AttentionMaps",
    "BackendError",
    "DTypeError",
    "EigTensor",
    "FactorFileError",
    "FactorFileNotFoundError",
    "LowRankPoolError",
    "RankP",
    "RankProfile",
    "ShapeError",
    "__version__",
    "attention_maps",
    "attention_weights",
    "bilinear_pool",
    "compact_bilinear_pool",
    "cp_approx",
    "cp_pool",
    "cp_to_rankp",
    "eig_approx",
    "eig_pool",
    "empty_cache",
    "first_order_pool",
    "gram",
    "l2_normalize",
    "load_factors",
    "matrix_sqrt",
    "pool_cost",
    "project_channels",
    "rank1_pool",
    "rank_profile",
    "rankp_pool",
    "rankp_to_cp",
    "save_factors",
    "signed_sqrt",
    "to_dense",
    "tucker_approx",
    "tucker_pool",
]
