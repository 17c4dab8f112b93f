"""lowrank_pool: first-order, bilinear and low-rank attentional pooling on any array backend.

The functional API works on numpy, torch (CPU/CUDA, differentiable), array_api_strict
and other array-API libraries; results come back in the library, device and dtype
of the inputs. The torch layers live in :mod:`lowrank_pool.nn` (imported separately;
this package never imports torch itself).
"""

from ._checks import BackendError, DTypeError, LowRankPoolError, ShapeError
from .attention import attention_maps, rank1_pool, rankp_pool
from .first_order import first_order_pool
from .normalize import l2_normalize, matrix_sqrt, signed_sqrt
from .second_order import bilinear_pool, gram

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "DTypeError",
    "LowRankPoolError",
    "ShapeError",
    "__version__",
    "attention_maps",
    "bilinear_pool",
    "first_order_pool",
    "gram",
    "l2_normalize",
    "matrix_sqrt",
    "rank1_pool",
    "rankp_pool",
    "signed_sqrt",
]
