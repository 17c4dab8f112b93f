"""The layers under DistributedDataParallel: 2 gloo processes on the CPU equal one process on the whole batch."""

from __future__ import annotations

import os
import sys

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

from lowrank_pool.nn import (  # noqa: E402
    AttentionalPool,
    BilinearPool,
    CPPool,
    EigPool,
    FirstOrderPool,
    PoseAttentionalPool,
    TuckerPool,
)
from lowrank_pool.testing import assert_close  # noqa: E402

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is not available"
)


class _Heads(torch.nn.Module):
    """Every head, logits summed, so that one DDP forward covers all of them."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.heads = torch.nn.ModuleList(
            [
                AttentionalPool(6, 4, 2, attention="softmax", generator=g, dtype=torch.float64),
                CPPool(6, 4, 3, generator=g, dtype=torch.float64),
                BilinearPool(6, 4, reduce_dim=3, generator=g, dtype=torch.float64),
                TuckerPool(6, 4, (2, 3, 3), generator=g, dtype=torch.float64),
                EigPool(6, 4, 2, generator=g, dtype=torch.float64),
                FirstOrderPool(6, 4, generator=g, dtype=torch.float64),
                PoseAttentionalPool(6, 4, num_keypoints=2, hidden=3, generator=g, dtype=torch.float64),
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [h(x) for h in self.heads]
        return sum(o.scores if hasattr(o, "scores") else o for o in outs)  # type: ignore[return-value]


def _model() -> torch.nn.Module:
    return _Heads()


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 6, 3, 3, generator=g, dtype=torch.float64), torch.randint(0, 4, (8,), generator=g)


def _step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    params = {f"param:{n}": p.detach().clone() for n, p in model.named_parameters()}
    return {**grads, **params}


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model = torch.nn.parallel.DistributedDataParallel(_model())
    x, y = _data()
    shard = slice(rank * 4, (rank + 1) * 4)
    result = _step(model, x[shard], y[shard])
    torch.save({k.replace("module.", ""): v for k, v in result.items()}, os.path.join(out_dir, f"rank{rank}.pt"))
    # Tear down in an order gloo survives on a loaded 2-core machine: no rank closes its pairs while the
    # other still talks (barrier), the reducer lets go of the group before it is destroyed, and the
    # interpreter's own finalisation (where gloo worker threads can abort the process) is skipped.
    dist.barrier()
    del model
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@pytest.mark.skipif(sys.platform == "win32", reason="file:// rendezvous and fork are POSIX here")
def test_ddp_two_processes_equal_one_process_on_the_whole_batch(tmp_path):
    import torch.multiprocessing as mp

    mp.start_processes(
        _worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True, start_method="spawn"
    )
    x, y = _data()
    expected = _step(_model(), x, y)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert set(got) == set(expected)
        for name, value in expected.items():
            # a gradient sums 8 samples · 9 positions of f² = 36-term products over 4 classes (both runs round;
            # the all-reduce adds one step): compared normwise, tensor by tensor
            assert_close(got[name], value, terms=4 * (8 * 9 + 36 + 4 + 1), scale="max", label=f"rank {rank}: {name}")
