"""The two-input heads (MLB, MFB, Mutan, Block, MCB) and CovariancePool: each equals the decomposition of W it
documents, written out in float64 einsum, on vectors and on maps of every layout; gradients, state, scale, errors."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from helpers import expect_errors  # noqa: E402
from test_two_inputs import _isqrt_reference  # noqa: E402

import lowrank_pool as lp  # noqa: E402
from lowrank_pool.nn import MCB, MFB, MLB, Block, CovariancePool, Mutan  # noqa: E402
from lowrank_pool.testing import assert_close  # noqa: E402

F, G, K = 5, 4, 3
# float64 scores of these heads computed two ways (n ≤ 6 positions, f·g = 20 channel pairs, ranks ≤ 6, a few
# chained contractions): compared normwise
TERMS = 4 * (6 + F * G + 6 + 8)
CONFIGS = {
    "mlb": (MLB, {"rank": 6}),
    "mlb_tanh": (MLB, {"rank": 6, "activation": "tanh"}),
    "mfb": (MFB, {"dim": 4, "factor": 3}),
    "mfb_plain": (MFB, {"dim": 4, "factor": 2, "normalize": None}),
    "mutan": (Mutan, {"rank": (2, 3, 3)}),
    "mutan_tanh": (Mutan, {"rank": (2, 3, 2), "activation": "tanh"}),
    "block": (Block, {"blocks": 3, "rank": (2, 2, 3)}),
    "mcb": (MCB, {"dim": 16, "seed": 2}),
    "mcb_plain": (MCB, {"dim": 16, "normalize": None}),
}


def make(name, seed=0, **extra):
    cls, kw = CONFIGS[name]
    layer = cls(F, G, K, **kw, **extra, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    with torch.no_grad():
        if layer.bias is not None:
            layer.bias.copy_(torch.arange(K, dtype=torch.float64) / 4)
    return layer


def _rows(t, layout):
    """(B, n, c) float64 numpy rows of x for the reference formulas."""
    t = t.detach().numpy()
    if t.ndim == 2:
        return t[:, None, :]
    if layout == "nchw":
        return t.reshape(t.shape[0], t.shape[1], -1).transpose(0, 2, 1)
    return t


def _normalise(z, normalize, eps=1e-6):
    if (normalize or "").startswith("signed_sqrt"):
        z = np.sign(z) * np.abs(z) / (np.sqrt(np.abs(z) + eps) + np.sqrt(eps))
    if (normalize or "").endswith("l2"):
        z = z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    return z


def reference(name, layer, x, y, layout):
    """The documented formula of each head, in float64 numpy."""
    X, Y = _rows(x, layout), _rows(y, layout)
    p = {k: v.detach().numpy() for k, v in layer.named_parameters()}
    c = p.get("bias", 0.0)
    act = np.tanh if getattr(layer, "activation", None) == "tanh" else (lambda v: v)
    if name.startswith("mlb"):
        za, zc = act(X @ p["U"]), act(Y @ p["V"])
        return np.mean(za * zc, axis=1) @ p["P"].T + c
    if name.startswith("mfb"):
        prod = np.mean((X @ p["U"]) * (Y @ p["V"]), axis=1)  # (B, o·k)
        z = prod.reshape(prod.shape[0], layer.dim, layer.factor).sum(-1)
        return _normalised_scores(layer, z, p["weight"], c)
    if name.startswith("mutan"):
        za, zc = act(X @ p["A"]), act(Y @ p["C"])
        m = np.einsum("bnr,bns->brs", za, zc) / X.shape[1]
        return np.einsum("brs,qrs,kq->bk", m, p["core"], p["U"]) + c
    if name == "block":
        _, rx, ry = layer.ranks
        out = 0.0
        for i in range(layer.blocks):
            w = np.einsum("qrs,kq,fr,gs->kfg", p["core"][i], p["U"][i], p["A"][:, i * rx : (i + 1) * rx],
                          p["C"][:, i * ry : (i + 1) * ry])  # fmt: skip
            out = out + np.einsum("bnf,kfg,bng->bk", X, w, Y) / X.shape[1]
        return out + c
    if name.startswith("mcb"):
        (h1, s1), _ = lp.sketch_hashes(F, layer.dim, layer.seed)
        _, (h2, s2) = lp.sketch_hashes(G, layer.dim, layer.seed)
        onehot = np.zeros((F, G, layer.dim))
        for a in range(F):
            for b in range(G):
                onehot[a, b, (h1[a] + h2[b]) % layer.dim] = s1[a] * s2[b]
        psi = np.einsum("bnf,bng,fgt->bt", X, Y, onehot) / X.shape[1]
        return _normalised_scores(layer, psi, p["weight"], c)
    raise AssertionError(name)


def _normalised_scores(layer, z, weight, bias, eps=1e-6):
    """Scores of a descriptor z (B, D) through the head's normalisation and classifier, and each score's rounding
    scale: z carries ~TERMS roundings of max|z|; the ε-shifted root multiplies a perturbation by its slope
    1 / (2√(|z| + ε)) at most, the l2 step by 2 / ‖d‖, the classifier by |w|."""
    d = _normalise(z, layer.normalize, eps)
    scores = layer.weight_scale * d @ weight + bias
    dz, rooted = np.abs(z).max(axis=-1, keepdims=True) * np.ones_like(z), z
    if (layer.normalize or "").startswith("signed_sqrt"):
        dz, rooted = dz / (2 * np.sqrt(np.abs(z) + eps)), _normalise(z, "signed_sqrt", eps)
    if (layer.normalize or "").endswith("l2"):
        dz = 2 * dz / np.maximum(np.linalg.norm(rooted, axis=-1, keepdims=True), 1e-12)
    scale = np.abs(layer.weight_scale) * dz @ np.abs(weight) + np.abs(scores)
    return scores, scale


def _inputs(kind, seed=1):
    g = torch.Generator().manual_seed(seed)
    if kind == "vectors":
        return torch.randn(4, F, generator=g, dtype=torch.float64), torch.randn(4, G, generator=g, dtype=torch.float64)
    x = torch.randn(4, F, 3, 2, generator=g, dtype=torch.float64)
    y = torch.randn(4, G, 3, 2, generator=g, dtype=torch.float64)
    if kind == "bnf":
        return x.flatten(2).transpose(1, 2), y.flatten(2).transpose(1, 2)
    return x, y


def _within_the_fit(layer, w, x, y):
    """A head fitted to W scores like W within what the fit left: |Δs_bk| = |x_bᵀ ΔW_k y_b| ≤ ‖ΔW_k‖₂‖x_b‖‖y_b‖
    (and the rounding of either side)."""
    want = lp.bilinear_pool(x[:, None, :], w, Y=y[:, None, :])
    gap = (layer(x, y) - want).abs()
    fit = torch.linalg.matrix_norm(layer.to_dense() - w, ord=2)  # (K,)
    bound = fit[None, :] * (x.norm(dim=1) * y.norm(dim=1))[:, None] + TERMS * 2.0**-52 * want.abs().max()
    assert (gap <= bound).all(), (gap - bound).max()


@pytest.mark.parametrize("kind", ["vectors", "nchw", "bnf"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_fusion_head_is_its_decomposition(name, kind):
    layer = make(name)
    x, y = _inputs(kind)
    got = layer(x, y)
    want = reference(name, layer, x, y, kind)
    want, scale = want if isinstance(want, tuple) else (want, "max")
    assert got.shape == (4, K) and got.dtype == torch.float64
    assert_close(got, want, terms=TERMS, scale=scale, like=x)


@pytest.mark.parametrize("name", ["mlb", "mutan", "block"])
def test_bilinear_fusions_are_bilinear_pool_of_their_w(name):
    """Without the tanh, MLB / Mutan / Block score (1/n) Σ_i x_iᵀ W_k y_i for the W their factors make."""
    layer = make(name)
    x, y = _inputs("nchw")
    p = {k: v.detach() for k, v in layer.named_parameters()}
    if name == "mlb":
        w = torch.einsum("kr,fr,gr->kfg", p["P"], p["U"], p["V"])
    elif name == "mutan":
        w = torch.einsum("qrs,kq,fr,gs->kfg", p["core"], p["U"], p["A"], p["C"])
    else:
        _, rx, ry = layer.ranks
        w = sum(
            torch.einsum(
                "qrs,kq,fr,gs->kfg",
                p["core"][i],
                p["U"][i],
                p["A"][:, i * rx : (i + 1) * rx],
                p["C"][:, i * ry : (i + 1) * ry],
            )
            for i in range(layer.blocks)
        )
    want = lp.bilinear_pool(x, w, Y=y) + p["bias"]
    assert_close(layer(x, y), want, terms=TERMS, scale="max")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fusion_gradients_state_and_pickle(name):
    layer = make(name)
    x, y = (t.requires_grad_() for t in _inputs("nchw"))
    assert torch.autograd.gradcheck(lambda a, b: layer(a, b), (x, y))
    names = [n for n, _ in layer.named_parameters()]

    def by_parameters(*ps):
        return torch.func.functional_call(layer, dict(zip(names, ps, strict=True)), (x.detach(), y.detach()))

    assert torch.autograd.gradcheck(by_parameters, tuple(layer.parameters()))
    twin = make(name, seed=5)
    twin.load_state_dict(layer.state_dict())
    assert_close(twin(x, y), layer(x, y), terms=0)
    import pickle

    assert_close(pickle.loads(pickle.dumps(layer))(x, y), layer(x, y), terms=0)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fusion_initial_scores_are_order_one_and_a_step_learns(name):
    cls, kw = CONFIGS[name]
    f, g, k = 64, 48, 10
    kw = {**kw, **({"dim": 256} if cls is MCB else {})}
    layer = cls(f, g, k, **kw, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    x, y = torch.relu(torch.randn(64, f, generator=gen)), torch.randn(64, g, generator=gen)
    labels = torch.arange(64) % k
    with torch.no_grad():
        std = layer(x, y).std().item()
    assert 0.05 < std < 3.0, (name, std)
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(layer(x, y), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert max(losses) <= losses[0] + 0.2 and losses[-1] < losses[0], (name, losses)


def test_fusion_errors_name_the_argument():
    x, y = _inputs("vectors")
    cases = [
        (lambda: make("mlb")(x, y[:3]), lp.ShapeError, r"^Y: expected 4 samples"),
        (lambda: make("mlb")(x, _inputs("nchw")[1]), lp.ShapeError, r"^y: expected a vector batch \(B, g\) like x"),
        (lambda: make("mlb")(x, y.numpy()), lp.BackendError, r"^y: expected a torch.Tensor"),
        (lambda: make("mlb")(x, torch.randn(4, G + 1, dtype=torch.float64)), lp.ShapeError, r"g = 5|C"),
        (lambda: Mutan(F, G, K, rank=(2, 3)), lp.ArgumentTypeError, r"^rank: expected three positive ints"),
        (lambda: MLB(F, G, K, rank=2, activation="relu"), lp.ArgumentError, r"^activation"),
        (lambda: MFB(F, 0, K), lp.ArgumentError, r"^y_channels"),
        (lambda: Block(F, G, K, blocks=0), lp.ArgumentError, r"^blocks"),
    ]
    expect_errors(cases)


@pytest.mark.parametrize("reduce_dim", [None, 3])
@pytest.mark.parametrize("layout", ["nchw", "bnf"])
def test_covariance_pool_is_isqrt_cov(reduce_dim, layout):
    """CovariancePool = a linear classifier on iSQRT-COV's descriptor (the paper's equations, float64), with the
    optional 1×1 reduction first; gradients, state and O(1) initial scores."""
    layer = CovariancePool(F, K, reduce_dim=reduce_dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x, _ = _inputs(layout)
    rows = _rows(x, layout)
    if reduce_dim:
        rows = rows @ layer.reduction.detach().numpy()
    want = layer.weight_scale * _isqrt_reference(rows, layer.num_iters) @ layer.weight.detach().numpy()
    want = want + layer.bias.detach().numpy()
    # the Newton-Schulz iterations chain num_iters matrix products of f ≤ 5 terms each
    assert_close(layer(x), want, terms=4 * (6 + F * F * (layer.num_iters + 2)), scale="max", like=x)
    xg = x.detach().requires_grad_()
    assert torch.autograd.gradcheck(layer, (xg,))
    twin = CovariancePool(F, K, reduce_dim=reduce_dim, dtype=torch.float64)
    twin.load_state_dict(layer.state_dict())
    assert_close(twin(x), layer(x), terms=0)
    big = CovariancePool(64, 10, reduce_dim=reduce_dim and 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        std = big(torch.relu(torch.randn(32, 64, 7, 7, generator=torch.Generator().manual_seed(2)))).std().item()
    assert 0.1 < std < 3.0, std


def test_a_trained_dense_fusion_compresses_into_mlb_and_mutan():
    """cp_approx / tucker_approx fit a two-input W (K, f, g); MLB.from_dense / Mutan.from_dense hold the fit and
    score like bilinear_pool(x, W, Y=y) where W has that exact rank."""
    g = torch.Generator().manual_seed(3)
    u, a, c = (torch.randn(m, 2, generator=g, dtype=torch.float64) for m in (K, F, G))
    w_cp = torch.einsum("kr,fr,gr->kfg", u, a, c)
    core = torch.randn(2, 3, 2, generator=g, dtype=torch.float64)
    w_tk = torch.einsum("qrs,kq,fr,gs->kfg", core, *(torch.randn(m, r, generator=g, dtype=torch.float64)
                                                     for m, r in ((K, 2), (F, 3), (G, 2))))  # fmt: skip
    x, y = _inputs("vectors")
    mlb = MLB.from_dense(w_cp, 2, fit={"n_restarts": 4, "stall": 1e-14, "n_iter_max": 3000}, bias=False)
    want = lp.bilinear_pool(x[:, None, :], w_cp, Y=y[:, None, :])
    _within_the_fit(mlb, w_cp, x, y)
    mutan = Mutan.from_dense(w_tk, (2, 3, 2))
    want = lp.bilinear_pool(x[:, None, :], w_tk, Y=y[:, None, :])
    _within_the_fit(mutan, w_tk, x, y)
    assert_close(mutan(x, y), want, terms=TERMS, scale="max")  # Tucker at full rank: exact up to rounding
    assert mutan.ranks == (2, 3, 2) and torch.equal(mutan.bias, torch.zeros(K, dtype=torch.float64))
    with pytest.raises(lp.ArgumentError, match=r"^rank: expected at most min\(K·f, f·g, K·g\) = 12 for W of shape"):
        lp.cp_approx(w_cp, 13)
    with pytest.raises(lp.ArgumentError, match=r"^rank: expected \(R_K, R_f, R_g\) <= \(3, 5, 4\)"):
        lp.tucker_approx(w_tk, (3, 5, 5))
    with pytest.raises(lp.ArgumentError, match=r"^activation"):
        MLB.from_dense(w_cp, 2, activation="tanh")
    with pytest.raises(lp.ShapeError, match=r"^W: expected shape \(K, f, g\)"):
        Mutan.from_dense(w_tk[0], 2)


def test_block_term_fit_and_block_from_dense():
    """block_term_approx recovers a W that is a sum of small Tuckers (bad arguments refused by name);
    Block.from_dense holds the fit and scores like bilinear_pool(x, W, Y=y)."""
    g = torch.Generator().manual_seed(5)

    def term():
        core = torch.randn(1, 2, 2, generator=g, dtype=torch.float64)
        return torch.einsum("qrs,kq,fr,gs->kfg", core, *(torch.randn(m, r, generator=g, dtype=torch.float64)
                                                          for m, r in ((K, 1), (F, 2), (G, 2))))  # fmt: skip

    w = term() + term()
    layer = Block.from_dense(w, (1, 2, 2), blocks=2, fit={"n_iter_max": 4000, "tol": 1e-15})
    p = {k: v.detach() for k, v in layer.named_parameters()}
    fitted = sum(
        torch.einsum(
            "qrs,kq,fr,gs->kfg", p["core"][i], p["U"][i], p["A"][:, 2 * i : 2 * i + 2], p["C"][:, 2 * i : 2 * i + 2]
        )
        for i in range(2)
    )
    assert (fitted - w).norm() / w.norm() < 1e-6
    x, y = _inputs("vectors")
    _within_the_fit(layer, w, x, y)
    one = lp.block_term_approx(w, 1, (1, 2, 2))
    assert len(one) == 1 and (lp.to_dense(one[0]) - w).norm() / w.norm() > 1e-3  # one block cannot hold two
    expect_errors(
        [
            (lambda: lp.block_term_approx(w, 0, 2), lp.ArgumentError, r"^blocks"),
            (lambda: lp.block_term_approx(w, 2, (4, 2, 2)), lp.ArgumentError, r"^rank"),
            (lambda: lp.block_term_approx(w[0], 2, 2), lp.ShapeError, r"^W"),
        ]
    )
