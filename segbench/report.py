"""Comparison report over run directories: summary tables and plots a person would rather look at.

Reads only what runs wrote, through :class:`segbench.rundir.RunDir`; used by the
multirun callback and by ``python -m segbench.compare``.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from . import report_stats  # noqa: E402
from .config import defining_overrides  # noqa: E402
from .errors import DataError  # noqa: E402
from .io import write_csv  # noqa: E402
from .rundir import RunDir  # noqa: E402

log = logging.getLogger(__name__)

SCORES = ["test/iou", "test/dice", "test/iou_score"]
NUMBERS = [*SCORES, "test/hd95", "val/iou", "best_epoch", "params", "train_time_s", "images_per_s"]
# overrides shown in their own columns, or aggregated over (seeds, and the folds of a cross-validation)
COLUMN_KEYS = ("model", "loss", "seed", "split.fold")


def per_class_keys(metrics: dict) -> list[str]:
    """A multi-class run's per-class test metrics (``test/iou_<class>``, ``test/dice_<class>``), in order."""
    return [k for k in metrics if k.startswith(("test/iou_", "test/dice_"))
            and k not in ("test/iou_score", "test/iou_micro", "test/dice_micro")]


def load_run(run_dir: RunDir) -> dict:
    """One run as a flat row: names, the overrides that define its configuration, status, metrics, history.
    A record that cannot be read is left out with a warning; the run's status is then ``damaged`` and its
    ``error`` names the file."""
    problems: list[str] = []

    def read(reader, default):
        try:
            return reader()
        except DataError as exc:
            log.warning("%s", exc)
            problems.append(str(exc))
            return default

    choices = read(run_dir.read_choices, {})
    metrics = read(run_dir.read_metrics, {})
    split = read(run_dir.read_split, {})
    other = sorted(o for o in defining_overrides(read(run_dir.read_overrides, []))
                   if o.split("=", 1)[0].lstrip("+~") not in COLUMN_KEYS)
    row = {
        "other": other,
        "run": run_dir.path,
        "model": metrics.get("model") or choices.get("model", "?"),
        "loss": metrics.get("loss") or choices.get("loss", "?"),
        "seed": read(run_dir.read_config, {}).get("seed"),
        "split": metrics.get("split_digest") or split.get("digest", ""),
        "family": report_stats.split_family(split) if split else None,
        "history": read(run_dir.read_history, []),
        "per_image": read(run_dir.read_per_image, []) if metrics.get("status") == "done" else [],
        "provenance": metrics.get("provenance") or {},
    }
    row["status"] = "damaged" if problems else run_dir.status()
    row["error"] = "; ".join(problems) or metrics.get("error", "")
    row.update({k: metrics.get(k, math.nan) for k in NUMBERS})
    row["classes"] = {k: metrics[k] for k in per_class_keys(metrics)}
    return row


def split_common_overrides(rows: Sequence[dict]) -> list[str]:
    """Keep in each row's ``overrides`` only what varies between runs; return what all runs share."""
    common = set.intersection(*(set(r["other"]) for r in rows)) if rows else set()
    for r in rows:
        r["overrides"] = ",".join(o for o in r["other"] if o not in common)
    return sorted(common)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def aggregate(rows: Sequence[dict]) -> list[dict]:
    """One row per configuration (model, loss, other overrides): mean and std over seeds, ranked by test IoU."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["loss"], r["overrides"]), []).append(r)
    table = []
    for (model, loss, overrides), runs in groups.items():
        done = [r for r in runs if r["status"] == "done"]
        row = {"model": model, "loss": loss, "overrides": overrides, "runs": len(runs),
               "done": len(done), "failed": sum(r["status"] == "failed" for r in runs)}
        for key in NUMBERS:
            row[key], row[f"{key}_std"] = _mean_std([r[key] for r in done])
        for key in dict.fromkeys(k for r in done for k in r["classes"]):  # multi-class runs: per class
            row[key], row[f"{key}_std"] = _mean_std([r["classes"].get(key, math.nan) for r in done])
        # none done: what the runs are (failed, interrupted, damaged, ...), not "failed" for a run still going
        not_done = "/".join(sorted({r["status"] for r in runs if r["status"] != "done"}))
        row["status"] = "done" if len(done) == len(runs) else ("partial" if done else not_done)
        row["seeds"] = ",".join(str(r["seed"]) for r in sorted(runs, key=lambda r: str(r["seed"])))
        row["errors"] = " | ".join(sorted({r["error"] for r in runs if r["error"]}))
        table.append(row)
    table.sort(key=lambda r: (math.isnan(r["test/iou"]), -np.nan_to_num(r["test/iou"], nan=-1.0)))
    return table


def _fmt(value: float, std: float | None = None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{value:.{digits}f}"
    return f"{text} ± {std:.{digits}f}" if std is not None and not math.isnan(std) else text


def _markdown(table: Sequence[dict], rows: Sequence[dict], split_note: str, common: Sequence[str],
              classes: Sequence[str] = ()) -> str:
    seeds = any(r["runs"] > 1 for r in table)
    lines = [
        f"# segbench comparison: {len(rows)} runs, {len(table)} configurations",
        "",
        f"Done: {sum(r['status'] == 'done' for r in rows)}, failed: {sum(r['status'] == 'failed' for r in rows)}, "
        f"other: {sum(r['status'] not in ('done', 'failed') for r in rows)}. "
        "Ranked by mean test IoU (per-image mean of the best checkpoint)"
        + (", mean ± std over seeds and folds." if seeds else ".")
        + " Best val IoU is the val score that chose each run's checkpoint (what hparams_search=optuna "
        "maximises): choose settings by it, and report test.",
        "",
        split_note,
        "",
        f"Overrides shared by all runs: `{' '.join(common)}`" if common else "No overrides shared by all runs.",
        "",
        "| rank | model | loss | overrides | test IoU | test Dice | thr. IoU | test HD95 (px) | best val IoU "
        "| best epoch | params | train time (s) | images/s | runs | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(table, 1):
        sd = (lambda k: r[f"{k}_std"]) if r["done"] > 1 else (lambda k: None)
        params = "-" if math.isnan(r["params"]) else f"{int(r['params']):,}"
        status = r["status"] + (f" ({r['failed']} failed)" if r["failed"] and r["status"] != "failed" else "")
        lines.append(
            f"| {i} | {r['model']} | {r['loss']} | {r['overrides'] or '-'} | {_fmt(r['test/iou'], sd('test/iou'))} "
            f"| {_fmt(r['test/dice'], sd('test/dice'))} | {_fmt(r['test/iou_score'], sd('test/iou_score'))} "
            f"| {_fmt(r['test/hd95'], sd('test/hd95'), digits=1)} | {_fmt(r['val/iou'], sd('val/iou'))} "
            f"| {_fmt(r['best_epoch'], digits=1)} | {params} | {_fmt(r['train_time_s'], digits=1)} "
            f"| {_fmt(r['images_per_s'], digits=1)} | {r['runs']} | {status} |"
        )
    lines += _class_lines(table, classes)
    failed = [r for r in rows if r["status"] != "done"]
    if failed:
        lines += ["", "## Runs that did not finish", ""]
        lines += [f"- `{r['run'].name}` ({r['status']}): {r['error'] or 'no metrics.json'}" for r in failed]
    lines += ["", "Plots: `val_iou_curves.png`, `val_loss_curves.png`, `test_scores.png`, `heatmap_test_iou.png`.", "", ""]
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


def _label(r: dict, with_seed: bool) -> str:
    parts = [r["model"], r["loss"]] + ([r["overrides"]] if r["overrides"] else [])
    if with_seed:
        parts.append(f"seed={r['seed']}")
    return " / ".join(parts)


def _curves(rows: Sequence[dict], key: str, ylabel: str, out: Path) -> None:
    """One line per run: colour by model, line style by loss (by run when models and losses do not vary)."""
    runs = [r for r in rows if r["history"]]
    models = sorted({r["model"] for r in runs})
    losses = sorted({r["loss"] for r in runs})
    with_seed = len({r["seed"] for r in runs}) > 1
    by_run = len(models) * len(losses) < len(runs) and (len(models) == 1 or len(losses) == 1)
    palette = plt.get_cmap("tab10" if len(models) <= 10 else "tab20").colors
    styles = ["-", "--", ":", "-."]
    markers = [None, "o", "s", "^", "v", "D"]
    fig, ax = plt.subplots(figsize=(12, 6.5))
    for i, r in enumerate(runs):
        if by_run:
            color, j = palette[i % len(palette)], i // len(palette)
        else:
            color, j = palette[models.index(r["model"]) % len(palette)], losses.index(r["loss"])
        validated = [h for h in r["history"] if not math.isnan(h[key])]  # trainer.val_every skips some epochs
        epochs = [h["epoch"] for h in validated]
        values = [h[key] for h in validated]
        ax.plot(epochs, values, styles[j % 4], marker=markers[(j // 4) % len(markers)], markersize=4,
                color=color, lw=1.8, label=_label(r, with_seed))
    ax.set(xlabel="epoch", ylabel=ylabel, title=f"{ylabel} of {len(runs)} runs"
           + ("" if by_run else " (colour: model, line: loss)"))
    ax.grid(alpha=0.3)
    if runs:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _bars(table: Sequence[dict], out: Path) -> None:
    done = [r for r in table if not math.isnan(r["test/iou"])][::-1]  # best at the top
    ticks = [report_stats.tick_label(" / ".join(p for p in (r["model"], r["loss"], r["overrides"]) if p))
             for r in done]
    rows = max(0.42, 0.14 * report_stats.label_lines(ticks))
    fig, ax = plt.subplots(figsize=(10, 1.2 + rows * max(len(done), 1)))
    y = np.arange(len(done))
    height = 0.27
    for j, (key, name) in enumerate(zip(SCORES, ["IoU", "Dice", "thresholded IoU"])):
        means = [r[key] for r in done]
        errs = [0 if r["done"] < 2 else r[f"{key}_std"] for r in done]
        ax.barh(y + (j - 1) * height, means, height, xerr=errs if any(errs) else None, label=name, capsize=2)
    ax.set_yticks(y, ticks, fontsize=8)
    ax.set(xlim=(0, 1), xlabel="test score (per-image mean)", title="test scores by configuration")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _heatmap(table: Sequence[dict], out: Path) -> None:
    models = sorted({r["model"] for r in table})
    losses = sorted({r["loss"] for r in table})
    grid = np.full((len(models), len(losses)), np.nan)
    for i, m in enumerate(models):
        for j, lo in enumerate(losses):
            values = [r["test/iou"] for r in table if r["model"] == m and r["loss"] == lo]
            values = [v for v in values if not math.isnan(v)]
            if values:
                grid[i, j] = float(np.mean(values))
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(losses), 1.2 + 0.7 * len(models)))
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=np.nanmin(grid) if np.isfinite(grid).any() else 0,
                   vmax=np.nanmax(grid) if np.isfinite(grid).any() else 1, aspect="auto")
    for i in range(len(models)):
        for j in range(len(losses)):
            text = "failed" if np.isnan(grid[i, j]) else f"{grid[i, j]:.3f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=9,
                    color="white" if np.isnan(grid[i, j]) or grid[i, j] < np.nanmean(grid) else "black")
    ax.set_xticks(range(len(losses)), losses)
    ax.set_yticks(range(len(models)), models)
    ax.set(xlabel="loss", ylabel="model", title="test IoU (mean over runs)")
    ax.set_facecolor("0.35")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


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


def _split_note(rows: Sequence[dict]) -> str:
    families = sorted({r["family"] for r in rows if r["family"]}, key=str)
    if not families:
        return "No split recorded."
    if len(families) == 1:
        family = families[0]
        if family[0] == "kfold":
            folds = len({r["split"] for r in rows if r["family"] == family})
            return f"All runs use one {report_stats.describe_family(family)} ({folds} folds run)."
        return f"All runs use the same split (digest {family[1]})."
    return (f"**Warning: the runs do not share one split definition** ({len(families)}: "
            f"{'; '.join(report_stats.describe_family(f) for f in families)}); only runs with the same one are "
            "compared below, and their test scores in the table above are not comparable.")


def machine_note(rows: Sequence[dict]) -> str:
    """A warning when the finished runs differ in torch version or kind of device (their numbers differ in
    the last digits for that alone), and a note when CPU runs ran on different CPU models; "" otherwise.
    Runs from before segbench 0.2 record neither and are left out."""
    done = [r for r in rows if r["status"] == "done" and r["provenance"]]
    lines = []
    for key, what in (("torch", "torch versions"), ("device_kind", "kinds of device")):
        values = sorted({str(r["provenance"].get(key)) for r in done})
        if len(values) > 1:
            lines.append(f"**Warning: the runs ran on different {what}** ({', '.join(values)}): results differ "
                         "across these by rounding alone; compare runs of one setup where the difference is small.")
    cpus = sorted({str(r["provenance"].get("cpu")) for r in done if r["provenance"].get("device_kind") == "cpu"})
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
    classes = list(dict.fromkeys(k for r in rows for k in r["classes"]))  # multi-class runs' per-class metrics
    splits = sorted({r["split"] for r in rows if r["split"]})
    split_note = _split_note(rows)
    machines = machine_note(rows)
    if machines:
        split_note += "\n\n" + machines
        log.warning("%s", machines.replace("**", ""))
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["loss"], r["overrides"]), []).append(r)
    pooled = [report_stats.pool(key, runs) for key, runs in groups.items()]
    key = _baseline_key(table, wanted) if wanted else None
    result = report_stats.statistics(pooled, metric, key if wanted else None)
    if wanted and key is None:
        result["notes"].insert(0, f"--baseline {baseline}: no configuration of these runs matches it")
    by_key = {r["config"].key: r for r in result["rows"]}
    for r in table:
        s = by_key[(r["model"], r["loss"], r["overrides"])]
        r.update({f"pooled_{metric}": s["mean"], f"pooled_{metric}_ci_low": s["ci_low"],
                  f"pooled_{metric}_ci_high": s["ci_high"], "cases": s["cases"], "difference": s["difference"],
                  "difference_ci_low": s["diff_ci_low"], "difference_ci_high": s["diff_ci_high"],
                  "p_wilcoxon": s["p"], "p_holm": s["p_holm"], "distinguishable": s["distinguishable"]})
    columns = ["model", "loss", "overrides", "runs", "done", "failed", "status", "seeds"]
    columns += [c for k in NUMBERS for c in (k, f"{k}_std")]
    columns += [c for k in classes for c in (k, f"{k}_std")]
    columns += [f"pooled_{metric}", f"pooled_{metric}_ci_low", f"pooled_{metric}_ci_high", "cases", "difference",
                "difference_ci_low", "difference_ci_high", "p_wilcoxon", "p_holm", "distinguishable", "errors"]
    write_csv(out_dir / "summary.csv", table, columns)
    run_columns = ["run", "model", "loss", "overrides", "seed", "status", *NUMBERS, "split", "error"]
    write_csv(out_dir / "runs.csv", [{**r, "run": str(r["run"])} for r in rows],
              run_columns)  # the history is not written
    markdown = _markdown(table, rows, split_note, common, classes) + "\n".join(report_stats.markdown(result, metric))
    (out_dir / "summary.md").write_text(markdown)
    report_stats.plot_per_image(pooled, metric, out_dir / f"per_image_{metric}.png")
    report_stats.plot_pairwise(*report_stats.pairwise(pooled, metric), metric, out_dir / f"pairwise_{metric}.png")
    _curves(rows, "val/iou", "val IoU", out_dir / "val_iou_curves.png")
    _curves(rows, "val/loss", "val loss", out_dir / "val_loss_curves.png")
    _bars(table, out_dir / "test_scores.png")
    _heatmap(table, out_dir / "heatmap_test_iou.png")
    counts = {"runs": len(rows), "configs": len(table), "done": sum(r["status"] == "done" for r in rows),
              "failed": sum(r["status"] == "failed" for r in rows), "splits": len(splits)}
    log.info("report: %s in %s", counts, out_dir)
    return counts
