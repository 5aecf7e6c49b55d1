"""``run(cfg)``: one configuration from config to run directory.

The story, one layer per step: check the config, build the components, load the
data and split it, fit, test the best checkpoint, write the run directory.
"""
from __future__ import annotations

import logging
import math
import re
import shlex
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .build import (build, build_augment, build_callbacks, build_loggers, build_optimizer, build_schedule,
                    check_schedule)
from .config import check_resumable, choices, validate
from .data import SegDataset
from .errors import CheckpointError, UserError
from .engine import EarlyStopping, FitSettings, Trainer, resolve_device, resolve_precision, resolve_switch, seed_everything
from .evaluate import score_test
from .plotting import plot_augmentations, plot_curves, plot_predictions
from .rundir import RunDir, sweep_records
from .splits import Split

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and test one configuration; returns the metrics written to ``metrics.json``.

    With ``trainer.resume=auto``, a run dir whose ``metrics.json`` says ``done`` is
    not trained again (its metrics are returned), and one with a ``last.pt``
    continues from it. A run that raises still leaves a ``metrics.json``, with
    status ``failed`` (or ``interrupted``) and the error, next to its last good
    checkpoint.
    """
    run_dir = RunDir(cfg.output_dir).create()
    run_dir.ensure_log_file()
    if cfg.trainer.get("resume") == "auto" and run_dir.status() == "done":
        log.info("%s is complete (metrics.json status done); not training again", run_dir.path)
        return run_dir.read_metrics()
    try:
        return _run(cfg, run_dir)
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        status = "interrupted" if interrupted else "failed"
        error = "KeyboardInterrupt" if interrupted else f"{type(exc).__name__}: {exc}"
        run_dir.write_metrics({"status": status, "error": error})
        if interrupted or (run_dir.last_pt.is_file() and not isinstance(exc, CheckpointError)):  # not from it
            log.error("%s; the last finished epoch is in %s. Resume with:\n  %s", status, run_dir.checkpoints,
                      resume_command(run_dir))
        raise


def _run(cfg: DictConfig, run_dir: RunDir) -> dict[str, Any]:
    start = time.perf_counter()
    # 1. config: every run setting checked before any work
    validate(cfg)
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    device = resolve_device(str(cfg.trainer.device), HydraConfig.get().job.num if multirun else None)
    precision = resolve_precision(str(cfg.trainer.precision), device)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    names = choices(cfg)
    log.info("run dir %s; device %s; %s", run_dir.path, device, ", ".join(f"{k}={v}" for k, v in names.items()))
    # 2. components, before any data is read (the scheduler needs the number of batches: checked now, built after)
    seed_everything(int(cfg.seed))
    model = build(cfg.model, "model")
    loss_fn = build(cfg.loss, "loss")
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), device)
    check_schedule(cfg.get("scheduler"), optimizer, int(cfg.trainer.epochs))
    dataset: SegDataset = build(cfg.dataset, "dataset")
    splitter: Split = build(cfg.split, "split")
    augment = build_augment(cfg.get("augment"))
    loggers = build_loggers(cfg.get("logger"))
    if int(cfg.model.get("num_classes", 1)) != dataset.num_classes:
        raise UserError(f"model.num_classes={cfg.model.num_classes} but the dataset has num_classes="
                        f"{dataset.num_classes}; leave model.num_classes unset (it follows dataset.num_classes)")
    # 3. data
    load_start = time.perf_counter()
    split = splitter.make(dataset.ids, dataset.groups, dataset.group_order, dataset.group_key)
    parts = dataset.parts(split)
    load_time = time.perf_counter() - load_start
    run_dir.write_split(split)
    log.info("data: %s, %d/%d/%d train/val/test at %dpx, loaded in %.2fs (split %s)", names["dataset"],
             *(len(parts[k]) for k in ("train", "val", "test")), dataset.image_size, load_time, split["digest"])
    params = sum(p.numel() for p in model.parameters())
    log.info("model: %s, %s parameters; precision %s", names["model"], f"{params:,}", precision)
    # 4. engine
    settings = FitSettings(
        epochs=cfg.trainer.epochs, batch_size=cfg.trainer.batch_size, eval_batch_size=cfg.trainer.eval_batch_size,
        threshold=0.5 if cfg.eval.threshold == "auto" else float(cfg.eval.threshold), seed=int(cfg.seed),
        precision=precision, channels_last=resolve_switch("trainer.channels_last", cfg.trainer.channels_last, device),
        compile=resolve_switch("trainer.compile", cfg.trainer.compile, device),
        class_names=tuple(dataset.class_names) if dataset.num_classes > 1 else None,
    )
    schedule = build_schedule(cfg.get("scheduler"), optimizer, settings.epochs,
                              math.ceil(len(parts["train"]) / settings.batch_size))
    callbacks, best = build_callbacks(cfg.trainer, run_dir, resolved, loggers)
    trainer = Trainer(model, loss_fn, optimizer, settings, device, schedule, callbacks, augment)
    start_epoch = _resume(cfg, run_dir, trainer, resolved)
    if augment is not None and start_epoch == 1:
        plot_augmentations(run_dir, parts["train"], augment, device)  # draws from a forked RNG: changes nothing
    trainer.fit(parts["train"], parts["val"], start_epoch)
    # 5. evaluation of the best checkpoint
    trainer.load_weights(run_dir.load_checkpoint("best"))
    result = score_test(trainer, loss_fn, dataset, parts["val"], parts["test"], cfg.eval.threshold,
                        cfg.eval.resolution, cfg.eval.tta, cfg.eval.postprocess)
    early = trainer.callback(EarlyStopping)
    # 6. the run directory
    metrics = {
        "status": "done", **result.metrics, "val/iou": best.value, "best_epoch": best.epoch,
        "epochs": settings.epochs, "stopped_epoch": early.stopped_epoch if early else None, "params": params,
        "train_time_s": trainer.train_time,
        "images_per_s": trainer.train_images / trainer.train_time if trainer.train_time > 0 else math.nan,
        "data_load_s": load_time, "total_time_s": time.perf_counter() - start, "device": str(device),
        "precision": precision, **names, "image_size": dataset.image_size, "split_digest": split["digest"],
        "threshold": result.threshold,
        "definitions": {**result.definitions, "checkpoint": f"best val/iou (epoch {best.epoch})"},
    }
    run_dir.write_per_image(parts["test"].ids, result.rows, parts["test"].groups, dataset.group_key)
    run_dir.write_metrics(metrics)
    log.info("test (best epoch %d, threshold %.2f, %s resolution): iou %.4f  dice %.4f  iou_score %.4f  hd95 %.2f  "
             "loss %.4f", best.epoch, result.threshold, cfg.eval.resolution, metrics["test/iou"],
             metrics["test/dice"], metrics["test/iou_score"], metrics["test/hd95"], metrics["test/loss"])
    plot_curves(run_dir, f"{names['model']} / {names['loss']} / {names['dataset']}")
    plot_predictions(run_dir, parts["test"], result.logits, result.threshold, int(cfg.eval.num_predictions),
                     dataset.class_names)
    trainer.run_end(metrics, run_dir)  # loggers send the results on
    log.info("wrote %s", run_dir.path)
    return metrics


def _resume(cfg: DictConfig, run_dir: RunDir, trainer: Trainer, resolved: dict) -> int:
    """With ``trainer.resume=auto`` and a ``last.pt``: check its settings, restore it, return the next epoch."""
    if cfg.trainer.get("resume") != "auto" or not run_dir.last_pt.is_file():
        return 1
    try:
        state = run_dir.load_checkpoint("last")  # read once: checked, then restored
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; cannot resume from it: delete it to train this run again from epoch 1") from exc
    check_resumable(state["config"], resolved, run_dir.last_pt)
    start_epoch = trainer.load_state(state)
    log.info("resuming from %s at epoch %d of %d", run_dir.last_pt, start_epoch, cfg.trainer.epochs)
    return start_epoch


def resume_command(run_dir: RunDir) -> str:
    """The command that continues this run in place; in a sweep, the whole sweep's first, then this job's.

    A sweep job's own overrides are single values, so re-running them with ``-m`` would put the job
    in a differently named dir (the names keep only what varies); the sweep's overrides are read
    back from its ``multirun.yaml`` (and those of earlier launches into the same dir, kept as
    ``multirun.<n>.yaml``: one command each), and the job alone continues with ``hydra.run.dir``.
    """
    if not HydraConfig.initialized():
        return f"segbench.train.run(cfg) with output_dir={run_dir.path} trainer.resume=auto"
    hc = HydraConfig.get()
    alone = _command([*hc.overrides.task, *_launch_options(hc.overrides.hydra)], "hydra.run.dir", run_dir.path)
    if hc.mode != RunMode.MULTIRUN:
        return alone
    commands: list[str] = []
    for record in sweep_records(hc.sweep.dir):  # every launch into the sweep dir (a narrower re-run too)
        try:
            launch = OmegaConf.load(record).hydra.overrides
            args = [*map(str, launch.task), *_launch_options(launch.hydra)]
        except Exception:  # noqa: BLE001 - only the hint degrades: the job's error is what matters
            continue
        command = _command(["-m", *args], "hydra.sweep.dir", hc.sweep.dir)
        if command not in commands:  # a re-run of the same sweep
            commands.append(command)
    commands = commands or [_command(["-m", "<the sweep's overrides>"], "hydra.sweep.dir", hc.sweep.dir)]
    what = "the whole sweep" if len(commands) == 1 else f"each of the {len(commands)} sweeps launched into this dir"
    return "\n  ".join(commands) + f"\n  ({what}: finished jobs are skipped), or this job alone:\n  {alone}"


# Hydra overrides of a launch that the hint sets itself, or that Hydra and segbench add to every run
_NOT_RELAUNCHED = ("hydra.run.dir=", "hydra.sweep.dir=", "hydra.mode=", "hydra.job.config.override_dirname.exclude_keys=")


def _launch_options(overrides: Any) -> list[str]:
    """The Hydra overrides a run was launched with (``hydra/launcher=submitit_slurm``, its settings) that
    resuming needs again: without them a resumed SLURM sweep would run on the machine that resumes it."""
    return [str(o) for o in overrides if not str(o).startswith(_NOT_RELAUNCHED)]


_PLAIN_VALUE = re.compile(r"[\w./:@%+~-]*")  # a Hydra override value that needs no quotes


def _command(overrides: list[str], dir_key: str, path: str | Path) -> str:
    """``python -m segbench`` with ``overrides`` (shell-quoted) and ``dir_key`` set to ``path``."""
    path = str(path)
    if not _PLAIN_VALUE.fullmatch(path):  # ``=`` and ``,`` in sweep job dirs are Hydra syntax
        path = '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'
    kept = [o for o in overrides if not o.startswith(("trainer.resume=", f"{dir_key}="))]
    args = [*kept, f"{dir_key}={path}", "trainer.resume=auto"]
    return "python -m segbench " + " ".join(shlex.quote(a) for a in args)
