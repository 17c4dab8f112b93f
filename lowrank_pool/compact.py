"""Compact bilinear pooling (Gao et al., CVPR 2016): the Tensor Sketch of the second moment.

For a feature x (f,), two count sketches C₁, C₂ (f → d, each channel hashed to one of d bins with
a random sign) and the circular convolution of their outputs, computed by FFT,

    ψ(x xᵀ) = IFFT(FFT(C₁ x) ⊙ FFT(C₂ x)) ∈ R^d,

satisfy E⟨ψ(x xᵀ), ψ(y yᵀ)⟩ = ⟨x xᵀ, y yᵀ⟩ over the random hashes (Pham & Pagh 2013). ψ is linear in
x xᵀ, so the sketch of the package's second moment M = XᵀX / n is the mean of ψ(x_i x_iᵀ) over
positions, and ⟨ψ(M₁), ψ(M₂)⟩ is an unbiased estimate of ⟨M₁, M₂⟩ whose variance falls as 1/d.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._backend import Array, Namespace, device_of, full_precision, is_numpy_array, namespace
from ._checks import check_factor, check_int, check_positive_int, pair_features, prepare
from ._errors import ArgumentError, ArgumentTypeError, ShapeError, shape_of
from ._layout import Features
from ._ops import fft_of, scatter_sum

__all__ = ["compact_bilinear_pool", "count_sketches", "sketch_hashes"]


MAX_DIM = 2**31  # a sketch longer than this is beyond any FFT and memory here
MAX_SEED = 2**63 - 1


def check_sketch(dim: Any, seed: Any) -> tuple[int, int]:
    """Return ``(dim, seed)`` of a Tensor Sketch as ints, or raise naming the one that is wrong.

    ``1 <= dim <= 2**31`` (a longer sketch is beyond any FFT and memory here) and
    ``0 <= seed <= 2**63 - 1`` (numpy's generator takes non-negative seeds).

    Parameters
    ----------
    dim : int
        The sketch size d.
    seed : int
        The seed of the hashes and signs.

    Examples
    --------
    >>> from lowrank_pool.validation import check_sketch
    >>> check_sketch(256, 0)
    (256, 0)
    >>> check_sketch(256, -1)
    Traceback (most recent call last):
    ...
    lowrank_pool._errors.ArgumentError: seed: expected an integer from 0 to 2**63 - 1, got -1
    """
    dim = check_positive_int(dim, "dim")
    if dim > MAX_DIM:
        raise ArgumentError(f"dim: expected a sketch size of at most 2**31 = {MAX_DIM}, got {dim}")
    seed = check_int(seed, "seed")
    if not 0 <= seed <= MAX_SEED:
        raise ArgumentError(f"seed: expected an integer from 0 to 2**63 - 1, got {seed}")
    return dim, seed


def sketch_hashes(channels: int, dim: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The two count sketches of a seed as ``(bins (f,) in [0, d), signs (f,) of ±1)`` pairs.

    Generated with numpy's PCG64 from ``seed`` whatever the array library, so a seed gives the same
    sketch on every backend and device. :func:`compact_bilinear_pool` takes them as ``hashes`` (a
    layer keeps them on its device), and :func:`count_sketches` builds their dense matrices.

    Parameters
    ----------
    channels : int
        f, the channels hashed.
    dim : int
        d, the sketch size.
    seed : int
        The seed (see :func:`lowrank_pool.validation.check_sketch`).

    Returns
    -------
    list of two (numpy.ndarray, numpy.ndarray)
        Integer bins (f,) and float signs (f,) of each count sketch.

    Examples
    --------
    >>> import lowrank_pool as lp
    >>> (bins, signs), _ = lp.sketch_hashes(4, 8, seed=0)
    >>> bins.shape, set(signs.tolist()) <= {-1.0, 1.0}, bool(bins.max() < 8)
    ((4,), True, True)
    """
    channels = check_positive_int(channels, "channels")
    dim, seed = check_sketch(dim, seed)
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, dim, channels), rng.choice([-1.0, 1.0], channels)) for _ in range(2)]


def count_sketches(channels: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The two count-sketch matrices (f, d) of a seed: one ±1 per row, at a uniformly random column.

    The dense form of :func:`sketch_hashes` (C x = x @ matrix), for checking a sketch by hand; the
    pooling itself never builds it.

    Parameters
    ----------
    channels : int
        f.
    dim : int
        d.
    seed : int
        The seed.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        C₁ and C₂, each (f, d).

    Examples
    --------
    >>> import lowrank_pool as lp
    >>> c1, c2 = lp.count_sketches(4, 8, seed=0)
    >>> c1.shape, (abs(c1).sum(axis=1) == 1).all()
    ((4, 8), np.True_)
    """
    out = []
    for bins, signs in sketch_hashes(channels, dim, seed):
        m = np.zeros((channels, dim))
        m[np.arange(channels), bins] = signs
        out.append(m)
    return out[0], out[1]


def compact_bilinear_pool(
    X: Array,
    dim: int,
    /,
    *,
    Y: Array | None = None,
    seed: int = 0,
    hashes: Sequence[tuple[Any, Any]] | None = None,
    channel_axis: int | None = None,
    check_finite: bool = False,
) -> Array:
    r"""The Tensor Sketch ψ(M_b) (B, d) of every sample's second moment :math:`M_b = X_b^\top X_b / n`.

    .. math:: \psi(M_b) = \frac1n \sum_{i=1}^n \operatorname{IFFT}\big(\operatorname{FFT}(C_1 x_{b,i})
              \odot \operatorname{FFT}(C_2 x_{b,i})\big),\qquad
              \mathbb{E}\,\langle \psi(M_1), \psi(M_2)\rangle = \langle M_1, M_2\rangle

    A d-dimensional stand-in for the f² entries of the bilinear descriptor (d = 8192 instead of
    f² = 262144 at f = 512, as in compact bilinear pooling); a linear classifier on ψ approximates a
    bilinear head. Cost per sample: two count sketches (a scatter-add of the n·f numbers into d bins
    each, the library's own: ``torch.index_add``, ``numpy.add.at``, jax's ``.at[].add``; other
    libraries get a product with the one-hot (f, d) matrix), 2n real FFTs of length d, and one
    inverse FFT of the mean spectrum. Memory O(B·n·d). On CUDA, torch's scatter-add uses
    atomic additions: the last bits can differ between runs unless
    ``torch.use_deterministic_algorithms(True)``, under which it is deterministic. The FFT comes from the array library
    (torch.fft, jax.numpy.fft, the array-API fft extension), for numpy arrays from scipy.fft (one
    thread unless ``scipy.fft.set_workers`` says otherwise).

    With two inputs (``Y``), the first sketch reads X and the second Y: ψ estimates M = XᵀY / n, and
    n = 1 is multimodal compact bilinear pooling (MCB, Fukui et al. 2016) of two vectors x and y.

    Parameters
    ----------
    X : array, (B, n, f), (B, f, H, W) or (B, f, T, H, W)
    dim : int
        d, the sketch size.
    Y : array, (B, n, g), (B, g, H, W) or (B, g, T, H, W), optional
        A second input at the same positions (see :func:`gram`); the second hash pair then has g entries.
        ``Y=X`` gives the one-input sketch.
    seed : int
        Chooses the hashes and signs (numpy's generator): the same seed gives the same sketch on every
        backend; a layer keeps its seed fixed.
    hashes : sequence of two (bins, signs) pairs, optional
        The hashes themselves instead of a seed's: bins (f,) integers in [0, d) and signs (f,) of ±1,
        as :func:`sketch_hashes` returns them (numpy arrays, copied to X's device on every call), or
        as arrays of X's library already on its device, which
        :class:`lowrank_pool.nn.CompactBilinearPool` keeps as buffers: on a GPU each host-to-device
        copy waits for the device. Their values are not checked on a device (that would wait too).
    channel_axis : int, optional
    check_finite : bool

    Returns
    -------
    array, (B, d)
        In the dtype rule of the other functions (float16/bfloat16 compute and return float32).
        Under ``torch.autocast`` the sketch is still computed in X's dtype: a signed square root
        of ψ (as in compact bilinear pooling) magnifies its rounding where ψ is near zero.

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> X = np.random.default_rng(0).standard_normal((2, 5, 3))
    >>> psi = lp.compact_bilinear_pool(X, 512, seed=1)
    >>> psi.shape
    (2, 512)
    >>> M = lp.gram(X)                       # exact ⟨M_1, M_2⟩ against its sketch estimate
    >>> bool(abs((M[0] * M[1]).sum() - psi[0] @ psi[1]) < 0.5 * abs(M[0]).sum() * abs(M[1]).sum() / 512**0.5)
    True
    """
    dim, seed = check_sketch(dim, seed)
    xp, feats, fac = prepare(X, channel_axis, check_finite, **({} if Y is None else {"Y": Y}))
    fy = None if Y is None else pair_features(xp, feats, fac["Y"], channel_axis)
    if hashes is None:
        hashes = sketch_hashes(feats.channels, dim, seed)
        if fy is not None and fy.channels != feats.channels:
            hashes = [hashes[0], sketch_hashes(fy.channels, dim, seed)[1]]
    else:
        if seed != 0:
            raise ArgumentError(f"seed: the hashes were given, so seed must be left at 0, got {seed}")
        hashes = _checked_hashes(feats, hashes, dim, channel_axis, fy)
    return _sketch(xp, feats, dim, hashes, fy)


def _checked_hashes(
    feats: Features, hashes: Any, dim: int, channel_axis: int | None, fy: Features | None = None
) -> list[tuple[Any, Any]]:
    """Two (bins, signs) pairs of X's channel count (the second of Y's, with two inputs); bins in [0, d) where
    they are numpy arrays."""
    try:
        pairs = [(bins, signs) for bins, signs in hashes]
    except (TypeError, ValueError):
        raise ArgumentTypeError(
            f"hashes: expected two (bins, signs) pairs as sketch_hashes returns them, got {type(hashes).__name__}"
        ) from None
    if len(pairs) != 2:
        raise ArgumentError(f"hashes: expected two (bins, signs) pairs, got {len(pairs)}")
    for i, (bins, signs) in enumerate(pairs):
        of = fy if i == 1 and fy is not None else feats
        for v in (bins, signs):
            if not is_numpy_array(v):  # else X's library on X's device
                namespace(X=feats.data, hashes=v)
            if of is feats:
                check_factor(feats, "hashes", v, ("f",), channel_axis)
            elif shape_of(v) != (of.channels,):
                raise ShapeError(f"hashes: expected the second pair of shape (g,) with g = {of.channels}, the "
                                 f"channels of Y, got {shape_of(v)}")  # fmt: skip
        if is_numpy_array(bins) and bins.size and not (bins.min() >= 0 and bins.max() < dim):
            raise ArgumentError(f"hashes: expected bins in [0, {dim}), got values from {bins.min()} to {bins.max()}")
    return pairs


def _sketch(
    xp: Namespace, feats: Features, dim: int, hashes: Sequence[tuple[Any, Any]], fy: Features | None = None
) -> Array:
    """ψ (B, d) of validated features with the two (bins, signs) pairs ``hashes`` (the second sketch of Y's
    features ``fy`` when given)."""
    # the sketches and their FFTs along the last axis: channels-first X is read as a (B, n, f) view (the
    # scatter-add reads it in place; an FFT along a strided axis is slower: docs/performance.md)
    x = feats.data if feats.layout == "bnf" else xp.matrix_transpose(feats.data)
    y = x if fy is None else (fy.data if fy.layout == "bnf" else xp.matrix_transpose(fy.data))
    if feats.batch == 0:  # nothing to sketch (torch's MKL FFT refuses an empty batch); keeps the autograd graph
        return xp.zeros((0, dim), dtype=x.dtype, device=device_of(x)) + xp.sum(x) * 0 + xp.sum(y) * 0
    fft, spectra = fft_of(xp), []
    with full_precision(xp, x):  # under autocast too: the signed square root magnifies rounding
        for (bins, signs), v in zip(hashes, (x, y), strict=True):
            sign = xp.asarray(signs, dtype=v.dtype, device=device_of(v))
            z = scatter_sum(xp, v * sign, bins, dim, 2)  # C x (C y) for every position: (B, n, d)
            spectra.append(fft.rfft(z, n=dim, axis=2))
        # IFFT is linear: the mean over positions is taken before it (one inverse FFT per sample, not per position)
        mean = xp.mean(spectra[0] * spectra[1], axis=1)
        return fft.irfft(mean, n=dim, axis=-1)
