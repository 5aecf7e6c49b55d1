"""Comparison report over run directories: summary tables a person would rather read, and the plots.

Reads only what runs wrote (:mod:`segbench.report.collect`, through :class:`segbench.runs.RunDir`);
used by the multirun callback and by ``segbench compare``.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from ..evaluation.calibration import ece, reliability
from ..runs import RunDir
from ..runs.atomic import write_csv
from . import gallery, plots
from .collect import NUMBERS, RunRecord, configurations, describe_family, load_run, split_common_overrides
from .html import write_html
from .pooling import Comparison, pairwise, pool, statistics
from .pooling import markdown as statistics_markdown

log = logging.getLogger(__name__)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def aggregate(records: Sequence[RunRecord]) -> list[dict]:
    """One row of summary.csv per configuration (model, loss, other overrides): mean and std over its runs
    (seeds, folds) of :data:`~segbench.report.collect.NUMBERS`, ranked by test IoU."""
    table = []
    for (model, loss, overrides), runs in configurations(records).items():
        done = [r for r in runs if r.done]
        row = {"model": model, "loss": loss, "overrides": overrides, "runs": len(runs), "done": len(done),
               "failed": sum(r.status == "failed" for r in runs), "pruned": sum(r.status == "pruned" for r in runs),
               "monitor": "/".join(sorted({r.monitor for r in runs}))}
        for key in NUMBERS:
            row[key], row[f"{key}_std"] = _mean_std([r[key] for r in done])
        for key in dict.fromkeys(k for r in done for k in r.classes):  # multi-class runs: per class
            row[key], row[f"{key}_std"] = _mean_std([r.classes.get(key, math.nan) for r in done])
        # none done: what the runs are (failed, interrupted, damaged, ...), not "failed" for a run still going
        not_done = "/".join(sorted({r.status for r in runs if not r.done}))
        row["status"] = "done" if len(done) == len(runs) else ("partial" if done else not_done)
        row["seeds"] = ",".join(str(r.seed) for r in sorted(runs, key=lambda r: str(r.seed)))
        row["errors"] = " | ".join(sorted({r.error for r in runs if r.error}))
        table.append(row)
    table.sort(key=lambda r: (math.isnan(r["test/iou"]), -np.nan_to_num(r["test/iou"], nan=-1.0)))
    return table


def _fmt(value: float, std: float | None = None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{value:.{digits}f}"
    return f"{text} ± {std:.{digits}f}" if std is not None and not math.isnan(std) else text


def _markdown(table: Sequence[dict], rows: Sequence[RunRecord], split_note: str, common: Sequence[str],
              classes: Sequence[str] = ()) -> str:
    seeds = any(r["runs"] > 1 for r in table)
    lines = [
        f"# segbench comparison: {len(rows)} runs, {len(table)} configurations",
        "",
        f"Done: {sum(r.done for r in rows)}, failed: {sum(r.status == 'failed' for r in rows)}, "
        + (f"pruned: {sum(r.status == 'pruned' for r in rows)}, " if any(r.status == "pruned" for r in rows) else "")
        + f"other: {sum(r.status not in ('done', 'failed', 'pruned') for r in rows)}. "
        "Ranked by mean test IoU (per-image mean of the best checkpoint)"
        + (", mean ± std over seeds and folds." if seeds else ".")
        + f" Best {_monitors(rows)} is the val score that chose each run's checkpoint (what a search "
        "optimises): choose settings by it, and report test.",
        "",
        split_note,
        "",
        f"Overrides shared by all runs: `{' '.join(common)}`" if common else "No overrides shared by all runs.",
        "",
        "| rank | model | loss | overrides | test IoU | test Dice | thr. IoU | test HD95 (px) | test ECE | test Brier "
        f"| best {_monitors(rows)} "
        "| best epoch | params | train time (s) | images/s | runs | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(table, 1):
        sd = (lambda k: r[f"{k}_std"]) if r["done"] > 1 else (lambda k: None)
        params = "-" if math.isnan(r["params"]) else f"{int(r['params']):,}"
        status = r["status"] + (f" ({r['failed']} failed)" if r["failed"] and r["status"] != "failed" else "")
        lines.append(
            f"| {i} | {r['model']} | {r['loss']} | {r['overrides'] or '-'} | {_fmt(r['test/iou'], sd('test/iou'))} "
            f"| {_fmt(r['test/dice'], sd('test/dice'))} | {_fmt(r['test/iou_score'], sd('test/iou_score'))} "
            f"| {_fmt(r['test/hd95'], sd('test/hd95'), digits=1)} | {_fmt(r['test/ece'], sd('test/ece'), digits=4)} "
            f"| {_fmt(r['test/brier'], sd('test/brier'), digits=4)} | {_fmt(r['best_val'], sd('best_val'))} "
            f"| {_fmt(r['best_epoch'], digits=1)} | {params} | {_fmt(r['train_time_s'], digits=1)} "
            f"| {_fmt(r['images_per_s'], digits=1)} | {r['runs']} | {status} |"
        )
    lines += _class_lines(table, classes)
    failed = [r for r in rows if not r.done]
    if failed:
        lines += ["", "## Runs that did not finish", ""]
        lines += [f"- `{r.path.name}` ({r.status}): {r.error or 'no metrics.json'}" for r in failed]
    lines += ["", "Plots: `val_iou_curves.png`, `val_loss_curves.png`, `test_scores.png`, `heatmap_test_iou.png`.",
              "", ""]
    return "\n".join(lines)


def _class_lines(table: Sequence[dict], keys: Sequence[str]) -> list[str]:
    """Multi-class runs: each foreground class's test IoU and Dice (``keys``) per configuration, in the
    table's order."""
    if not keys:
        return []
    names = [k.split("/", 1)[1].replace("_", " ", 1) for k in keys]  # "iou core"
    lines = ["", "## Per class (multi-class runs: mean over foreground classes above)", "",
             "| rank | model | loss | overrides | " + " | ".join(names) + " |",
             "|---|---|---|---|" + "---|" * len(keys)]
    for i, r in enumerate(table, 1):
        sd = (lambda k: r.get(f"{k}_std")) if r["done"] > 1 else (lambda k: None)
        lines.append(f"| {i} | {r['model']} | {r['loss']} | {r['overrides'] or '-'} | "
                     + " | ".join(_fmt(r.get(k, math.nan), sd(k)) for k in keys) + " |")
    return lines


METRIC_NAMES = {"iou": "IoU", "dice": "Dice", "hd95": "HD95", "loss": "loss"}


def monitor_label(key: str) -> str:
    """``val/iou`` -> ``val IoU``, ``val/hd95`` -> ``val HD95``: a monitor key as a column heading."""
    part, _, metric = key.partition("/")
    return f"{part} {METRIC_NAMES.get(metric, metric)}" if metric else key


def _monitors(rows: Sequence[RunRecord]) -> str:
    """The monitor(s) of the runs: ``val IoU`` (or ``val IoU, val loss`` when they differ)."""
    return ", ".join(monitor_label(m) for m in sorted({r.monitor for r in rows})) or "val IoU"


def parse_baseline(text: str | None) -> dict[str, str] | None:
    """``"model=unet,loss=bce"`` -> {"model": "unet", "loss": "bce"}; a ValueError names what is wrong."""
    if not text:
        return None
    items = [part.split("=", 1) for part in text.split(",") if part.strip()]
    if not items or any(len(item) != 2 or not item[0].strip() for item in items):
        raise ValueError(f"--baseline {text!r} is invalid; expected key=value pairs joined by commas, "
                         "e.g. 'model=unet,loss=bce'")
    return {k.strip(): v.strip() for k, v in items}


def _baseline_key(table: Sequence[dict], wanted: dict[str, str]) -> tuple | None:
    """The configuration key (model, loss, overrides) that matches every key=value of ``wanted``."""
    for r in table:
        have = {"model": r["model"], "loss": r["loss"],
                **dict(o.split("=", 1) for o in r["overrides"].split(",") if "=" in o)}
        if all(have.get(k) == v for k, v in wanted.items()):
            return (r["model"], r["loss"], r["overrides"])
    return None


RELIABILITY_PNG = "reliability.png"


def pooled_diagram(runs: Sequence[RunRecord]) -> dict | None:
    """The reliability diagram of all the test pixels of ``runs`` (their metrics.json's, summed), with its
    ECE; None when one has none (a run of before calibration, or not done)."""
    diagrams = [r.calibration for r in runs]
    if not diagrams or any(not d for d in diagrams) or len({d["bins"] for d in diagrams}) > 1:
        return None
    pixels = np.sum([d["pixels"] for d in diagrams], axis=0)
    sums = [np.sum([[(m or 0.0) * n for m, n in zip(d[key], d["pixels"])] for d in diagrams], axis=0)
            for key in ("confidence", "outcome")]
    stats = np.concatenate([pixels, *sums, [math.nan, pixels.sum()]])  # calibration.image_stats' layout; no Brier
    return {**reliability(stats), "ece": ece(stats)}


def _calibration(groups: dict[tuple, list[RunRecord]], configs: Sequence, reference_label: str | None,
                 out_dir: Path) -> list[str]:
    """summary.md's calibration section and :data:`RELIABILITY_PNG`: the reference and the runner-up by IoU."""
    from .figures import plot_reliability

    reference = next((c for c in configs if c.label == reference_label), None)
    shown = [c for c in (reference, gallery.runner_up(configs, reference)) if c is not None]
    drawn = [(c.label, d, d["ece"]) for c in shown if (d := pooled_diagram(groups[c.key]))]
    if not drawn:
        return []
    plot_reliability(drawn, out_dir / RELIABILITY_PNG, "test pixels of each configuration's runs")
    return ["", "## Calibration", "",
            "How far to trust the probabilities: expected calibration error (ECE, 15 equal-width confidence bins "
            "over every test pixel) and Brier score per configuration are in the table above; "
            f"`{RELIABILITY_PNG}` draws the reliability of "
            + " and ".join(f"**{label}** (ECE {error:.4f} over its runs' pixels)" for label, _, error in drawn)
            + ". Binary masks: where the line is below the diagonal the foreground probability is too high, above "
            "it too low; a line steeper than the diagonal is under-confident (probabilities too close to 0.5), "
            "flatter over-confident.", ""]


def _split_note(rows: Sequence[RunRecord]) -> str:
    note = _family_note(rows)
    split = [r for r in rows if r.family]
    by_subject = [r for r in split if r.split_by == "subject"]
    if by_subject and len(by_subject) == len(split):
        note += " Split by subject (dataset.subjects): no subject has cases in two parts of a split."
    elif by_subject:
        note += (f" **{len(by_subject)} of the {len(split)} runs were split by subject** and the others by case: "
                 "their test sets differ.")
    return note


def _family_note(rows: Sequence[RunRecord]) -> str:
    families = sorted({r.family for r in rows if r.family}, key=str)
    if not families:
        return "No split recorded."
    if len(families) == 1:
        family = families[0]
        if family[0] == "kfold":
            folds = len({r.split for r in rows if r.family == family})
            return f"All runs use one {describe_family(family)} ({folds} folds run)."
        return f"All runs use the same split (digest {family[1]})."
    return (f"**Warning: the runs do not share one split definition** ({len(families)}: "
            f"{'; '.join(describe_family(f) for f in families)}); only runs with the same one are "
            "compared below, and their test scores in the table above are not comparable.")


def machine_note(rows: Sequence[RunRecord]) -> str:
    """A warning when the finished runs differ in torch version or kind of device (their numbers differ in
    the last digits for that alone), and a note when CPU runs ran on different CPU models; "" otherwise.
    Runs from before segbench 0.2 record neither and are left out."""
    done = [r for r in rows if r.done and r.provenance]
    lines = []
    for key, what in (("torch", "torch versions"), ("device_kind", "kinds of device")):
        values = sorted({str(r.provenance.get(key)) for r in done})
        if len(values) > 1:
            lines.append(f"**Warning: the runs ran on different {what}** ({', '.join(values)}): results differ "
                         "across these by rounding alone; compare runs of one setup where the difference is small.")
    cpus = sorted({str(r.provenance.get("cpu")) for r in done if r.provenance.get("device_kind") == "cpu"})
    if len(cpus) > 1:
        lines.append(f"Note: the CPU runs ran on {len(cpus)} CPU models ({'; '.join(cpus)}); CPU results are exact "
                     "on one machine but differ in the last digits across CPUs.")
    return "\n\n".join(lines)


def build_report(run_dirs: Sequence[RunDir], out_dir: Path, metric: str = "iou", baseline: str | None = None) -> dict:
    """Write summary.csv, runs.csv, summary.md and the plots into ``out_dir``; returns counts.

    ``metric`` (iou, dice or hd95) is the one the statistics compare; ``baseline`` (``"model=unet,loss=bce"``)
    the configuration they compare with (default: the best by mean)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = parse_baseline(baseline)
    rows = [load_run(d) for d in run_dirs]
    common = split_common_overrides(rows)
    table = aggregate(rows)
    classes = list(dict.fromkeys(k for r in rows for k in r.classes))  # multi-class runs' per-class metrics
    splits = sorted({r.split for r in rows if r.split})
    split_note = _split_note(rows)
    machines = machine_note(rows)
    if machines:
        split_note += "\n\n" + machines
        log.warning("%s", machines.replace("**", ""))
    pooled = [pool(key, runs) for key, runs in configurations(rows).items()]
    key = _baseline_key(table, wanted) if wanted else None
    result = statistics(pooled, metric, key if wanted else None)
    if wanted and key is None:
        result["notes"].insert(0, f"--baseline {baseline}: no configuration of these runs matches it")
    by_key = {c.config.key: c for c in result["rows"]}
    for r in table:
        r.update(by_key[(r["model"], r["loss"], r["overrides"])].columns(metric))
    columns = ["model", "loss", "overrides", "runs", "done", "failed", "pruned", "status", "seeds", "monitor"]
    columns += [c for k in NUMBERS for c in (k, f"{k}_std")]
    columns += [c for k in classes for c in (k, f"{k}_std")]
    columns += [*Comparison.column_names(metric), "errors"]
    write_csv(out_dir / "summary.csv", table, columns)
    run_columns = ["run", "model", "loss", "overrides", "seed", "status", "monitor", *NUMBERS, "split", "error"]
    write_csv(out_dir / "runs.csv", [{"run": str(r.path), "model": r.model, "loss": r.loss, "overrides": r.overrides,
                                      "seed": r.seed, "status": r.status, "monitor": r.monitor, **r.numbers,
                                      "split": r.split, "error": r.error} for r in rows], run_columns)
    markdown = _markdown(table, rows, split_note, common, classes) + "\n".join(statistics_markdown(result, metric))
    by_iou = result if metric == "iou" else statistics(pooled, "iou", key if wanted else None)
    markdown += "\n".join(gallery.draw(configurations(rows), pooled, by_iou["reference"], out_dir))
    markdown += "\n".join(_calibration(configurations(rows), pooled, by_iou["reference"], out_dir))
    search = out_dir / "search.md"  # a search's own part (segbench.search.report), written before the report
    if search.is_file():
        markdown += "\n" + search.read_text()
    (out_dir / "summary.md").write_text(markdown)
    plots.plot_per_image(pooled, metric, out_dir / f"per_image_{metric}.png")
    plots.plot_pairwise(*pairwise(pooled, metric), metric, out_dir / f"pairwise_{metric}.png")
    plots.curves(rows, "val/iou", "val IoU", out_dir / "val_iou_curves.png")
    plots.curves(rows, "val/loss", "val loss", out_dir / "val_loss_curves.png")
    plots.bars(table, out_dir / "test_scores.png")
    plots.heatmap(table, out_dir / "heatmap_test_iou.png")
    write_html(markdown, out_dir, f"segbench comparison: {out_dir.name}")  # the same, as one page with its figures
    counts = {"runs": len(rows), "configs": len(table), "done": sum(r.done for r in rows),
              "failed": sum(r.status == "failed" for r in rows), "pruned": sum(r.status == "pruned" for r in rows),
              "splits": len(splits)}
    log.info("report: %s in %s", counts, out_dir)
    return counts
