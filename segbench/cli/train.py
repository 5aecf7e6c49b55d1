"""``segbench train [overrides]`` (``segbench [overrides]``, ``python -m segbench``): compose the config with
Hydra and call :func:`segbench.train.run`; ``--help`` lists the config groups and their options."""
from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from ..compat import monitor_of, moved_keys
from ..errors import SegbenchError, command, report, require
from ..runs.naming import register_resolvers

log = logging.getLogger("segbench")
register_resolvers()  # before Hydra resolves hydra.sweep.subdir


def register_plugins() -> None:
    """Register segbench's Optuna sweeper and its local SLURM stand-in with Hydra. Hydra finds plugins by
    listing the ``hydra_plugins`` package's folders, which misses one installed in editable mode (``pip
    install -e``); registering the classes (they import neither Optuna nor submitit) works for every install."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.segbench_cluster.launcher import SlurmLocalLauncher
    from hydra_plugins.segbench_search.sweeper import OptunaSweeper

    Plugins.instance().register(OptunaSweeper)
    Plugins.instance().register(SlurmLocalLauncher)


register_plugins()


@hydra.main(version_base="1.3", config_path="pkg://segbench.conf", config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    """Returns the monitored val value of the best epoch (``trainer.monitor``, val IoU by default):
    what a Hydra sweeper optimises.

    In a multirun, a failed job is logged and recorded (``metrics.json`` status
    ``failed``) and the sweep goes on; the report callback lists it at the end.
    """
    from segbench.engine.signals import Stopped, exit_after_stop
    from segbench.train import run  # imported here so `--help` stays fast

    try:
        metrics = run(cfg)
    except Stopped as exc:  # Ctrl-C, SIGTERM, SIGHUP, SIGUSR1/2: run() saved the state and logged how to resume
        print(f"segbench: stopped by {exc.name}", file=sys.stderr)
        exit_after_stop(exc)  # a further signal (or one during the stop) only hurries the exit
        raise SystemExit(exc.exit_status) from None
    except KeyboardInterrupt:  # run() has logged where the last epoch is and how to resume
        print("segbench: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as exc:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            log.error("job failed: %s: %s", type(exc).__name__, exc, exc_info=not isinstance(exc, SegbenchError))
            return None
        if isinstance(exc, SegbenchError):
            log.error("%s", exc)
            raise SystemExit(report("segbench", exc)) from None
        raise
    return float(monitor_of(metrics)["value"])  # a run finished before 0.2 recorded no monitor


# options that need an optional extra: (option, module, package, extra)
OPTIONAL = [("hparams_search=optuna", "optuna", "optuna", "search")]


@command("segbench")
def main(argv: list[str] | None = None) -> int:
    """Checks for keys that moved and that an option needing an optional extra has its package (Hydra
    would only say that it cannot find a config), then runs the Hydra app :func:`hydra_main` on ``argv``
    (Hydra reads its arguments from ``sys.argv``; it exits with its own status)."""
    args = list(sys.argv[1:] if argv is None else argv)
    moved_keys(args)
    for option, module, package, extra in OPTIONAL:
        if option in args:
            require(module, package, extra, option)
    sys.argv[1:] = args
    if "--help" not in args and "-h" not in args:
        from ..engine.distributed import agree_on_start

        agree_on_start()  # the ranks of torchrun / srun name one run dir
    hydra_main()
    return 0
