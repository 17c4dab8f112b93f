"""Factor forms, sizes and dense references of the factor-form and fit tests."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

import lowrank_pool as lp

PATHS = ["factorized", "dense", "auto"]
# float64 scores of the small fixed problems below (n ≤ 7 positions, f ≤ 6 channels, rank ≤ 6) computed two ways:
# each a chain of at most n + f² + R + 4 roundings, both sides rounding; compared normwise
SMALL = 2 * (7 + 6 * 6 + 6 + 4)


def _cp(rng, K, f, R):
    return rng.standard_normal(R), [
        rng.standard_normal((K, R)),
        rng.standard_normal((f, R)),
        rng.standard_normal((f, R)),
    ]


def _tucker(rng, K, f, r):
    core = rng.standard_normal(r)
    return core, [rng.standard_normal((K, r[0])), rng.standard_normal((f, r[1])), rng.standard_normal((f, r[2]))]


def _dense_cp(w, fac):
    return np.einsum("r,kr,ir,jr->kij", w, *fac)


def _dense_tucker(core, fac):
    return np.einsum("qrs,kq,ir,js->kij", core, *fac)


factor_sizes = st.fixed_dictionaries(
    {
        "B": st.integers(0, 3),
        "n": st.integers(1, 8),
        "f": st.integers(1, 7),
        "K": st.integers(1, 4),
        "R": st.integers(1, 5),
        "seed": st.integers(0, 2**32 - 1),
        "nchw": st.booleans(),
    }
)


def _x(bk, dtype, s, rng):
    x = rng.standard_normal((s["B"], s["n"], s["f"]))
    if s["nchw"]:  # (B, f, n, 1) with channel_axis=1
        return x, bk(np.ascontiguousarray(np.swapaxes(x, 1, 2))[..., None], dtype), 1
    return x, bk(x, dtype), -1


# ------------------------------------------------------------------ approximations
def _orthonormal(rng, rows, cols):
    q, _ = np.linalg.qr(rng.standard_normal((rows, cols)))
    return q


def _edit_member(src_path, dst_path, member, old, new):
    """A copy of the archive at src_path with ``old`` replaced by ``new`` in one member (e.g. its .npy header)."""
    import zipfile

    with zipfile.ZipFile(src_path) as src, zipfile.ZipFile(dst_path, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info.filename, data.replace(old, new) if info.filename == member else data)
    return dst_path


# ------------------------------------------------------------------ files
def _forms(rng):
    from tensorly.cp_tensor import CPTensor
    from tensorly.tucker_tensor import TuckerTensor

    W = rng.standard_normal((3, 5, 5))
    return [
        CPTensor(_cp(rng, 3, 5, 2)),
        TuckerTensor(_tucker(rng, 3, 5, (2, 2, 2))),
        lp.eig_approx(W, 2),
        lp.RankP(rng.standard_normal((5, 3, 2)), rng.standard_normal((5, 2))),
        W,
    ]


def _heads(torch):
    from lowrank_pool import nn

    g = torch.Generator().manual_seed(0)
    opts = {"dtype": torch.float64, "generator": g}
    return [
        nn.FirstOrderPool(6, 3, reduce="max", **opts),
        nn.BilinearPool(6, 3, **opts),  # signed_sqrt+l2
        nn.BilinearPool(6, 3, normalize="matrix_sqrt", num_iters=7, eps=1e-4, **opts),
        nn.BilinearPool(6, 3, reduce_dim=4, normalize=None, **opts),
        nn.BilinearPool(6, 3, normalize=None, bias=False, **opts),
        nn.AttentionalPool(6, 3, rank=2, attention="softmax", **opts),
        nn.AttentionalPool(6, 3, rank=1, bottom_up="per_class", attention="relu", **opts),
        nn.CPPool(6, 3, rank=4, **opts),
        nn.TuckerPool(6, 3, rank=(3, 2, 2), **opts),
        nn.EigPool(6, 3, rank=2, **opts),
    ]


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


# ------------------------------------------------------------------ errors
W0 = np.ones((3, 4, 4))


# The bad calls of each public name, the exception type and a regex of its message: run by the name's test class
FACTOR_ERRORS = {
    "cp_approx": [
        (lambda: lp.cp_approx(W0, 0), ValueError, r"rank: expected a positive int, got 0"),
        (lambda: lp.cp_approx(W0, -2), ValueError, r"rank: expected a positive int, got -2"),
        (lambda: lp.cp_approx(W0, 17), ValueError, r"rank: expected at most min\(K·f, f²\) = 12 .*got 17"),
        (lambda: lp.cp_approx(W0, 2.0), TypeError, r"rank: expected a positive int, got float"),
        (
            lambda: lp.cp_approx(np.ones((3, 4)), 2),
            lp.ShapeError,
            r"W: expected 3 dimensions \(K, f, g\), got shape \(3, 4\)",
        ),
        (lambda: lp.cp_approx(np.full((2, 3, 3), np.nan), 2), ValueError, r"W: expected finite values"),
    ],
    "tucker_approx": [
        (lambda: lp.tucker_approx(W0, 5), ValueError, r"rank: expected at most f = 4 .*got 5"),
        (
            lambda: lp.tucker_approx(W0, (4, 2, 2)),
            ValueError,
            r"rank: expected \(R_K, R_f, R_f\) <= \(3, 4, 4\).*got \(4, 2, 2\)",
        ),
        (lambda: lp.tucker_approx(W0, (1, 2)), ValueError, r"rank: expected an int or a tuple"),
        (lambda: lp.tucker_approx(W0, (1, 1, 2)), ValueError, r"rank: multilinear ranks .* got \(1, 1, 2\) \(2 > 1\)"),
        (lambda: lp.tucker_approx(np.ones((2, 3, 3), int), 2), lp.DTypeError, r"W: expected a real floating dtype"),
    ],
    "eig_approx": [
        (lambda: lp.eig_approx(W0, 5), ValueError, r"rank: expected at most f = 4 eigenpairs per class, got 5"),
        (
            lambda: lp.eig_approx(np.ones((3, 4, 5)), 2),
            lp.ShapeError,
            r"W: expected shape \(K, f, f\).*got \(3, 4, 5\)",
        ),
        (lambda: lp.eig_approx(np.full((2, 3, 3), np.inf), 2), ValueError, r"W\[0\]: expected finite values"),
    ],
    "cp_pool": [
        (
            lambda: lp.cp_pool(np.ones((2, 5, 4)), (None, [np.ones((3, 2)), np.ones((5, 2)), np.ones((5, 2))])),
            lp.ShapeError,
            r"cp factor A: expected shape \(f, R\) with f = 4, got \(5, 2\)",
        ),
        (
            lambda: lp.cp_pool(np.ones((2, 5, 4)), (None, [np.ones((3, 2)), np.ones((4, 3)), np.ones((4, 2))])),
            lp.ShapeError,
            r"cp factor A: expected shape \(f, R\) with R = 2, got \(4, 3\)",
        ),
        (
            lambda: lp.cp_pool(np.ones((2, 5, 4)), (np.ones(3), [np.ones((3, 2)), np.ones((4, 2)), np.ones((4, 2))])),
            lp.ShapeError,
            r"cp weights: expected shape \(R,\) with R = 2, got \(3,\)",
        ),
        (
            lambda: lp.cp_pool(np.ones((2, 5, 4)), (None, [np.ones((3, 2))])),
            lp.ShapeError,
            r"cp: expected 3 factor matrices",
        ),
        (
            lambda: lp.cp_pool(np.ones((2, 5, 4)), 3),
            TypeError,
            r"cp: expected a CPTensor or a \(weights, \[U, A, C\]\) tuple, got int",
        ),
        (
            lambda: lp.cp_pool(
                np.ones((2, 5, 4)), (None, [np.ones((3, 2)), np.ones((4, 2)), np.ones((4, 2))]), path="fast"
            ),
            ValueError,
            r"path: expected one of \['auto', 'factorized', 'dense'\]",
        ),
    ],
    "tucker_pool": [
        (
            lambda: lp.tucker_pool(
                np.ones((2, 5, 4)), (np.ones((2, 2, 3)), [np.ones((3, 2)), np.ones((4, 2)), np.ones((4, 2))])
            ),
            lp.ShapeError,
            r"tucker core: expected shape \(R_K, R_a, R_c\) with R_K = 2, R_a = 2, R_c = 2, got \(2, 2, 3\)",
        ),
    ],
    "eig_pool": [
        (
            lambda: lp.eig_pool(np.ones((2, 5, 4)), lp.EigTensor(np.ones((3, 2)), np.ones((4, 3, 1)))),
            lp.ShapeError,
            r"eigenvalues: expected shape \(K, P\) with K = 3, P = 1, got \(3, 2\)",
        ),
    ],
    "to_dense": [
        (lambda: lp.to_dense("W"), TypeError, r"obj: expected a CPTensor"),
    ],
    "rank_profile": [
        (lambda: lp.rank_profile(W0, []), ValueError, r"ranks: expected at least one rank"),
        (lambda: lp.rank_profile(W0, [1], features=np.ones((2, 3, 4))), ValueError, r"features, labels: pass both"),
        (
            lambda: lp.rank_profile(W0, [1], features=np.ones((2, 3, 4)), labels=np.ones(2)),
            TypeError,
            r"labels: expected integer class indices",
        ),
        (
            lambda: lp.rank_profile(W0, [1], features=np.ones((2, 3, 4)), labels=np.ones(3, int)),
            lp.ShapeError,
            r"labels: expected shape \(2,\)",
        ),
    ],
}
