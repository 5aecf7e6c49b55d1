"""``trainer.devices=N``: the ranks of one data-parallel run started on this machine (torch.multiprocessing,
spawned), one per GPU or, on the CPU, gloo ranks sharing the cores. The process that Hydra started waits
for them: it passes on a stop signal (SIGTERM, SIGHUP, SIGUSR1/2: every rank then stops after the same
epoch), and when a rank fails or is killed it ends the others (torch does, within a collective's wait:
gloo sees the dead peer at once) and records the run as failed, naming the rank.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from typing import Any, Callable, Iterator

import torch.multiprocessing as mp
from omegaconf import DictConfig, OmegaConf

from ..errors import TrainingError
from .signals import Stopped

log = logging.getLogger("segbench.train")

FORWARDED = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2") if hasattr(signal, n))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(cfg: DictConfig, ranks: int, train: Callable[[DictConfig], Any],
          gpus: list[int] | None = None) -> dict[str, Any]:
    """``train(cfg)`` (segbench.train.run) on ``ranks`` processes of this machine; rank 0's metrics.
    ``gpus``: the GPU of each rank (:func:`segbench.engine.distributed.gpus_for_ranks`), None on the CPU."""
    from hydra.core.hydra_config import HydraConfig

    from ..runs import RunDir

    resolved = OmegaConf.to_container(cfg, resolve=True)
    hydra = _hydra_record() if HydraConfig.initialized() else None
    run_dir = RunDir(cfg.output_dir)
    log.info("trainer.devices=%d: starting %d ranks of one data-parallel run in %s", ranks, ranks, run_dir.path)
    with _standard_start_method():
        context = mp.start_processes(_rank, args=(ranks, _free_port(), resolved, hydra, train, gpus), nprocs=ranks,
                                     join=False, start_method="spawn")
    received: list[int] = []

    def pass_on(signum: int, frame: Any) -> None:  # every rank gets it; they stop after the same epoch
        received.append(signum)
        for process in context.processes:
            if process.is_alive():
                os.kill(process.pid, signum)

    previous = {s: signal.signal(s, pass_on) for s in FORWARDED}
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, lambda s, f: received.append(s))  # the ranks get Ctrl-C
    try:                                                                                        # from the terminal
        while not context.join(timeout=1):
            pass
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
        _ended(exc, run_dir)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return run_dir.read_metrics()


@contextlib.contextmanager
def _standard_start_method() -> Iterator[None]:
    """A joblib (loky) worker sets multiprocessing's start method to ``loky``, which a spawned process
    cannot find when it starts: the ranks are told ``spawn`` while they start, and the worker's is restored."""
    import multiprocessing

    current = multiprocessing.get_start_method(allow_none=True)
    if current is None or current in multiprocessing.get_all_start_methods():
        yield
        return
    multiprocessing.set_start_method("spawn", force=True)
    try:
        yield
    finally:
        multiprocessing.set_start_method(current, force=True)


def _hydra_record() -> dict:
    """Hydra's record of this launch (hydra.job.num, the sweep dir, the launcher...) as plain data: its
    structured nodes hold classes of Hydra's plugins, which a spawned process does not import the same way."""
    from hydra.core.hydra_config import HydraConfig

    node = HydraConfig.get()
    try:
        return OmegaConf.to_container(node, resolve=True)
    except Exception:  # noqa: BLE001 - an interpolation that only the job resolves: keep it for the rank
        return OmegaConf.to_container(node, resolve=False)


def _ended(exc: Exception, run_dir: Any) -> None:
    """A rank that raised or exited: a stopped run (every rank interrupted by a signal) is a Stopped here
    too; anything else is the run's failure, named by its first failing rank."""
    record = run_dir.read_metrics() if run_dir.metrics_json.is_file() else {}
    if record.get("status") == "interrupted" and record.get("signal"):
        raise Stopped(getattr(signal, record["signal"]))
    if isinstance(exc, mp.ProcessRaisedException):
        lines = [line for line in str(exc.msg).strip().splitlines() if line.strip()]
        reason = lines[-1] if lines else "an error"
        log.error("rank %d raised:\n%s", exc.error_index, str(exc.msg).strip())
    else:
        code = exc.exit_code
        reason = (f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}")
    error = f"rank {exc.error_index} failed: {reason}"
    run_dir.write_metrics({"status": "failed", "error": error})
    raise TrainingError(f"the data-parallel run in {run_dir.path} failed: {error}; the other ranks were stopped. "
                        "The same command continues it from its last finished epoch")


def _rank(rank: int, ranks: int, port: int, resolved: dict, hydra: dict | None,
          train: Callable[[DictConfig], Any], gpus: list[int] | None = None) -> None:
    """One rank (a spawned process): the run's config and Hydra's record of the launch, then ``run``."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(ranks), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(ranks),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if gpus is not None:
        os.environ["SEGBENCH_RANK_GPU"] = str(gpus[rank])
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s", stream=sys.stderr)
    if hydra is not None:
        from hydra.conf import HydraConf
        from hydra.core.hydra_config import HydraConfig
        from hydra.core.utils import setup_globals

        setup_globals()
        base = OmegaConf.structured(HydraConf)
        OmegaConf.set_struct(base, False)  # the launcher's and sweeper's keys are not HydraConf's
        HydraConfig.instance().set_config(OmegaConf.create({"hydra": OmegaConf.merge(base, hydra)}))
    try:
        train(OmegaConf.create(resolved))
    except Stopped as stopped:
        sys.exit(stopped.exit_status)
