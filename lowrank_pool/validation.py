"""Public helpers for code built on the package (its layers included): the validators the functions use, and the
progress reporter of long computations (:class:`Progress`, the ``lowrank_pool`` logger and an optional bar).

Each validator raises a :class:`lowrank_pool.LowRankPoolError` subclass that names the argument,
what was expected and what was given.
"""

from __future__ import annotations

from typing import Any

from ._checks import (
    MAX_ITERATIONS,
    check_choice,
    check_flag,
    check_int,
    check_number,
    check_positive_int,
    check_tucker_ranks,
    parse_cp,
    parse_eig,
    parse_tucker,
)
from ._progress import Progress
from .attention import ATTENTIONS
from .compact import check_sketch
from .second_order import NORMALIZATIONS

__all__ = [
    "ATTENTIONS",
    "MAX_ITERATIONS",
    "NORMALIZATIONS",
    "PATHS",
    "Progress",
    "as_cp",
    "as_eig",
    "as_tucker",
    "check_choice",
    "check_flag",
    "check_int",
    "check_number",
    "check_positive_int",
    "check_sketch",
    "check_tucker_ranks",
]

PATHS = ("auto", "factorized", "dense")


def as_cp(cp: Any, /) -> tuple[Any, list[Any]]:
    """``(weights (R,), [U (K, R), A (f, R), C (f, R)])`` of a validated CP form (weights None become ones).

    Parameters
    ----------
    cp : CPTensor or (weights, factors)
        A CP form of W (K, f, f), on any backend.

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_pool.validation import as_cp
    >>> w, (U, A, C) = as_cp((None, [np.ones((3, 2)), np.ones((4, 2)), np.ones((4, 2))]))
    >>> w
    array([1., 1.])
    """
    _, weights, factors, _ = parse_cp(cp)
    return weights, factors


def as_tucker(tucker: Any, /) -> tuple[Any, list[Any]]:
    """``(core (R_K, R_a, R_c), [U, A, C])`` of a validated Tucker form.

    Parameters
    ----------
    tucker : TuckerTensor or (core, factors)
        A Tucker form of W (K, f, f), on any backend.

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_pool.validation import as_tucker
    >>> core, (U, A, C) = as_tucker((np.ones((1, 2, 2)), [np.ones((3, 1)), np.ones((4, 2)), np.ones((4, 2))]))
    >>> core.shape, U.shape
    ((1, 2, 2), (3, 1))
    """
    _, core, factors, _ = parse_tucker(tucker)
    return core, factors


def as_eig(eig: Any, /) -> tuple[Any, Any]:
    """``(eigenvalues (K, P), eigenvectors (f, K, P))`` of a validated eigen form.

    Parameters
    ----------
    eig : EigTensor or (eigenvalues, eigenvectors)
        An eigen form of W (K, f, f), on any backend.

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_pool.validation import as_eig
    >>> mu, v = as_eig((np.ones((3, 2)), np.ones((4, 3, 2))))
    >>> mu.shape, v.shape
    ((3, 2), (4, 3, 2))
    """
    _, mu, v, _ = parse_eig(eig)
    return mu, v
