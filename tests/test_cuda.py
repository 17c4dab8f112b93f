"""Every layer and the attentional kernel's torch path on a CUDA device.

A GPU runs the torch path (the compiled kernel is CPU-only): these tests check that it gives the CPU's
numbers and gradients for every head and layout, that a training step makes no host synchronisation
(no ``.item()``, no host-to-device copy, no data-dependent shape), that its peak device memory stays
at one ∂X, that inductor compiles the heads without graph breaks, and that the compact sketch is
reproducible under ``torch.use_deterministic_algorithms``. The identities run on CUDA through the
``torch_cuda`` backend of the shared fixtures, and the layers' gradcheck and bfloat16 autocast tests
(tests/test_nn.py) and the higher-order autodiff tests (tests/test_autodiff.py) take a CUDA device
too. Skipped where no CUDA device answers.
"""

from __future__ import annotations

import copy
import warnings

import pytest

torch = pytest.importorskip("torch")

import lowrank_pool as lp  # noqa: E402
from lowrank_pool.nn import CPPool, TuckerPool  # noqa: E402
from lowrank_pool.testing import assert_close  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")

from cases.nn import CONFIGS, F_IN, _inputs, make, scores  # noqa: E402  (the shared layer registry)

LAYOUTS = ["bnf", "nchw", "channels_last", "video"]


def _grads(layer, x):
    """Scores and the gradients of a fixed weighted sum of them with respect to X and every parameter."""
    x = x.detach().clone().requires_grad_()
    s = scores(layer, x)
    w = torch.linspace(-1, 2, s.numel(), dtype=s.dtype, device=s.device).reshape(s.shape)
    params = [p for _, p in sorted(layer.named_parameters())]
    grads = torch.autograd.grad((s * w).sum(), [x, *params], allow_unused=True)
    return s, grads


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_layer_on_cuda_gives_the_cpu_scores_and_gradients(name, layout):
    layer = make(name)
    on_gpu = copy.deepcopy(layer).cuda()
    x = _inputs(layout)
    s, grads = _grads(layer, x)
    s_gpu, grads_gpu = _grads(on_gpu, x.cuda())
    assert s_gpu.device.type == "cuda" and s_gpu.dtype == torch.float64
    scale = s.abs().max().item() + 1
    assert_close(s_gpu, s, terms=400, scale=scale, label=f"{name} scores, {layout}")
    terms = 400 * _signed_sqrt_condition(name, layer, x)
    for i, (got, ref) in enumerate(zip(grads_gpu, grads, strict=True)):
        assert (got is None) == (ref is None), (name, i)
        if ref is not None:
            assert got.device.type == "cuda"
            label = f"{name} gradient {i}, {layout}"
            assert_close(got, ref, terms=terms, scale=ref.abs().max().item() + 1, label=label)


def _signed_sqrt_condition(name, layer, x):
    """How much a signed square root magnifies the rounding of its argument m in the gradient.

    Its derivative 1/(2√(|m|+ε)) changes by the relative amount δ/(2(|m|+ε)) when m moves by δ, and the
    rounding of m is δ ≈ terms·eps·max|m|: the gradients of those heads are compared with terms multiplied
    by 1 + max|m| / (2 (min|m| + ε)), from the descriptor the head computes on this X (float64, CPU).
    """
    if "signed_sqrt" not in (getattr(layer, "normalize", None) or ""):
        return 1.0
    x = x.contiguous()
    m = lp.compact_bilinear_pool(x, layer.dim, seed=layer.seed) if name.startswith("compact") else lp.gram(x)
    m = m.abs()
    return 1.0 + m.max().item() / (2 * (m.min().item() + layer.eps))


@pytest.mark.parametrize("name", CONFIGS)
def test_training_step_makes_no_host_synchronisation(name):
    """With the sync debug mode set to "error", any operation that waits for the device raises."""
    layer = make(name, dtype=torch.float32).cuda()
    x = torch.randn(4, F_IN, 5, 5, device="cuda", requires_grad=True)
    scores(layer, x).sum().backward()  # first call: lazy initialisation (cuBLAS handles, sketch hashes)
    torch.cuda.synchronize()
    try:
        with warnings.catch_warnings():  # torch warns that the mode is a prototype
            warnings.simplefilter("ignore", UserWarning)
            torch.cuda.set_sync_debug_mode("error")
        scores(layer, x).sum().backward()
        with torch.no_grad():
            scores(layer, x)
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("name", CONFIGS)
def test_training_step_replays_in_a_cuda_graph(name):
    """A training step captured once in a CUDA graph gives, replayed on new X, the eager step's numbers.

    Capture is what ``torch.compile(mode="reduce-overhead")`` and hand-written ``torch.cuda.graph`` do to
    remove the host's per-kernel cost: the step must make no host synchronisation, allocate nothing that
    depends on the data, and keep no per-call state on the host (hashes, caches) that a replay would skip.
    """
    layer = make(name, dtype=torch.float32).cuda()
    ref_layer = copy.deepcopy(layer)
    x = torch.randn(4, F_IN, 5, 5, device="cuda", requires_grad=True)
    leaves = [x, *layer.parameters()]

    def step():
        return scores(layer, x).sum()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture: lazy initialisation, cuBLAS workspaces
        for _ in range(3):
            for t in leaves:
                t.grad = None
            step().backward()
    torch.cuda.current_stream().wait_stream(side)
    for t in leaves:
        t.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = step()
        loss.backward()
    for seed in (1, 2):  # new data in the captured input, as a training loop copies each batch in
        new = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)).cuda()
        with torch.no_grad():
            x.copy_(new)
        graph.replay()
        torch.cuda.synchronize()
        x_ref = new.clone().requires_grad_()
        ref_scores = scores(ref_layer, x_ref)
        ref_loss = ref_scores.sum()
        ref_loss.backward()
        scale = ref_scores.abs().sum().item() + 1
        assert_close(loss, ref_loss, terms=400, scale=scale, dtype=torch.float32, label=f"{name} loss, replay {seed}")
        terms = 400 * _signed_sqrt_condition(name, ref_layer, new.double())
        got = [x.grad, *(p.grad for p in layer.parameters())]
        ref = [x_ref.grad, *(p.grad for p in ref_layer.parameters())]
        for i, (g, r) in enumerate(zip(got, ref, strict=True)):
            assert (g is None) == (r is None), (name, i)
            if r is not None:
                label = f"{name} gradient {i}, replay {seed}"
                assert_close(g, r, terms=terms, scale=r.abs().max().item() + 1, dtype=torch.float32, label=label)
        for p in ref_layer.parameters():
            p.grad = None


def _peak_extra(fn, x):
    """Peak device memory allocated during fn(), beyond what was allocated before it, in units of X."""
    fn()  # warm-up: cuBLAS workspaces and the like are allocated once and kept
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / (x.numel() * x.element_size())


@pytest.mark.parametrize("nchw", [False, True])
def test_attentional_training_step_holds_one_dx(nchw):
    """rank-1 and rank-P forward+backward: ∂X (1 X) plus maps of size (B, n, P), nothing of X's size saved."""
    f, k, p = 512, 100, 4
    shape = (16, f, 14, 14) if nchw else (16, 196, f)
    x = torch.randn(*shape, device="cuda", requires_grad=True)
    a, b = torch.randn(f, k, device="cuda", requires_grad=True), torch.randn(f, device="cuda", requires_grad=True)
    A, B = torch.randn(f, k, p, device="cuda", requires_grad=True), torch.randn(f, p, device="cuda", requires_grad=True)

    def step(call):
        def run():
            x.grad = a.grad = b.grad = A.grad = B.grad = None
            call().sum().backward()

        return run

    for label, call in {"rank1": lambda: lp.rank1_pool(x, a, b), "rankp": lambda: lp.rankp_pool(x, A, B)}.items():
        extra = _peak_extra(step(call), x)
        assert extra < 1.2, f"{label}: peak device memory of a training step beyond the inputs: {extra:.2f} X"


@pytest.mark.parametrize("head", ["cp", "tucker"])
def test_factorized_training_step_on_nchw_makes_no_copy_of_x(head):
    f, r = 512, 32
    x = torch.randn(16, f, 14, 14, device="cuda", requires_grad=True)
    layer = (CPPool(f, 10, r) if head == "cp" else TuckerPool(f, 10, r)).cuda()

    def run():
        x.grad = None
        layer.zero_grad(set_to_none=True)
        layer(x).sum().backward()

    extra = _peak_extra(run, x)
    assert extra < 1.7, f"{head}: peak device memory of a training step beyond the inputs: {extra:.2f} X"


# torch's inductor imports modules that use the deprecated torch.jit.script_method (torch 2.11), and dynamo
# instantiates autograd.Function classes while tracing them (torch 2.13): warnings about torch, not this package
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:TensorFloat32 tensor cores:UserWarning")  # float32 is kept: TF32 stays off
@pytest.mark.filterwarnings("ignore:Torchinductor does not support code generation for complex:UserWarning")  # FFT
@pytest.mark.parametrize(
    "name", ["attn1", "attn3_softmax", "attn2_perclass_relu", "cp", "tucker", "eig", "bilinear", "compact", "pose"]
)
def test_inductor_compiles_the_heads_on_cuda(name):
    """torch.compile with the default backend (inductor, Triton kernels) and no graph break: same numbers."""
    torch._dynamo.reset()
    layer = make(name, dtype=torch.float32).cuda()
    compiled = torch.compile(layer, fullgraph=True)
    x = torch.randn(4, F_IN, 6, 6, device="cuda")
    xs = [x.clone().requires_grad_() for _ in range(2)]
    got, ref = scores(compiled, xs[0]), scores(layer, xs[1])
    assert_close(got, ref, terms=64, scale=ref.abs().max().item() + 1, dtype=torch.float32, label=name)
    got.sum().backward()
    ref.sum().backward()
    assert_close(xs[0].grad, xs[1].grad, terms=64, scale=xs[1].grad.abs().max().item() + 1, dtype=torch.float32)


def test_compact_sketch_is_reproducible_under_deterministic_algorithms():
    x = torch.randn(8, 64, 7, 7, device="cuda", requires_grad=True)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(2):
            x.grad = None
            psi = lp.compact_bilinear_pool(x, 512, seed=3)
            psi.square().sum().backward()
            runs.append((psi.detach().clone(), x.grad.clone()))
    finally:
        torch.use_deterministic_algorithms(was)
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    ref = lp.compact_bilinear_pool(x.detach().cpu().double(), 512, seed=3)
    assert_close(runs[0][0], ref, terms=64 * 49, scale=ref.abs().max().item() + 1, dtype=torch.float32)
