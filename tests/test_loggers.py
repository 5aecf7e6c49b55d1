"""logger=tensorboard / mlflow (read back with their own readers), failures that only warn, and
hparams_search=optuna."""
import csv
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from segbench.errors import UserError
from segbench.train import run

from .conftest import TINY, compose_cfg, needs

TRACKING = needs("mlflow", "tensorboard", extra="tracking")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@TRACKING
def test_tensorboard_and_mlflow_together(tmp_path):
    from mlflow import MlflowClient, search_runs, set_tracking_uri
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, uri = tmp_path / "run", f"sqlite:///{tmp_path / 'mlflow.db'}"
    metrics = run(compose_cfg([*TINY, f"output_dir={out}", "logger=[tensorboard,mlflow]",
                               "logger.tensorboard.image_every=1", f"logger.mlflow.tracking_uri={uri}"]))
    history = list(csv.DictReader(open(out / "history.csv")))
    # TensorBoard: the history's scalars per epoch, a figure of val predictions, the hparams view
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = events.Tags()
    assert {"val/iou", "val/loss", "val/dice", "train/loss", "train/iou", "lr"} <= set(tags["scalars"])
    assert [(e.step, e.value) for e in events.Scalars("val/iou")] == \
        [(int(r["epoch"]), pytest.approx(float(r["val/iou"]), rel=1e-6)) for r in history]
    assert [e.step for e in events.Images("val/predictions")] == [1, 2]
    hparams = EventAccumulator(str(out / "tensorboard")).Reload().PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in hparams
    # MLflow: one finished run with the config as params, the epochs as steps, the test metrics, the files
    set_tracking_uri(uri)
    runs = search_runs(experiment_names=["segbench"])
    assert len(runs) == 1 and runs.status[0] == "FINISHED"
    assert runs["params.optimizer.lr"][0] == "0.0001" and runs["params.model.base_width"][0] == "4"
    assert runs["metrics.test/iou"][0] == pytest.approx(metrics["test/iou"])
    assert runs["tags.run_dir"][0] == str(out.resolve())
    client = MlflowClient(uri)
    assert [(m.step, m.value) for m in client.get_metric_history(runs.run_id[0], "val/iou")] == \
        [(int(r["epoch"]), pytest.approx(float(r["val/iou"]))) for r in history]
    assert {a.path for a in client.list_artifacts(runs.run_id[0])} >= \
        {"metrics.json", "history.csv", "curves.png", "predictions.png"}


@needs("tensorboard", extra="tracking")
def test_a_bad_logger_setting_is_named_once(tmp_path):
    with pytest.raises(UserError, match=r"^logger.tensorboard.image_every=-1 is invalid; expected an integer >= 0"):
        run(compose_cfg([*TINY, f"output_dir={tmp_path}", "logger=tensorboard", "logger.tensorboard.image_every=-1"]))


@TRACKING
def test_unreachable_mlflow_warns_once_and_the_run_finishes(tmp_path, caplog):
    out = tmp_path / "run"
    metrics = run(compose_cfg([*TINY, f"output_dir={out}", "logger=mlflow",
                               f"logger.mlflow.tracking_uri=http://127.0.0.1:{free_port()}"]))
    assert metrics["status"] == "done" and json.loads((out / "metrics.json").read_text())["status"] == "done"
    warnings = [r for r in caplog.records if "logger mlflow failed" in r.getMessage()]
    assert len(warnings) == 1 and "training goes on without it" in warnings[0].getMessage()


def test_a_missing_package_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    with pytest.raises(UserError, match=r"logger=mlflow needs the package 'mlflow', which is not installed: "
                                        r"pip install \"segbench\[tracking\]\""):
        run(compose_cfg([*TINY, f"output_dir={tmp_path / 'run'}", "logger=mlflow"]))
    assert not (tmp_path / "run" / "history.csv").exists()  # refused before any training


@pytest.mark.slow
@TRACKING
def test_a_real_mlflow_server(tmp_path):
    """Start `mlflow server` on a free local port, log a tiny run to it over HTTP, read it back, stop it."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--default-artifact-root", (tmp_path / "artifacts").as_uri(), "--workers", "1"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        # tracking only: without its job executor (8 more Python processes that import mlflow, for its GenAI jobs)
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline and server.poll() is None, "mlflow server did not start"
            time.sleep(0.5)
        uri = f"http://127.0.0.1:{port}"
        metrics = run(compose_cfg([*TINY, f"output_dir={tmp_path / 'run'}", "logger=mlflow",
                                   f"logger.mlflow.tracking_uri={uri}", "logger.mlflow.log_model=true",
                                   "logger.mlflow.experiment_name=served"]))
        from mlflow import MlflowClient

        client = MlflowClient(uri)
        (found,) = client.search_runs([client.get_experiment_by_name("served").experiment_id])
        assert found.info.status == "FINISHED"
        assert found.data.metrics["test/iou"] == pytest.approx(metrics["test/iou"])
        assert "checkpoints" in {a.path for a in client.list_artifacts(found.info.run_id)}
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_one_process_at_a_time_creates_a_local_mlflow_store(tmp_path):
    """store_lock: a second holder waits until the first releases (parallel sweep jobs opening one new sqlite
    store would otherwise run MLflow's migrations at once and can leave it half-migrated)."""
    import threading
    import time

    from segbench.loggers.mlflow import store_lock

    store = tmp_path / "sub" / "mlflow.db"
    events = []

    def second():
        with store_lock(store):
            events.append("second acquired")

    with store_lock(store):
        events.append("first acquired")
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.3)
        events.append("first releases")
    thread.join(timeout=10)
    assert events == ["first acquired", "first releases", "second acquired"]
    assert (tmp_path / "sub" / "mlflow.db.lock").is_file()
    with store_lock(None):  # a server: nothing to lock
        pass
