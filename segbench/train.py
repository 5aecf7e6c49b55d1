"""``run(cfg)``: one configuration from config to run directory.

The story, one layer per step: check the config, build the components, load the
data and split it, fit, test the best checkpoint, write the run directory.
"""
from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

import torch

from .build import (build, build_augment, build_callbacks, build_loggers, build_monitor, build_optimizer,
                    build_schedule, check_schedule)
from .config import choices, differences, parallel_jobs, upgrade_config, validate
from .data import SegDataset
from .engine import (BestTracker, EarlyStopping, FitSettings, Monitor, Trainer, resolve_channels_last, resolve_device,
                     resolve_precision, resolve_switch, resolve_threads, seed_everything)
from .engine.device import cpu_name, usable_cores
from .errors import CheckpointError, UserError
from .metrics import class_keys
from .scoring import EvalSettings, score_test
from .plotting import plot_augmentations, plot_curves, plot_predictions
from .provenance import provenance
from .runs import RunDir
from .runs.launch import resume_command
from .search import TRIAL_ENV
from .signals import Stopped, forward, stop_on_signals
from .splits import Split
from .validation import InvalidValue, check_choice

log = logging.getLogger(__name__)


RESUME_MODES = ("auto", "overwrite")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and test one configuration; returns the metrics written to ``metrics.json``.

    A run dir that already holds a run is never trained twice nor overwritten silently
    (``trainer.resume=auto``, the default): a finished run (``metrics.json`` says ``done``)
    is returned as it is, a partial one continues from its ``last.pt``, and one with other
    defining settings is refused, naming them. ``trainer.resume=overwrite`` trains from
    epoch 1 and replaces what the dir holds. A run that raises still leaves a
    ``metrics.json``, with status ``failed`` (or ``interrupted``: Ctrl-C, SIGTERM, SIGUSR1)
    and the error, next to its last good checkpoint.
    """
    run_dir = RunDir(cfg.output_dir).create()
    run_dir.ensure_log_file()
    mode = cfg.trainer.get("resume")
    if mode is None:
        raise InvalidValue("trainer.resume", mode, "'auto' (continue a used run dir; the default) or 'overwrite' "
                           "(train it again from epoch 1, replacing its files); null is no longer a setting")
    check_choice("trainer.resume", mode, RESUME_MODES)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if _used_dir(run_dir, mode, resolved) == "done":
        log.info("%s holds a finished run with these settings (metrics.json status done): not training it again; "
                 "trainer.resume=overwrite trains it again", run_dir.path)
        return run_dir.read_metrics()
    run_dir.keep_hydra_record()
    with stop_on_signals():
        try:
            return _run(cfg, run_dir, resolved)
        except BaseException as exc:
            interrupted = isinstance(exc, KeyboardInterrupt)
            status = "interrupted" if interrupted else "failed"
            record = {"status": status, "error": _error_text(exc)}
            if isinstance(exc, Stopped):
                record["signal"] = exc.name
            run_dir.write_metrics(record)
            if interrupted or (run_dir.last_pt.is_file() and not isinstance(exc, CheckpointError)):  # not from it
                where = (f"the last finished epoch is in {run_dir.checkpoints}" if run_dir.last_pt.is_file()
                         else "no epoch had finished")
                log.error("%s%s; %s. Resume with:\n  %s", status, f" by {exc.name}" if isinstance(exc, Stopped) else "",
                          where, resume_command(run_dir))
            if isinstance(exc, Stopped):
                forward(exc)  # a launcher's own handler (submitit requeues the job), now that the state is saved
            raise


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, Stopped):
        return exc.name
    return "KeyboardInterrupt" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"


def _used_dir(run_dir: RunDir, mode: str, resolved: dict) -> str:
    """What to do with what ``run_dir`` holds: ``new`` (nothing, or replaced with ``overwrite``),
    ``continue`` (a partial run of the same settings) or ``done`` (a finished one). A run of other
    defining settings is refused before any file changes; Hydra's record of this launch is then put back."""
    status = run_dir.status()
    if mode == "overwrite":
        removed = run_dir.remove_results()
        if removed:
            log.warning("trainer.resume=overwrite: removed the earlier run's %s from %s; training from epoch 1",
                        ", ".join(removed), run_dir.path)
        return "new"
    try:
        previous = run_dir.previous_config()
        diff = differences(upgrade_config(previous), resolved) if previous is not None else []
    except CheckpointError:
        run_dir.restore_hydra_record()
        raise
    if diff:
        run_dir.restore_hydra_record()
        what = "finished" if status == "done" else "partial"
        raise UserError(
            f"'{run_dir.path}' holds a {what} run with other settings ({'; '.join(diff)}); use another run dir "
            f"(hydra.run.dir=...), or trainer.resume=overwrite to train this one again from epoch 1, replacing its files")
    if status == "done":
        run_dir.restore_hydra_record()  # its files untouched: the record is the launch that trained it
        return "done"
    return "continue" if previous is not None else "new"


def concurrent_jobs() -> int:
    """How many jobs of this sweep run at once on this machine (:func:`segbench.config.parallel_jobs`);
    1 outside a sweep."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return 1
    return parallel_jobs(HydraConfig.get().launcher, usable_cores())


# presets made for a GPU, and their versions for a CPU
CPU_PRESETS = {"ph2_recipe": "ph2_recipe_cpu"}


def _slow_hint(device: torch.device) -> str | None:
    """On a CPU, for a preset made for a GPU: which preset to use instead."""
    if device.type != "cpu" or not HydraConfig.initialized():
        return None
    experiment = HydraConfig.get().runtime.choices.get("experiment")
    if experiment in CPU_PRESETS:
        return (f"experiment={experiment} is made for a GPU; on a CPU use experiment={CPU_PRESETS[experiment]} "
                "(the same recipe at 128 px and base width 16: 5 to 15 min on 2 cores)")
    return None


def _run(cfg: DictConfig, run_dir: RunDir, resolved: dict) -> dict[str, Any]:
    start = time.perf_counter()
    # 1. config: every run setting checked before any work
    validate(cfg)
    evaluation = EvalSettings.from_config(cfg.eval)  # the evaluation layer owns the eval.* keys and their checks
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    device = resolve_device(str(cfg.trainer.device), HydraConfig.get().job.num if multirun else None)
    threads = resolve_threads(cfg.trainer.threads, concurrent_jobs())
    torch.set_num_threads(threads)
    saved = _last_state(run_dir)  # read once: checked, then restored
    precision, channels_last = _how_to_compute(cfg, device, saved)
    names = choices(cfg)
    log.info("run dir %s; device %s (%s, %d threads); %s", run_dir.path, device,
             cpu_name() if device.type == "cpu" else torch.cuda.get_device_name(device) if device.type == "cuda"
             else device.type, threads, ", ".join(f"{k}={v}" for k, v in names.items()))
    launch = provenance(device, precision, channels_last, threads)
    run_dir.write_record(resolved, launch)
    # 2. components, before any data is read (the scheduler needs the number of batches: checked now, built after)
    seed_everything(int(cfg.seed))
    model = build(cfg.model, "model")
    loss_fn = build(cfg.loss, "loss")
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), device)
    monitor = build_monitor(cfg.trainer, classes_known=False)  # a class's column is checked with the data
    check_schedule(cfg.get("scheduler"), optimizer, int(cfg.trainer.epochs), monitor)
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
    monitor = build_monitor(cfg.trainer, dataset.class_names if dataset.num_classes > 1 else None)
    run_dir.write_split(split)
    log.info("data: %s, %d/%d/%d train/val/test at %dpx, loaded in %.2fs (split %s)", names["dataset"],
             *(len(parts[k]) for k in ("train", "val", "test")), dataset.image_size, load_time, split["digest"])
    params = sum(p.numel() for p in model.parameters())
    log.info("model: %s, %s parameters; precision %s, %s memory format", names["model"], f"{params:,}", precision,
             launch["memory_format"])
    # 4. engine
    settings = FitSettings(
        epochs=cfg.trainer.epochs, batch_size=cfg.trainer.batch_size, eval_batch_size=cfg.trainer.eval_batch_size,
        threshold=evaluation.working_threshold, seed=int(cfg.seed),
        precision=precision, channels_last=channels_last,
        compile=resolve_switch("trainer.compile", cfg.trainer.compile, device),
        class_names=tuple(dataset.class_names) if dataset.num_classes > 1 else None,
        val_every=int(cfg.trainer.val_every),
    )
    schedule = build_schedule(cfg.get("scheduler"), optimizer, settings.epochs,
                              math.ceil(len(parts["train"]) / settings.batch_size), monitor)
    callbacks, best = build_callbacks(cfg, run_dir, resolved, monitor, loggers, _slow_hint(device))
    reporter = _trial_reporter(settings.epochs, monitor)  # a trial of a search: reports, may be pruned
    if reporter is not None:
        callbacks.insert(callbacks.index(best) + 1, reporter)
    trainer = Trainer(model, loss_fn, optimizer, settings, device, schedule, callbacks, augment)
    start_epoch = 1
    if saved is not None:
        start_epoch = trainer.load_state(saved)
        log.info("resuming from %s at epoch %d of %d", run_dir.last_pt, start_epoch, cfg.trainer.epochs)
    del saved
    if augment is not None and start_epoch == 1:
        plot_augmentations(run_dir, parts["train"], augment, device)  # draws from a forked RNG: changes nothing
    loop_start = time.perf_counter()
    trainer.fit(parts["train"], parts["val"], start_epoch)
    loop_time = time.perf_counter() - loop_start
    if reporter is not None and reporter.pruned_epoch is not None:
        return _pruned(run_dir, trainer, best, monitor, reporter.pruned_epoch, names, launch)
    # 5. evaluation of the best checkpoint
    trainer.load_weights(run_dir.load_checkpoint("best"))
    result = score_test(trainer, loss_fn, dataset, parts["val"], parts["test"], evaluation)
    early = trainer.callback(EarlyStopping)
    # 6. the run directory
    metrics = {
        "status": "done", **result.metrics, **_best_epoch(trainer, best, monitor),
        "epochs": settings.epochs, "stopped_epoch": early.stopped_epoch if early else None, "params": params,
        **_timings(trainer, loop_time if start_epoch == 1 else None, load_time, time.perf_counter() - start),
        **_how_it_ran(launch),
        **names, "image_size": dataset.image_size, "split_digest": split["digest"],
        # the foreground classes (an axis of the results): test/iou_<class>, test/dice_<class>; [] when binary
        "classes": class_keys(dataset.class_names, dataset.num_classes) if dataset.num_classes > 1 else [],
        "threshold": result.threshold,
        "definitions": {**result.definitions, "checkpoint": f"best {monitor.key} (epoch {best.epoch})"},
        "provenance": launch,
    }
    run_dir.write_per_image(parts["test"].ids, result.per_image, parts["test"].groups, dataset.group_key)
    run_dir.write_metrics(metrics)
    log.info("test (best epoch %d, threshold %.2f, %s resolution): iou %.4f  dice %.4f  iou_score %.4f  hd95 %.2f  "
             "loss %.4f", best.epoch, result.threshold, evaluation.resolution, metrics["test/iou"],
             metrics["test/dice"], metrics["test/iou_score"], metrics["test/hd95"], metrics["test/loss"])
    plot_curves(run_dir, f"{names['model']} / {names['loss']} / {names['dataset']}")
    plot_predictions(run_dir, parts["test"], result.logits, result.threshold, evaluation.num_predictions,
                     result.per_image["iou"], dataset.class_names)
    trainer.run_end(metrics, run_dir)  # loggers send the results on
    log.info("wrote %s", run_dir.path)
    return metrics


def _trial_reporter(epochs: int, monitor: Monitor) -> Any:
    """The reporter of this run's Optuna trial when a search started it (see :mod:`segbench.search`)."""
    if not os.environ.get(TRIAL_ENV) or not HydraConfig.initialized():
        return None
    from .search.trial import trial_reporter

    hydra = HydraConfig.get()
    return trial_reporter(hydra.get("sweeper"), str(hydra.sweep.dir), epochs, monitor)


def _pruned(run_dir: RunDir, trainer: Trainer, best: BestTracker, monitor: Monitor, epoch: int,
            names: dict, launch: dict) -> dict[str, Any]:
    """A trial the search's pruner stopped: metrics.json says ``pruned`` (with the epoch and the best
    val epoch so far), next to its history and last checkpoint; no test scoring."""
    metrics = {"status": "pruned", "pruned_epoch": epoch, **_best_epoch(trainer, best, monitor),
               "train_time_s": trainer.train_time, **names, "provenance": launch}
    run_dir.write_metrics(metrics)
    plot_curves(run_dir, f"{names['model']} / {names['loss']} / {names['dataset']} (pruned at epoch {epoch})")
    log.info("pruned by the search after epoch %d; wrote %s", epoch, run_dir.path)
    return metrics


def _best_epoch(trainer: Trainer, best: BestTracker, monitor: Monitor) -> dict[str, Any]:
    """metrics.json's record of the best epoch: its val IoU, the monitored value that chose it, its number."""
    row = next((r for r in trainer.history if int(r["epoch"]) == best.epoch), {})  # {}: every validation NaN
    return {"val/iou": row.get("val/iou", math.nan), "monitor": monitor.record(best.value, best.epoch),
            "best_epoch": best.epoch}


def _timings(trainer: Trainer, loop_time: float | None, load_time: float, total_time: float) -> dict[str, Any]:
    """Where the run's time went: the training steps (``train_time_s``, over every launch), this launch's
    epoch loop (None after a resume: it saw only part of the loop), the data load and the whole launch."""
    return {"train_time_s": trainer.train_time,
            "images_per_s": trainer.train_images / trainer.train_time if trainer.train_time > 0 else math.nan,
            "epoch_loop_s": loop_time, "data_load_s": load_time, "total_time_s": total_time}


def _how_it_ran(launch: dict) -> dict[str, Any]:
    """How the maths ran, from this launch's provenance record: device, precision, memory format, threads,
    CPU (and whether it has native bf16), GPU."""
    return {"device": launch["device"], "precision": launch["precision"], "memory_format": launch["memory_format"],
            "threads": launch["cpu_threads"], "cpu": launch["cpu"], "cpu_native_bf16": launch["cpu_native_bf16"],
            "gpu": launch["gpu"]}


def _last_state(run_dir: RunDir) -> dict | None:
    """The state of ``last.pt`` to continue from, or None to start at epoch 1 (run() has checked that
    its settings are this run's)."""
    if not run_dir.last_pt.is_file():
        return None
    try:
        return run_dir.load_checkpoint("last")
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; cannot resume from it: delete it to train this run again from epoch 1") from exc


def _how_to_compute(cfg: DictConfig, device: torch.device, saved: dict | None) -> tuple[str, bool]:
    """Precision and memory format: resolved for this machine, or, for a resumed run whose settings say
    ``auto``, the ones it started with (another machine may resolve ``auto`` otherwise), with a warning
    when this CPU lacks native bf16 for them."""
    precision = resolve_precision(str(cfg.trainer.precision), device)
    channels_last = resolve_channels_last(cfg.trainer.channels_last, device)
    before = (saved or {}).get("settings") or {}
    if saved is not None and "settings" not in saved and device.type == "cpu":
        before = {"precision": "fp32", "channels_last": False}  # before 0.2, auto was fp32, contiguous on a CPU
    if before.get("precision") and cfg.trainer.precision == "auto" and before["precision"] != precision:
        log.warning("resuming in %s, the precision this run started with (trainer.precision=auto would be %s "
                    "here)", before["precision"], precision)
        precision = resolve_precision(before["precision"], device)  # warns when this CPU has no native bf16
    if before.get("channels_last") is not None and cfg.trainer.channels_last == "auto":
        channels_last = bool(before["channels_last"])
    return precision, channels_last
