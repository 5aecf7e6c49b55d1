"""hparams_search=optuna (segbench.search, hydra_plugins/segbench_search): the search space, a study that
persists and continues, n_trials as the study's total, trials run again when their process died, parallel
trials and cooperating processes, pruning, and what the search adds to the report."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from tests.conftest import ROOT, TINY, compose_cfg, needs, run_cli

optuna = pytest.importorskip("optuna", reason="the search extra is not installed: pip install 'segbench[search]'")

from hydra.core.utils import JobStatus  # noqa: E402
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from segbench.errors import UserError  # noqa: E402
from segbench.search.space import search_space  # noqa: E402
from segbench.search.study import DIR, HOST, PID, counted, recover_dead_trials, storage_of  # noqa: E402
from segbench.search.trial import TrialReporter, make_pruner  # noqa: E402

SEARCH = ["hparams_search=optuna", *(a for a in TINY if not a.startswith(("trainer.device", "trainer.threads")))]


def trial_dirs(sweep):
    return sorted(p.name for p in sweep.iterdir() if p.name.startswith("trial_"))


def test_the_search_space_in_override_syntax():
    space, fixed = search_space(["optimizer.lr=tag(log, interval(1e-4, 3e-3))", "augment.strength=interval(0.0, 1.5)",
                                 "trainer.batch_size=range(8, 33, 8)", "model.base_width=interval(4, 16)",
                                 "loss=choice(bce, dice)", "dataset.image_size=64", "loss=choice(bce, focal)"])
    assert space == {"optimizer.lr": FloatDistribution(1e-4, 3e-3, log=True),
                     "augment.strength": FloatDistribution(0.0, 1.5),
                     "trainer.batch_size": IntDistribution(8, 32, step=8),
                     "model.base_width": FloatDistribution(4.0, 16.0),  # Hydra's interval is of floats
                     "loss": CategoricalDistribution(["bce", "focal"])}  # the later one of a key
    assert fixed == {"dataset.image_size": "64"}
    with pytest.raises(UserError, match="hydra.sweeper.params"):
        search_space(["optimizer.lr=interval(1e-4"])


def test_pruners_by_name():
    assert isinstance(make_pruner("none", 10), optuna.pruners.NopPruner)
    assert isinstance(make_pruner("median", 10), optuna.pruners.MedianPruner)
    assert isinstance(make_pruner("hyperband", 10), optuna.pruners.HyperbandPruner)
    with pytest.raises(UserError, match=r"hydra.sweeper.pruner='asha' is invalid; expected one of"):
        make_pruner("asha", 10)


def test_a_trial_whose_process_died_is_failed_and_queued_again(tmp_path):
    import socket

    study = optuna.create_study(storage=storage_of(None, tmp_path), study_name="s", direction="maximize")
    done = study.ask({"x": FloatDistribution(0, 1)})
    study.tell(done, 0.5)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for pid in (dead.pid, os.getpid()):  # a process that ended, and a live one (another worker's trial)
        trial = study.ask({"x": FloatDistribution(0, 1)})
        for key, value in ((HOST, socket.gethostname()), (PID, pid), (DIR, f"trial_{trial.number}")):
            trial.set_user_attr(key, value)
    assert recover_dead_trials(study) == [1]
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    assert [t.number for t in counted(study)] == [0, 2]  # the dead one does not count; the retry will
    retry = study.ask({"x": FloatDistribution(0, 1)})  # the queued trial comes first, with the dead one's values
    assert retry.number == 3 and retry.params == study.trials[1].params and retry.user_attrs[DIR] == "trial_1"


def test_a_pruned_trial_is_recorded_and_listed_apart(tmp_path, monkeypatch):
    """The pruner stops a trial after a validated epoch: metrics.json says pruned, with its history and
    last.pt; the sweeper tells Optuna it was pruned; the report lists it and leaves it out of the statistics."""
    from hydra_plugins.segbench_search.sweeper import OptunaSweeper
    from segbench import train
    from segbench.report import build_report
    from segbench.runs import RunDir

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    trial = study.ask()
    monkeypatch.setattr(train, "_trial_reporter", lambda epochs, monitor: TrialReporter(trial, monitor))
    pruned, done = tmp_path / "trial_0", tmp_path / "trial_1"
    metrics = train.run(compose_cfg([*TINY, "trainer.epochs=4", f"output_dir={pruned}"]))
    assert metrics["status"] == "pruned" and metrics["pruned_epoch"] == 1 and "test/iou" not in metrics
    assert json.loads((pruned / "metrics.json").read_text())["status"] == "pruned"
    assert len((pruned / "history.csv").read_text().splitlines()) == 2 and (pruned / "checkpoints/last.pt").is_file()
    assert trial.storage.get_trial(trial._trial_id).intermediate_values == {1: metrics["val/iou"]}
    finished = SimpleNamespace(status=JobStatus.COMPLETED, return_value=metrics["val/iou"])
    assert OptunaSweeper._outcome(finished, pruned) == (TrialState.PRUNED, None)
    monkeypatch.undo()
    train.run(compose_cfg([*TINY, "loss=dice", f"output_dir={done}"]))  # another trial's settings
    value = json.loads((done / "metrics.json").read_text())["monitor"]["value"]
    assert OptunaSweeper._outcome(SimpleNamespace(status=JobStatus.COMPLETED, return_value=value), done) == \
        (TrialState.COMPLETE, value)
    counts = build_report([RunDir(pruned), RunDir(done)], tmp_path / "report")
    assert counts["pruned"] == 1 and counts["done"] == 1
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "| pruned |" in summary  # listed
    statistics = summary.split("## Statistics")[1]
    assert "| UNet / DiceLoss | 3 |" in statistics and "UNet / BCELoss: no finished run" in statistics  # left out


def test_a_killed_search_is_continued_and_extended_by_the_same_command(tmp_path):
    """n_trials is the study's total: kill -9 a search of 2 trials in its second one; the same command with
    n_trials=3 completes it (the killed trial failed and run again in its own dir, from its last.pt) and
    extends it by one trial, named by its trial number."""
    sweep = tmp_path / "search"
    args = [*SEARCH, "trainer.epochs=3", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen([sys.executable, "-m", "segbench", *args, "hydra.sweeper.n_trials=2"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while not (sweep / "trial_1" / "checkpoints" / "last.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "the search ended before it could be killed"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    result = run_cli([*args, "hydra.sweeper.n_trials=3"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trials 1 were running when their process ended" in result.stdout + result.stderr
    assert trial_dirs(sweep) == ["trial_0", "trial_1", "trial_3"]  # trial 2, the retry of 1, continued trial_1
    assert "resuming from" in (sweep / "trial_1" / "train.log").read_text()
    study = optuna.load_study(study_name="segbench", storage=storage_of(None, sweep))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL, *[TrialState.COMPLETE] * 2]
    assert study.trials[2].params == study.trials[1].params and len(counted(study)) == 3
    assert study.trials[3].params != study.trials[0].params  # the sampler's seed moved on: not a replay
    summary = (sweep / "summary.md").read_text()
    assert "## Search: study 'segbench'" in summary and "seed=0,1,2" in summary and "split.fold=0,1,2,3,4" in summary
    assert "| 1 | fail (its process died; run again as trial 2) |" in summary


def test_two_processes_share_one_journal(tmp_path):
    """Two search processes (say two SLURM array tasks) on one storage: one study, distinct trial dirs."""
    sweep = tmp_path / "search"
    args = [sys.executable, "-m", "segbench", *SEARCH, "trainer.epochs=1", "hydra.sweeper.n_trials=4",
            f"hydra.sweep.dir={sweep}"]
    procs = [subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]
    study = optuna.load_study(study_name="segbench", storage=storage_of(None, sweep))
    assert len(study.trials) == 4 and all(t.state == TrialState.COMPLETE for t in study.trials)
    assert trial_dirs(sweep) == ["trial_0", "trial_1", "trial_2", "trial_3"]
    assert len({t.user_attrs[PID] for t in study.trials}) == 2  # both worked on it


@needs("mlflow", extra="tracking")
def test_a_database_study_with_parallel_trials_and_mlflow(tmp_path):
    """sqlite storage beside mlflow (both on SQLAlchemy 2); n_jobs=2: two trials at once, one thread each
    on 2 cores, both logging to one new MLflow store (one experiment for the search)."""
    sweep, uri, db = tmp_path / "search", f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "search.db"
    result = run_cli([*SEARCH, "trainer.epochs=1", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2",
                      f"hydra.sweep.dir={sweep}", f"hydra.sweeper.storage=sqlite:///{db}", "logger=mlflow",
                      f"logger.mlflow.tracking_uri={uri}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="segbench", storage=f"sqlite:///{db}")
    values = {f"trial_{t.number}": t.value for t in study.trials}
    assert sorted(values) == trial_dirs(sweep) == ["trial_0", "trial_1"]
    from segbench.engine.device import usable_cores

    for name, value in values.items():
        metrics = json.loads((sweep / name / "metrics.json").read_text())
        assert metrics["monitor"]["value"] == pytest.approx(value) and not math.isnan(value)
        assert metrics["threads"] == max(1, usable_cores() // 2)
    from mlflow import search_runs, set_tracking_uri

    set_tracking_uri(uri)
    runs = search_runs(experiment_names=[str(sweep)])
    assert len(runs) == 2 and set(runs["tags.sweep_dir"]) == {str(sweep)}


def test_a_missing_optuna_names_the_extra(monkeypatch, capsys):
    from segbench.cli.main import main

    monkeypatch.setitem(sys.modules, "optuna", None)
    assert main(["hparams_search=optuna", "dataset=synthetic"]) == 2
    assert "needs the package 'optuna', which is not installed: pip install \"segbench[search]\"" in \
        capsys.readouterr().err


def test_the_direction_follows_the_monitor_and_a_contradiction_is_named(tmp_path):
    """direction=auto is the monitor's (what each trial returns); an explicit one against it fails before any
    trial, as a message with exit status 2."""
    from omegaconf import OmegaConf

    from hydra_plugins.segbench_search.sweeper import OptunaSweeper

    def direction(setting, trainer, fixed=None):
        sweeper = OptunaSweeper(direction=setting)
        sweeper.config = OmegaConf.create({"trainer": trainer})
        return sweeper._direction(fixed or {})

    assert direction("auto", {"monitor": "val/iou", "monitor_mode": "auto"}) == "maximize"
    assert direction("auto", {"monitor": "val/loss", "monitor_mode": "auto"}) == "minimize"
    fixed = {"trainer.monitor": "val/hd95"}
    assert direction("auto", {"monitor": "val/iou", "monitor_mode": "auto"}, fixed) == "minimize"
    assert direction("minimize", {"monitor": "val/dice", "monitor_mode": "min"}) == "minimize"
    with pytest.raises(
        UserError,
        match="hydra.sweeper.direction=maximize, but each trial returns trainer.monitor=val/loss, which is minimized",
    ):
        direction("maximize", {"monitor": "val/loss", "monitor_mode": "auto"})
    result = run_cli(
        [*SEARCH, "trainer.monitor=val/loss", "hydra.sweeper.direction=maximize", f"hydra.sweep.dir={tmp_path / 's'}"],
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "segbench: error: hydra.sweeper.direction=maximize" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "s" / "trial_0").exists()


def _trials_of(url, name="segbench"):
    try:
        return optuna.load_study(study_name=name, storage=url).trials
    except KeyError:  # not created yet
        return []


def test_two_workers_finish_one_postgresql_study_and_a_killed_trial_is_retried(tmp_path, postgres_url):
    """Two workers of docs' SLURM search recipe (scripts/slurm/search.sbatch, as array tasks run it) on one
    study in a real PostgreSQL server. One is killed in its trial (SIGKILL: a lost node); its heartbeat
    stops, and the other worker fails that trial after grace_period, runs it again in its dir from its
    last.pt, and finishes the study."""
    sweep = tmp_path / "search"
    args = ["bash", str(ROOT / "scripts" / "slurm" / "search.sbatch"), *SEARCH, "trainer.epochs=30",
            "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=2"]  # docs' SLURM recipe, here
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", "N_TRIALS": "2",
           "STORAGE": postgres_url, "SWEEP_DIR": str(sweep)}
    killed, other = (subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True, start_new_session=True, env=env) for _ in range(2))
    deadline, victim = time.time() + 120, None
    while victim is None and time.time() < deadline:
        for t in _trials_of(postgres_url):
            if t.state == TrialState.RUNNING and t.user_attrs.get(PID) == killed.pid and t.user_attrs.get(DIR) and \
                    (sweep / t.user_attrs[DIR] / "checkpoints" / "last.pt").is_file():  # its dir is set after its pid
                victim = t
        time.sleep(0.05)
    assert victim is not None, "the first worker never had a trial with an epoch done"
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    _, err = other.communicate(timeout=300)
    assert other.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    trials = _trials_of(postgres_url)
    assert trials[victim.number].state == TrialState.FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == victim.params
    assert retry[0].user_attrs[DIR] == victim.user_attrs[DIR] and retry[0].user_attrs[PID] == other.pid
    assert "resuming from" in (sweep / victim.user_attrs[DIR] / "train.log").read_text()
    study = optuna.load_study(study_name="segbench", storage=postgres_url)
    assert len(counted(study)) == 2 and all(t.state == TrialState.COMPLETE for t in counted(study))
    assert len(trial_dirs(sweep)) == 2
    search_md = (sweep / "search.md").read_text()
    assert f"| {victim.number} | fail (its process died; run again as trial {retry[0].number}) |" in search_md


def test_a_storage_path_that_is_not_a_journal_is_refused_before_it_is_written(tmp_path):
    notes = tmp_path / "notjournal.txt"
    notes.write_text("my notes\n")
    result = run_cli([*SEARCH, f"hydra.sweeper.storage={notes}", f"hydra.sweep.dir={tmp_path / 's'}"], cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"hydra.sweeper.storage={notes} is a file that is not an Optuna journal" in result.stderr
    assert notes.read_text() == "my notes\n"  # unchanged
    with pytest.raises(UserError, match=rf"hydra.sweeper.storage={tmp_path} is a directory; expected an Optuna"):
        storage_of(str(tmp_path), tmp_path)
    (tmp_path / "empty.journal").write_text("")
    storage_of(str(tmp_path / "empty.journal"), tmp_path)  # an empty file is a journal with no record yet
    with pytest.raises(UserError, match="notjournal.txt is not a directory"):
        storage_of(str(notes / "x.journal"), tmp_path)
