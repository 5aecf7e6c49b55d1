"""``run(cfg)``: build everything from the config, train, test the best checkpoint, write the run dir."""
from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .errors import UserError
from .evaluate import PH2_DIAGNOSIS, by_group, choose_threshold, per_image, summarize
from .io import write_csv, write_json
from .metrics import DEFINITIONS, image_metrics
from .plotting import plot_curves, plot_predictions
from .trainer import Trainer

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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def validate(cfg: DictConfig) -> None:
    """Check trainer settings before any work; each error names the key, the value and what is allowed."""
    t = cfg.trainer
    for key in ("epochs", "batch_size", "eval_batch_size"):
        value = t[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"trainer.{key}={value!r} is invalid; expected an integer >= 1")
    threshold = cfg.eval.threshold
    if threshold != "auto" and (
        isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1
    ):
        raise UserError(f"eval.threshold={threshold!r} is invalid; expected a number in (0, 1) or 'auto'")
    if cfg.eval.resolution not in ("input", "original"):
        raise UserError(f"eval.resolution={cfg.eval.resolution!r} is invalid; expected 'input' or 'original'")


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


def write_test_rows(path: Path, part, rows: dict[str, list[float]]) -> None:
    """test_per_image.csv: case id, diagnosis (when known), every metric."""
    columns = ["case", "diagnosis", *[k for k in rows if k not in ("tp", "fp", "fn", "tn")], "tp", "fp", "fn", "tn"]
    table = []
    for i, case in enumerate(part.ids):
        label = None if part.diagnosis is None else PH2_DIAGNOSIS.get(part.diagnosis[i], part.diagnosis[i])
        table.append({"case": case, "diagnosis": "" if label is None else label, **{k: rows[k][i] for k in rows}})
    write_csv(path, table, columns)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and test one configuration; returns the metrics written to ``metrics.json``.

    A run that raises still leaves a ``metrics.json``, with status ``failed``
    (or ``interrupted``) and the error, next to its last good checkpoint.
    """
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _ensure_log_file(out_dir)
    try:
        return _run(cfg, out_dir)
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        write_json(out_dir / "metrics.json", {"status": status, "error": f"{type(exc).__name__}: {exc}"})
        raise


def _run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    start = time.perf_counter()
    validate(cfg)
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    device = resolve_device(str(cfg.trainer.device), HydraConfig.get().job.num if multirun else None)
    seed_everything(int(cfg.seed))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    names = _choices(cfg)
    log.info("run dir %s; device %s; %s", out_dir, device, ", ".join(f"{k}={v}" for k, v in names.items()))

    # Build every component before loading data, so a config error costs nothing.
    model = build(cfg.model, "model")
    loss_fn = build(cfg.loss, "loss")
    optimizer = build(cfg.optimizer, "optimizer")(params=model.parameters())
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
    log.info("model: %s, %s parameters", names["model"], f"{params:,}")

    auto_threshold = cfg.eval.threshold == "auto"
    fixed_threshold = 0.5 if auto_threshold else float(cfg.eval.threshold)  # used for per-epoch val scores
    trainer = Trainer(
        model, loss_fn, optimizer, scheduler, device, out_dir,
        epochs=cfg.trainer.epochs, batch_size=cfg.trainer.batch_size,
        eval_batch_size=cfg.trainer.eval_batch_size, threshold=fixed_threshold,
        seed=int(cfg.seed), config=resolved, progress=bool(cfg.trainer.progress),
        log_every=int(cfg.trainer.log_every),
    )
    trainer.fit(parts["train"], parts["val"])
    trainer.load_best()
    test_part = parts["test"]
    threshold = choose_threshold(trainer.predict(parts["val"]), parts["val"].masks) if auto_threshold else fixed_threshold
    test_loss = trainer.evaluate(test_part)["loss"]
    test_logits = trainer.predict(test_part)
    original = cfg.eval.resolution == "original"
    masks = dataset.original_masks(test_part.ids) if original else test_part.masks
    rows = per_image(test_logits, masks, threshold)
    write_test_rows(out_dir / "test_per_image.csv", test_part, rows)
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
    shown = parts["test"].subset(parts["test"].ids[: int(cfg.eval.num_predictions)])
    logits = trainer.predict(shown)
    scores = image_metrics(logits, shown.masks, threshold)["iou"].tolist()
    probs = torch.sigmoid(logits) if logits.shape[1] == 1 else 1 - torch.softmax(logits, 1)[:, :1]
    plot_predictions(shown.images, shown.masks, probs, shown.ids, scores, out_dir / "predictions.png", threshold)
    log.info("wrote %s", out_dir)
    return metrics
