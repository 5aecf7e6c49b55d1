"""``segbench [overrides]`` (or ``python -m segbench``): compose the config and call :func:`segbench.train.run`."""
from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from segbench.runs.naming import register_resolvers
from segbench.errors import SegbenchError, report

log = logging.getLogger("segbench")
register_resolvers()  # before Hydra resolves hydra.sweep.subdir


def register_sweeper() -> None:
    """Register segbench's Optuna sweeper with Hydra. Hydra finds plugins by listing the ``hydra_plugins``
    package's folders, which misses one installed in editable mode (``pip install -e``); registering the
    class (it imports no Optuna) works for every kind of install."""
    from hydra.core.plugins import Plugins
    from hydra_plugins.segbench_search.sweeper import OptunaSweeper

    Plugins.instance().register(OptunaSweeper)


register_sweeper()


@hydra.main(version_base="1.3", config_path="pkg://segbench.conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Returns the monitored val value of the best epoch (``trainer.monitor``, val IoU by default):
    what a Hydra sweeper optimises.

    In a multirun, a failed job is logged and recorded (``metrics.json`` status
    ``failed``) and the sweep goes on; the report callback lists it at the end.
    """
    from segbench.train import run  # imported here so `--help` stays fast

    from segbench.signals import Stopped

    try:
        metrics = run(cfg)
    except Stopped as exc:  # SIGTERM, SIGUSR1/2: run() saved the state and logged how to resume
        print(f"segbench: stopped by {exc.name}", file=sys.stderr)
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
    monitored = metrics.get("monitor") or {"value": metrics["val/iou"]}  # a run finished before 0.2 has no record
    return float(monitored["value"])


# options that need an optional extra: (option, module, package, extra)
OPTIONAL = [("hparams_search=optuna", "optuna", "optuna", "search")]


def moved_override(key: str, value: str) -> str | None:
    """What to write instead of ``key=value`` when ``key`` moved to the ``callbacks`` group in 0.2
    (:data:`segbench.config.MOVED_CALLBACKS`), else None."""
    from segbench.config import MOVED_CALLBACKS

    group, _, rest = key.partition(".")
    name, _, argument = rest.partition(".")
    if group != "trainer" or name not in MOVED_CALLBACKS:
        return None
    arguments = list(MOVED_CALLBACKS[name][1])
    if argument and (len(arguments) == 1 or argument not in arguments):
        return None  # not a key segbench had
    if value.lower() == "null":
        return "leave out callbacks=... (the callbacks are off by default)"
    if len(arguments) > 1 and not argument:  # trainer.early_stop={...}: one override per argument
        return f"callbacks={name} " + " ".join(f"callbacks.{name}.{a}=..." for a in arguments)
    return f"callbacks={name} callbacks.{name}.{argument or arguments[0]}={value or '...'}"


def moved_keys(args: list[str]) -> None:
    """A command line with a key that moved to the ``callbacks`` group (``trainer.ema=0.99``) fails with
    the override to write instead (Hydra would only say that the key is not in the config)."""
    for arg in args:
        key, _, value = arg.lstrip("+~").partition("=")
        new = moved_override(key, value)
        if new is not None:
            raise SegbenchError(f"'{arg}': {key} moved to the callbacks config group in segbench 0.2; write {new} "
                                "(several at once: callbacks=[ema,early_stop,grad_clip])")


def cli(argv: list[str] | None = None) -> None:
    """The ``segbench`` command: checks for keys that moved and that an option needing an optional extra
    has its package (Hydra would only say that it cannot find a config), then runs :func:`main`."""
    from segbench.extras import require

    args = sys.argv[1:] if argv is None else argv
    try:
        moved_keys(args)
        for option, module, package, extra in OPTIONAL:
            if option in args:
                require(module, package, extra, option)
    except SegbenchError as exc:
        raise SystemExit(report("segbench", exc)) from None
    main()


if __name__ == "__main__":
    cli()
