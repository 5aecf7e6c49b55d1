"""``run(cfg)``: build everything from the config, train, test the best checkpoint, write the run dir."""
from __future__ import annotations

import inspect
import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .errors import UserError
from .evaluate import PH2_DIAGNOSIS, by_group, choose_threshold, per_image, summarize, write_per_image_csv
from .io import load_checkpoint, write_csv, write_json
from .metrics import DEFINITIONS, image_metrics
from .plotting import plot_curves, plot_predictions
from .trainer import HISTORY_COLUMNS, Trainer

log = logging.getLogger(__name__)


def resolve_device(name: str, job_num: int | None = None) -> torch.device:
    """``auto`` -> cuda > mps > cpu; an explicit device must exist.

    In a multirun (``job_num`` given) on a machine with several GPUs, ``auto``
    spreads jobs over them round-robin (job i on GPU i mod count), so parallel
    launchers such as joblib give each job its own GPU.
    """
    if name == "auto":
        if torch.cuda.is_available():
            count = torch.cuda.device_count()
            return torch.device(f"cuda:{job_num % count}" if job_num is not None and count > 1 else "cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise UserError(f"trainer.device={name!r} is not a device; expected auto, cpu, cuda, cuda:N or mps") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"trainer.device={name!r} but CUDA is not available here; use trainer.device=auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"trainer.device={name!r} but MPS is not available here; use trainer.device=auto or cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"trainer.device={name!r} is not supported; expected auto, cpu, cuda, cuda:N or mps")
    return device


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` -> bf16 on GPUs that support it, else fp16 (with a grad scaler); fp32 on CPU and MPS."""
    if name not in PRECISIONS:
        raise UserError(f"trainer.precision={name!r} is invalid; expected one of {list(PRECISIONS)}")
    if name == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if name == "fp16" and device.type != "cuda":
        raise UserError(f"trainer.precision=fp16 needs a CUDA device (device is {device}); use bf16 or fp32")
    return name


def resolve_switch(value: Any, device: torch.device) -> bool:
    """A trainer switch (channels_last, compile): ``auto`` is on for CUDA and off elsewhere."""
    return device.type == "cuda" if value == "auto" else bool(value)


def optimizer_options(make_optimizer: Callable, optimizer_cfg: Any, device: torch.device) -> dict[str, Any]:
    """``{"fused": True}`` on CUDA for an optimizer that has a fused kernel (Adam, AdamW, SGD), unless the
    config sets ``fused`` itself. Nothing elsewhere: fused CPU kernels need torch >= 2.4, and the default keeps
    CPU results identical across torch versions."""
    func = getattr(make_optimizer, "func", make_optimizer)
    if device.type == "cuda" and "fused" in inspect.signature(func).parameters and "fused" not in optimizer_cfg:
        return {"fused": True}
    return {}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate(cfg: DictConfig) -> None:
    """Check run settings before any work; each error names the key, the value and what is allowed.

    Component arguments (model, loss, dataset) are checked by the components themselves
    when :func:`build` creates them, which also happens before any work.
    """
    t = cfg.trainer
    for key in ("epochs", "batch_size", "eval_batch_size", "log_every"):
        if not _is_int(t[key]) or t[key] < 1:
            raise UserError(f"trainer.{key}={t[key]!r} is invalid; expected an integer >= 1")
    for key in ("compile", "channels_last"):
        if t[key] not in (True, False, "auto"):
            raise UserError(f"trainer.{key}={t[key]!r} is invalid; expected true, false or auto")
    if t.get("resume") not in (None, "auto"):
        raise UserError(f"trainer.resume={t.resume!r} is invalid; expected null or 'auto'")
    threshold = cfg.eval.threshold
    if threshold != "auto" and (not _is_number(threshold) or not 0 < threshold < 1):
        raise UserError(f"eval.threshold={threshold!r} is invalid; expected a number in (0, 1) or 'auto'")
    if cfg.eval.resolution not in ("input", "original"):
        raise UserError(f"eval.resolution={cfg.eval.resolution!r} is invalid; expected 'input' or 'original'")
    if not _is_int(cfg.eval.num_predictions) or cfg.eval.num_predictions < 1:
        raise UserError(f"eval.num_predictions={cfg.eval.num_predictions!r} is invalid; expected an integer >= 1")
    if not _is_int(cfg.seed):
        raise UserError(f"seed={cfg.seed!r} is invalid; expected an integer")
    lr = cfg.optimizer.get("lr")
    if lr is not None and (not _is_number(lr) or lr <= 0):
        raise UserError(f"optimizer.lr={lr!r} is invalid; expected a number > 0")


def build(node: DictConfig, group: str, **kwargs: Any) -> Any:
    """instantiate() with a user-facing error when the component rejects its arguments."""
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, (ValueError, TypeError)):
            raise UserError(f"{group} ({node.get('_target_')}): {cause}") from cause
        raise


def _choices(cfg: DictConfig) -> dict[str, str]:
    """Option names the user picked (``model=unet``); falls back to class names outside Hydra."""
    if HydraConfig.initialized():
        choices = HydraConfig.get().runtime.choices
        return {g: str(choices.get(g)) for g in ("model", "loss", "optimizer", "scheduler", "dataset")}
    return {g: str(cfg[g].get("_target_", "")).rsplit(".", 1)[-1] for g in ("model", "loss", "optimizer", "scheduler", "dataset")}


def _ensure_log_file(out_dir: Path) -> None:
    """Hydra's job logging writes train.log; outside Hydra (tests, notebooks) add that file ourselves."""
    path = (out_dir / "train.log").resolve()
    root = logging.getLogger()
    if not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path for h in root.handlers):
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        root.addHandler(handler)
        root.setLevel(min(root.level, logging.INFO) if root.level else logging.INFO)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and test one configuration; returns the metrics written to ``metrics.json``.

    With ``trainer.resume=auto``, a run dir whose ``metrics.json`` says ``done`` is
    not trained again (its metrics are returned), and one with a ``last.pt``
    continues from it. A run that raises still leaves a ``metrics.json``, with
    status ``failed`` (or ``interrupted``) and the error, next to its last good
    checkpoint.
    """
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _ensure_log_file(out_dir)
    if cfg.trainer.get("resume") == "auto" and (out_dir / "metrics.json").is_file():
        previous = json.loads((out_dir / "metrics.json").read_text())
        if previous.get("status") == "done":
            log.info("%s is complete (metrics.json status done); not training again", out_dir)
            return previous
    try:
        return _run(cfg, out_dir)
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        status = "interrupted" if interrupted else "failed"
        error = "KeyboardInterrupt" if interrupted else f"{type(exc).__name__}: {exc}"
        write_json(out_dir / "metrics.json", {"status": status, "error": error})
        if interrupted or (out_dir / "checkpoints" / "last.pt").is_file():
            log.error("%s; the last finished epoch is in %s. Resume with:\n  %s", status, out_dir / "checkpoints",
                      resume_command(out_dir))
        raise


def resume_command(out_dir: Path) -> str:
    """The command that continues this run (or sweep) in place."""
    if not HydraConfig.initialized():
        return f"segbench.train.run(cfg) with output_dir={out_dir} trainer.resume=auto"
    hc = HydraConfig.get()
    overrides = [o for o in hc.overrides.task if not o.startswith("trainer.resume=")]
    if hc.mode == RunMode.MULTIRUN:
        return f"python -m segbench -m {' '.join(overrides)} hydra.sweep.dir={hc.sweep.dir} trainer.resume=auto"
    return f"python -m segbench {' '.join(overrides)} hydra.run.dir={out_dir} trainer.resume=auto"


# Config sections that must match for a checkpoint to be continued (paths and trainer switches may change).
RESUME_KEYS = ("model", "loss", "optimizer", "scheduler", "seed", "trainer.batch_size")
RESUME_IGNORED = ("dataset.root", "dataset.cache_dir", "dataset.workers")


def check_resumable(saved: dict, current: dict, path: Path) -> None:
    """Raise a UserError naming every setting that differs between the checkpoint's run and this one."""
    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(d, dict):
            return {prefix: d}
        return {k: v for key, val in d.items() for k, v in flat(val, f"{prefix}{key}.").items()}

    a = {k.rstrip("."): v for k, v in flat(saved).items()}
    b = {k.rstrip("."): v for k, v in flat(current).items()}
    keys = [k for k in sorted(set(a) | set(b))
            if (k.split(".")[0] in RESUME_KEYS or k in RESUME_KEYS or k.startswith("dataset."))
            and not k.startswith(RESUME_IGNORED)]
    diff = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]
    if diff:
        raise UserError(
            f"cannot resume from '{path}': its run had other settings ({'; '.join(diff)}); "
            "use the original settings, or a new run dir"
        )


def _run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    start = time.perf_counter()
    validate(cfg)
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    device = resolve_device(str(cfg.trainer.device), HydraConfig.get().job.num if multirun else None)
    seed_everything(int(cfg.seed))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    names = _choices(cfg)
    log.info("run dir %s; device %s; %s", out_dir, device, ", ".join(f"{k}={v}" for k, v in names.items()))

    on_gpu = device.type == "cuda"
    if on_gpu and device.index is not None:
        torch.cuda.set_device(device)  # this job's GPU (round-robin in a multirun), before anything touches GPU 0
    precision = resolve_precision(str(cfg.trainer.precision), device)
    torch.backends.cudnn.benchmark = on_gpu  # fixed input sizes: let cuDNN pick the fastest kernels

    # Build every component before loading data, so a config error costs nothing.
    model = build(cfg.model, "model").to(device)
    loss_fn = build(cfg.loss, "loss")
    make_optimizer = build(cfg.optimizer, "optimizer")
    optimizer = make_optimizer(params=model.parameters(), **optimizer_options(make_optimizer, cfg.optimizer, device))
    scheduler = build(cfg.scheduler, "scheduler")(optimizer=optimizer) if cfg.get("scheduler") else None
    dataset = build(cfg.dataset, "dataset")

    load_start = time.perf_counter()
    split = dataset.split()
    parts = dataset.parts(split)
    load_time = time.perf_counter() - load_start
    write_json(out_dir / "split.json", split)
    log.info(
        "data: %s, %d/%d/%d train/val/test at %dpx, loaded in %.2fs (split %s)",
        names["dataset"], len(parts["train"]), len(parts["val"]), len(parts["test"]),
        dataset.image_size, load_time, split["digest"],
    )
    params = sum(p.numel() for p in model.parameters())
    log.info("model: %s, %s parameters; precision %s", names["model"], f"{params:,}", precision)

    auto_threshold = cfg.eval.threshold == "auto"
    fixed_threshold = 0.5 if auto_threshold else float(cfg.eval.threshold)  # used for per-epoch val scores
    trainer = Trainer(
        model, loss_fn, optimizer, scheduler, device, out_dir,
        epochs=cfg.trainer.epochs, batch_size=cfg.trainer.batch_size,
        eval_batch_size=cfg.trainer.eval_batch_size, threshold=fixed_threshold,
        seed=int(cfg.seed), config=resolved, progress=bool(cfg.trainer.progress),
        log_every=int(cfg.trainer.log_every), precision=precision,
        channels_last=resolve_switch(cfg.trainer.channels_last, device),
        compile=resolve_switch(cfg.trainer.compile, device),
    )
    start_epoch = 1
    last = out_dir / "checkpoints" / "last.pt"
    if cfg.trainer.get("resume") == "auto" and last.is_file():
        state = load_checkpoint(last)  # read once: checked, then restored
        check_resumable(state["config"], resolved, last)
        start_epoch = trainer.resume(state)
        write_csv(out_dir / "history.csv", trainer.history, HISTORY_COLUMNS)  # drop rows of an unfinished epoch
        log.info("resuming from %s at epoch %d of %d", last, start_epoch, cfg.trainer.epochs)
    trainer.fit(parts["train"], parts["val"], start_epoch)
    trainer.load_best()
    test_part = parts["test"]
    threshold = choose_threshold(trainer.predict(parts["val"]), parts["val"].masks) if auto_threshold else fixed_threshold
    test_logits = trainer.predict(test_part)  # (N, C, H, W) on the CPU; every test number comes from these
    with torch.no_grad():
        test_loss = float(loss_fn(test_logits, test_part.masks.float()))
    original = cfg.eval.resolution == "original"
    masks = dataset.original_masks(test_part.ids) if original else test_part.masks
    rows = per_image(test_logits, masks, threshold)
    write_per_image_csv(out_dir / "test_per_image.csv", test_part, rows)
    test = {"test/loss": test_loss, **summarize(rows)}

    metrics: dict[str, Any] = {
        "status": "done",
        **test,
        "val/iou": trainer.best_iou,
        "best_epoch": trainer.best_epoch,
        "epochs": cfg.trainer.epochs,
        "params": params,
        "train_time_s": trainer.train_time,
        "images_per_s": trainer.train_images / trainer.train_time if trainer.train_time > 0 else math.nan,
        "data_load_s": load_time,
        "total_time_s": time.perf_counter() - start,
        "device": str(device),
        "precision": precision,
        **names,
        "image_size": dataset.image_size,
        "split_digest": split["digest"],
        "threshold": threshold,
        "definitions": {
            **DEFINITIONS,
            "threshold": threshold,
            "threshold_mode": "auto: maximises mean val IoU over 0.05..0.95" if auto_threshold else "fixed",
            "resolution": "original image size (predictions resized bilinearly)" if original
            else f"{dataset.image_size}x{dataset.image_size} (network input)",
            "checkpoint": f"best val/iou (epoch {trainer.best_epoch})",
        },
    }
    if test_part.diagnosis is not None:
        metrics["by_diagnosis"] = by_group(rows, test_part.diagnosis, PH2_DIAGNOSIS)
    write_json(out_dir / "metrics.json", metrics)
    log.info(
        "test (best epoch %d, threshold %.2f, %s resolution): iou %.4f  dice %.4f  iou_score %.4f  hd95 %.2f  loss %.4f",
        trainer.best_epoch, threshold, cfg.eval.resolution, test["test/iou"], test["test/dice"],
        test["test/iou_score"], test["test/hd95"], test_loss,
    )

    title = f"{names['model']} / {names['loss']} / {names['dataset']}"
    plot_curves(out_dir / "history.csv", out_dir / "curves.png", title)
    shown = test_part.subset(test_part.ids[: int(cfg.eval.num_predictions)])
    logits = test_logits[: len(shown)]
    scores = image_metrics(logits, shown.masks, threshold)["iou"].tolist()
    probs = torch.sigmoid(logits) if logits.shape[1] == 1 else 1 - torch.softmax(logits, 1)[:, :1]
    plot_predictions(shown.images, shown.masks, probs, shown.ids, scores, out_dir / "predictions.png", threshold)
    log.info("wrote %s", out_dir)
    return metrics
