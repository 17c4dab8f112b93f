"""The layers' registry (every configuration and its functional form) and the shared layer checks."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import lowrank_pool as lp  # noqa: E402
from lowrank_pool.nn import (  # noqa: E402
    AttentionalPool,
    BilinearPool,
    CompactBilinearPool,
    CPPool,
    EigPool,
    FirstOrderPool,
    PoseAttentionalPool,
    TuckerPool,
    keypoint_heatmaps,
    replace_head,
)
from lowrank_pool.testing import assert_close, eps_of  # noqa: E402

F_IN, K = 6, 4
# the tests that take a device run on the CPU, and on CUDA where a GPU answers (tests/test_cuda.py has more)
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
    ),
]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- the registry
# name -> (constructor keyword arguments, class). Every configuration has a functional form below.
CONFIGS = {
    "first_mean": (FirstOrderPool, {}),
    "first_sum": (FirstOrderPool, {"reduce": "sum"}),
    "first_max": (FirstOrderPool, {"reduce": "max"}),
    "bilinear": (BilinearPool, {}),
    "bilinear_plain": (BilinearPool, {"normalize": None}),
    "bilinear_l2": (BilinearPool, {"normalize": "l2"}),
    "bilinear_ssqrt": (BilinearPool, {"normalize": "signed_sqrt"}),
    "bilinear_msqrt": (BilinearPool, {"normalize": "matrix_sqrt"}),
    "bilinear_msqrt_reduce": (BilinearPool, {"normalize": "matrix_sqrt+l2", "reduce_dim": 3}),
    "attn1": (AttentionalPool, {}),
    "attn3_softmax": (AttentionalPool, {"rank": 3, "attention": "softmax"}),
    "attn2_perclass_relu": (AttentionalPool, {"rank": 2, "bottom_up": "per_class", "attention": "relu"}),
    "cp": (CPPool, {"rank": 3}),
    "cp_dense": (CPPool, {"rank": 3, "path": "dense"}),
    "tucker": (TuckerPool, {"rank": (2, 3, 3)}),
    "eig": (EigPool, {"rank": 2}),
    "eig_dense": (EigPool, {"rank": 2, "path": "dense"}),
    "compact": (CompactBilinearPool, {"dim": 64}),
    "compact_plain": (CompactBilinearPool, {"dim": 32, "normalize": None, "seed": 3}),
    "pose": (PoseAttentionalPool, {"num_keypoints": 3}),
    "pose_hidden_softmax": (PoseAttentionalPool, {"num_keypoints": 3, "hidden": 5, "attention": "softmax"}),
}


def make(name, dtype=torch.float64, seed=0, in_channels=F_IN, num_classes=K, **extra):
    cls, kw = CONFIGS[name]
    layer = cls(in_channels, num_classes, **kw, **extra, generator=gen(seed), dtype=dtype)
    if layer.bias is not None:  # a non-zero bias, so that tests see whether it is added once
        with torch.no_grad():
            layer.bias.copy_(torch.linspace(-1, 1, num_classes, dtype=dtype))
    return layer


def scores(layer, x):
    out = layer(x)
    return out.scores if hasattr(out, "scores") else out


def functional(name, layer, x, ax=None):
    """The layer's scores from the public functions (and, where possible, from a dense W)."""
    c = layer.bias if layer.bias is not None else 0.0
    if name.startswith("first"):
        return lp.first_order_pool(x, layer.weight, reduce=layer.reduce, channel_axis=ax) + c
    if name.startswith("bilinear"):
        if layer.reduction is not None:
            x, ax = lp.project_channels(x, layer.reduction, channel_axis=ax), -1
        kw = {"normalize": layer.normalize, "eps": layer.eps, "num_iters": layer.num_iters}
        return lp.bilinear_pool(x, layer.weight * layer.weight_scale, channel_axis=ax, **kw) + c
    if name.startswith("attn"):
        return lp.rankp_pool(x, layer.A, layer.B, attention=layer.attention, channel_axis=ax) + c
    if name.startswith("cp"):
        return lp.bilinear_pool(x, lp.to_dense((None, [layer.U, layer.A, layer.C])), channel_axis=ax) + c
    if name == "tucker":
        return lp.bilinear_pool(x, lp.to_dense((layer.core, [layer.U, layer.A, layer.C])), channel_axis=ax) + c
    if name.startswith("eig"):
        W = lp.to_dense(lp.EigTensor(layer.eigenvalues, layer.eigenvectors))
        return lp.bilinear_pool(x, W, channel_axis=ax) + c
    if name.startswith("compact"):
        psi = lp.compact_bilinear_pool(x, layer.dim, seed=layer.seed, channel_axis=ax)
        if layer.normalize:
            psi = lp.l2_normalize(lp.signed_sqrt(psi, eps=layer.eps))
        return psi @ (layer.weight * layer.weight_scale) + c
    if name.startswith("pose"):
        if layer.hidden_weight is None:
            u = lp.project_channels(x, layer.head_weight, bias=layer.head_bias, channel_axis=ax)[:, :, -1]
        else:
            h = torch.relu(lp.project_channels(x, layer.hidden_weight, bias=layer.hidden_bias, channel_axis=ax))
            u = (h @ layer.head_weight + layer.head_bias)[:, :, -1]
        w = lp.attention_weights(u, attention=layer.attention)
        return lp.first_order_pool(x, layer.A, weights=w, channel_axis=ax) + c
    raise AssertionError(name)


def _inputs(layout, seed=1, dtype=torch.float64):
    g = gen(seed)
    if layout == "bnf":
        return torch.randn(3, 10, F_IN, generator=g, dtype=dtype)
    if layout == "video":
        return torch.randn(3, F_IN, 2, 3, 2, generator=g, dtype=dtype)
    x = torch.randn(3, F_IN, 2, 5, generator=g, dtype=dtype)
    return x.to(memory_format=torch.channels_last) if layout == "channels_last" else x


def _close(got, ref, label="", terms=400):
    assert_close(got, ref, terms=terms, scale=ref.detach().abs().max().item() + 1, label=label)


def _within_the_fit(head, W, x):
    """A head fitted to W scores like W within what the fit left: |⟨ΔW_k, M_b⟩| ≤ ‖ΔW_k‖_F ‖M_b‖_F
    (Cauchy-Schwarz), plus the rounding of either side."""
    want = lp.bilinear_pool(x, W)
    gap = (head(x) - want).abs()
    fit = torch.linalg.matrix_norm(head.to_dense() - W)  # (K,)
    moments = torch.linalg.matrix_norm(lp.gram(x))  # (B,)
    bound = moments[:, None] * fit[None, :] + 400 * eps_of(x.dtype) * (want.abs().max() + 1)
    assert (gap <= bound).all(), (gap - bound).max()


SCALED = [name for name, (cls, _) in CONFIGS.items() if cls in (BilinearPool, CompactBilinearPool)]


# ----------------------------------------------------------------------------- conversions
def _trained_bilinear(reduce_dim=None, seed=0, cp_rank=None):
    """A plain bilinear head with a non-zero bias (and, with ``cp_rank``, a W of that exact CP rank)."""
    head = BilinearPool(F_IN, K, normalize=None, reduce_dim=reduce_dim, generator=gen(seed), dtype=torch.float64)
    with torch.no_grad():
        head.bias.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64))
        if cp_rank is not None:
            d, g = head.weight.shape[1], gen(seed + 1)
            u, a = (torch.randn(m, cp_rank, generator=g, dtype=torch.float64) for m in (K, d))
            head.weight.copy_(torch.einsum("kr,ir,jr->kij", u, a, a) / head.weight_scale)
    return head


def _saved_bytes(fn, *inputs):
    """Bytes autograd keeps for backward, beyond storages the inputs/parameters already own."""
    owned = {t.untyped_storage().data_ptr() for t in inputs}
    total = 0

    def pack(t):
        nonlocal total
        if t.untyped_storage().data_ptr() not in owned:
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return total, out


def _gemm_form(x, a, b):
    z = torch.cat([a, b[:, None]], 1).mT @ x.flatten(2)  # (B, K+1, n)
    return (z[:, :-1] * z[:, -1:]).mean(-1)


class _TimmLike(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 1)
        self.global_pool = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.global_pool(self.stem(x)))


# The bad calls of each public name, the exception type and a regex of its message: run by the name's test class
LAYER_ERRORS = {
    "AttentionalPool": [
        (
            lambda: AttentionalPool(8, 3)(torch.randn(2, 6, 4, 4)),
            lp.ShapeError,
            r"A: expected shape \(f, K, P\) with f = 6, got \(8, 3, 1\); f is the channel count of X, read by the "
            r"default rule \(channel_axis=None\) as a \(B, f, H, W\) input of shape \(2, 6, 4, 4\), channels on axis "
            r"1; pass channel_axis=-1 if the channels are last",
        ),
        (
            lambda: AttentionalPool(8, 3)(torch.randn(2, 4, 6)),
            lp.ShapeError,
            r"f = 6, got \(8, 3, 1\); f is the channel count of X, read .* as a \(B, n, f\) input of shape "
            r"\(2, 4, 6\), channels on axis 2; pass channel_axis=1 if the channels come first",
        ),
        (lambda: AttentionalPool(8, 3, rank=0), lp.ArgumentError, r"rank: expected a positive int, got 0"),
        (lambda: AttentionalPool(8, 3, rank=1.5), lp.ArgumentTypeError, r"rank: expected a positive int, got float"),
        (lambda: AttentionalPool(8, 3, bottom_up="global"), lp.ArgumentError, r"bottom_up: expected one of"),
        (lambda: AttentionalPool(8, 3, return_maps="yes"), lp.ArgumentTypeError, r"return_maps: expected True or"),
    ],
    "FirstOrderPool": [
        (
            lambda: FirstOrderPool(8, 3)(torch.randn(2, 8)),
            lp.ShapeError,
            r"X: expected a batch of feature maps with at least 3 dimensions, \(B, n, f\) or \(B, f, H, W\), got "
            r"shape \(2, 8\)",
        ),
        (lambda: FirstOrderPool(8, 3, channel_axis=1.0), lp.ArgumentTypeError, r"channel_axis: expected an int"),
        (lambda: FirstOrderPool(8, 3, dtype=torch.int64), lp.DTypeError, r"dtype: expected a floating torch.dtype"),
        (lambda: FirstOrderPool(8, 3)(torch.ones(2, 8, 3, 3, dtype=torch.int64)), lp.DTypeError, r"X: expected a real"),
    ],
    "BilinearPool": [
        (lambda: BilinearPool(8, 3)(np.ones((2, 4, 8))), lp.BackendError, r"x: expected a torch.Tensor, got ndarray"),
        (lambda: BilinearPool(8, 3, normalize="power"), lp.ArgumentError, r"normalize: expected one of"),
        (lambda: BilinearPool(8, 3, eps=-1.0), lp.ArgumentError, r"eps: expected a finite number >= 0"),
    ],
    "EigPool": [
        (lambda: EigPool(8, 3, rank=9), lp.ArgumentError, r"rank: expected at most f = 8 eigenpairs per class"),
    ],
    "TuckerPool": [
        (
            lambda: TuckerPool(8, 3, rank=(4, 2, 2)),
            lp.ArgumentError,
            r"rank: expected \(R_K, R_f, R_f\) <= \(3, 8, 8\)",
        ),
    ],
    "CPPool": [
        (
            lambda: CPPool.from_factors((None, [torch.ones(3, 2), torch.ones(4, 3), torch.ones(4, 2)])),
            lp.ShapeError,
            r"cp factor A: expected shape \(f, R\) with R = 2, got \(4, 3\)",
        ),
        (
            lambda: CPPool.from_factors(torch.ones(4, 3)),
            lp.ArgumentTypeError,
            r"form: CPPool cannot hold first-order weights \(f, K\)",
        ),
        (
            lambda: CPPool.from_factors(lp.HeadForm(torch.ones(2, 4, 4), normalize="l2")),
            lp.ArgumentError,
            r"form: scores of a normalised M \(normalize='l2'\) have no cp form",
        ),
        (lambda: CPPool.from_dense(np.ones((2, 3, 3)), 2), lp.ArgumentTypeError, r"W: expected a torch.Tensor"),
    ],
    "keypoint_heatmaps": [
        (
            lambda: keypoint_heatmaps(torch.tensor([[[5.0, 1.0]]]), (4, 5)),
            lp.ArgumentError,
            r"keypoints: visible keypoint \(0, 0\) at \(x, y\) = \(5.0, 1.0\) is outside the 4x5 grid",
        ),
        (
            lambda: keypoint_heatmaps(torch.zeros(1, 2, 3), (4, 5)),
            lp.ShapeError,
            r"keypoints: expected shape \(B, J, 2\)",
        ),
        (
            lambda: keypoint_heatmaps(torch.zeros(1, 2, 2), (4, 5), visible=torch.ones(2, 2)),
            lp.ShapeError,
            r"visible: expected shape \(1, 2\)",
        ),
    ],
    "replace_head": [
        (
            lambda: replace_head(torch.nn.Linear(3, 3), AttentionalPool(3, 2)),
            lp.ArgumentError,
            r"model: found no global-pool \+ classifier pair",
        ),
        (
            lambda: replace_head(_TimmLike(), AttentionalPool(7, 2)),
            lp.ArgumentError,
            r"pool: expected in_channels = 8 \(the in_features of model.head\), got 7",
        ),
        (
            lambda: replace_head(_TimmLike(), torch.nn.Linear(8, 2)),
            lp.ArgumentTypeError,
            r"pool: expected a lowrank_pool.nn pooling layer",
        ),
    ],
}
