"""Data-parallel pieces (engine/distributed.py) in 2 real gloo processes: the CPU's synchronised BatchNorm
against torch's BatchNorm on the whole batch, and the shards, gathers and reductions."""
import os

import torch
import torch.multiprocessing as mp

from tests.conftest import free_port


def _batchnorm_worker(rank, port, results):
    import torch.distributed as dist

    from segbench.engine import distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    distributed.set_current(distributed.World(rank, 2, rank, "gloo"))
    torch.manual_seed(0)
    x, w = torch.randn(5, 3, 4, 4) * 3 + 1, torch.randn(5, 3, 4, 4)
    bn = torch.nn.Sequential(torch.nn.BatchNorm2d(3, momentum=0.3))
    with torch.no_grad():
        bn[0].weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
        bn[0].bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    synced = distributed.sync_batchnorm(bn, "cpu")
    part = distributed.shard(5)  # rank 0: cases 0-2, rank 1: 3-4
    xp = x[part].clone().requires_grad_(True)
    (synced(xp) * w[part]).sum().backward()
    gathered = distributed.gather_cat(xp.grad, 5)
    weight_grad = distributed.sum_(synced[0].weight.grad)
    results[rank] = {"grad": gathered, "weight_grad": weight_grad, "running_var": synced[0].running_var.clone(),
                     "running_mean": synced[0].running_mean.clone(), "max": distributed.maximum(rank * 7),
                     "broadcast": distributed.broadcast(f"from {rank}"), "type": type(synced[0]).__name__}
    dist.destroy_process_group()


def test_cpu_sync_batchnorm_equals_batchnorm_on_the_whole_batch():
    results = mp.Manager().dict()
    mp.spawn(_batchnorm_worker, args=(free_port(), results), nprocs=2)
    torch.manual_seed(0)
    x, w = (torch.randn(5, 3, 4, 4) * 3 + 1).requires_grad_(True), torch.randn(5, 3, 4, 4)
    bn = torch.nn.BatchNorm2d(3, momentum=0.3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    (bn(x) * w).sum().backward()
    for rank in (0, 1):
        got = results[rank]
        assert got["type"] == "CpuSyncBatchNorm"
        torch.testing.assert_close(got["grad"], x.grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got["weight_grad"], bn.weight.grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got["running_mean"], bn.running_mean)
        torch.testing.assert_close(got["running_var"], bn.running_var)
        assert got["max"] == 7 and got["broadcast"] == "from 0"


def test_one_process_is_untouched():
    from segbench.engine import distributed

    assert distributed.current().size == 1 and distributed.shard(5) == slice(0, 5)
    t = torch.arange(3.0)
    assert distributed.sum_(t) is t and distributed.gather_cat(t, 3) is t and distributed.maximum(4) == 4


def test_spawned_ranks_get_their_own_gpus_and_too_many_are_refused():
    import pytest

    from segbench.engine.distributed import gpus_for_ranks
    from segbench.errors import UserError

    assert gpus_for_ranks(4, "auto", count=8) == [0, 1, 2, 3]
    assert gpus_for_ranks(4, "cuda", job_slot=1, count=8) == [4, 5, 6, 7]  # the second job of a joblib sweep
    assert gpus_for_ranks(2, "auto", job_slot=3, count=4) == [2, 3]  # 6, 7 wrap round to 2, 3
    assert gpus_for_ranks(2, "cuda:2", count=4) == [2, 3]
    assert gpus_for_ranks(2, "cpu", count=4) is None
    with pytest.raises(UserError, match=r"trainer.devices=3 but this machine has 2 CUDA device"):
        gpus_for_ranks(3, "auto", count=2)
    with pytest.raises(UserError, match=r"trainer.device=cuda:3 with trainer.devices=2 needs GPUs 3..4"):
        gpus_for_ranks(2, "cuda:3", count=4)
