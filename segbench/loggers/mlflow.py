"""``logger=mlflow``: params, per-epoch metrics, test metrics and the run's files in an MLflow store.

The default store is ``sqlite:///mlflow.db`` in the working directory (beside ``outputs/``), with
artifacts in ``mlartifacts/``: ``mlflow ui --backend-store-uri sqlite:///mlflow.db`` shows it.
``logger.mlflow.tracking_uri=http://host:5000`` logs to a server instead.
"""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from ..config import flatten
from ..engine.callbacks import TrainerView
from ..errors import require
from .base import Logger, final_metrics

DEFAULT_URI = "sqlite:///mlflow.db"
# MLflow retries an unreachable server for minutes by default; a logger should give up soon and warn
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value


@contextlib.contextmanager
def store_lock(store: Path | None) -> Iterator[None]:
    """Hold an exclusive lock on ``<store>.lock`` beside a local sqlite store (nothing for a server, or
    where the OS has no ``fcntl``). Parallel jobs of a sweep that open one new store at once would run
    MLflow's table migrations concurrently; one interrupted by the other's leaves the file half-migrated
    ("table _alembic_tmp_latest_metrics already exists" for every later client). The lock is released when
    the process ends, however it ends."""
    try:
        import fcntl
    except ImportError:  # Windows: no parallel sweeps there (joblib processes share no store safely anyway)
        fcntl = None
    if store is None or fcntl is None:
        yield
        return
    store.parent.mkdir(parents=True, exist_ok=True)
    with open(store.with_name(store.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class MLflowLogger(Logger):
    """One MLflow run per segbench run: params = the resolved config flattened, per-epoch metrics
    (step = epoch), final test metrics, and artifacts (metrics.json, history.csv, curves.png,
    predictions.png; checkpoints/best.pt with ``log_model``). A multirun is one experiment (named
    after its sweep dir) with one run per job, each tagged with ``sweep_dir``; a resumed run
    continues its MLflow run (its id is kept in the checkpoints).

    Args:
        tracking_uri: where to log; null = ``sqlite:///mlflow.db`` in the working directory.
        experiment_name: null = ``segbench`` for a single run, the sweep dir for a multirun.
        run_name: null = the run directory's name.
        log_model: also upload the best checkpoint.
    """

    name = "mlflow"

    def __init__(self, tracking_uri: str | None = None, experiment_name: str | None = None,
                 run_name: str | None = None, log_model: bool = False) -> None:
        super().__init__()
        require("mlflow", "mlflow", "tracking", f"logger={self.name}")
        self.tracking_uri = tracking_uri or DEFAULT_URI
        self.experiment_name, self.run_name, self.log_model = experiment_name, run_name, bool(log_model)
        self.run_id: str | None = None
        self.client: Any = None

    def state_dict(self) -> dict | None:
        return {"run_id": self.run_id} if self.run_id else None

    def load_state_dict(self, state: dict) -> None:
        self.run_id = state.get("run_id")

    def _sweep_dir(self) -> str | None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            return str(HydraConfig.get().sweep.dir)
        return None

    def start(self, trainer: TrainerView, start_epoch: int) -> None:
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri, store = self.tracking_uri, None
        if uri.startswith("sqlite:///"):  # a local file: relative to the working directory, as outputs/ is
            store = Path(uri[len("sqlite:///"):]).resolve()
            uri = f"sqlite:///{store}"
        with store_lock(store):  # the client creates (migrates) a new store's tables: one process at a time
            self.client = self._retried(lambda: MlflowClient(tracking_uri=uri))
        if self.run_id is not None:  # a resumed run continues its MLflow run
            self.client.update_run(self.run_id, status="RUNNING")
            return
        sweep = self._sweep_dir()
        name = self.experiment_name or sweep or "segbench"
        # artifacts beside the database file (mlartifacts/), as `mlflow server` keeps them; a server decides
        location = (store.parent / "mlartifacts" / name.strip("/").replace("/", "_")).as_uri() if store else None
        with store_lock(store):
            # a local store: parallel jobs race to create it; a server has MLflow's own HTTP retries
            experiment_id = self._retried(lambda: self._experiment_id(name, location), attempts=6 if store else 1)
        tags = {"run_dir": str(self.run_dir.path.resolve()), **({"sweep_dir": sweep} if sweep else {})}
        run = self.client.create_run(experiment_id, run_name=self.run_name or self.run_dir.path.name, tags=tags)
        self.run_id = run.info.run_id
        params = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in flatten(self.config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def _experiment_id(self, name: str, location: str | None) -> str:
        """The experiment ``name``, created when missing."""
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        return self.client.create_experiment(name, artifact_location=location)

    @staticmethod
    def _retried(call: Callable[[], Any], attempts: int = 6) -> Any:
        """``call()``, again after a short wait when it fails: parallel jobs of a sweep may create the
        store's tables or the experiment at the same moment ("table ... already exists", "duplicate
        column", "database is locked", the experiment exists)."""
        for attempt in range(attempts - 1):
            try:
                return call()
            except Exception:  # noqa: BLE001 - the last attempt raises what it meets
                time.sleep(0.5 * (attempt + 1))
        return call()

    def _log_metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(k, float(v), stamp, step) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def log_epoch(self, trainer: TrainerView, row: dict[str, float]) -> None:
        # NaN: an epoch that was not validated (trainer.val_every)
        self._log_metrics({k: v for k, v in row.items() if k != "epoch" and v == v}, int(row["epoch"]))

    def finish(self, trainer: TrainerView, metrics: dict) -> None:
        self._log_metrics(final_metrics(metrics), int(metrics.get("best_epoch") or 0))
        run = self.run_dir
        for path in (run.metrics_json, run.history_csv, run.curves_png, run.predictions_png, run.per_image_csv):
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        if self.log_model and run.best_pt.is_file():
            self.client.log_artifact(self.run_id, str(run.best_pt), artifact_path="checkpoints")
        self.client.set_terminated(self.run_id, "FINISHED")

    def abort(self, exc: BaseException) -> None:
        if self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
