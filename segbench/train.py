"""``run(cfg)``: one configuration from config to run directory, in named steps: :func:`setup`,
:func:`build_parts`, :func:`load_data`, :func:`fit`, :func:`test`, :func:`record`."""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .build import (
    build,
    build_augment,
    build_callbacks,
    build_loggers,
    build_monitor,
    build_optimizer,
    build_schedule,
    check_schedule,
)
from .compat import started_settings
from .config import choices, parallel_jobs, validate
from .data import SegArrays, SegDataset
from .engine import (
    BestTracker,
    EarlyStopping,
    FitSettings,
    Monitor,
    Trainer,
    distributed,
    resolve_channels_last,
    resolve_device,
    resolve_precision,
    resolve_switch,
    resolve_threads,
    seed_everything,
)
from .engine.device import cpu_name, usable_cores
from .engine.provenance import provenance
from .engine.signals import Stopped, forward, stop_on_signals
from .engine.signals import hold as hold_signals
from .errors import CheckpointError, UserError
from .evaluation.scoring import EvalSettings, TestResult, score_test
from .metrics import class_keys
from .runs import RunDir
from .runs.launch import resume_command
from .runs.lock import run_lock
from .runs.resume import last_state, used_dir
from .runs.rundir import ReadingRunDir
from .search import TRIAL_ENV
from .splits import Split

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and test one configuration; returns the metrics written to ``metrics.json``.

    A run dir that already holds a run is never trained twice nor overwritten silently
    (``trainer.resume=auto``, the default; :mod:`segbench.runs.resume`): a finished run is returned as it
    is, a partial one continues from its ``last.pt``, and one with other defining settings is refused,
    naming them. ``trainer.resume=overwrite`` trains from epoch 1 and replaces what the dir holds. One
    process trains a run dir at a time (:mod:`segbench.runs.lock`): a second one waits for it, then finds
    the run finished or continues it. A run that raises still leaves a ``metrics.json``, with status
    ``failed`` (or ``interrupted``: Ctrl-C, SIGTERM, SIGHUP, SIGUSR1/2, naming the signal) and the error,
    next to its last good checkpoint.

    The steps, each a function below: :func:`setup` (check the config, the device and how to compute),
    :func:`build_parts` (the components), :func:`load_data`, :func:`fit`, :func:`test` (the best
    checkpoint), :func:`record` (the run directory).
    """
    if int(cfg.trainer.get("devices", 1)) > 1 and distributed.env_world() is None:
        from .engine.spawn import spawn

        ranks = int(cfg.trainer.devices)
        gpus = distributed.gpus_for_ranks(ranks, str(cfg.trainer.device), _job_slot())
        return spawn(cfg, ranks, run, gpus)  # trainer.devices=N: N ranks on this machine
    world = distributed.join(_device_type(cfg))  # one process, or a rank of torchrun / spawn / srun
    run_dir = (RunDir if world.main else ReadingRunDir)(cfg.output_dir).create()
    if world.main:
        run_dir.ensure_log_file()
    else:
        distributed.quiet_logging()
    resolved = OmegaConf.to_container(cfg, resolve=True)
    # one trainer at a time: a second process waits, then finds the run as it was left (rank 0 holds it for all)
    with run_lock(run_dir.path) if world.main else contextlib.nullcontext():
        return _run(cfg, run_dir, resolved, world)


def _job_slot() -> int:
    """Which of a sweep's concurrent jobs on this machine this one is (0 outside a sweep): a data-parallel
    job of a joblib sweep takes its own GPUs."""
    jobs = concurrent_jobs()
    return HydraConfig.get().job.num % jobs if jobs > 1 else 0


def _device_type(cfg: DictConfig) -> str:
    return "cuda" if torch.cuda.is_available() and not str(cfg.trainer.device).startswith(("cpu", "mps")) else "cpu"


def _run(cfg: DictConfig, run_dir: RunDir, resolved: dict, world: distributed.World) -> dict[str, Any]:
    use = used_dir(run_dir, cfg.trainer.get("resume"), resolved) if world.main else None
    if distributed.broadcast(use) == "done":
        log.info("%s holds a finished run with these settings (metrics.json status done): not training it again; "
                 "trainer.resume=overwrite trains it again", run_dir.path)
        return run_dir.read_metrics()
    run_dir.keep_hydra_record()
    distributed.barrier()  # the other ranks read last.pt once rank 0 has decided what the dir holds
    with stop_on_signals(), _failure_recorded(run_dir):
        if world.distributed:
            hold_signals()  # a signal stops every rank at the same epoch boundary (the trainer reads it)
        start = time.perf_counter()
        where = setup(cfg, run_dir, resolved)
        parts = build_parts(cfg, where.device)
        data = load_data(cfg, run_dir, parts, where.names["dataset"])
        fitted = fit(cfg, run_dir, resolved, where, parts, data)
        if fitted.pruned_epoch is not None:
            return _pruned(run_dir, fitted, where)
        result = test(run_dir, fitted, parts, data, where.evaluation)
        return record(run_dir, where, parts, data, fitted, result, time.perf_counter() - start)


@contextlib.contextmanager
def _failure_recorded(run_dir: RunDir) -> Iterator[None]:
    """A run that raises leaves metrics.json with status ``failed`` or ``interrupted`` (and the signal) and
    logs how to resume; a stop signal goes on to a launcher's own handler once the state is saved."""
    try:
        yield
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        status = "interrupted" if interrupted else "failed"
        record = {"status": status, "error": _error_text(exc)}
        if isinstance(exc, Stopped):
            record["signal"] = exc.name
        run_dir.write_metrics(record)
        if not distributed.current().main:
            pass  # rank 0 records the run and logs how to resume it
        elif interrupted or (run_dir.last_pt.is_file() and not isinstance(exc, CheckpointError)):  # not from it
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


def concurrent_jobs() -> int:
    """How many jobs of this sweep run at once on this machine (:func:`segbench.config.parallel_jobs`);
    1 outside a sweep."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return 1
    return parallel_jobs(HydraConfig.get().launcher, usable_cores())


@dataclass
class Setup:
    """Where and how the run computes, and what it continues from (step 1)."""

    device: torch.device
    threads: int
    precision: str
    channels_last: bool
    evaluation: EvalSettings
    names: dict[str, str]  # the config groups' choices (model, loss, dataset, ...)
    launch: dict  # this launch's provenance record
    saved: dict | None  # the state of last.pt to continue from
    cpu_hint: str | None  # on a CPU, for a preset made for a GPU: the one to use instead


def setup(cfg: DictConfig, run_dir: RunDir, resolved: dict) -> Setup:
    """Step 1: every run setting checked before any work; the device, threads, precision and memory format;
    the state to continue from; run.json written."""
    validate(cfg)
    evaluation = EvalSettings.from_config(cfg.eval)  # the evaluation layer owns the eval.* keys and their checks
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    world = distributed.current()
    device = resolve_device(str(cfg.trainer.device), HydraConfig.get().job.num if multirun else None)
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", distributed.rank_gpu(world.local_rank))  # one GPU per rank
        torch.cuda.set_device(device)
    threads = resolve_threads(cfg.trainer.threads, concurrent_jobs() * distributed.local_size())
    torch.set_num_threads(threads)
    saved = last_state(run_dir)  # read once: checked, then restored
    precision, channels_last = _how_to_compute(cfg, device, saved)
    names = choices(cfg)
    log.info("run dir %s; device %s (%s, %d threads); %s", run_dir.path, device,
             cpu_name() if device.type == "cpu" else torch.cuda.get_device_name(device) if device.type == "cuda"
             else device.type, threads, ", ".join(f"{k}={v}" for k, v in names.items()))
    launch = {**provenance(device, precision, channels_last, threads), "world_size": world.size,
              "backend": world.backend}
    if world.distributed:
        log.info("data-parallel: rank %d of %d (%s), %d cases of each batch of %d", world.rank, world.size,
                 world.backend, -(-int(cfg.trainer.batch_size) // world.size), int(cfg.trainer.batch_size))
    run_dir.write_record(resolved, launch)
    return Setup(device, threads, precision, channels_last, evaluation, names, launch, saved,
                 _cpu_hint(cfg, device))


def _cpu_hint(cfg: DictConfig, device: torch.device) -> str | None:
    """On a CPU, for a preset made for a GPU (it names its CPU version in ``trainer.cpu_alternative``):
    what to use instead, said when the run is estimated to take long."""
    alternative = cfg.trainer.get("cpu_alternative")
    if device.type != "cpu" or not alternative:
        return None
    experiment = HydraConfig.get().runtime.choices.get("experiment") if HydraConfig.initialized() else None
    made = f"experiment={experiment} is" if experiment else "these settings are"
    return f"{made} made for a GPU; on a CPU use {alternative}"


@dataclass
class Parts:
    """The run's components, built before any data is read (step 2)."""

    model: torch.nn.Module
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    dataset: SegDataset
    splitter: Split
    augment: Any
    loggers: list

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def build_parts(cfg: DictConfig, device: torch.device) -> Parts:
    """Step 2: the components from a seeded RNG, in a fixed order (the model's initial weights depend on
    it); the schedule is checked now and built with the data (it needs the number of batches)."""
    seed_everything(int(cfg.seed))
    model = build(cfg.model, "model")
    loss_fn = build(cfg.loss, "loss")
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), device)
    monitor = build_monitor(cfg.trainer, classes_known=False)  # a class's column is checked with the data
    check_schedule(cfg.get("scheduler"), optimizer, int(cfg.trainer.epochs), monitor)
    dataset: SegDataset = build(cfg.dataset, "dataset")
    splitter: Split = build(cfg.split, "split")
    augment = build_augment(cfg.get("augment"))
    loggers = build_loggers(cfg.get("logger")) if distributed.current().main else []  # rank 0 reports
    if int(cfg.model.get("num_classes", 1)) != dataset.num_classes:
        raise UserError(f"model.num_classes={cfg.model.num_classes} but the dataset has num_classes="
                        f"{dataset.num_classes}; leave model.num_classes unset (it follows dataset.num_classes)")
    return Parts(model, loss_fn, optimizer, dataset, splitter, augment, loggers)


@dataclass
class Data:
    """The split and its parts in memory (step 3)."""

    split: dict
    parts: dict[str, SegArrays]
    load_time: float
    monitor: Monitor  # with the dataset's classes known


def load_data(cfg: DictConfig, run_dir: RunDir, parts: Parts, name: str) -> Data:
    """Step 3: the split made (and written to split.json) and its train/val/test parts loaded."""
    dataset = parts.dataset
    load_start = time.perf_counter()
    split = parts.splitter.make(dataset.ids, dataset.groups, dataset.group_order, dataset.group_key,
                                dataset.read_subjects(dataset.ids))
    loaded = dataset.parts(split)
    load_time = time.perf_counter() - load_start
    monitor = build_monitor(cfg.trainer, dataset.class_names if dataset.num_classes > 1 else None)
    run_dir.write_split(split)
    log.info("data: %s, %d/%d/%d train/val/test at %dpx, loaded in %.2fs (split %s%s)", name,
             *(len(loaded[k]) for k in ("train", "val", "test")), dataset.image_size, load_time, split["digest"],
             ", by subject: {}/{}/{} subjects".format(*split["subject_counts"]) if split.get("split_by") else "")
    return Data(split, loaded, load_time, monitor)


@dataclass
class Fitted:
    """The trainer after its epochs (step 4)."""

    trainer: Trainer
    best: BestTracker
    monitor: Monitor
    start_epoch: int  # 1, or the epoch a resumed run continued at
    loop_time: float
    pruned_epoch: int | None  # a search trial its pruner stopped


def fit(cfg: DictConfig, run_dir: RunDir, resolved: dict, where: Setup, parts: Parts, data: Data) -> Fitted:
    """Step 4: the trainer with its schedule and callbacks, restored from last.pt when the run continues,
    trained over the remaining epochs."""
    dataset, train = parts.dataset, data.parts["train"]
    log.info("model: %s, %s parameters; precision %s, %s memory format", where.names["model"], f"{parts.params:,}",
             where.precision, where.launch["memory_format"])
    settings = FitSettings(
        epochs=cfg.trainer.epochs, batch_size=cfg.trainer.batch_size, eval_batch_size=cfg.trainer.eval_batch_size,
        threshold=where.evaluation.working_threshold, seed=int(cfg.seed),
        precision=where.precision, channels_last=where.channels_last,
        compile=resolve_switch("trainer.compile", cfg.trainer.compile, where.device),
        class_names=tuple(dataset.class_names) if dataset.num_classes > 1 else None,
        val_every=int(cfg.trainer.val_every),
        sync_batchnorm=cfg.trainer.get("sync_batchnorm", "auto") in ("auto", True),
    )
    distributed.check_batches(len(train), settings.batch_size)
    schedule = build_schedule(cfg.get("scheduler"), parts.optimizer, settings.epochs,
                              math.ceil(len(train) / settings.batch_size), data.monitor)
    callbacks, best = build_callbacks(cfg, run_dir, resolved, data.monitor, parts.loggers, where.cpu_hint)
    reporter = _trial_reporter(settings.epochs, data.monitor) if distributed.current().main else None
    if reporter is not None:
        callbacks.insert(callbacks.index(best) + 1, reporter)
    trainer = Trainer(parts.model, parts.loss_fn, parts.optimizer, settings, where.device, schedule, callbacks,
                      parts.augment)
    start_epoch = 1
    if where.saved is not None:
        start_epoch = trainer.load_state(where.saved)
        log.info("resuming from %s at epoch %d of %d", run_dir.last_pt, start_epoch, cfg.trainer.epochs)
    where.saved = None  # the state is in the trainer now: free its copy
    if parts.augment is not None and start_epoch == 1 and distributed.current().main:
        from .report.figures import plot_augmentations  # matplotlib: only where a run draws

        plot_augmentations(run_dir, train, parts.augment, where.device)  # draws from a forked RNG: changes nothing
    loop_start = time.perf_counter()
    trainer.fit(train, data.parts["val"], start_epoch)
    pruned = distributed.broadcast(reporter.pruned_epoch if reporter is not None else None)  # rank 0's trial
    return Fitted(trainer, best, data.monitor, start_epoch, time.perf_counter() - loop_start, pruned)


def test(run_dir: RunDir, fitted: Fitted, parts: Parts, data: Data, evaluation: EvalSettings) -> TestResult:
    """Step 5: the best checkpoint scored on the test split (threshold, TTA, post-processing and resolution
    as ``eval.*`` says; a threshold chosen on val)."""
    run_dir.wait_for_checkpoints()
    distributed.barrier()  # best.pt is on disk (rank 0 wrote it) before every rank reads it
    fitted.trainer.load_weights(run_dir.load_checkpoint("best"))
    return score_test(fitted.trainer, parts.loss_fn, parts.dataset, data.parts["val"], data.parts["test"], evaluation)


def record(run_dir: RunDir, where: Setup, parts: Parts, data: Data, fitted: Fitted, result: TestResult,
           total_time: float) -> dict[str, Any]:
    """Step 6: metrics.json, test_per_image.csv and the figures written; the loggers get the results."""
    dataset, trainer, names, test_part = parts.dataset, fitted.trainer, where.names, data.parts["test"]
    early = trainer.callback(EarlyStopping)
    metrics = {
        "status": "done", **result.metrics, **_best_epoch(trainer, fitted.best, fitted.monitor),
        "epochs": trainer.settings.epochs, "stopped_epoch": early.stopped_epoch if early else None,
        "params": parts.params,
        **_timings(trainer, fitted.loop_time if fitted.start_epoch == 1 else None, data.load_time, total_time),
        **_how_it_ran(where.launch),
        **names, "image_size": dataset.image_size, "split_digest": data.split["digest"],
        # the foreground classes (an axis of the results): test/iou_<class>, test/dice_<class>; [] when binary
        "classes": class_keys(dataset.class_names, dataset.num_classes) if dataset.num_classes > 1 else [],
        "threshold": result.threshold,
        "definitions": {**result.definitions, "checkpoint": f"best {fitted.monitor.key} (epoch {fitted.best.epoch})"},
        "provenance": where.launch,
    }
    run_dir.write_per_image(test_part.ids, result.per_image, test_part.groups, dataset.group_key)
    run_dir.write_metrics(metrics)
    log.info("test (best epoch %d, threshold %.2f, %s resolution): iou %.4f  dice %.4f  iou_score %.4f  hd95 %.2f  "
             "loss %.4f", fitted.best.epoch, result.threshold, where.evaluation.resolution, metrics["test/iou"],
             metrics["test/dice"], metrics["test/iou_score"], metrics["test/hd95"], metrics["test/loss"])
    log.info("test calibration: ece %.4f  brier %.4f%s", metrics["test/ece"], metrics["test/brier"],
             "" if "temperature" not in metrics else "; with temperature %.3f fitted on val: ece %.4f  brier %.4f"
             % (metrics["temperature"], metrics["test/ece_temperature"], metrics["test/brier_temperature"]))
    if distributed.current().main:
        from .report.figures import plot_curves, plot_predictions, plot_reliability

        plot_curves(run_dir, f"{names['model']} / {names['loss']} / {names['dataset']}")
        if metrics.get("calibration"):
            plot_reliability([("test", metrics["calibration"], metrics["test/ece"])], run_dir.reliability_png,
                             f"{names['model']} / {names['loss']}: test pixels")
        plot_predictions(run_dir, test_part, result.logits, result.threshold, where.evaluation.num_predictions,
                         result.per_image["iou"], dataset.class_names, where.evaluation.postprocess)
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


def _pruned(run_dir: RunDir, fitted: Fitted, where: Setup) -> dict[str, Any]:
    """A trial the search's pruner stopped: metrics.json says ``pruned`` (with the epoch and the best
    val epoch so far), next to its history and last checkpoint; no test scoring."""
    trainer, names, epoch = fitted.trainer, where.names, fitted.pruned_epoch
    metrics = {"status": "pruned", "pruned_epoch": epoch, **_best_epoch(trainer, fitted.best, fitted.monitor),
               "train_time_s": trainer.train_time, **names, "provenance": where.launch}
    run_dir.write_metrics(metrics)
    if distributed.current().main:
        from .report.figures import plot_curves

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
            "gpu": launch["gpu"], "world_size": launch.get("world_size", 1), "backend": launch.get("backend")}


def _how_to_compute(cfg: DictConfig, device: torch.device, saved: dict | None) -> tuple[str, bool]:
    """Precision and memory format: resolved for this machine, or, for a resumed run whose settings say
    ``auto``, the ones it started with (another machine may resolve ``auto`` otherwise), with a warning
    when this CPU lacks native bf16 for them."""
    precision = resolve_precision(str(cfg.trainer.precision), device)
    channels_last = resolve_channels_last(cfg.trainer.channels_last, device)
    before = started_settings(saved, device)
    if before.get("precision") and cfg.trainer.precision == "auto" and before["precision"] != precision:
        log.warning("resuming in %s, the precision this run started with (trainer.precision=auto would be %s "
                    "here)", before["precision"], precision)
        precision = resolve_precision(before["precision"], device)  # warns when this CPU has no native bf16
    if before.get("channels_last") is not None and cfg.trainer.channels_last == "auto":
        channels_last = bool(before["channels_last"])
    return precision, channels_last
