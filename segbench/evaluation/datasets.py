"""Trained runs scored on labelled datasets: other datasets' cases (external validation), a run's own
split again (``rescore``), and ensembles of runs; the library of ``segbench evaluate`` and ``segbench rescore``.

Each run scores with its own input size, threshold (the one it chose), TTA and post-processing, at each
image's original resolution when it used ``eval.resolution=original``. :func:`evaluate` writes, per run,
a directory with test_per_image.csv, metrics.json (the metrics, their definitions and ``evaluated``) and
the run's Hydra record, which the comparison report reads; :func:`rescore` rewrites a run's own files.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml
from omegaconf import OmegaConf
from torch import nn

from ..build import build, build_saved
from ..config import compose_config, defining_overrides
from ..data import SegDataset
from ..data.files import FileDataset
from ..errors import DataError, SegbenchError, UserError
from ..names import HEADLINE
from ..runs import RunDir
from ..runs.atomic import write_text
from ..splits import split_digest
from .scoring import (
    EvalSettings,
    by_group,
    describe_scoring,
    image_means,
    per_image,
    pooled_reliability,
    predict_tta,
    score_test,
)
from .trained import Ensemble, TrainedModel, as_logits, load_trained

log = logging.getLogger(__name__)

PARTS = ("all", "train", "val", "test")
OVERRIDE_GROUPS = ("dataset", "split", "cache_dir")  # what evaluate takes of the config
REPLACED = ("test/", "val_final/", "by_", "calibration", "temperature")  # what scoring replaces in metrics.json
CHUNK = 32  # cases predicted at once: memory stays bounded on a large dataset scored at original size
ENSEMBLE_DIR = "ensemble"


# -- what is scored ---------------------------------------------------------------------------------
@dataclass
class Cases:
    """The cases a run is scored on. ``dataset_cfg`` None: each run's own test split (its split.json)."""

    dataset_cfg: dict | None = None
    ids: list[str] | None = None
    description: str = "the run's own test split (split.json)"
    split: dict | None = None  # split.json of the outputs (external datasets: the scored ids and a digest)


def external_cases(overrides: Sequence[str], part: str) -> Cases:
    """The dataset (and split) of ``overrides`` composed as ``python -m segbench`` would, with the case ids
    of ``part`` (``all``: every case). Only ``dataset`` and ``split`` overrides are taken."""
    wrong = [o for o in overrides if o.split("=", 1)[0].lstrip("+~").split(".")[0] not in OVERRIDE_GROUPS]
    if wrong:
        raise UserError(f"'{wrong[0]}': segbench evaluate takes dataset=..., dataset.KEY=..., split=..., "
                        "split.KEY=... and cache_dir=... overrides (the runs bring their own model and evaluation "
                        "settings)")
    cfg = compose_config(["experiment=none", *overrides])  # each preset's own values, not a recipe's
    dataset_cfg = OmegaConf.to_container(cfg.dataset, resolve=True)
    dataset: SegDataset = build(cfg.dataset, "dataset")
    ids = dataset.case_ids()
    preset = next((o.split("=", 1)[1] for o in overrides if o.startswith("dataset=")), "dataset")
    name = dataset_cfg.get("name") or preset
    if part == "all":
        description = f"every case of {name} ({dataset.describe()})"
    else:
        splitter = build(cfg.split, "split")
        # a file dataset names its groups without decoding an image (the runs decode at their own sizes)
        groups = dataset.read_groups(ids) if isinstance(dataset, FileDataset) else dataset.groups
        split = splitter.make(ids, groups, dataset.group_order, dataset.group_key, dataset.read_subjects(ids))
        ids = split[part]
        description = f"the {part} part of {name}'s {splitter.name} split {split['digest']} ({dataset.describe()})"
    if not ids:
        raise UserError(f"{description} holds no cases")
    scored = {"train": [], "val": [], "test": list(ids)}
    split = {**scored, "strategy": "evaluation", "dataset": name, "part": part,
             "sizes": [0, 0, len(ids)], "digest": split_digest({"dataset": [str(name)], **scored})}
    return Cases(dataset_cfg, list(ids), description, split)


class Datasets:
    """The evaluation dataset at each input size a run needs (each built once). ``source`` names where its
    config comes from: a run's checkpoint is someone else's file, whose config builds only a dataset class."""

    def __init__(self, base: dict, dataset_root: str | None = None, source: str = "the command line") -> None:
        self.base = dict(base, **({"root": dataset_root} if dataset_root else {}))
        self.source = source
        self.built: dict[int, SegDataset] = {}

    def at(self, size: int) -> SegDataset:
        if size not in self.built:
            self.built[size] = build_saved({**self.base, "image_size": size}, "dataset", SegDataset, self.source)
        return self.built[size]


def check_classes(member: TrainedModel, dataset: SegDataset, description: str) -> None:
    if member.num_classes != dataset.num_classes:
        raise UserError(f"{member.run_dir.path} predicts num_classes={member.num_classes} (model.num_classes) but "
                        f"{description} has num_classes={dataset.num_classes}; evaluate a run on a dataset of "
                        "the same classes")


# -- scoring ----------------------------------------------------------------------------------------
@dataclass
class Scored:
    """One output: the per-image columns of the scored cases and metrics.json's new entries."""

    ids: list[str]
    groups: list[str] | None
    columns: dict[str, list[float]]
    metrics: dict[str, Any]
    group_key: str | None


def _means(dataset: SegDataset, groups: list[str] | None, columns: dict[str, list[float]]) -> dict[str, Any]:
    metrics: dict[str, Any] = dict(image_means(columns))
    if groups is not None:
        metrics[f"by_{dataset.group_key or 'group'}"] = by_group(columns, groups, dataset.group_order)
    metrics["calibration"] = pooled_reliability(columns)
    return metrics


def _chunks(ids: Sequence[str]) -> list[list[str]]:
    return [list(ids[i : i + CHUNK]) for i in range(0, len(ids), CHUNK)]


def score_run(trained: TrainedModel, datasets: Datasets, cases: Cases) -> Scored:
    """One run on external cases, with its own size, threshold, TTA, post-processing and resolution
    (the logits resized to each original mask, as in training's test step)."""
    dataset = datasets.at(trained.image_size)  # its classes were checked before any run was scored
    settings = EvalSettings.from_config(trained.config.get("eval"))
    original = settings.resolution == "original"
    names = dataset.class_names if dataset.num_classes > 1 else None
    columns: dict[str, list[float]] = {}
    for chunk in _chunks(cases.ids or []):
        part = dataset.arrays.subset(chunk)
        logits = predict_tta(trained, part, trained.tta)  # (n, C, S, S)
        masks = dataset.original_masks(chunk) if original else part.masks
        for k, v in per_image(logits, masks, trained.threshold, trained.postprocess, names).items():
            columns.setdefault(k, []).extend(v)
    groups = dataset.arrays.subset(cases.ids).groups
    metrics = _means(dataset, groups, columns)
    metrics["threshold"] = trained.threshold
    metrics["definitions"] = describe_scoring(
        trained.threshold, "the run's own (chosen when it was trained)", None if original else trained.image_size,
        trained.tta, trained.postprocess, dataset.num_classes > 1)
    return Scored(list(cases.ids or []), groups, columns, metrics, dataset.group_key)


def score_own_split(trained: TrainedModel, dataset_root: str | None) -> tuple[Scored, dict]:
    """One run on its own split, as its training's test step scored it (the threshold chosen again on
    val when the run chooses it); returns the scores and its split.json."""
    config = trained.config
    trained.batch_size = int(config["trainer"]["eval_batch_size"])  # the run's own evaluation batches
    source = f"the checkpoint of {trained.run_dir.path}"
    dataset = Datasets(config["dataset"], dataset_root, source).at(int(config["dataset"]["image_size"]))
    split = trained.run_dir.read_split()
    if not split:
        raise DataError(f"'{trained.run_dir.split_json}' is missing: the run's own split cannot be scored; "
                        "give a dataset=... to score it on")
    parts = dataset.parts(split)
    loss = build_saved(config["loss"], "loss", nn.Module, source)
    settings = EvalSettings.from_config(config.get("eval"))
    result = score_test(trained, loss, dataset, parts["val"], parts["test"], settings)
    metrics = {**result.metrics, "threshold": result.threshold, "definitions": result.definitions}
    return Scored(parts["test"].ids, parts["test"].groups, result.per_image, metrics, dataset.group_key), split


def ensemble_resolution(ensemble: Ensemble) -> int | None:
    """The input size the ensemble is scored at; None: each image's original size (a member scores at the
    original size, or their input sizes differ)."""
    sizes = {m.image_size for m in ensemble.members}
    original = any(EvalSettings.from_config(m.config.get("eval")).resolution == "original" for m in ensemble.members)
    return None if original or len(sizes) > 1 else sizes.pop()


def score_ensemble(ensemble: Ensemble, datasets: Datasets, ids: list[str]) -> Scored:
    """The ensemble's mean probabilities on ``ids`` (:meth:`Ensemble.probabilities`), thresholded and
    post-processed once, scored at :func:`ensemble_resolution`. Its members predict the same classes
    (:meth:`Ensemble.of`), checked against the dataset before any run was scored."""
    size = ensemble_resolution(ensemble)
    first = datasets.at(ensemble.members[0].image_size)
    names = first.class_names if first.num_classes > 1 else None
    columns: dict[str, list[float]] = {}
    for chunk in _chunks(ids):
        masks = first.original_masks(chunk) if size is None else datasets.at(size).arrays.subset(chunk).masks
        sizes = [tuple(m.shape[-2:]) for m in masks]
        probs = ensemble.probabilities(lambda s: datasets.at(s).arrays.subset(chunk).images, sizes)
        logits = [as_logits(p) for p in probs]
        for k, v in per_image(logits, masks, ensemble.threshold, ensemble.postprocess, names).items():
            columns.setdefault(k, []).extend(v)
    groups = first.arrays.subset(ids).groups
    metrics = _means(first, groups, columns)
    metrics["threshold"] = ensemble.threshold
    tta = sorted({m.tta for m in ensemble.members})
    metrics["definitions"] = {
        **describe_scoring(ensemble.threshold, ensemble.threshold_mode, size,
                           tta[0] if len(tta) == 1 else "/".join(tta), ensemble.postprocess, first.num_classes > 1),
        "ensemble": "mean of the runs' probabilities (sigmoid, or softmax over classes), each run at its own "
                    "input size and TTA, resized bilinearly to the scored size; then one threshold and "
                    "post-processing",
    }
    return Scored(list(ids), groups, columns, metrics, first.group_key)


# -- writing ---------------------------------------------------------------------------------------
def output_names(runs: Sequence[RunDir]) -> list[str]:
    """A directory name per run: its own name, made unique with -2, -3, ... (runs of several sweeps)."""
    names: list[str] = []
    for run in runs:
        base = run.path.name or "run"
        name, n = base, 1
        while name in names or name == ENSEMBLE_DIR:
            n += 1
            name = f"{base}-{n}"
        names.append(name)
    return names


def check_output(path: Path) -> None:
    """An output dir is replaced only when it holds an earlier evaluation (never a training run)."""
    out = RunDir(path)
    if not path.exists() or not any(path.iterdir()):
        return
    try:
        metrics = out.read_metrics()
    except DataError:
        metrics = {}
    if "evaluated" not in metrics:
        raise UserError(f"'{path}' exists and does not hold an earlier segbench evaluate result (a training run, or "
                        "other files); choose another --output")


def check_others(output: Path, targets: Sequence[Path]) -> None:
    """``output`` holds no evaluation of other runs: its report would mix them with these (an earlier
    evaluation of the same runs, the same command again, is replaced)."""
    if not output.is_dir():
        return
    others = sorted(p.name for p in output.iterdir() if p.is_dir() and RunDir.is_run(p) and p not in set(targets))
    if others:
        listed = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise UserError(f"'{output}' holds the evaluation of other runs ({listed}); its report would mix them with "
                        "these: choose another --output, or remove them first")


def with_scores(metrics: dict, scores: dict) -> dict:
    """A run's metrics.json with its test scores (``test/*``, ``val_final/*``, ``by_*``) replaced by ``scores``;
    the training record (best epoch, timings, ...) kept."""
    return {**{k: v for k, v in metrics.items() if not k.startswith(REPLACED)}, **scores}


def write_output(out: RunDir, scored: Scored, base_metrics: dict, evaluated: dict, split: dict,
                 hydra: dict[str, Any]) -> dict:
    """metrics.json (the scores over the run's other records), test_per_image.csv, split.json and the Hydra
    record the report reads."""
    out.create()
    for name, content in hydra.items():
        write_text(out.hydra / name, yaml.safe_dump(content, sort_keys=False))
    metrics = with_scores({k: v for k, v in base_metrics.items() if k != "rescored"}, scored.metrics)
    metrics["status"] = "done"
    metrics["split_digest"] = split.get("digest")  # the scored cases (the report pairs runs by it)
    metrics["evaluated"] = evaluated
    out.write_split(split)
    out.write_per_image(scored.ids, scored.columns, scored.groups, scored.group_key)
    out.write_metrics(metrics)
    return metrics


def hydra_record(run: RunDir, config: dict) -> dict[str, Any]:
    """What the report reads of a run's launch: its .hydra files, or (a run made by ``run(cfg)`` in Python)
    its config with no overrides."""
    record: dict[str, Any] = {"config.yaml": run.read_config() or config, "overrides.yaml": run.read_overrides()}
    choices = run.read_choices()  # what the report reads of hydra.yaml (a damaged file: a DataError naming it)
    if choices:
        record["hydra.yaml"] = {"hydra": {"runtime": {"choices": choices}}}
    return record


def ensemble_record(members: Sequence[TrainedModel]) -> dict[str, Any]:
    """The ensemble's Hydra record for the report: the overrides its runs share (seeds aside), plus
    ``ensemble=<n>``, so that it is a configuration of its own next to its runs."""
    records = [set(defining_overrides(m.run_dir.read_overrides())) for m in members]
    shared = sorted(set.intersection(*records)) if records else []
    shared = [o for o in shared if o.split("=", 1)[0].lstrip("+~") != "seed"]
    seeds = "+".join(str(m.config.get("seed")) for m in members)
    return {"config.yaml": {**members[0].config, "seed": seeds},
            "overrides.yaml": [*shared, f"ensemble={len(members)}"]}


def _one_name(values: Sequence[Any]) -> str:
    names = list(dict.fromkeys(str(v) for v in values))
    return names[0] if len(names) == 1 else "+".join(names)


# -- runs scored -----------------------------------------------------------------------------------
def rescore(run_dir: RunDir, device: str = "cpu", dataset_root: str | None = None) -> tuple[dict, dict]:
    """Score ``run_dir``'s best checkpoint on its own split again; rewrites its metrics.json and
    test_per_image.csv (training results kept, the rescoring recorded under ``rescored``).
    Returns (old metrics, new metrics)."""
    old = run_dir.read_metrics()
    if old.get("status") != "done":
        raise SegbenchError(f"{run_dir.path}: status {old.get('status') or 'unknown'}; only finished runs are rescored")
    scored, _ = score_own_split(load_trained(run_dir.path, "best", device), dataset_root)
    new = with_scores(old, scored.metrics)
    new["definitions"] = {**scored.metrics["definitions"], "checkpoint": old.get("definitions", {}).get("checkpoint")}
    new["rescored"] = {"at": time.strftime("%Y-%m-%d %H:%M:%S"), "by": "segbench evaluate --in-place",
                       "before": {k: old.get(k) for k in (*HEADLINE, "threshold")}}
    run_dir.write_per_image(scored.ids, scored.columns, scored.groups, scored.group_key)
    run_dir.write_metrics(new)
    return old, new


def evaluate(runs: Sequence[RunDir], output: Path, overrides: Sequence[str] = (), part: str = "all",
             ensemble: bool = False, device: str = "cpu", dataset_root: str | None = None,
             threshold: float | None = None, postprocess: str | None = None) -> list[Path]:
    """Score ``runs`` (and with ``ensemble`` their ensemble) into ``output``; returns the output run
    directories (the comparison report over them is :func:`segbench.report.build_report`'s)."""
    recorded = [run.read_metrics() for run in runs]  # each run's metrics.json, read once
    for run, metrics in zip(runs, recorded):
        if metrics.get("status") != "done":
            raise UserError(f"{run.path}: status {run.status()}; only finished runs are evaluated")
    members = [load_trained(run.path, "best", device) for run in runs]
    cases = external_cases(overrides, part) if overrides else Cases()
    names = output_names(runs)
    targets = [output / n for n in names] + ([output / ENSEMBLE_DIR] if ensemble else [])
    check_others(output, targets)
    for target in targets:
        check_output(target)
    group = Ensemble.of(members, threshold, postprocess) if ensemble else None  # errors before any scoring
    if cases.dataset_cfg is not None:  # the dataset's root is in the overrides (--dataset-root: a run's own data)
        datasets = Datasets(cases.dataset_cfg)
        for member in members:  # every run checked before any is scored (building reads no image)
            check_classes(member, datasets.at(member.image_size), cases.description)
    else:
        datasets = Datasets(members[0].config["dataset"], dataset_root, f"the checkpoint of {members[0].run_dir.path}")
    if group is not None and cases.dataset_cfg is None:
        digests = {m.run_dir.read_split().get("digest") for m in members}
        if len(digests) > 1:
            raise UserError(f"the runs do not share one test split ({len(digests)} split digests: k-fold models, or "
                            "other split settings); an ensemble is scored on cases none of its runs trained on: "
                            "give a dataset=... they did not see")
    written = []
    at = time.strftime("%Y-%m-%d %H:%M:%S")
    for member, record, target in zip(members, recorded, targets):
        log.info("scoring %s on %s", member.run_dir.path, cases.description)
        if cases.dataset_cfg is None:
            scored, split = score_own_split(member, dataset_root)
        else:
            scored, split = score_run(member, datasets, cases), cases.split or {}
        evaluated = {"run": str(member.run_dir.path.resolve()), "checkpoint": "best", "cases": cases.description,
                     "dataset": {**(cases.dataset_cfg or member.config["dataset"]), "image_size": member.image_size},
                     "at": at,
                     "by": "segbench evaluate"}
        metrics = write_output(RunDir(target), scored, record, evaluated, split,
                               hydra_record(member.run_dir, member.config))
        log.info("%s: test IoU %.4f, Dice %.4f, HD95 %.2f (%d cases) -> %s", member.run_dir.path, metrics["test/iou"],
                 metrics["test/dice"], metrics["test/hd95"], len(scored.ids), target)
        written.append(target)
    if group is not None:
        ids = cases.ids if cases.ids is not None else members[0].run_dir.read_split()["test"]
        description = cases.description if cases.dataset_cfg is not None else "the runs' common test split"
        scored = score_ensemble(group, datasets, list(ids))
        split = cases.split if cases.split is not None else members[0].run_dir.read_split()
        evaluated = {"ensemble": [str(m.run_dir.path.resolve()) for m in members], "checkpoint": "best",
                     "cases": description, "dataset": {**datasets.base, "image_size": "each run's own"}, "at": at,
                     "by": "segbench evaluate --ensemble",
                     "threshold": group.threshold, "postprocess": group.postprocess}
        base = {"model": _one_name(r.get("model") for r in recorded),
                "loss": _one_name(r.get("loss") for r in recorded),
                "classes": recorded[0].get("classes", []), "provenance": recorded[0].get("provenance", {})}
        metrics = write_output(RunDir(output / ENSEMBLE_DIR), scored, base, evaluated, split, ensemble_record(members))
        log.info("ensemble of %d: test IoU %.4f, Dice %.4f, HD95 %.2f -> %s", len(members), metrics["test/iou"],
                 metrics["test/dice"], metrics["test/hd95"], output / ENSEMBLE_DIR)
        written.append(output / ENSEMBLE_DIR)
    return written


