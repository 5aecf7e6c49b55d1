"""python -m segbench.rescore: finished runs scored again with the current definitions (rescore.py)."""
import json

from segbench.train import run
from tests.conftest import TINY, compose_cfg

TEST_KEYS = ["test/iou", "test/dice", "test/iou_score", "test/loss", "test/hd95", "val/iou", "best_epoch"]


def test_rescore_reproduces_a_runs_test_metrics(tmp_path, capsys):
    """Scoring a finished run again gives its own numbers (same checkpoint, split, threshold rule, TTA)."""
    from segbench import rescore

    out = tmp_path / "run"
    first = run(compose_cfg([*TINY, f"output_dir={out}", "eval.threshold=auto", "eval.tta=flips",
                             "eval.postprocess=largest", "eval.resolution=original"]))
    per_image = (out / "test_per_image.csv").read_text()
    damaged = {**first, "test/iou": -1.0, "test/hd95": -1.0}
    (out / "metrics.json").write_text(json.dumps(damaged))
    (out / "test_per_image.csv").unlink()
    assert rescore.main([str(out)]) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert {k: again[k] for k in TEST_KEYS + ["threshold", "val_final/iou"]} == \
        {k: first[k] for k in TEST_KEYS + ["threshold", "val_final/iou"]}
    assert again["rescored"]["before"]["test/iou"] == -1.0 and (out / "test_per_image.csv").read_text() == per_image
    assert "test/iou -1.0000 -> " in capsys.readouterr().out
    assert rescore.main([str(tmp_path / "nothing")]) == 2
