"""Hostile input, generated: every public function and layer, called with arguments drawn from pools of
valid and hostile values, must return the float64 answer or raise a LowRankPoolError naming an argument.

Pools: zero and one sizes, mismatched dimensions, wrong ranks, integer/bool/complex/float16/longdouble/
big-endian dtypes, NaN/Inf, non-contiguous, negative-stride, broadcast and channels-last views, mixed
libraries and devices, sparse/nested/meta tensors, None, Python and numpy scalars, lists. The number of
cases tried is reported at the end of the run (``hostile-input cases``).
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lowrank_pool as lp
from lowrank_pool.testing import to_numpy

torch = pytest.importorskip("torch")

COUNTS: Counter[str] = Counter()  # read by conftest's terminal summary
F, K, P = 4, 3, 2
RNG = np.random.default_rng(0)


def _f64(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape)


def _variants(a: np.ndarray, name: str) -> dict[str, Any]:
    """A valid float64 array and its hostile relatives (same values where the dtype allows)."""
    nan = a.copy()
    if nan.size:
        nan.flat[0] = np.nan
    out: dict[str, Any] = {
        f"{name}": a,
        f"{name} float32": a.astype(np.float32),
        f"{name} float16": a.astype(np.float16),
        f"{name} longdouble": a.astype(np.longdouble),
        f"{name} big-endian": a.astype(">f8"),
        f"{name} int": np.round(a).astype(np.int64),
        f"{name} bool": a > 0,
        f"{name} complex": a.astype(np.complex128),
        f"{name} NaN": nan,
        f"{name} torch": torch.from_numpy(a.copy()),
        f"{name} torch float32": torch.from_numpy(a.astype(np.float32)),
        f"{name} torch bfloat16": torch.from_numpy(a.copy()).to(torch.bfloat16),
        f"{name} torch meta": torch.from_numpy(a.copy()).to("meta"),
        f"{name} list": a.tolist(),
        f"{name} masked": np.ma.masked_array(a, mask=a > 1.0),
    }
    if a.ndim >= 1 and a.shape[-1] > 1:
        out[f"{name} negative stride"] = a[..., ::-1]
        out[f"{name} strided"] = np.repeat(a, 2, axis=-1)[..., ::2]
        out[f"{name} torch sparse"] = torch.from_numpy(a.copy()).to_sparse()
    if a.ndim >= 1:
        out[f"{name} broadcast"] = np.broadcast_to(a[..., :1], a.shape)
    if a.ndim >= 2 and a.shape[0] > 0:  # a batch of one nested tensor per row, both of torch's nested layouts
        rows = [torch.from_numpy(r.copy()) for r in a]
        with warnings.catch_warnings():  # (torch: the strided layout of nested tensors is a prototype)
            warnings.simplefilter("ignore", UserWarning)
            out[f"{name} torch nested"] = torch.nested.nested_tensor(rows)
        out[f"{name} torch nested jagged"] = torch.nested.nested_tensor(rows, layout=torch.jagged)
    return out


X_POOL: dict[str, Any] = {
    **_variants(_f64(2, 5, F), "X bnf"),
    **_variants(_f64(2, F, 2, 3), "X nchw"),
    "X channels_last": torch.from_numpy(_f64(2, F, 2, 3)).to(memory_format=torch.channels_last),
    "X video": _f64(1, F, 2, 2, 2),
    "X empty batch": _f64(0, 5, F),
    "X no positions": _f64(2, 0, F),
    "X no channels": _f64(2, 5, 0),
    "X one": _f64(1, 1, F),
    "X 2-D": _f64(5, F),
    "X wrong f": _f64(2, 5, F + 1),
    "X inf": np.full((1, 2, F), np.inf),
    "X None": None,
    "X scalar": 1.0,
    "X numpy scalar": np.float64(1.0),
    "X string": "X",
}
A_POOL: dict[str, Any] = {
    **_variants(_f64(F, K), "A"),
    "A wrong f": _f64(F + 1, K),
    "A 1-D": _f64(F),
    "A 3-D": _f64(F, K, P),
    "A no classes": _f64(F, 0),
    "A None": None,
}
B_POOL: dict[str, Any] = {
    **_variants(_f64(F), "b"),
    "b 2-D": _f64(F, P),
    "b wrong f": _f64(F + 1),
    "b scalar": 1.0,
    "b None": None,
}
AP_POOL: dict[str, Any] = {**_variants(_f64(F, K, P), "AP"), "AP 2-D": _f64(F, K), "AP wrong f": _f64(F + 1, K, P)}
BP_POOL: dict[str, Any] = {
    **_variants(_f64(F, P), "BP shared"),
    "BP per class": _f64(F, K, P),
    "BP wrong P": _f64(F, P + 1),
    "BP 1-D": _f64(F),
    "BP 4-D": _f64(F, K, P, 1),
}
W_POOL: dict[str, Any] = {
    **_variants(_f64(K, F, F), "W"),
    "W non-square": _f64(K, F, F + 1),
    "W 2-D": _f64(F, F),
    "W wrong f": _f64(K, F + 1, F + 1),
}
OPTIONS: dict[str, list[Any]] = {
    "attention": ["linear", "softmax", "relu", "sigmoid", None, 1],
    "channel_axis": [None, None, -1, 1, 0, 3, 7, -9, 1.0, "1", True],
    "check_finite": [False, True, "yes"],
    "reduce": ["mean", "sum", "max", "min"],
    "path": ["auto", "factorized", "dense", "fast"],
    "normalize": [None, "signed_sqrt+l2", "matrix_sqrt", "l2", "power"],
    "rank": [1, 2, 0, -1, 2.5, np.int64(2), 10**6, None, True],
}


def _cp_pool() -> dict[str, Any]:
    u, a, c = _f64(K, P), _f64(F, P), _f64(F, P)
    return {
        "cp": (_f64(P), [u, a, c]),
        "cp no weights": (None, [u, a, c]),
        "cp torch": (None, [torch.from_numpy(m) for m in (u, a, c)]),
        "cp None entry": (None, [None, a, c]),
        "cp two factors": (None, [u, a]),
        "cp rank mismatch": (None, [u, _f64(F, P + 1), c]),
        "cp wrong f": (None, [u, _f64(F + 1, P), _f64(F + 1, P)]),
        "cp int": (None, [u.astype(int), a, c]),
        "cp is eig": lp.EigTensor(_f64(K, P), _f64(F, K, P)),
        "cp is int": 3,
        "cp NaN weights": (np.array([np.nan, 1.0]), [u, a, c]),
    }


def _tucker_pool() -> dict[str, Any]:
    core, u, a, c = _f64(2, P, P), _f64(K, 2), _f64(F, P), _f64(F, P)
    return {
        "tucker": (core, [u, a, c]),
        "tucker core mismatch": (_f64(2, P, P + 1), [u, a, c]),
        "tucker is cp": (None, [u, a, c]),
        "tucker list": [core, [u, a, c]],
        "tucker None": None,
    }


def _eig_pool() -> dict[str, Any]:
    return {
        "eig": lp.EigTensor(_f64(K, P), _f64(F, K, P)),
        "eig tuple": (_f64(K, P), _f64(F, K, P)),
        "eig mismatch": lp.EigTensor(_f64(K, P + 1), _f64(F, K, P)),
        "eig dense": _f64(K, F, F),
        "eig torch/numpy": lp.EigTensor(torch.from_numpy(_f64(K, P)), _f64(F, K, P)),
    }


def _float64(value: Any) -> Any:
    """The float64 numpy twin of an argument (arrays and nested factor forms), or the value itself."""
    if isinstance(value, tuple | list) and not isinstance(value, str):
        return (
            type(value)(_float64(v) for v in value)
            if not hasattr(value, "_fields")
            else type(value)(*(_float64(v) for v in value))
        )
    if hasattr(value, "shape") and not isinstance(value, str):
        try:
            return to_numpy(value.to_dense() if hasattr(value, "to_dense") and value.layout != torch.strided else value)
        except Exception:
            return value
    return value


ARGUMENTS = [
    "X",
    "A",
    "b",
    "B",
    "W",
    "U",
    "M",
    "G",
    "x",
    "bias",
    "weights",
    "hashes",
    "cp",
    "tucker",
    "eig",
    "eigenvalues",
    "eigenvectors",
    "obj",
    "channel_axis",
    "attention",
    "reduce",
    "path",
    "normalize",
    "check_finite",
    "rank",
    "axis",
    "eps",
    "num_iters",
    "keep_spatial",
    "kind",
    "ranks",
    "batch",
    "positions",
    "channels",
    "classes",
    "labels",
    "features",
    "method",
    "in_channels",
    "num_classes",
]
NAMES = "(" + "|".join(ARGUMENTS) + ")"


def _check(name: str, fn: Any, kwargs: dict[str, Any], labels: dict[str, str]) -> None:
    COUNTS["cases"] += 1
    desc = ", ".join(f"{k}={labels.get(k, repr(v)[:30])}" for k, v in kwargs.items())
    try:
        out = fn(**kwargs)
    except lp.LowRankPoolError as err:
        COUNTS["named errors"] += 1
        assert isinstance(err, ValueError | TypeError), (name, desc, err)
        msg = str(err)
        assert re.match(
            rf"({NAMES}(\[\d+\])?( factor \w| \w+)?: |arrays (of different libraries|must be on one device)|\w+Pool: )",
            msg,
        ), f"{name}({desc}): the message does not start with an argument: {msg}"
        return
    except Exception as err:  # anything else is a defect
        pytest.fail(f"{name}({desc}) raised {type(err).__name__}: {err}")
    COUNTS["results"] += 1
    twin = {k: _float64(v) for k, v in kwargs.items()}
    try:
        ref = fn(**twin)
    except lp.LowRankPoolError:
        return  # e.g. float64 twin of a list: nothing to compare with
    got_parts = out if isinstance(out, tuple) else (out,)
    ref_parts = ref if isinstance(ref, tuple) else (ref,)
    for got, want in zip(got_parts, ref_parts, strict=True):
        if str(getattr(got, "device", "cpu")) == "meta":
            assert tuple(got.shape) == tuple(want.shape), (name, desc)
            continue
        g, w = to_numpy(got), to_numpy(want)
        assert g.shape == w.shape, (name, desc, g.shape, w.shape)
        dt = str(getattr(got, "dtype", "float64"))
        tol = {"float64": 1e-9}.get(dt.rsplit(".", 1)[-1], 1e-1 if "16" in dt else 1e-4)
        inputs_have_nan = any(
            np.isnan(_float64(v)).any() for v in kwargs.values() if isinstance(_float64(v), np.ndarray)
        )
        if not inputs_have_nan:
            assert np.isfinite(g).all() == np.isfinite(w).all(), (name, desc)
        both = np.isfinite(g) & np.isfinite(w)
        scale = np.abs(w[both]).max(initial=0.0) + 1.0
        assert np.all(np.abs(g[both] - w[both]) <= tol * scale), (name, desc, np.abs(g - w).max())
        assert np.array_equal(np.isnan(g), np.isnan(w)) or "16" in dt, (name, desc, "NaN where float64 has none")


def _pick(data: Any, pool: dict[str, Any], label: str, labels: dict[str, str]) -> Any:
    key = data.draw(st.sampled_from(sorted(pool)), label=label)
    labels[label] = key
    return pool[key]


def _opts(data: Any, names: list[str], labels: dict[str, str]) -> dict[str, Any]:
    out = {}
    for n in names:
        if data.draw(st.booleans(), label=f"set {n}"):
            out[n] = data.draw(st.sampled_from(OPTIONS[n]), label=n)
    return out


FUNCTIONS = {
    "first_order_pool": (
        lambda X, A, **kw: lp.first_order_pool(X, A, **kw),
        ["X", "A"],
        ["reduce", "channel_axis", "check_finite"],
    ),
    "gram": (lambda X, **kw: lp.gram(X, **kw), ["X"], ["channel_axis", "check_finite"]),
    "bilinear_pool": (
        lambda X, W, **kw: lp.bilinear_pool(X, W, **kw),
        ["X", "W"],
        ["normalize", "channel_axis", "check_finite"],
    ),
    "rank1_pool": (
        lambda X, A, b, **kw: lp.rank1_pool(X, A, b, **kw),
        ["X", "A", "b"],
        ["attention", "channel_axis", "check_finite"],
    ),
    "rankp_pool": (
        lambda X, AP, BP, **kw: lp.rankp_pool(X, AP, BP, **kw),
        ["X", "AP", "BP"],
        ["attention", "channel_axis", "check_finite"],
    ),
    "attention_maps rank 1": (
        lambda X, A, b, **kw: lp.attention_maps(X, A, b, **kw),
        ["X", "A", "b"],
        ["attention", "channel_axis"],
    ),
    "attention_maps rank P": (
        lambda X, AP, BP, **kw: lp.attention_maps(X, AP, BP, **kw),
        ["X", "AP", "BP"],
        ["attention", "channel_axis"],
    ),
    "project_channels": (
        lambda X, A, **kw: lp.project_channels(X, A, **kw),
        ["X", "A"],
        ["channel_axis", "check_finite"],
    ),
    "cp_pool": (lambda X, cp, **kw: lp.cp_pool(X, cp, **kw), ["X", "cp"], ["path", "channel_axis", "check_finite"]),
    "tucker_pool": (lambda X, tucker, **kw: lp.tucker_pool(X, tucker, **kw), ["X", "tucker"], ["path", "channel_axis"]),
    "eig_pool": (lambda X, eig, **kw: lp.eig_pool(X, eig, **kw), ["X", "eig"], ["path", "channel_axis"]),
    "compact_bilinear_pool": (lambda X, **kw: lp.compact_bilinear_pool(X, 16, **kw), ["X"], ["channel_axis"]),
    "signed_sqrt": (lambda W, **kw: lp.signed_sqrt(W), ["W"], []),
    "l2_normalize": (lambda W, **kw: lp.l2_normalize(W), ["W"], []),
    "matrix_sqrt": (lambda W, **kw: lp.matrix_sqrt(W), ["W"], []),
    "to_dense": (lambda cp, **kw: lp.to_dense(cp), ["cp"], []),
    # eigenvectors have arbitrary signs: compare the W they represent
    "eig_approx": (lambda W, **kw: lp.to_dense(lp.eig_approx(W, kw.get("rank", 2))), ["W"], ["rank"]),
}
POOLS = {
    "X": X_POOL,
    "A": A_POOL,
    "b": B_POOL,
    "AP": AP_POOL,
    "BP": BP_POOL,
    "W": W_POOL,
    "cp": _cp_pool(),
    "tucker": _tucker_pool(),
    "eig": _eig_pool(),
}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's own overflow/invalid warnings on hostile values
@pytest.mark.parametrize("name", FUNCTIONS)
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=st.data())
def test_functions_answer_or_name_the_argument(name, data):
    fn, arrays, options = FUNCTIONS[name]
    labels: dict[str, str] = {}
    kwargs = {a: _pick(data, POOLS[a], a, labels) for a in arrays}
    kwargs.update(_opts(data, options, labels))
    _check(name, fn, kwargs, labels)


def _layers() -> dict[str, Any]:
    from lowrank_pool import nn as lnn

    return {
        "FirstOrderPool": lambda **kw: lnn.FirstOrderPool(F, K, **kw),
        "BilinearPool": lambda **kw: lnn.BilinearPool(F, K, **kw),
        "AttentionalPool": lambda **kw: lnn.AttentionalPool(F, K, kw.pop("rank", 2), **kw),
        "CPPool": lambda **kw: lnn.CPPool(F, K, kw.pop("rank", 2), **kw),
        "TuckerPool": lambda **kw: lnn.TuckerPool(F, K, kw.pop("rank", 2), **kw),
        "EigPool": lambda **kw: lnn.EigPool(F, K, kw.pop("rank", 2), **kw),
        "PoseAttentionalPool": lambda **kw: lnn.PoseAttentionalPool(F, K, 2, **kw),
        "CompactBilinearPool": lambda **kw: lnn.CompactBilinearPool(F, K, 16, **kw),
    }


LAYER_OPTIONS = {
    "FirstOrderPool": ["reduce", "channel_axis"],
    "BilinearPool": ["normalize", "channel_axis"],
    "AttentionalPool": ["attention", "rank", "channel_axis"],
    "CPPool": ["path", "rank", "channel_axis"],
    "TuckerPool": ["path", "rank", "channel_axis"],
    "EigPool": ["path", "rank", "channel_axis"],
    "PoseAttentionalPool": ["attention", "channel_axis"],
    "CompactBilinearPool": ["channel_axis"],
}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name", LAYER_OPTIONS)
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=st.data())
def test_layers_answer_or_name_the_argument(name, data):
    labels: dict[str, str] = {}
    options = _opts(data, LAYER_OPTIONS[name], labels)
    x = _pick(data, X_POOL, "X", labels)
    COUNTS["cases"] += 1
    try:
        layer = _layers()[name](**options).double()
        out = layer(x)
    except lp.LowRankPoolError as err:
        COUNTS["named errors"] += 1
        msg = str(err)
        assert re.match(rf"({NAMES}(\[\d+\])?( factor \w| \w+)?: |arrays |\w+Pool: )", msg), (name, labels, msg)
        return
    except Exception as err:
        pytest.fail(f"{name}({options}) on {labels['X']} raised {type(err).__name__}: {err}")
    COUNTS["results"] += 1
    scores = out.scores if hasattr(out, "scores") else out
    assert scores.shape[-1] == K and scores.dtype in (torch.float32, torch.float64)


def test_the_generated_suite_ran_enough_cases():
    """Runs last in this module: the counter of the two generated tests above."""
    if COUNTS["cases"] == 0:
        pytest.skip("run together with the generated tests")
    assert COUNTS["cases"] >= len(FUNCTIONS) * 100 and COUNTS["named errors"] > 0 and COUNTS["results"] > 0
    assert math.isfinite(COUNTS["cases"])


def _valid_files() -> dict[str, bytes]:
    import io

    out = {}
    forms = {
        "cp": (_f64(P), [_f64(K, P), _f64(F, P), _f64(F, P)]),
        "tucker": (_f64(2, P, P), [_f64(K, 2), _f64(F, P), _f64(F, P)]),
        "eig": lp.EigTensor(_f64(K, P), _f64(F, K, P)),
        "rankp": lp.RankP(_f64(F, K, P), _f64(F, P)),
        "dense": _f64(K, F, F),
    }
    for kind, form in forms.items():
        buf = io.BytesIO()
        lp.save_factors(buf, form)
        out[kind] = buf.getvalue()
    return out


VALID_FILES = _valid_files()


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=st.data())
def test_mutated_factor_files_load_or_are_refused(data):
    """Truncated, bit-flipped and header-edited files: a valid form back, or a FactorFileError; nothing else."""
    import io
    import zipfile

    kind = data.draw(st.sampled_from(sorted(VALID_FILES)), label="kind")
    raw = bytearray(VALID_FILES[kind])
    how = data.draw(st.sampled_from(["truncate", "flip", "header", "member"]), label="how")
    if how == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1), label="at")]
    elif how == "flip":
        for _ in range(data.draw(st.integers(1, 4), label="flips")):
            i = data.draw(st.integers(0, len(raw) - 1), label="byte")
            raw[i] ^= data.draw(st.integers(1, 255), label="mask")
    else:  # rewrite one member: its shape in the header, or its whole content
        src = zipfile.ZipFile(io.BytesIO(bytes(raw)))
        names = src.namelist()
        target = data.draw(st.sampled_from(names), label="member")
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as dst:
            for name in names:
                body = src.read(name)
                if name == target and how == "header":
                    new_shape = data.draw(st.sampled_from([b"()", b"(0,)", b"(1000000000,)", b"(3, 4, 4, 4)", b"(2,)"]))
                    body = re.sub(rb"'shape': \([^)]*\)", b"'shape': " + new_shape, body, count=1)
                elif name == target:
                    body = data.draw(st.binary(max_size=64), label="content")
                dst.writestr(name, body)
        raw = bytearray(out.getvalue())
    COUNTS["cases"] += 1
    try:
        form = lp.load_factors(io.BytesIO(bytes(raw)))
    except lp.FactorFileError as err:
        COUNTS["named errors"] += 1
        assert "factor file" in str(err) or "format version" in str(err), str(err)
        return
    except Exception as err:
        pytest.fail(f"{kind} file, {how}: {type(err).__name__}: {err}")
    COUNTS["results"] += 1
    dense = form if kind == "dense" else lp.to_dense(form)
    assert np.asarray(dense).ndim == 3


# ----------------------------------------------------------------------------- every other entry point
def _option_probes() -> tuple[list[Any], dict[str, Any]]:
    from lowrank_pool import nn as lnn

    W = np.random.default_rng(5).random((2, 3, 3))
    bad = [
        None,
        1,
        1.5,
        "x",
        [1.0],
        np.ones(3),
        np.ones((2, 3, 3), int),
        np.full((2, 3, 3), np.nan),
        torch.ones(2, 3, 3),
        np.ones((0, 3, 3)),
        np.ones((2, 3, 4)),
        -1,
        0,
        True,
        np.int64(2),
        float("inf"),
        2**70,
        np.uint64(2**63),
        np.ma.masked_array(np.ones((2, 3, 3)), mask=np.eye(3, dtype=bool)[None].repeat(2, 0)),
    ]
    W = np.random.default_rng(6).random((2, 3, 3))
    calls = {
        "cp_approx(W, r)": lambda v: lp.cp_approx(v, 2),
        "cp_approx(W, rank=v)": lambda v: lp.cp_approx(W, v),
        "tucker_approx(W, rank=v)": lambda v: lp.tucker_approx(W, v),
        "tucker_approx(v,2)": lambda v: lp.tucker_approx(v, 2),
        "eig_approx(v, 2)": lambda v: lp.eig_approx(v, 2),
        "eig_approx(W, v)": lambda v: lp.eig_approx(W, v),
        "rank_profile(v,[1])": lambda v: lp.rank_profile(v, [1], progress=False),
        "rank_profile(W,v)": lambda v: lp.rank_profile(W, v, progress=False),
        "rank_profile(W,[v])": lambda v: lp.rank_profile(W, [v], progress=False),
        "rank_profile(W,[1],method=v)": lambda v: lp.rank_profile(W, [1], method=v),
        "rank_profile feats": lambda v: lp.rank_profile(W, [1], features=v, labels=np.zeros(2, int), progress=False),
        "rank_profile labels": lambda v: lp.rank_profile(W, [1], features=np.ones((2, 4, 3)), labels=v, progress=False),
        "rank_profile label values": lambda v: lp.rank_profile(
            W, [1], features=np.ones((2, 4, 3)), labels=np.array([0, v]) if np.ndim(v) == 0 else v, progress=False
        ),
        "compact dim": lambda v: lp.compact_bilinear_pool(np.ones((2, 3, 4)), v),
        "compact seed": lambda v: lp.compact_bilinear_pool(np.ones((2, 3, 4)), 8, seed=v),
        "compact layer seed": lambda v: lnn.CompactBilinearPool(3, 2, dim=8, seed=v),
        "save then load": lambda v: lp.load_factors(lp.save_factors("probe_rt", v)),
        "pool_cost kind": lambda v: lp.pool_cost(v, batch=1, positions=1, channels=1, classes=1, ranks=1),
        "pool_cost batch": lambda v: lp.pool_cost("cp", batch=v, positions=1, channels=1, classes=1, ranks=1),
        "pool_cost ranks": lambda v: lp.pool_cost("cp", batch=1, positions=1, channels=1, classes=1, ranks=v),
        "save_factors(path,v)": lambda v: lp.save_factors("probe_x", v),
        "save_factors(v,W)": lambda v: lp.save_factors(v, W),
        "load_factors(v)": lambda v: lp.load_factors(v),
        "to_dense(v)": lambda v: lp.to_dense(v),
        "rankp_to_cp(v, B)": lambda v: lp.rankp_to_cp(v, np.ones((3, 1))),
        "rankp_to_cp(A, v)": lambda v: lp.rankp_to_cp(np.ones((3, 2, 1)), v),
        "cp_to_rankp(v)": lambda v: lp.cp_to_rankp(v),
        "attention_weights(v)": lambda v: lp.attention_weights(v),
        "attention_weights axis": lambda v: lp.attention_weights(np.ones((2, 3)), axis=v),
        "gram normalize": lambda v: lp.gram(np.ones((2, 3, 3)), normalize=v),
        "matrix_sqrt method": lambda v: lp.matrix_sqrt(np.eye(3), method=v),
        "matrix_sqrt num_iters": lambda v: lp.matrix_sqrt(np.eye(3), method="newton_schulz", num_iters=v),
        "signed_sqrt eps": lambda v: lp.signed_sqrt(np.ones(3), eps=v),
        "l2 eps": lambda v: lp.l2_normalize(np.ones(3), eps=v),
        "l2 axis": lambda v: lp.l2_normalize(np.ones((2, 3)), axis=v),
        "first weights": lambda v: lp.first_order_pool(np.ones((2, 3, 4)), np.ones((4, 2)), weights=v),
        "first reduce": lambda v: lp.first_order_pool(np.ones((2, 3, 4)), np.ones((4, 2)), reduce=v),
        "project bias": lambda v: lp.project_channels(np.ones((2, 3, 4)), np.ones((4, 2)), bias=v),
        "keep_spatial": lambda v: lp.project_channels(np.ones((2, 3, 4)), np.ones((4, 2)), keep_spatial=v),
        "bilinear eps": lambda v: lp.bilinear_pool(
            np.ones((2, 3, 4)), np.ones((2, 4, 4)), normalize="signed_sqrt", eps=v
        ),
        "bilinear num_iters": lambda v: lp.bilinear_pool(np.ones((2, 3, 4)), np.ones((2, 4, 4)), num_iters=v),
        "layer in": lambda v: lnn.FirstOrderPool(v, 3),
        "layer K": lambda v: lnn.CPPool(3, v, 2),
        "layer generator": lambda v: lnn.CPPool(3, 2, 2, generator=v),
        "layer device": lambda v: lnn.CPPool(3, 2, 2, device=v),
        "layer dtype": lambda v: lnn.CPPool(3, 2, 2, dtype=v),
        "bil reduce_dim": lambda v: lnn.BilinearPool(3, 2, reduce_dim=v),
        "bil eps": lambda v: lnn.BilinearPool(3, 2, eps=v),
        "pose J": lambda v: lnn.PoseAttentionalPool(3, 2, v),
        "pose hidden": lambda v: lnn.PoseAttentionalPool(3, 2, 2, hidden=v),
        "from_dense W": lambda v: lnn.CPPool.from_dense(v, 2),
        "from_dense rank": lambda v: lnn.EigPool.from_dense(torch.ones(2, 3, 3), v),
        "from_factors": lambda v: lnn.TuckerPool.from_factors(v),
        "compress rank": lambda v: lnn.compress(lnn.BilinearPool(3, 2, normalize=None), v),
        "compress feats": lambda v: lnn.compress(lnn.BilinearPool(3, 2, normalize=None), 2, features=v),
        "match feats": lambda v: lnn.match_scores(lnn.EigPool(3, 2, 1), v, torch.ones(2, 2)),
        "keypoints": lambda v: lnn.keypoint_heatmaps(v, (4, 4)),
        "keypoints size": lambda v: lnn.keypoint_heatmaps(torch.ones(1, 1, 2), v),
        "keypoints sigma": lambda v: lnn.keypoint_heatmaps(torch.ones(1, 1, 2), (4, 4), sigma=v),
        "pose_loss": lambda v: lnn.pose_loss(v, torch.ones(1, 2, 3, 3), torch.ones(1, 2)),
        "replace_head model": lambda v: lnn.replace_head(v, lnn.CPPool(3, 2, 2)),
        "layer call": lambda v: lnn.CPPool(3, 2, 2)(v),
        "FeatureMapClassifier backbone": lambda v: lnn.FeatureMapClassifier(v, lnn.CPPool(3, 2, 2)),
        "FeatureMapClassifier head": lambda v: lnn.FeatureMapClassifier(torch.nn.Identity(), v),
        "FeatureMapClassifier features": lambda v: lnn.FeatureMapClassifier(
            torch.nn.Identity(), lnn.CPPool(3, 2, 2), features=v
        ),
        "FeatureMapClassifier call": lambda v: lnn.FeatureMapClassifier(torch.nn.Identity(), lnn.CPPool(3, 2, 2))(v),
        "attn return_maps": lambda v: lnn.AttentionalPool(3, 2)(torch.ones(1, 3, 2, 2), return_maps=v),
    }
    return bad, calls


PROBE_VALUES, PROBES = _option_probes()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name", sorted(PROBES))
def test_helpers_and_options_answer_or_name_the_argument(name, tmp_path, monkeypatch):
    """Every remaining entry point (fits, reports, files, layer options, pose helpers) with hostile values."""
    monkeypatch.chdir(tmp_path)  # save_factors probes write here
    for value in PROBE_VALUES:
        COUNTS["cases"] += 1
        try:
            PROBES[name](value)
        except lp.LowRankPoolError as err:
            COUNTS["named errors"] += 1
            assert isinstance(err, ValueError | TypeError)
        except Exception as err:
            pytest.fail(f"{name} with {value!r:.40}: {type(err).__name__}: {err}")
        else:
            COUNTS["results"] += 1
