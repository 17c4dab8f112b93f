"""A short tour: scores and attention maps from numpy and (if installed) torch.

Run with ``python -m lowrank_pool.demo`` (``make demo``); ``--batch``, ``--positions``,
``--channels``, ``--classes`` and ``--seed`` change the problem size.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np

import lowrank_pool as lp


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lowrank_pool.demo", description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--positions", type=int, default=196, help="n = H·W of the feature map (14x14 = 196)")
    p.add_argument("--channels", type=int, default=512)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    B, n, f, K = args.batch, args.positions, args.channels, args.classes

    rng = np.random.default_rng(args.seed)
    X = rng.random((B, n, f), dtype=np.float32)  # (B, n, f): e.g. a batch of 14x14 maps
    A = (rng.standard_normal((f, K)) / np.sqrt(f)).astype(np.float32)  # top-down a_k, one per class
    b = (rng.standard_normal(f) / np.sqrt(f)).astype(np.float32)  # the shared bottom-up b

    lp.rank1_pool(X, A, b)  # warm-up (BLAS threads)
    t0 = time.perf_counter()
    scores = lp.rank1_pool(X, A, b)
    t1 = time.perf_counter()
    top_down, bottom_up = lp.attention_maps(X, A, b)
    print(f"lowrank_pool {lp.__version__}: X {X.shape} float32, {K} classes")
    print(f"numpy  rank1_pool -> {scores.shape} in {1e3 * (t1 - t0):.2f} ms; maps {top_down.shape}, {bottom_up.shape}")
    inner = (top_down * bottom_up[..., None]).mean(1)
    print(
        f"       max |(Xa_k)ᵀ(Xb)/n - score| / max|score| = {np.abs(inner - scores).max() / np.abs(scores).max():.1e}"
    )
    print(f"       sample 0, top-5 classes: {np.argsort(-scores[0])[:5].tolist()}")
    print(f"       first-order (mean) scores[0, :3] = {np.array2string(lp.first_order_pool(X, A)[0, :3], precision=2)}")

    try:
        import torch
    except ImportError:
        print("torch  not installed (pip install 'lowrank_pool[torch]')")
        return 0
    Xt = torch.from_numpy(X).requires_grad_()
    At, bt = torch.from_numpy(A).requires_grad_(), torch.from_numpy(b).requires_grad_()
    st = lp.rank1_pool(Xt, At, bt)
    st.sum().backward()
    diff = (st.detach() - torch.from_numpy(scores)).abs().max().item() / float(np.abs(scores).max())
    print(f"torch  rank1_pool -> {tuple(st.shape)} {st.dtype}, max rel. diff to numpy {diff:.1e}")
    grad_shapes = [tuple(t.grad.shape) for t in (Xt, At, bt) if t.grad is not None]
    print(f"       differentiable: grads of X, A, b have shapes {grad_shapes}")
    nchw = Xt.detach().transpose(1, 2).reshape(B, f, 14, n // 14) if n % 14 == 0 else None
    if nchw is not None:
        same = torch.allclose(lp.rank1_pool(nchw, At, bt), st, rtol=1e-4, atol=1e-4)
        print(f"       NCHW input {tuple(nchw.shape)} (read channels-first by default) gives the same scores: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
