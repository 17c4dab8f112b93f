"""lowrank_pool: first-order, bilinear and low-rank attentional pooling on any array backend.

The functional API works on numpy, torch (CPU/CUDA, differentiable), array_api_strict
and other array-API libraries; results come back in the library, device and dtype
of the inputs. The torch layers live in :mod:`lowrank_pool.nn` (imported separately;
this package never imports torch itself).
"""

from ._checks import BackendError, DTypeError, LowRankPoolError, ShapeError
from .approx import RankProfile, cp_approx, eig_approx, rank_profile, tucker_approx
from .attention import attention_maps, rank1_pool, rankp_pool
from .factorized import EigTensor, RankP, cp_pool, cp_to_rankp, eig_pool, pool_cost, rankp_to_cp, to_dense, tucker_pool
from .first_order import first_order_pool
from .io import FactorFileError, load_factors, save_factors
from .normalize import l2_normalize, matrix_sqrt, signed_sqrt
from .second_order import bilinear_pool, gram

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "DTypeError",
    "EigTensor",
    "FactorFileError",
    "LowRankPoolError",
    "RankP",
    "RankProfile",
    "ShapeError",
    "__version__",
    "attention_maps",
    "bilinear_pool",
    "cp_approx",
    "cp_pool",
    "cp_to_rankp",
    "eig_approx",
    "eig_pool",
    "first_order_pool",
    "gram",
    "l2_normalize",
    "load_factors",
    "matrix_sqrt",
    "pool_cost",
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
