"""MLflow over HTTP: a real tracking server on a local port (a process of its own), and one that is not there."""
import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from segbench.train import run
from tests.conftest import TINY, compose_cfg, free_port, needs

TRACKING = needs("mlflow", "tensorboard", extra="tracking")


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


@TRACKING
def test_unreachable_mlflow_warns_once_and_the_run_finishes(tmp_path, caplog):
    out = tmp_path / "run"
    metrics = run(compose_cfg([*TINY, f"output_dir={out}", "logger=mlflow",
                               f"logger.mlflow.tracking_uri=http://127.0.0.1:{free_port()}"]))
    assert metrics["status"] == "done" and json.loads((out / "metrics.json").read_text())["status"] == "done"
    warnings = [r for r in caplog.records if "logger mlflow failed" in r.getMessage()]
    assert len(warnings) == 1 and "training goes on without it" in warnings[0].getMessage()
