"""Data-parallel training on torch.distributed: one run over several processes (``trainer.devices=N``,
``torchrun``, a SLURM job's tasks), each rank with its part of every batch.

What each rank does, and why the run equals a one-process run with the same global batch:

- every rank holds the whole split and draws the same batch order (same seed); a batch's cases are cut
  into one contiguous part per rank, and each rank's loss is weighted by its part's share of the batch,
  so that DDP's mean of the gradients is the gradient of the whole batch's mean loss;
- augmentation is drawn on the whole batch, from the same RNG on every rank, before it is cut: each case
  gets the augmentation a one-process run gives it, whatever the number of ranks;
- BatchNorm layers are synchronised (their batch statistics are the whole batch's): torch's
  SyncBatchNorm on a GPU, :class:`CpuSyncBatchNorm` on the CPU (gloo), where torch has none;
- validation and test predictions are computed on one part of the cases per rank and gathered, and
  every rank scores all of them: every history row, threshold, best epoch and stop decision is the
  same on every rank, and equal to a one-process run's;
- a stop (a signal to any rank, early stopping, a pruned trial) is all-reduced at the epoch boundary,
  so every rank stops after the same epoch;
- rank 0 alone writes the run dir and logs to train.log.
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import UserError

log = logging.getLogger(__name__)

TIMEOUT_S = int(os.environ.get("SEGBENCH_DIST_TIMEOUT_S", "600"))  # a collective that waits longer fails


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def env_world() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from the environment torchrun (or segbench's own workers) set, or from
    a SLURM job's tasks (``SLURM_NTASKS`` > 1, launched by srun); None for one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0"))
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        return int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"]), int(os.environ["SLURM_LOCALID"])
    if int(os.environ.get("SUBMITIT_LOCAL_NTASKS", "1")) > 1 and "SUBMITIT_LOCAL_GLOBALID" in os.environ:
        # submitit's local executor (hydra/launcher=slurm_local hydra.launcher.tasks_per_node=N): SLURM's tasks here
        return (int(os.environ["SUBMITIT_LOCAL_GLOBALID"]), int(os.environ["SUBMITIT_LOCAL_NTASKS"]),
                int(os.environ["SUBMITIT_LOCAL_LOCALID"]))
    return None


def backend_for(device_type: str) -> str:
    return "nccl" if device_type == "cuda" else "gloo"


def join(device_type: str) -> World:
    """Join the process group of the ranks that the environment names (once per process) and make it the
    current World; one process: ``World()``."""
    found = env_world()
    if found is None:
        set_current(World())
        return _world
    rank, size, local = found
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:  # srun tasks: the first node's address and a port from the job id
            _slurm_rendezvous()
        backend = "cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=size,
                                timeout=datetime.timedelta(seconds=TIMEOUT_S))
    set_current(World(rank, size, local, backend_for(device_type)))
    return _world


def local_size() -> int:
    """How many ranks share this machine (its cores are divided among them)."""
    if not _world.distributed:
        return 1
    return int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]
               or _world.size)


def gpus_for_ranks(ranks: int, device: str, job_slot: int = 0, count: int | None = None) -> list[int] | None:
    """The GPU of each of ``ranks`` spawned ranks (``trainer.devices``), None where the run is not on CUDA.

    Job ``job_slot`` of the sweep jobs that run at once on this machine (joblib's ``n_jobs``) takes the GPUs
    ``job_slot*ranks ...``, wrapping round where the jobs need more than the machine has (they then share
    GPUs). ``trainer.device=cuda:K`` starts at GPU K. More ranks than GPUs is refused, naming both."""
    if device.startswith(("cpu", "mps")) or (count is None and not torch.cuda.is_available()):
        return None
    count = torch.cuda.device_count() if count is None else count
    if ranks > count:
        raise UserError(f"trainer.devices={ranks} but this machine has {count} CUDA device(s): one rank per GPU; "
                        f"use trainer.devices={count} or fewer (or trainer.device=cpu for gloo ranks on the CPU)")
    start = int(device.split(":", 1)[1]) if device.startswith("cuda:") else job_slot * ranks
    if start + ranks > count and device.startswith("cuda:"):
        raise UserError(f"trainer.device={device} with trainer.devices={ranks} needs GPUs {start}..{start + ranks - 1}"
                        f" but this machine has {count}")
    return [(start + r) % count for r in range(ranks)]


def rank_gpu(local_rank: int) -> int:
    """This rank's GPU: the one ``trainer.devices`` gave it, else its local rank (torchrun, srun), or the
    only one a task sees; one that is not there is refused before any work."""
    gpu = int(os.environ.get("SEGBENCH_RANK_GPU", local_rank))
    count = torch.cuda.device_count()
    if gpu >= count and count == 1 and "SEGBENCH_RANK_GPU" not in os.environ:
        return 0  # a task that sees one GPU (SLURM's --gpus-per-task=1 or --gpu-bind): its own
    if gpu >= count:
        raise UserError(f"rank with LOCAL_RANK={local_rank} would use GPU {gpu} but this machine has {count} CUDA "
                        "device(s): start at most one rank per GPU (torchrun --nproc-per-node, SLURM "
                        "--ntasks-per-node / --gpus-per-node)")
    return gpu


def quiet_logging() -> None:
    """A rank other than 0: nothing to train.log (rank 0 writes it), warnings and errors on the console."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()
    logging.getLogger("segbench").setLevel(logging.WARNING)


def check_batches(cases: int, batch_size: int) -> None:
    """Every batch must give every rank at least one case."""
    size = _world.size
    last = cases % batch_size
    if size > 1 and (batch_size < size or 0 < last < size):
        raise UserError(f"trainer.batch_size={batch_size} over {cases} training cases leaves a batch of "
                        f"{last or batch_size} cases for {size} ranks (trainer.devices or the world size); every "
                        "batch needs at least one case per rank: choose a batch size whose last batch is that large")


def agree_on_start() -> None:
    """Every rank of a launch that started its ranks itself (torchrun, srun) reads rank 0's start time
    (``SEGBENCH_STARTED``): the default run dir, named by the time, is then one dir for all of them.
    Joins the process group early for that (:func:`join` keeps it)."""
    from ..runs.naming import STARTED_ENV

    found = env_world()
    if found is None or STARTED_ENV in os.environ:
        return
    rank, size, _ = found
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            _slurm_rendezvous()
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=size, timeout=datetime.timedelta(seconds=TIMEOUT_S))
    box = [datetime.datetime.now().isoformat()]
    dist.broadcast_object_list(box, src=0)
    os.environ[STARTED_ENV] = box[0]


def _slurm_rendezvous() -> None:
    """Where the tasks of a SLURM job (or of submitit's local stand-in) find rank 0: the job's first node,
    a port from the job id."""
    import subprocess

    if "SUBMITIT_LOCAL_JOB_ID" in os.environ and "SLURM_JOB_NODELIST" not in os.environ:
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ.setdefault("MASTER_PORT", str(20000 + int(os.environ["SUBMITIT_LOCAL_JOB_ID"]) % 20000))
        return

    nodes = subprocess.run(["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]], check=True,
                           capture_output=True, text=True).stdout.split()
    os.environ["MASTER_ADDR"] = nodes[0]
    os.environ.setdefault("MASTER_PORT", str(20000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 20000))


_world = World()


def current() -> World:
    return _world


def set_current(world: World) -> None:
    global _world
    _world = world


def sum_(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over the ranks (a copy; itself with one process)."""
    if not _world.distributed:
        return values
    out = values.detach().clone()
    dist.all_reduce(out)
    return out


def maximum(value: int) -> int:
    """The largest of the ranks' ``value`` (a stop flag, a signal number)."""
    if not _world.distributed:
        return value
    t = torch.tensor([value], dtype=torch.long)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def broadcast(obj):
    """Rank 0's ``obj`` on every rank."""
    if not _world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if _world.distributed:
        dist.barrier()


def shard(n: int) -> slice:
    """This rank's contiguous part of ``n`` cases (the first ``n % size`` ranks get one more)."""
    size, rank = _world.size, _world.rank
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def gather_cat(part: torch.Tensor, n: int) -> torch.Tensor:
    """Every rank's part (of :func:`shard`) of ``n`` cases, concatenated in case order, on every rank."""
    if not _world.distributed:
        return part
    size = _world.size
    longest = -(-n // size)
    padded = torch.zeros((longest, *part.shape[1:]), dtype=part.dtype)
    padded[: part.shape[0]] = part
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded)
    lengths = [shard_len(n, r) for r in range(size)]
    return torch.cat([p[:k] for p, k in zip(parts, lengths)])


def shard_len(n: int, rank: int) -> int:
    base, extra = divmod(n, _world.size)
    return base + (rank < extra)


# -- synchronised BatchNorm on the CPU -------------------------------------------------------------------
class _SyncBatchNormFn(torch.autograd.Function):
    """Batch norm with the statistics of every rank's part of the batch (two passes: the mean, then the
    variance about it), and the matching backward (the sums of the upstream gradients all-reduced)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        dims = [0, *range(2, x.dim())]
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype)
        stats = torch.cat([x.sum(dims), count])
        dist.all_reduce(stats)
        total = stats[-1]
        mean = stats[:-1] / total
        shape = [1, -1, *([1] * (x.dim() - 2))]
        centred = x - mean.view(shape)
        var = (centred * centred).sum(dims)
        dist.all_reduce(var)
        var = var / total
        invstd = torch.rsqrt(var + eps)
        xhat = centred * invstd.view(shape)
        ctx.save_for_backward(xhat, weight, invstd, total)
        ctx.dims, ctx.shape = dims, shape
        out = xhat * weight.view(shape) + bias.view(shape) if weight is not None else xhat
        unbiased = var * total / torch.clamp(total - 1, min=1)
        ctx.mark_non_differentiable(mean, unbiased)
        return out, mean, unbiased

    @staticmethod
    def backward(ctx, grad_out, _mean, _var):
        xhat, weight, invstd, total = ctx.saved_tensors
        dims, shape = ctx.dims, ctx.shape
        grad_weight = (grad_out * xhat).sum(dims) if weight is not None else None
        grad_bias = grad_out.sum(dims) if weight is not None else None
        dxhat = grad_out * weight.view(shape) if weight is not None else grad_out
        sums = torch.cat([dxhat.sum(dims), (dxhat * xhat).sum(dims)])
        dist.all_reduce(sums)
        c = xhat.shape[1]
        mean_dxhat, mean_dxhat_xhat = (sums[:c] / total).view(shape), (sums[c:] / total).view(shape)
        grad_x = invstd.view(shape) * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat)
        return grad_x, grad_weight, grad_bias, None


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """``nn.BatchNorm*d`` whose training-mode statistics are those of the whole batch over the ranks
    (gloo); the same parameters and buffers (a checkpoint loads into either)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        out, mean, var = _SyncBatchNormFn.apply(x, self.weight, self.bias, self.eps)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(var.detach(), alpha=momentum)
        return out


def sync_batchnorm(module: nn.Module, device_type: str) -> nn.Module:
    """``module`` with every BatchNorm synchronised over the ranks (torch's on a GPU, ours on the CPU)."""
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in list(module.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, CpuSyncBatchNorm):
            synced = CpuSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                      child.track_running_stats)
            if child.affine:  # the same Parameter objects: an optimizer built on the model still steps them
                synced.weight, synced.bias = child.weight, child.bias
            synced.running_mean, synced.running_var = child.running_mean, child.running_var
            synced.num_batches_tracked = child.num_batches_tracked
            synced.train(child.training)
            setattr(module, name, synced)
        else:
            sync_batchnorm(child, device_type)
    return module
