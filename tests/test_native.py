"""The compiled CPU kernel equals the torch path: values and gradients, every attention, both layouts,
float32 and float64, edge shapes; it serves only the calls it can (others take the torch path)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from cases.kernels import scores_and_gradients  # noqa: E402

import lowrank_pool as lp  # noqa: E402
import lowrank_pool.nn as lnn  # noqa: E402
from lowrank_pool import _native  # noqa: E402
from lowrank_pool._native._build import build_binary  # noqa: E402
from lowrank_pool.testing import assert_close  # noqa: E402

# The builds the kernel tests run against: each capability this CPU runs, and the AVX-512 build with 64-byte vectors
# (the default AVX-512 build computes in 32-byte vectors, measured faster where it was tuned: docs/performance.md);
# the third keeps the vector layer's width-generic code tested.
VARIANTS = {"avx512": ("avx512", ()), "avx2": ("avx2", ()), "avx512-zmm": ("avx512", ("-DLP_VEC_BYTES=64",))}


@pytest.fixture(scope="module", params=list(VARIANTS))
def native(request):
    """A kernel build, found up to date (make setup builds the capabilities) or built now."""
    capability, flags = VARIANTS[request.param]
    if capability not in _native.cpu_capabilities():
        pytest.skip(f"this CPU does not run the {capability} kernel")
    return _native.load_binary(build_binary(capability, extra_cflags=flags), capability)


@pytest.fixture
def counted(native, monkeypatch):
    """Count the kernel's calls, to prove which path ran."""
    calls = {"forward": 0, "backward": 0}

    class Counting:
        def scores_forward(self, *args):
            calls["forward"] += 1
            return native.scores_forward(*args)

        def scores_backward(self, *args):
            calls["backward"] += 1
            return native.scores_backward(*args)

        def scores_inference(self, *args):
            calls["forward"] += 1
            return native.scores_inference(*args)

    monkeypatch.setattr(_native, "kernel", lambda: Counting())
    return calls


def _torch_path(monkeypatch):
    monkeypatch.setattr(_native, "kernel", lambda: None)


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(0, 3),
    n=st.integers(1, 40),
    f=st.integers(1, 150),  # past the unrolled vector loops (up to 64 float32 numbers) and their remainders
    k=st.integers(1, 4),
    p=st.integers(1, 6),  # the maps go in blocks of up to 4: a full block and a remainder
    attention=st.sampled_from(["linear", "relu", "softmax"]),
    layout=st.sampled_from(["bnf", "nchw"]),
    dtype=st.sampled_from(["float32", "float64"]),
    negated=st.sampled_from([(), (), ("X",), ("A",), ("B",), ("X", "A", "B")]),
    seed=st.integers(0, 2**16),
)
def test_native_equals_torch_path(native, batch, n, f, k, p, attention, layout, dtype, negated, seed):
    """Values and gradients equal the torch path's; tensors behind torch's negative bit (which the kernel would read
    with the opposite sign) take the torch path."""
    g = torch.Generator().manual_seed(seed)
    dt = getattr(torch, dtype)
    X = (
        torch.randn(batch, n, f, generator=g, dtype=dt)
        if layout == "bnf"
        else torch.randn(batch, f, n, 1, generator=g, dtype=dt)
    )
    A, B = torch.randn(f, k, p, generator=g, dtype=dt), torch.randn(f, p, generator=g, dtype=dt)
    axis = -1 if layout == "bnf" else 1
    with pytest.MonkeyPatch.context() as mp:
        calls = {"n": 0}
        real = native.scores_forward

        class Counting:
            scores_backward = staticmethod(native.scores_backward)

            @staticmethod
            def scores_forward(*args):
                calls["n"] += 1
                return real(*args)

        mp.setattr(_native, "kernel", lambda: Counting())
        s_native, g_native = scores_and_gradients(X, A, B, attention, axis, negated)
        assert calls["n"] == (0 if negated else 1)
        mp.setattr(_native, "kernel", lambda: None)
        s_torch, g_torch = scores_and_gradients(X, A, B, attention, axis)
    # both paths sum ~f·n products twice (Z, then V or ∂X); scale by the absolute-value computation
    terms = 8 * (f + n + k * p)
    for got, want in zip((s_native, *g_native), (s_torch, *g_torch), strict=True):
        scale = want.abs().max().item() if want.numel() else 0.0
        assert_close(got, want, terms=terms, scale=want.abs() + max(scale, 1.0))


# Each branch of the kernel forced through its tuning (lowrank_pool/_native/src/tuning.h), instead of shapes aimed at
# thresholds: values and gradients on random shapes still equal the torch path's.
TUNINGS = {
    "channels-first in blocks of positions": {"l2_bytes": 0, "l3_bytes": 0, "block_min_positions": 16},
    "blocks, a prefetch per line read": {"l2_bytes": 0, "l3_bytes": 0, "per_line_bytes": 0, "spread_bytes": 0},
    "whole samples held in L3": {"l2_bytes": 0, "l3_row_bytes": 1 << 40, "l3_share_bytes": 1 << 40},
    "second pass prefetched": {"l2_hot_bytes": 0},
    "no short rows": {"short_max_vectors": 0},
    "short rows, dX a row at a time": {"flat_min_vectors": 99, "flat_min_vectors_3": 99},
    "channels-first dX 4 rows at a time": {"short_max_vectors": 0, "rows4_min_positions": 0},
    "rows one after the other": {"sequential_min_bytes": 0, "sequential_max_bytes": 1 << 40},
    "rows side by side": {"sequential_min_bytes": 1 << 40},
    "no prefetch distance": {"ahead_rows": 0, "ahead_bytes": 0},
    "dX streamed through a small staging buffer": {"stream_min_bytes": 0, "staging_bytes": 64},
    "wide products": {"small_max_classes": 0},
    "wide products by at::mm": {"small_max_classes": 0, "own_wide_products": 0},
    "dA through transposed maps": {"small_max_classes": 0, "transpose_v_min_bytes": 0},
    "transpositions in the smallest tasks": {"copy_grain": 1},
}


@pytest.mark.parametrize("tuning", list(TUNINGS))
@settings(max_examples=12, deadline=None)
@given(
    batch=st.integers(1, 3),
    n=st.integers(1, 300),
    f=st.integers(1, 150),
    k=st.integers(1, 40),
    p=st.integers(1, 6),
    attention=st.sampled_from(["linear", "relu", "softmax"]),
    layout=st.sampled_from(["bnf", "nchw"]),
    fkp=st.booleans(),  # A as the layer holds it, a contiguous (f, K, P)
    dtype=st.sampled_from(["float32", "float64"]),
    seed=st.integers(0, 2**16),
)
def test_every_branch_equals_torch_path(native, tuning, batch, n, f, k, p, attention, layout, fkp, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    dt = getattr(torch, dtype)
    X = torch.randn(batch, n, f, generator=g, dtype=dt)
    X = X if layout == "bnf" else X.mT.contiguous()[..., None]
    A = torch.randn(p, f, k, generator=g, dtype=dt).permute(1, 2, 0)
    A = A.contiguous() if fkp else A
    B = torch.randn(f, p, generator=g, dtype=dt) / f**0.5
    axis = -1 if layout == "bnf" else 1
    with _native.tuned(native, **TUNINGS[tuning]):
        _assert_native_equals_torch(native, X, A, B, attention, axis, 8 * (f + n + k * p))


def test_tuning_is_checked(native):
    """Unknown fields and negative values are refused; a tuned block restores the values it changed."""
    before = native.tuning()
    assert set(TUNINGS["channels-first in blocks of positions"]) <= set(before)
    with pytest.raises(RuntimeError, match="no tuning field"):
        native.update_tuning({"l2_size": 1})
    with pytest.raises(RuntimeError, match=">= 0"):
        native.update_tuning({"l2_bytes": -1})
    with _native.tuned(native, l2_bytes=0):
        assert native.tuning()["l2_bytes"] == 0
    assert native.tuning() == before


@pytest.mark.parametrize(("f", "k", "p"), [(2048, 5, 3), (1000, 32, 1), (4096, 2, 4)])
@pytest.mark.parametrize("layout", ["pfk", "fkp"])
def test_transpositions_of_a_split_across_threads(native, f, k, p, layout):
    """A's transpositions (Aᵀ for the small products, ∂A back to (P, f, K)) run in tasks of about 8K
    numbers: at these sizes in several, on both A layouts; values and gradients equal the torch path's."""
    g = torch.Generator().manual_seed(f + k + p)
    X = torch.randn(3, f, 4, 2, generator=g, dtype=torch.float64)
    A = torch.randn(p, f, k, generator=g, dtype=torch.float64).permute(1, 2, 0)
    if layout == "fkp":
        A = A.contiguous()
    B = torch.randn(f, p, generator=g, dtype=torch.float64)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_native, "kernel", lambda: native)
        s_native, g_native = scores_and_gradients(X, A, B, "relu", None)
        with torch.no_grad():
            inference = lp.rankp_pool(X, A, B, attention="relu")
        mp.setattr(_native, "kernel", lambda: None)
        s_torch, g_torch = scores_and_gradients(X, A, B, "relu", None)
    terms = 8 * (f + 8 + k * p)
    for got, want in zip((s_native, inference, *g_native), (s_torch, s_torch, *g_torch), strict=True):
        assert_close(got, want, terms=terms, scale=want.abs() + want.abs().max().item())


@pytest.mark.parametrize("threads", [1, 3, 5])
@pytest.mark.parametrize("layout", ["bnf", "nchw"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_any_thread_count(native, threads, layout, dtype):
    """The kernel splits samples and A's columns by the thread count: with 1, 3 and 5 threads (7 samples of
    4096 × 128, larger than a core's L2: channels-first in blocks of positions, except softmax's backward;
    100 classes, several column tiles each thread) values, gradients and inference equal the torch path's,
    for P = 1 and 4, both A layouts, ReLU and softmax."""
    g = torch.Generator().manual_seed(threads)
    X = torch.randn(7, 128, 64, 64, generator=g, dtype=dtype)
    if layout == "bnf":
        X = X.flatten(2).transpose(1, 2).contiguous()
    axis = -1 if layout == "bnf" else 1
    before = torch.get_num_threads()
    try:
        for p, fkp, attention in ((1, False, "relu"), (4, False, "softmax"), (4, True, "relu")):
            A = torch.randn(p, 128, 100, generator=g, dtype=dtype).permute(1, 2, 0)
            A = A.contiguous() if fkp else A
            B = torch.randn(128, p, generator=g, dtype=dtype) / 128**0.5
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(_native, "kernel", lambda: native)
                torch.set_num_threads(threads)
                s_native, g_native = scores_and_gradients(X, A, B, attention, axis)
                with torch.no_grad():
                    inference = lp.rankp_pool(X, A, B, attention=attention, channel_axis=axis)
                torch.set_num_threads(before)
                mp.setattr(_native, "kernel", lambda: None)
                s_torch, g_torch = scores_and_gradients(X, A, B, attention, axis)
            terms = 8 * (128 + 4096 + 100 * p)
            for got, want in zip((s_native, inference, *g_native), (s_torch, s_torch, *g_torch), strict=True):
                scale = want.abs().max().item()
                assert_close(got, want, terms=terms, scale=want.abs() + scale, label=f"P={p}, {attention}")
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("attention", ["linear", "relu", "softmax"])
@pytest.mark.parametrize("layout", ["bnf", "nchw"])
def test_native_path_runs_and_passes_gradcheck(counted, attention, layout):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(2, 5, 4, dtype=torch.float64, generator=g)
    if layout == "nchw":
        X = torch.randn(2, 4, 3, 2, dtype=torch.float64, generator=g)
    axis = -1 if layout == "bnf" else 1
    A = torch.randn(4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, generator=g, requires_grad=True)
    X.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, a, bb: lp.rank1_pool(x, a, bb, attention=attention, channel_axis=axis), (X, A, b)
    )
    assert counted["forward"] > 0 and counted["backward"] > 0


def _assert_native_equals_torch(native, X, A, B, attention, axis, terms):
    """Scores and the gradients of X, A and B through the kernel equal the torch path's within terms roundings."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_native, "kernel", lambda: native)
        got = scores_and_gradients(X, A, B, attention, axis)
        mp.setattr(_native, "kernel", lambda: None)
        want = scores_and_gradients(X, A, B, attention, axis)
    for name, a, b in zip(("s", "dX", "dA", "dB"), (got[0], *got[1]), (want[0], *want[1]), strict=True):
        scale = b.abs().max().item()
        assert_close(a, b, terms=terms, scale=b.abs() + scale, label=name)


@pytest.mark.parametrize(
    ("n", "f"),
    [
        (3001, 130),  # 3 MB, rows of 24 KB: 3 full blocks of 752 positions and a remainder; channels 4k + 2
        (500, 421),  # 1.7 MB, rows of 4 KB: one block (within the thread's share of L3), read again from L3
    ],
)
@pytest.mark.parametrize("maps", [1, 3, 4, 5])
@pytest.mark.parametrize("attention", ["linear", "relu", "softmax"])
@pytest.mark.parametrize("layout", ["bnf", "nchw"])
def test_native_large_samples_in_blocks(native, attention, layout, maps, n, f):
    """A sample larger than L2: channels-first X with long rows runs in blocks of positions (linear/ReLU
    forward and backward, softmax forward with its running maximum; the rows ahead prefetched through
    the loops, one prefetch per line read; 4 maps known at compile time, 5 in blocks), with rows of 4 KB
    or less as one block; values and gradients still equal the torch path's."""
    g = torch.Generator().manual_seed(7 + maps)
    X = torch.randn(2, n, f, generator=g, dtype=torch.float64)
    X = X if layout == "bnf" else X.mT.contiguous()[..., None]
    A = torch.randn(f, 3, maps, generator=g, dtype=torch.float64)
    B = torch.randn(f, maps, generator=g, dtype=torch.float64)
    B = B / f**0.5
    axis = -1 if layout == "bnf" else 1
    _assert_native_equals_torch(native, X, A, B, attention, axis, 8 * (f + n))


@pytest.mark.parametrize(
    ("dtype", "f"),
    [
        (torch.float32, 61),  # rows under 384 B: 4 side by side; a vector remainder
        (torch.float64, 48),  # 384 B to 2 KB: read one after the other
        (torch.float32, 511),
        (torch.float32, 515),  # 2 KB and more: 4 side by side, the rows ahead prefetched; a vector remainder
        (torch.float64, 259),
        (torch.float32, 2048),
    ],
)
@pytest.mark.parametrize("attention", ["linear", "relu", "softmax"])
def test_native_rank1_rows_in_either_order(native, dtype, f, attention):
    """Rank 1 on (n, f) rows reads a block of 4 rows one after the other where rows are 384 B to 2 KB
    long and side by side otherwise (see the kernel's ``sequential_rows``); n = 11 leaves 3 rows after
    two blocks. Values and gradients equal the torch path's on both sides of each threshold."""
    g = torch.Generator().manual_seed(f)
    n = 11
    X = torch.randn(3, n, f, generator=g, dtype=dtype)
    A = torch.randn(f, 5, 1, generator=g, dtype=dtype)
    B = torch.randn(f, 1, generator=g, dtype=dtype) / f**0.5
    _assert_native_equals_torch(native, X, A, B, attention, -1, 8 * (f + n))


@pytest.mark.parametrize(
    ("layout", "n", "f", "streamed"),
    [
        ("bnf", 1003, 512, True),
        ("bnf", 1001, 520, True),
        ("nchw", 3024, 130, True),
        ("nchw", 3001, 130, True),
        ("nchw", 301, 130, False),
    ],
)
@pytest.mark.parametrize("attention", ["relu", "softmax"])
def test_native_gradient_rows_streamed_staged_or_in_place(native, layout, n, f, streamed, attention):
    """∂X rows are written 4 at a time and reach memory three ways: a ∂X of 4 MiB or more whose rows are
    whole 64-byte lines straight from the registers (rows of 512 and 520 channels, the second leaving a
    remainder; a (130, 3024) sample in blocks of 752 positions and a last one of 16), other large ones
    through a staging buffer ((130, 3001)), small ones in place ((130, 301)); the rows that do not fill a
    block of 4 (n = 1003, 1001; 130 channels) one at a time. ∂X equals the torch path's."""
    g = torch.Generator().manual_seed(n + f)
    X = torch.randn(2, n, f, generator=g, dtype=torch.float64)
    X = X if layout == "bnf" else X.mT.contiguous()[..., None]
    assert (X.numel() * X.element_size() >= 4 << 20) == streamed  # the kernel streams ∂X from 4 MiB on
    A, B = torch.randn(f, 3, 4, generator=g, dtype=torch.float64), torch.randn(f, 4, generator=g, dtype=torch.float64)
    B = B / f**0.5
    axis = -1 if layout == "bnf" else 1
    _assert_native_equals_torch(native, X, A, B, attention, axis, 8 * (f + n))


@pytest.mark.parametrize(("classes", "f"), [(3, 512), (300, 512), (88, 512), (37, 600), (33, 600)])
@pytest.mark.parametrize("layout", ["bnf", "nchw"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [5, 37])
def test_native_products_with_a_small_and_large(native, classes, f, layout, dtype, batch):
    """The products with A run as dot products on a packed Aᵀ while A is small (here P·f·K = 3 072) and
    as the wide products on A in place beyond (past the kernel's 32 classes): column tiles of 6 (forward)
    or 3 vectors (backward), one tile of the 1-5 vectors left after them and a last partial vector (300,
    88, 37 and 33 classes in float32 and float64 leave each count of vectors but 5 in the backward),
    a batch of 5 a partial block of rows, and 1 200 rows of A (f = 600, P = 2) an inner dimension in
    two blocks; ∂V's product has the batch as its columns: 5 a partial vector, 37 a whole tile of 4
    vectors and 5 numbers (float32), or 2 tiles, a vector and a number (float64). A reaches the kernel
    as a permuted (P, f, K) view of rank-P's (f, K, P) parameter."""
    g = torch.Generator().manual_seed(3 + classes)
    p = 2
    X = torch.randn(batch, 9, f, generator=g, dtype=dtype)
    X = X if layout == "bnf" else X.mT.contiguous()[..., None]
    A = torch.randn(f, classes, p, generator=g, dtype=dtype)
    B = torch.randn(f, p, generator=g, dtype=dtype) / f**0.5
    axis = -1 if layout == "bnf" else 1
    _assert_native_equals_torch(native, X, A, B, "softmax", axis, 8 * (f + classes * p))


@pytest.mark.parametrize(("p", "f"), [(1, 4099), (2, 2050), (4, 1031)])
@pytest.mark.parametrize("a_layout", ["pfk", "fkp"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [5, 37])
def test_native_grad_a_through_transposed_maps(native, p, f, a_layout, dtype, batch):
    """∂A = Vᵀ ∂s reads V through a transposed copy once V's rows (P·f numbers) are 16 KB or longer (the
    kernel's ``steps_alias``; here 16-33 KB): A laid out as (P, f, K) (the general product) and as a
    contiguous (f, K, P) (by lane groups where P divides the vector width, else a copy); 40 classes leave a
    whole tile and a vector; a batch of 5 and of 37 as the product's steps. Values and gradients equal the
    torch path's."""
    g = torch.Generator().manual_seed(f + p + batch)
    X = torch.randn(batch, 3, f, generator=g, dtype=dtype)
    A = torch.randn(p, f, 40, generator=g, dtype=dtype).permute(1, 2, 0)
    A = A if a_layout == "pfk" else A.contiguous()
    B = torch.randn(f, p, generator=g, dtype=dtype) / f**0.5
    _assert_native_equals_torch(native, X, A, B, "relu", -1, 8 * (f + 40 * p))


@pytest.mark.parametrize("p", [2, 3, 4, 8])
@pytest.mark.parametrize("classes", [33, 37, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("offset", [0, 3])
def test_native_reads_a_contiguous_rank_p_a_in_place(native, p, classes, dtype, offset):
    """A held as a contiguous (f, K, P), as AttentionalPool holds it, past 32 classes: where P divides a
    vector's lanes (2, 4, 8 float32 numbers; 2, 4 float64) the products with A read it in place, by lane
    groups (no copy returned for the backward, ∂A made in A's own memory layout); otherwise (P = 3, 8 in
    float64) through a copy, as before. Values and gradients (inference too) equal the torch path's, for
    classes leaving whole tiles, single vectors and a partial strip, and for an A that starts `offset`
    numbers into a buffer (off the vector boundary)."""
    g = torch.Generator().manual_seed(classes + p + offset)
    f, lanes = 70, native.vector_bytes // (4 if dtype == torch.float32 else 8)
    X = torch.randn(5, 6, f, generator=g, dtype=dtype)
    buf = torch.randn(f * classes * p + offset, generator=g, dtype=dtype)
    A = buf[offset:].view(f, classes, p)
    B = torch.randn(f, p, generator=g, dtype=dtype) / f**0.5
    a3 = A.permute(2, 0, 1)
    s, u, v, copy = native.scores_forward(X, B, a3, False, 2, 1 / 6)
    grouped = lanes % p == 0
    assert (copy is None) == grouped
    *_, ga = native.scores_backward(X, B, a3, u, v, torch.ones_like(s), False, 2, 1 / 6, False, False, True)
    assert ga.shape == a3.shape and ga.permute(1, 2, 0).is_contiguous() == grouped
    _assert_native_equals_torch(native, X, A, B, "softmax", -1, 8 * (f + classes * p))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_native, "kernel", lambda: native)
        inference = lp.rankp_pool(X, A, B, attention="softmax")
    terms = 8 * (f + classes * p)
    assert_close(inference, s, terms=terms, scale=s.abs() + s.abs().max().item())


def test_attentional_pool_hands_its_a_to_the_kernel_uncopied(native, monkeypatch):
    """AttentionalPool (rank 4, 40 classes) keeps A contiguous; its training forward reaches the kernel with
    that memory (no copy made for the backward) and its gradient comes back contiguous, equal to the torch
    path's."""
    copies = []

    class Spy:
        scores_backward = staticmethod(native.scores_backward)
        scores_inference = staticmethod(native.scores_inference)

        @staticmethod
        def scores_forward(*args):
            out = native.scores_forward(*args)
            copies.append(out[3])
            return out

    torch.manual_seed(0)
    layer = lnn.AttentionalPool(64, 40, rank=4, attention="softmax", dtype=torch.float64)
    x = torch.randn(3, 64, 5, 5, dtype=torch.float64)

    def step():
        layer.zero_grad(set_to_none=True)
        layer(x).square().sum().backward()
        return layer.A.grad

    monkeypatch.setattr(_native, "kernel", lambda: Spy())
    grad = step()
    assert copies == [None] and grad.is_contiguous()
    _torch_path(monkeypatch)
    want = step()
    terms = 64 * 64
    assert_close(grad, want, terms=terms, scale=want.abs() + want.abs().max().item())


@pytest.mark.parametrize("classes", [10, 40])
def test_native_kernel_without_channels_gives_zeros(native, classes):
    """The kernel called directly with f = 0 (the package's checks refuse it before): empty sums, so the
    scores and ∂A are zeros, on both product paths (past 32 classes the wide products' inner dimension
    is empty)."""
    x, bm, a = torch.randn(2, 3, 0), torch.randn(0, 2), torch.randn(2, 0, classes)
    s, u, v, _ = native.scores_forward(x, bm, a, False, 0, 1.0)
    assert s.shape == (2, classes) and torch.equal(s, torch.zeros_like(s))
    gx, gb, ga = native.scores_backward(x, bm, a, u, v, torch.ones(2, classes), False, 0, 1.0, True, True, True)
    assert gx.shape == x.shape and gb.shape == bm.shape and ga.shape == a.shape


@pytest.mark.parametrize("classes", [10, 40])
def test_native_rank1_with_a_transposed_view(counted, classes):
    """A rank-1 A handed over as the transpose of a (K, f) parameter (columns f apart, not adjacent): the
    products with A read it through a contiguous copy where they need rows of A (past 32 classes) and as
    it is otherwise; scores and gradients equal the torch path's, with and without autograd."""
    g = torch.Generator().manual_seed(classes)
    X = torch.randn(3, 7, 64, generator=g, dtype=torch.float64)
    At = torch.randn(classes, 64, generator=g, dtype=torch.float64)
    b = torch.randn(64, generator=g, dtype=torch.float64)

    def run():
        x, at, bb = (t.clone().requires_grad_() for t in (X, At, b))
        s = lp.rank1_pool(x, at.t(), bb)
        with torch.no_grad():
            inference = lp.rank1_pool(x, at.t(), bb)
        return s.detach(), inference, torch.autograd.grad(s.square().sum(), (x, at, bb))

    s, inference, grads = run()
    assert counted["forward"] == 2 and counted["backward"] == 1
    with pytest.MonkeyPatch.context() as mp:
        _torch_path(mp)
        s_t, _, grads_t = run()
    terms = 64 * (64 + classes)
    for got, want in zip((s, inference, *grads), (s_t, s_t, *grads_t), strict=True):
        assert_close(got, want, terms=terms, scale=want.abs() + want.abs().max().item())


@pytest.mark.parametrize(
    ("dtype", "classes", "f"),
    [(torch.float32, 48, 40), (torch.float64, 36, 40), (torch.float32, 8, 33000), (torch.float64, 4, 66000)],
)
@pytest.mark.parametrize("offset", [0, 1, 2, 3, 5, 7])
@pytest.mark.parametrize("rank1", [True, False])
def test_native_products_with_a_off_alignment(counted, dtype, classes, f, offset, rank1):
    """A whose rows start off a 32-byte boundary (a view `offset` numbers into a buffer, as a tensor from numpy
    or a slice of a larger one is): the wide products start their vectors at the next boundary and take the
    first columns as a partial strip (here every split: head and tail strips, single vectors, whole tiles, and
    with 8 or 4 classes more head than body). Scores and gradients equal the torch path's."""
    g = torch.Generator().manual_seed(offset + classes)
    p = 1 if rank1 else 2
    X = torch.randn(3, 2, f, generator=g, dtype=dtype)
    buf = torch.randn(p * f * classes + 8, generator=g, dtype=dtype)
    stored = buf[offset : offset + p * f * classes].view(p, f, classes)  # A's (P, f, K) layout, read in place
    A = stored[0] if rank1 else stored.permute(1, 2, 0)
    b = torch.randn(f, generator=g, dtype=dtype) / f**0.5
    B = b if rank1 else torch.stack([b, b.flip(0)], 1)

    def run():
        x, a, bb = (t.detach().clone().requires_grad_() for t in (X, A, B))
        # a clone of A would start on a new allocation: a view at the same offset into a copy of the buffer
        a = buf.clone()[offset : offset + p * f * classes].view(p, f, classes)
        a = (a[0] if rank1 else a.permute(1, 2, 0)).requires_grad_()
        assert a.data_ptr() % 32 == A.data_ptr() % 32
        s = lp.rank1_pool(x, a, bb) if rank1 else lp.rankp_pool(x, a, bb)
        with torch.no_grad():
            inference = lp.rank1_pool(x, a, bb) if rank1 else lp.rankp_pool(x, a, bb)
        return s.detach(), inference, torch.autograd.grad((s * s.detach().sign()).sum(), (x, a, bb))

    s, inference, grads = run()
    assert counted["forward"] == 2 and counted["backward"] == 1
    with pytest.MonkeyPatch.context() as mp:
        _torch_path(mp)
        s_t, _, grads_t = run()
    terms = 64 * (f + classes)
    for got, want in zip((s, inference, *grads), (s_t, s_t, *grads_t), strict=True):
        assert_close(got, want, terms=terms, scale=want.abs() + want.abs().max().item())


@settings(max_examples=40, deadline=None)
@given(
    rank1=st.booleans(),
    layout=st.sampled_from(["bnf", "nchw", "ncthw", "bfn", "nhwc", "nthwc"]),
    explicit=st.booleans(),
    attention=st.sampled_from(["linear", "relu", "softmax"]),
    dtype=st.sampled_from(["float32", "float64"]),
    grad=st.booleans(),
    strided_a=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fast_path_equals_the_general_path(native, rank1, layout, explicit, attention, dtype, grad, strided_a, seed):
    """Plain tensors skip the general validation (lowrank_pool._torch_kernels.fast_shared_scores): the
    values and gradients are exactly the general path's, which the same call takes with the fast path off.
    The default layouts with ``channel_axis`` left out or given (as 1 / -1 or counted from the other end),
    and the ones only an explicit axis selects: (B, f, n) with 1, channels-last maps with -1."""
    from lowrank_pool import _torch_kernels

    g = torch.Generator().manual_seed(seed)
    dt = getattr(torch, dtype)
    shape = {
        "bnf": (3, 10, 7),
        "nchw": (3, 7, 2, 5),
        "ncthw": (3, 7, 2, 1, 5),
        "bfn": (3, 7, 10),
        "nhwc": (3, 2, 5, 7),
        "nthwc": (3, 2, 1, 5, 7),
    }[layout]
    first = layout in ("nchw", "ncthw", "bfn")
    axis = (1 if seed % 2 else 1 - len(shape)) if first else (-1 if seed % 2 else len(shape) - 1)
    axis = axis if explicit or layout in ("bfn", "nhwc", "nthwc") else None
    X = torch.randn(shape, generator=g, dtype=dt)
    A = torch.randn(7, 4, 1 if rank1 else 3, generator=g, dtype=dt)
    if strided_a:  # a parameter stored transposed: a non-contiguous view
        A = A.permute(2, 1, 0).contiguous().permute(2, 1, 0)
    B = torch.randn(7, 1 if rank1 else 3, generator=g, dtype=dt)
    A, B = (A[..., 0], B[:, 0]) if rank1 else (A, B)
    pool = lp.rank1_pool if rank1 else lp.rankp_pool
    calls = {"fast": 0}
    real = _torch_kernels.fast_shared_scores

    def counting(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["fast"] += out is not None
        return out

    results = []
    for fast in (counting, lambda *a, **k: None):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(_native, "kernel", lambda: native)
            mp.setattr(_torch_kernels, "fast_shared_scores", fast)
            x, a, b = (t.detach().clone().requires_grad_(grad) for t in (X, A, B))
            s = pool(x, a, b, attention=attention, channel_axis=axis)
            grads = torch.autograd.grad(s.square().sum(), (x, a, b)) if grad else ()
            results.append((s.detach(), *grads))
    assert calls["fast"] == 1
    for got, want in zip(*results, strict=True):
        assert torch.equal(got, want)


def test_fast_path_leaves_everything_else_to_the_general_path(native, monkeypatch):
    """What the fast path does not take reaches the general path: its errors name the argument. Inference
    calls that the kernel does not serve stay on the fast path, with the torch products (as on a GPU)."""
    from lowrank_pool import _torch_kernels

    monkeypatch.setattr(_native, "kernel", lambda: native)
    X, A, b = torch.randn(2, 5, 4), torch.randn(4, 3), torch.randn(4)
    declined = [
        (X, A, torch.randn(5)),  # b of the wrong size
        (X, A.double(), b),  # mixed dtypes (the general path promotes)
        (X.half(), A.half(), b.half()),  # float16 (computed in float32 by the general path)
        (X.mT, A[:2], b[:2]),  # (B, n, f) = (2, 4, 5) against A, b of f = 2
        (torch.randn(2, 4, 3, 3).to(memory_format=torch.channels_last), A, b),
        (X, A.to("meta"), b.to("meta")),  # two devices
        (X, A.numpy(), b),  # mixed libraries
        (torch.randn(2, 0, 4), A, b),  # no positions
    ]
    for x, a, bb in declined:
        assert _torch_kernels.fast_shared_scores(x, a, bb, "linear", rank1=True) is None
    # channel_axis other than the two the fast path reads (1, -1, or the same counted from the other end)
    X4 = torch.randn(2, 4, 3, 5)
    for x, axis in [(X, 0), (X, 3), (X, -4), (X4, 2), (X4, -2), (X4, 0), (X4.permute(0, 2, 3, 1), -1)]:
        assert _torch_kernels.fast_shared_scores(x, A, b, "linear", rank1=True, channel_axis=axis) is None
    for axis in (0, 3, True, 1.0):
        with pytest.raises(lp.LowRankPoolError, match="channel_axis"):
            lp.rank1_pool(X, A, b, channel_axis=axis)
    not_served = [
        (torch.randn(2, 4, 5).mT, A, b),  # (B, n, f) on transposed storage
        (X, A, torch.randn(8)[::2]),  # a strided b
    ]
    general = _torch_kernels.fast_shared_scores
    for x, a, bb in not_served:  # the general path's answer
        got = _torch_kernels.fast_shared_scores(x, a, bb, "linear", rank1=True)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(_torch_kernels, "fast_shared_scores", lambda *args, **kwargs: None)
            want = lp.rank1_pool(x, a, bb)
        assert _torch_kernels.fast_shared_scores is general
        assert_close(got, want, terms=0)  # the general path's answer, as it is
    assert _torch_kernels.fast_shared_scores(X, A, b, "sigmoid", rank1=True) is None
    assert _torch_kernels.fast_shared_scores(X, A, b, ["linear"], rank1=True) is None
    with pytest.raises(lp.ShapeError, match="b: expected shape"):
        lp.rank1_pool(X, A, torch.randn(5))
    with pytest.raises(lp.ArgumentError, match="attention"):
        lp.rank1_pool(X, A, b, attention="sigmoid")
    # check_finite is the general path's (the fast path takes its default only)
    Xn = X.clone()
    Xn[0, 0, 0] = float("nan")
    with pytest.raises(lp.ArgumentError, match="X"):
        lp.rank1_pool(Xn, A, b, check_finite=True)
    assert torch.equal(lp.rank1_pool(X, A, b, channel_axis=-1), lp.rank1_pool(X, A, b))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n", [9, 31, 49, 64, 65])
@pytest.mark.parametrize("f", [1, 3, 130])
@pytest.mark.parametrize("p", [3, 4, 9])
def test_native_short_channel_rows(native, dtype, n, f, p):
    """Channels-first rows of at most 8 vectors (7 × 7 positions: 49 numbers) run from registers, reading a
    row's last vector into the next row: values and gradients equal the torch path's for every attention, and
    the scores also with ±inf and NaN at the start of a row (the lanes read past a row must not reach its sum).
    The maps' sums go 4 at a time, then in pairs, then one (P = 3, 4, 9 take each mix)."""
    g = torch.Generator().manual_seed(n * f + p)
    dt = getattr(torch, dtype)
    X = torch.randn(3, f, n, 1, generator=g, dtype=dt)
    A, B = torch.randn(f, 2, p, generator=g, dtype=dt), torch.randn(f, p, generator=g, dtype=dt) / f**0.5
    specials = X.clone()
    specials[0, -1, 0] = float("inf")  # row f-1 of sample 0 starts with +inf; row f-2 reads into it
    specials[1, f // 2, 0] = float("-inf")
    specials[2, 0, 0] = float("nan")
    for attention in ("linear", "relu", "softmax"):
        for x in (X, specials):
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(_native, "kernel", lambda: native)
                got = scores_and_gradients(x, A, B, attention, 1)
                mp.setattr(_native, "kernel", lambda: None)
                want = scores_and_gradients(x, A, B, attention, 1)
            terms = 8 * (f + n)
            pairs = zip(("s", "dX", "dA", "dB"), (got[0], *got[1]), (want[0], *want[1]), strict=True)
            for name, a, b in pairs if x is X else [("s", got[0], want[0])]:  # gradients of ±inf: either order
                assert torch.equal(torch.isnan(a), torch.isnan(b)), (attention, name)
                finite = torch.isfinite(b)
                scale = b[finite].abs().max().item() if finite.any() else 0.0
                assert_close(
                    a[finite],
                    b[finite],
                    terms=terms,
                    scale=b[finite].abs() + max(scale, 1.0),
                    label=f"{attention}, {name}",
                )


@pytest.mark.parametrize(
    ("dtype", "n"),
    [*(("float32", n) for n in (15, 16, 24, 49, 64, 100, 196)), *(("float64", n) for n in (7, 8, 12, 32, 49))],
)
@pytest.mark.parametrize("p", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("streamed", [True, False])
def test_native_dx_by_flat_vectors(native, dtype, n, p, streamed):
    """Channels-first rows of 2 or more vectors (3 or more from 3 maps on) that are not whole 64-byte lines, up
    to 4 maps, write ∂X as the aligned vectors of the sample's flat ∂X, a vector across two rows taking each
    row's coefficients in its lanes: short rows (up to 8 vectors, read whole) and longer ones (100 and 196
    numbers in float32, 49 in float64). The others (15 and 7 numbers; 16 and 8 with 3-4 maps; 5 maps) take
    the row-at-a-time paths. 2051 channels put every sample after the first off a 64-byte line (numbers written
    singly before the first line and after the last vector); with ``streamed`` ∂X is 4 MiB or more (full lines
    stored non-temporally), else stored in place. Values and the three gradients equal the torch path's."""
    dt = getattr(torch, dtype)
    f = 2051
    batch = -(-(4 << 20) // (n * f * dt.itemsize)) if streamed else 2
    g = torch.Generator().manual_seed(n * p + streamed)
    X = torch.randn(batch, f, n, 1, generator=g, dtype=dt)
    assert (X.numel() * X.element_size() >= 4 << 20) == streamed  # the kernel streams ∂X from 4 MiB on
    A, B = torch.randn(f, 3, p, generator=g, dtype=dt), torch.randn(f, p, generator=g, dtype=dt) / f**0.5
    _assert_native_equals_torch(native, X, A, B, "relu", 1, 8 * (f + n))


class TestEmptyCache:
    """lowrank_pool.empty_cache: the kernel's ∂X buffers, reused and released."""

    def test_dx_buffers_are_cached_and_released(self, native, monkeypatch):
        """∂X comes from the kernel's cache: a freed ∂X is kept for the next step, empty_cache returns it."""
        monkeypatch.setattr(_native, "kernel", lambda: native)
        lp.empty_cache()
        X = torch.randn(8, 64, 1024, requires_grad=True)  # ∂X: 2 MiB
        A, b = torch.randn(1024, 3), torch.randn(1024)
        lp.rank1_pool(X, A, b).sum().backward()
        first = X.grad.data_ptr()
        X.grad = None  # freed: back to the cache
        lp.rank1_pool(X, A, b).sum().backward()
        assert X.grad.data_ptr() == first  # the same (already mapped) buffer, reused
        reference = X.detach().clone().requires_grad_()
        ((reference @ A) * (reference @ b)[..., None]).mean(1).sum().backward()
        # float32: ∂X sums f = 1024 channel products and K = 3 classes over the n = 64 positions' mean, both ways
        assert_close(X.grad, reference.grad, terms=2 * (1024 + 64 + 3), scale="max")
        X.grad = None
        assert lp.empty_cache() == X.numel() * 4
        assert lp.empty_cache() == 0


def test_native_skips_what_it_cannot_serve(counted):
    X = torch.randn(2, 6, 3, 3)  # NCHW: the (B, f, n) view is contiguous
    A, b = torch.randn(6, 4), torch.randn(6)
    lp.rank1_pool(X, A, b)
    served = counted["forward"]
    assert served == 1  # channels-first inference (nothing needs a gradient) is served too
    lp.rank1_pool(X.to(memory_format=torch.channels_last), A, b)  # a contiguous (B, n, f) view: served
    served += 1
    assert counted["forward"] == served
    # a non-contiguous view and autocast: torch path
    leaf = torch.randn(2, 3, 9, requires_grad=True)
    lp.rank1_pool(leaf.mT, A[:3], b[:3])  # (B, n, f) on transposed storage, in the autograd Function
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp.rank1_pool(X, A, b)
        lp.rank1_pool(X.requires_grad_(), A, b)
    X.requires_grad_(False)
    assert counted["forward"] == served
    # bfloat16 input is computed in float32 (the dtype rule) before the kernel sees it: served
    lp.rank1_pool(X.to(torch.bfloat16), A, b)
    assert counted["forward"] == served + 1


def test_second_derivatives_take_the_torch_path(counted):
    X = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    A, b = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    s = lp.rank1_pool(X, A, b)
    (gx,) = torch.autograd.grad(s.square().sum(), X, create_graph=True)
    (ggx,) = torch.autograd.grad(gx.square().sum(), X)
    Xd = X.detach().requires_grad_()
    ref = ((Xd @ A) * (Xd @ b)[..., None]).mean(1)
    (rx,) = torch.autograd.grad(ref.square().sum(), Xd, create_graph=True)
    (rrx,) = torch.autograd.grad(rx.square().sum(), Xd)
    # create_graph recomputes the maps with torch ops; the native backward may still serve the
    # first-order pass through the scores that the second derivative walks back through
    assert_close(ggx, rrx, terms=2 * 3 * (5 + 4 + 3), scale="max")  # three chained contractions, both ways


def test_disabled_by_environment(native, monkeypatch):
    monkeypatch.setenv("LOWRANK_POOL_NATIVE", "0")
    _native.kernel.cache_clear()
    try:
        assert _native.kernel() is None
    finally:
        monkeypatch.delenv("LOWRANK_POOL_NATIVE")
        _native.kernel.cache_clear()
    assert _native.kernel() is not None


def test_nan_propagates_like_the_torch_path(native, monkeypatch):
    X = torch.randn(1, 4, 3)
    X[0, 1, 2] = float("nan")
    A, b = torch.randn(3, 2), torch.randn(3)
    for attention in ("linear", "relu", "softmax"):
        got = lp.rank1_pool(X, A, b, attention=attention)
        _torch_path(monkeypatch)
        want = lp.rank1_pool(X, A, b, attention=attention)
        monkeypatch.undo()
        assert torch.equal(torch.isnan(got), torch.isnan(want))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # shapes taken as Python ints: traced as constants
@pytest.mark.filterwarnings("ignore:`torch.jit.trace.*is deprecated:DeprecationWarning")  # (torch 2.13; still used)
@pytest.mark.parametrize("kind", ["rank1", "rankp", "layer"])
@pytest.mark.parametrize("train", [False, True])
def test_traced_code_records_the_torch_path(counted, kind, train):
    """torch.jit.trace sees only the operations it records: under tracing the kernel is never called, and the traced
    function (or layer) replayed on a new input gives the eager values and gradients, in training and inference."""
    g = torch.Generator().manual_seed(1)
    A1, b = torch.randn(8, 3, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)
    AP, BP = torch.randn(8, 3, 2, generator=g, dtype=torch.float64), torch.randn(8, 2, generator=g, dtype=torch.float64)
    if kind == "layer":
        fn = lnn.AttentionalPool(8, 3, rank=2, attention="softmax").double().train(train)
    elif kind == "rank1":
        fn = lambda x: lp.rank1_pool(x, A1, b, attention="relu")  # noqa: E731
    else:
        fn = lambda x: lp.rankp_pool(x, AP, BP, attention="softmax")  # noqa: E731
    x0, x1 = (torch.randn(4, 8, 5, 3, generator=g, dtype=torch.float64) for _ in range(2))
    with torch.set_grad_enabled(train):
        torch.jit.trace(fn, x0.requires_grad_(train), check_trace=False)
        assert counted["forward"] == 0  # (the kernel's writes would be invisible to the tracer)
        traced = torch.jit.trace(fn, x0)  # (its check also runs fn eagerly, which may call the kernel)
        x1.requires_grad_(train)
        calls = counted["forward"]
        got = traced(x1)
        assert counted["forward"] == calls
        want = fn(x1.detach().requires_grad_(train))
    terms = 4 * (15 + 8 + 16)  # n = 15 positions, f = 8 channels, the class factors: the same math either way
    assert_close(got, want, terms=terms, scale="max")
    if train:
        (gx,) = torch.autograd.grad(got.square().sum(), x1)
        x2 = x1.detach().requires_grad_()
        (wx,) = torch.autograd.grad(fn(x2).square().sum(), x2)
        assert_close(gx, wx, terms=2 * terms, scale="max")
