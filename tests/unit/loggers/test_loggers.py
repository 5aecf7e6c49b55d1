"""logger=tensorboard / mlflow (read back with their own readers), failures that only warn, and
hparams_search=optuna."""
import csv
import sys
import time

import pytest

from segbench.errors import UserError
from segbench.train import run
from tests.conftest import TINY, compose_cfg, needs

TRACKING = needs("mlflow", "tensorboard", extra="tracking")


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




def test_a_missing_package_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    with pytest.raises(UserError, match=r"logger=mlflow needs the package 'mlflow', which is not installed: "
                                        r"pip install \"segbench\[tracking\]\""):
        run(compose_cfg([*TINY, f"output_dir={tmp_path / 'run'}", "logger=mlflow"]))
    assert not (tmp_path / "run" / "history.csv").exists()  # refused before any training




def test_one_process_at_a_time_creates_a_local_mlflow_store(tmp_path):
    """store_lock: a second holder waits until the first releases (parallel sweep jobs opening one new sqlite
    store would otherwise run MLflow's migrations at once and can leave it half-migrated)."""
    import threading

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
