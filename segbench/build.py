"""Building components from config nodes, with errors a user can act on.

Every component is one YAML with a ``_target_`` (a class or function and its
arguments). A component that rejects its arguments (``ValueError``/``TypeError``,
or :class:`~segbench.validation.InvalidValue`) becomes a :class:`UserError` naming
the config group, e.g. ``model.base_width=0 is invalid; expected an integer >= 1``.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable, Sequence

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from .augment import Augment
from .engine.callbacks import (
    BestTracker,
    Callback,
    Checkpointer,
    EpochLogger,
    HistoryWriter,
    Monitor,
    ProgressBar,
    TimeEstimate,
)
from .engine.loop import val_columns
from .engine.schedule import Schedule
from .errors import DataError, UserError
from .names import DEFAULT_MONITOR, HISTORY_COLUMNS
from .runs import RunDir
from .validation import InvalidValue, check_choice

# Keys of a scheduler config that segbench reads itself (engine.schedule); the rest go to the scheduler.
SCHEDULE_KEYS = ("interval", "monitor")


def _rejected(exc: BaseException, group: str, target: Any) -> UserError | None:
    """The user-facing error for a component that rejected its arguments (None for any other error):
    an InvalidValue under the group's key, other ValueError/TypeError prefixed with the group and target."""
    if isinstance(exc, InvalidValue):
        return exc.under(group)
    if isinstance(exc, (ValueError, TypeError)):
        return UserError(f"{group} ({target}): {exc}")
    return None


def build(node: DictConfig, group: str, **kwargs: Any) -> Any:
    """instantiate() with a user-facing error when the component rejects its arguments."""
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as exc:
        error = _rejected(exc.__cause__, group, node.get("_target_"))
        if error is None:
            raise
        raise error from exc.__cause__


def saved_targets(node: Any) -> list[str]:
    """Every ``_target_`` in a config node (nested ones too), in order."""
    if isinstance(node, (dict, DictConfig)):
        items = node.items() if isinstance(node, dict) else ((k, node[k]) for k in node)
        found = [str(node["_target_"])] if "_target_" in node else []
        return found + [t for k, v in items if k != "_target_" for t in saved_targets(v)]
    if isinstance(node, (list, tuple)):
        return [t for v in node for t in saved_targets(v)]
    return []


def build_saved(node: Any, group: str, base: type, source: str) -> Any:
    """:func:`build` for a config read from a file someone else may have written (a checkpoint, a run or an
    evaluation record): every ``_target_`` in it must name a class derived from ``base`` (``nn.Module`` for
    models and losses, ``SegDataset`` for datasets), so that the file cannot make segbench call anything
    else. Hydra's own blocklist refuses ``os.system`` and the like, but not every callable (``builtins.open``
    is allowed). A refused target is a DataError naming ``source``."""
    for target in saved_targets(node):
        try:
            located = get_class(target)  # imports the module; a function or other non-class is a ValueError
        except Exception as exc:  # noqa: BLE001 - whatever a missing or odd target raises
            raise DataError(f"{source} names the {group} target '{target}', which is not a class segbench can "
                            f"import ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); a saved "
                            f"config builds only {base.__name__} classes") from None
        if not (inspect.isclass(located) and issubclass(located, base)):
            raise DataError(f"{source} names the {group} target '{target}', which is not a {base.__name__} class; "
                            f"a saved config builds only {base.__name__} classes")
    return build(node if isinstance(node, DictConfig) else OmegaConf.create(node), group)


def optimizer_options(make_optimizer: Callable, optimizer_cfg: Any, device: torch.device) -> dict[str, Any]:
    """``{"fused": True}`` on CUDA for an optimizer that has a fused kernel (Adam, AdamW, SGD), unless the
    config sets ``fused`` itself. Nothing elsewhere: fused CPU kernels need torch >= 2.4, and the default keeps
    CPU results identical across torch versions."""
    func = getattr(make_optimizer, "func", make_optimizer)
    if device.type == "cuda" and "fused" in inspect.signature(func).parameters and "fused" not in optimizer_cfg:
        return {"fused": True}
    return {}


def build_optimizer(node: DictConfig, params: Iterable[torch.nn.Parameter],
                    device: torch.device) -> torch.optim.Optimizer:
    """The optimizer of ``node`` (a ``_partial_`` config) over ``params``, fused on CUDA where it can be."""
    make = build(node, "optimizer")
    try:
        return make(params=params, **optimizer_options(make, node, device))
    except (ValueError, TypeError) as exc:
        raise _rejected(exc, "optimizer", node.get("_target_")) from exc


def build_schedule(node: DictConfig | None, optimizer: torch.optim.Optimizer, epochs: int,
                   batches_per_epoch: int, monitor: Monitor | None = None) -> Schedule | None:
    """The scheduler of ``node`` and when it steps; None for no scheduler (``scheduler=none``).

    A scheduler whose signature takes ``total_steps`` and whose YAML leaves it unset gets the
    number of times it will step: ``epochs`` (``interval: epoch``) or ``epochs * batches_per_epoch``.
    A monitoring one (``monitor:`` in its YAML) whose signature takes ``mode`` and whose YAML leaves it
    unset gets the run's monitor direction (``trainer.monitor_mode``; ``max`` for ``val/iou``).
    """
    if not node or not node.get("_target_"):
        return None
    plain = OmegaConf.to_container(node, resolve=True)  # resolved where it stands (${optimizer.lr})
    settings = {k: plain.pop(k) for k in SCHEDULE_KEYS if k in plain}
    interval = settings.get("interval") or "epoch"
    if settings.get("monitor") is not None:
        allowed = [c for c in HISTORY_COLUMNS if "/" in c] + ([monitor.key] if monitor is not None else [])
        check_choice("scheduler.monitor", settings["monitor"], list(dict.fromkeys(allowed)))
    make = build(OmegaConf.create(plain), "scheduler")
    func = getattr(make, "func", make)
    kwargs: dict[str, Any] = {}
    if "total_steps" in inspect.signature(func).parameters and plain.get("total_steps") is None:
        kwargs["total_steps"] = epochs * (batches_per_epoch if interval == "step" else 1)
    if settings.get("monitor") is not None and "mode" in inspect.signature(func).parameters and "mode" not in plain:
        kwargs["mode"] = (monitor if monitor is not None and monitor.key == settings["monitor"]
                          else Monitor(settings["monitor"], "auto")).mode
    try:
        scheduler = make(optimizer=optimizer, **kwargs)
        return Schedule(scheduler, interval=interval, monitor=settings.get("monitor"))
    except (ValueError, TypeError) as exc:
        raise _rejected(exc, "scheduler", node.get("_target_")) from exc


def check_schedule(node: DictConfig | None, optimizer: torch.optim.Optimizer, epochs: int,
                   monitor: Monitor | None = None) -> None:
    """Build the scheduler once on a one-parameter copy of ``optimizer``, so that its arguments are
    checked before any data is read (the real one needs the number of batches, known after the data)."""
    if not node or not node.get("_target_"):
        return
    accepted = inspect.signature(type(optimizer)).parameters  # defaults may hold more than the arguments
    device_only = ("fused", "foreach", "capturable", "differentiable")  # tied to the real parameters
    probe = type(optimizer)([torch.zeros(1, requires_grad=True)],
                            **{k: v for k, v in optimizer.defaults.items() if k in accepted and k not in device_only})
    build_schedule(node, probe, epochs, batches_per_epoch=1, monitor=monitor)


def build_augment(node: DictConfig | None) -> Augment | None:
    """The batch augmentation of ``augment=...``, or None when it has no ops (``augment=none``)."""
    if not node or not node.get("_target_"):
        return None
    augment = build(node, "augment")
    return augment if getattr(augment, "ops", True) else None


def build_loggers(node: DictConfig | None) -> list[Callback]:
    """The loggers of the ``logger`` group (``logger=[tensorboard,mlflow]``: one key each), built before
    any data is read, so that a missing package is named at once."""
    if not node:
        return []
    return [build(sub, f"logger.{name}") for name, sub in node.items() if sub is not None]


def build_monitor(trainer_cfg: DictConfig, class_names: Sequence[str] | None = None,
                  classes_known: bool = True) -> Monitor:
    """The run's :class:`Monitor` from ``trainer.monitor`` and ``trainer.monitor_mode``, checked against
    the val columns of its history (per class with ``class_names``). Before the data is read
    (``classes_known=False``) a per-class key (``val/iou_<class>``) is left for the check after it."""
    key = str(trainer_cfg.get("monitor", DEFAULT_MONITOR))
    if classes_known or not key.startswith(("val/iou_", "val/dice_")):
        check_choice("trainer.monitor", key, val_columns(class_names))
    return Monitor(key, str(trainer_cfg.get("monitor_mode", "auto")))


def build_training_callbacks(node: DictConfig | None, monitor: Monitor) -> list[Callback]:
    """The optional callbacks of the ``callbacks`` group (``callbacks=[ema,early_stop]``: one key each, in
    that order); one whose class takes ``monitor`` and ``mode`` gets the run's (as strings: Hydra would
    turn a dataclass argument into a config)."""
    callbacks = []
    for name, sub in (node or {}).items():
        if sub is None:
            continue
        try:
            takes = inspect.signature(get_class(sub.get("_target_"))).parameters
        except Exception:  # build() names a bad target
            takes = {}
        given = {k: v for k, v in (("monitor", monitor.key), ("mode", monitor.mode)) if k in takes and k not in sub}
        callbacks.append(build(sub, f"callbacks.{name}", **given))
    return callbacks


def build_callbacks(cfg: DictConfig, run_dir: RunDir, config: dict, monitor: Monitor,
                    loggers: list[Callback] = (), slow_hint: str | None = None) -> tuple[list[Callback], BestTracker]:
    """The training loop's callbacks for a run: the optional ones of the ``callbacks`` group (EMA, early
    stopping, gradient clipping) first, then what every run has (the run-directory contract): best-epoch
    tracking by ``monitor``, history.csv, checkpoints, the log line, the time estimate (with
    ``slow_hint`` for a long run), the loggers (attached to ``run_dir``), progress bars.
    Returns them and the best-epoch tracker."""
    trainer_cfg = cfg.trainer
    callbacks = build_training_callbacks(cfg.get("callbacks"), monitor)
    best = BestTracker(monitor)
    callbacks += [best, HistoryWriter(run_dir), Checkpointer(run_dir, best, config), EpochLogger(),
                  TimeEstimate(slow_hint=slow_hint)]
    callbacks += [logger.attach(run_dir, config) for logger in loggers]
    if trainer_cfg.progress:
        callbacks.append(ProgressBar(int(trainer_cfg.log_every), best))
    return callbacks, best
