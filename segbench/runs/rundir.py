"""The run directory: every file name and format of a run, its writers and its readers.

    <run>/
      .hydra/{config,overrides,hydra}.yaml   written by Hydra (read here); .hydra/accepted/ holds a copy of
                                             the launch that trained the run (Hydra writes .hydra anew at
                                             every launch, a refused one too: the copy is put back)
      run.json                               the resolved config, and every launch's provenance
      train.log                              python logging
      split.json                             case ids of train / val / test, split settings, digest
      history.csv                            one row per epoch (HISTORY_COLUMNS)
      metrics.json                           test metrics of the best checkpoint, definitions, status
      test_per_image.csv                     every test metric per case
      checkpoints/last.pt, best.pt           trainer state; best.pt is a hard link to last.pt at the best epoch
      curves.png, predictions.png            plots (segbench.report.figures)
      augmentations.png                      training images and augmented draws (with augmentation)
      .segbench.lock                         flocked by the process training the run; says its host and pid

A sweep dir holds its job dirs, the report (``summary.md`` and its files) and
Hydra's ``multirun.yaml`` of the launch; an earlier launch into the same dir (a
narrower re-run, a resume) keeps its record as ``multirun.<n>.yaml``
(:func:`keep_sweep_record`), so the dir still says every sweep it holds.

Training, resume, the report, compare and the plots read and write these files
only through :class:`RunDir` (a sweep dir's launch records: the functions below
it). Files are replaced atomically, so a kill at any moment leaves the previous
complete file; a record that cannot be read is a DataError naming it.
"""
from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from ..errors import DataError, UserError, describe
from ..names import COUNT_COLUMNS, HISTORY_COLUMNS
from .atomic import copy_file, write_csv, write_json
from .checkpoint import CheckpointWriter, load_checkpoint


class RunDir:
    """One run directory. Paths are attributes; ``write_*``/``read_*`` are the only readers and writers."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.hydra = self.path / ".hydra"
        self.train_log = self.path / "train.log"
        self.split_json = self.path / "split.json"
        self.history_csv = self.path / "history.csv"
        self.metrics_json = self.path / "metrics.json"
        self.per_image_csv = self.path / "test_per_image.csv"
        self.checkpoints = self.path / "checkpoints"
        self.last_pt = self.checkpoints / "last.pt"
        self.best_pt = self.checkpoints / "best.pt"
        self.curves_png = self.path / "curves.png"
        self.predictions_png = self.path / "predictions.png"
        self.reliability_png = self.path / "reliability.png"
        self.augmentations_png = self.path / "augmentations.png"
        self.run_json = self.path / "run.json"
        self.accepted = self.hydra / "accepted"
        self._writer: CheckpointWriter | None = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @staticmethod
    def is_run(path: str | Path) -> bool:
        """Whether ``path`` is a run directory: it holds Hydra's record of a launch or a best checkpoint."""
        return (Path(path) / ".hydra" / "config.yaml").is_file() or (Path(path) / "checkpoints" / "best.pt").is_file()

    def create(self) -> "RunDir":
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    # -- split.json --------------------------------------------------------
    def write_split(self, split: dict) -> None:
        write_json(self.split_json, split)

    def read_split(self) -> dict:
        return _read_json(self.split_json)

    # -- history.csv -------------------------------------------------------
    def write_history(self, rows: Sequence[dict]) -> None:
        """HISTORY_COLUMNS, then any others the rows have (a multi-class run's val/iou_<class>, ...)."""
        extra = [k for k in (rows[0] if rows else {}) if k not in HISTORY_COLUMNS]
        write_csv(self.history_csv, rows, HISTORY_COLUMNS + extra)

    def read_history(self) -> list[dict[str, float]]:
        """Rows of history.csv as numbers (``epoch`` an int); [] when there is none."""
        if not self.history_csv.is_file():
            return []
        rows = _read_csv(self.history_csv)
        return [{k: int(v) if k == "epoch" else _float(v) for k, v in r.items()} for r in rows]

    # -- metrics.json ------------------------------------------------------
    def write_metrics(self, metrics: dict) -> None:
        write_json(self.metrics_json, metrics)

    def read_metrics(self) -> dict:
        """metrics.json, or {} when the run has none (not started, or killed before its end)."""
        return _read_json(self.metrics_json)

    def status(self) -> str:
        """done / failed / interrupted (from metrics.json), incomplete (epochs but no metrics), not started;
        damaged when metrics.json cannot be read (a resume then finishes the run and writes it again)."""
        try:
            metrics = self.read_metrics()
        except DataError:
            return "damaged"
        return metrics.get("status") or ("incomplete" if self.history_csv.is_file() else "not started")

    # -- test_per_image.csv ------------------------------------------------
    def write_per_image(self, ids: Sequence[str], rows: dict[str, list[float]],
                        groups: Sequence[str] | None = None, group_key: str | None = None) -> None:
        """One row per test case: case id, its group (e.g. PH2 diagnosis) when known, every metric, counts."""
        group_column = group_key or "group"
        rows = {k: v for k, v in rows.items() if not k.startswith("_")}  # private: e.g. calibration statistics
        metrics = [k for k in rows if k not in COUNT_COLUMNS]
        columns = ["case", group_column, *metrics, *[k for k in COUNT_COLUMNS if k in rows]]
        table = [{"case": case, group_column: "" if groups is None else groups[i], **{k: rows[k][i] for k in rows}}
                 for i, case in enumerate(ids)]
        write_csv(self.per_image_csv, table, columns)

    def read_per_image(self) -> list[dict[str, Any]]:
        """Rows of test_per_image.csv: the case id and its group (the first two columns) as text,
        metrics as numbers."""
        if not self.per_image_csv.is_file():
            return []
        rows = _read_csv(self.per_image_csv)
        text = set(list(rows[0])[:2]) if rows else set()
        return [{k: v if k in text else _float(v) for k, v in r.items()} for r in rows]

    # -- run.json ----------------------------------------------------------
    def read_record(self) -> dict:
        """run.json: ``{"config": the resolved config, "launches": [provenance of each launch, ...]}``;
        {} when the run has none (written before segbench 0.2, or not started)."""
        return _read_json(self.run_json)

    def write_record(self, config: dict, launch: dict) -> None:
        """The resolved ``config`` of this launch, and ``launch`` appended to the launches on record (a
        damaged run.json starts a new list: it is a record, not a result)."""
        try:
            launches = list(self.read_record().get("launches", []))
        except DataError:
            launches = []
        write_json(self.run_json, {"config": config, "launches": [*launches, launch]})

    def previous_config(self) -> dict | None:
        """The resolved config of the run this dir holds: run.json's, or (older dirs) a checkpoint's; None
        when there is none (nothing trained yet). A checkpoint that cannot be read raises its CheckpointError."""
        try:
            config = self.read_record().get("config")
        except DataError:
            config = None
        if config:
            return config
        for path in (self.last_pt, self.best_pt):
            if path.is_file():
                return load_checkpoint(path).get("config") or None
        return None

    # -- Hydra's record of the launch that trained the run ----------------
    HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")

    def keep_hydra_record(self) -> None:
        """Copy this launch's ``.hydra/*.yaml`` to ``.hydra/accepted/``: the launch that trains the run."""
        if not self.hydra.is_dir():
            return  # outside Hydra (tests, notebooks)
        for name in self.HYDRA_FILES:  # copies: Hydra rewrites its files in place, a hard link would follow
            if (self.hydra / name).is_file():
                copy_file(self.hydra / name, self.accepted / name)

    def restore_hydra_record(self) -> bool:
        """Put the accepted launch's ``.hydra/*.yaml`` back (Hydra wrote this launch's over them before the
        run could refuse it, or find it finished); False when there is no copy (a dir from before 0.2)."""
        if not all((self.accepted / name).is_file() for name in self.HYDRA_FILES):
            return False
        for name in self.HYDRA_FILES:
            copy_file(self.accepted / name, self.hydra / name)
        return True

    RESULTS = ("metrics_json", "history_csv", "per_image_csv", "split_json", "curves_png", "predictions_png",
               "reliability_png", "augmentations_png", "last_pt", "best_pt", "run_json")

    def remove_results(self) -> list[str]:
        """Delete what a run wrote (metrics, history, checkpoints, plots, split, record); train.log and
        Hydra's files stay. Returns the names removed."""
        removed = []
        for attribute in self.RESULTS:
            path: Path = getattr(self, attribute)
            if path.is_file():
                path.unlink()
                removed.append(str(path.relative_to(self.path)))
        return removed

    # -- checkpoints -------------------------------------------------------
    def save_checkpoint(self, state: dict, best: bool) -> None:
        """Write ``last.pt`` in the background (training waits only for a CPU copy of ``state``); with
        ``best``, ``best.pt`` becomes the same file. Waits for the previous write first."""
        if self._writer is None:
            self._writer = CheckpointWriter()
        self._writer.save(self.last_pt, state, also=[self.best_pt] if best else [])

    def wait_for_checkpoints(self) -> None:
        """Block until the last checkpoint write is on disk; raises its error (naming the file) once."""
        if self._writer is not None:
            self._writer.wait()

    def load_checkpoint(self, which: str = "last") -> dict:
        """``last`` or ``best``, every tensor on the CPU."""
        return load_checkpoint(self.best_pt if which == "best" else self.last_pt)

    # -- what Hydra wrote --------------------------------------------------
    def read_config(self) -> dict:
        return _read_yaml(self.hydra / "config.yaml") or {}

    def read_overrides(self) -> list[str]:
        return list(_read_yaml(self.hydra / "overrides.yaml") or [])

    def read_choices(self) -> dict[str, str]:
        """The option picked in each config group (``model: unet``), as Hydra recorded it."""
        hydra_cfg = (_read_yaml(self.hydra / "hydra.yaml") or {}).get("hydra", {})
        return dict(hydra_cfg.get("runtime", {}).get("choices", {}) or {})

    # -- train.log ---------------------------------------------------------
    def ensure_log_file(self) -> None:
        """Hydra's job logging writes train.log; outside Hydra (tests, notebooks) add that file ourselves."""
        path = self.train_log.resolve()
        root = logging.getLogger()
        if not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path for h in root.handlers):
            handler = logging.FileHandler(path)
            handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
            root.addHandler(handler)
            root.setLevel(min(root.level, logging.INFO) if root.level else logging.INFO)


class ReadingRunDir(RunDir):
    """A run dir as a rank other than 0 of a data-parallel run sees it: it reads what rank 0 writes and
    writes nothing itself."""

    def _nothing(self, *args: Any, **kwargs: Any) -> None:
        return None

    ensure_log_file = keep_hydra_record = _nothing  # type: ignore[assignment]
    write_split = write_history = write_metrics = write_per_image = write_record = _nothing  # type: ignore
    save_checkpoint = wait_for_checkpoints = _nothing  # type: ignore[assignment]

    def create(self) -> "ReadingRunDir":  # type: ignore[override]
        return self

    def remove_results(self) -> list[str]:
        return []


def find_runs(paths: Iterable[str | Path], trained: bool = False, required: bool = True) -> list[RunDir]:
    """The run directories named by ``paths``, each a run directory itself or a folder (a sweep) searched
    for them below, without repeats, sorted by path. A run directory holds Hydra's record of its launch
    (``.hydra/config.yaml``) or a checkpoint (``checkpoints/best.pt``: a run made by ``run(cfg)`` in
    Python); with ``trained``, only those with ``checkpoints/best.pt`` count. A path that is not a
    directory, or (``required``) that holds no such run, is a UserError naming it."""
    found: dict[Path, RunDir] = {}
    for path in map(Path, paths):
        if not path.is_dir():
            raise UserError(f"'{path}' is not a directory; expected a run directory or a folder of them (a sweep)")
        below = [path] if RunDir.is_run(path) else sorted(
            {p.parent.parent for pattern in (".hydra/config.yaml", "checkpoints/best.pt") for p in path.rglob(pattern)})
        runs = [RunDir(p) for p in below if not trained or RunDir(p).best_pt.is_file()]
        if not runs and required:
            what = "trained run (no checkpoints/best.pt)" if trained else "run directory (no .hydra/config.yaml)"
            raise UserError(f"'{path}' holds no {what} at or below it")
        found.update((r.path.resolve(), r) for r in runs)
    return [found[k] for k in sorted(found)]


SWEEP_RECORD = "multirun.yaml"  # Hydra writes the launch's config there, replacing an earlier launch's


def keep_sweep_record(sweep_dir: str | Path) -> Path | None:
    """Before a launch into ``sweep_dir``: move an earlier launch's ``multirun.yaml`` to
    ``multirun.<n>.yaml`` (n = 1, 2, ... in launch order); returns where it went, None if there was none."""
    current = Path(sweep_dir) / SWEEP_RECORD
    if not current.is_file():
        return None
    n = 1 + max((_record_number(p) for p in Path(sweep_dir).glob("multirun.*.yaml")), default=0)
    kept = current.with_name(f"multirun.{n}.yaml")
    current.replace(kept)
    return kept


def sweep_records(sweep_dir: str | Path) -> list[Path]:
    """The launch records of a sweep dir, earliest first: ``multirun.1.yaml``, ..., ``multirun.yaml``."""
    sweep_dir = Path(sweep_dir)
    kept = sorted((p for p in sweep_dir.glob("multirun.*.yaml") if _record_number(p)), key=_record_number)
    current = sweep_dir / SWEEP_RECORD
    return kept + ([current] if current.is_file() else [])


def _record_number(path: Path) -> int:
    """n of ``multirun.<n>.yaml``; 0 for any other name."""
    middle = path.name[len("multirun."):-len(".yaml")]
    return int(middle) if middle.isdigit() else 0


def _float(value: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _damaged(path: Path, exc: Exception) -> DataError:
    return DataError(f"'{path}' is damaged and cannot be read ({describe(exc)})")


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise _damaged(path, exc) from exc


# a run dir's records are a few KB (metrics.json, run.json, Hydra's YAML); a larger file is not segbench's
MAX_RECORD_BYTES = 16 * 2**20


def _record_text(path: Path) -> str:
    """The text of a record file, refused (a DataError naming it) when larger than MAX_RECORD_BYTES."""
    size = path.stat().st_size
    if size > MAX_RECORD_BYTES:
        raise _damaged(path, ValueError(f"{size / 2**20:.0f} MB, more than the {MAX_RECORD_BYTES // 2**20} MB "
                                        "a segbench record can be"))
    return path.read_text()


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(_record_text(path))
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise _damaged(path, exc) from exc
    except RecursionError:
        raise _damaged(path, ValueError("nested deeper than Python can parse")) from None
    if not isinstance(data, dict):
        raise _damaged(path, TypeError(f"a JSON {type(data).__name__}, not an object"))
    return data


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return yaml.safe_load(_record_text(path))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise _damaged(path, exc) from exc
    except RecursionError:
        raise _damaged(path, ValueError("nested deeper than Python can parse")) from None
