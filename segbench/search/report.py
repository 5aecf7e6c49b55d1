"""What a search adds to its sweep's report: the optimisation history, the parameter importances
(Optuna's own, with its matplotlib plots), the trials, and the best trial's overrides as a command that
runs it again with seeds or folds. Written to ``search.md`` in the sweep dir, which the comparison
report (``summary.md``) includes."""
from __future__ import annotations

import logging
import math
import shlex
import warnings
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from ..errors import describe
from ..runs.atomic import write_text

log = logging.getLogger("segbench.search")

SEARCH_MD = "search.md"
RESULTS = "optimization_results.yaml"   # hydra-optuna-sweeper's file, kept for scripts that read it


# the importance evaluator, named: optuna 5 changed get_param_importances' default (fANOVA -> PED-ANOVA)
IMPORTANCE = "PedAnovaImportanceEvaluator"


def importance_evaluator():
    import optuna

    return getattr(optuna.importance, IMPORTANCE)()

def best_command(config: DictConfig | None, best: dict[str, Any], searched: list[str]) -> list[str]:
    """``python -m segbench -m ...``: the search's own overrides (without ``hparams_search`` and the
    searched keys) and the best trial's values."""
    task = list(config.hydra.overrides.task) if config is not None else []
    keep = [o for o in task if not o.startswith(("hparams_search=", "hydra.")) and o.split("=", 1)[0] not in searched]
    values = [f"{k}={v}" for k, v in best.items()]
    return ["python", "-m", "segbench", "-m", *keep, *values]


def _save(plot: Any, path: Path) -> bool:
    import matplotlib.pyplot as plt

    try:
        axes = plot()
    except Exception as exc:  # too few trials, or one parameter only
        log.info("no %s: %s", path.name, describe(exc))
        return False
    figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
    figure.set_size_inches(8, 5)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def write_search_report(study: optuna.Study, sweep_dir: Path, fixed: dict[str, Any],
                        config: DictConfig | None = None) -> Path:
    """``search.md``, ``optimization_history.png``, ``param_importances.png`` and
    ``optimization_results.yaml`` in ``sweep_dir``; returns the markdown's path."""
    from optuna.visualization import matplotlib as plots

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Target and region quantiles")  # too few trials to tell apart

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    counts = {s.name.lower(): n for s in TrialState if (n := sum(t.state == s for t in trials))}
    lines = [f"## Search: study '{study.study_name}'", "",
             f"{len(trials)} trials ({', '.join(f'{n} {s}' for s, n in counts.items())}), "
             f"{study.direction.name.lower()} the value each trial returns (its monitored val metric; never test).", ""]
    if complete:
        best = study.best_trial
        OmegaConf.save(OmegaConf.create({"name": "optuna", "best_params": best.params, "best_value": best.value}),
                       sweep_dir / RESULTS)
        command = best_command(config, best.params, list(best.params))
        lines += [f"Best trial: {best.number} (`{best.user_attrs.get('trial_dir', f'trial_{best.number}')}`), "
                  f"value {best.value:.4f}. Run its settings again with 3 seeds, or over 5 folds:", "", "```bash",
                  shlex.join([*command, "seed=0,1,2"]),
                  shlex.join([*command, "split=kfold", "split.fold=0,1,2,3,4"]), "```", ""]
        try:
            importances = optuna.importance.get_param_importances(study, evaluator=importance_evaluator())
        except Exception as exc:  # fewer than two complete trials, or nothing searched
            importances = {}
            log.info("no parameter importances: %s", describe(exc))
        if importances:
            lines += [f"| parameter | importance (optuna.importance.{IMPORTANCE}) |", "|---|---|",
                      *(f"| {k} | {v:.3f} |" for k, v in importances.items()), ""]
    plotted = [name for name, plot in (("optimization_history.png", lambda: plots.plot_optimization_history(study)),
                                       ("param_importances.png", lambda: plots.plot_param_importances(
                                           study, evaluator=importance_evaluator())))
               if complete and _save(plot, sweep_dir / name)]
    if plotted:
        lines += ["Plots: " + ", ".join(f"`{p}`" for p in plotted) + ".", ""]
    params = sorted({k for t in trials for k in t.params})
    lines += ["| trial | state | value | epochs | " + " | ".join(params) + " |",
              "|---|---|---|---|" + "---|" * len(params)]
    retried_as = {n: t.number for t in trials for n in t.system_attrs.get("retry_history", [])}
    for t in trials:  # a retry of a journal study's dead trial says so in its user attrs
        if "retry_of" in t.user_attrs:
            retried_as.setdefault(int(t.user_attrs["retry_of"]), t.number)
    for t in trials:
        value = "" if t.value is None or not math.isfinite(t.value) else f"{t.value:.4f}"
        epochs = max(t.intermediate_values) if t.intermediate_values else ""
        state = t.state.name.lower() + (f" (its process died; run again as trial {retried_as[t.number]})"
                                        if t.number in retried_as else "")
        lines.append(f"| {t.number} | {state} | {value} | {epochs} | "
                     + " | ".join(_fmt(t.params.get(k)) for k in params) + " |")
    path = sweep_dir / SEARCH_MD
    write_text(path, "\n".join(lines) + "\n")
    return path


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.3g}" if isinstance(value, float) else str(value)
