"""Hyperparameter search on Optuna (``hparams_search=optuna``): the search space (:mod:`.space`), the
study and its storage (:mod:`.study`), the trial side of pruning (:mod:`.trial`) and the search's report
(:mod:`.report`). The Hydra sweeper itself is ``hydra_plugins.segbench_search.sweeper.OptunaSweeper``.
Optuna is imported by the submodules only: it is the ``search`` extra."""

TRIAL_ENV = "SEGBENCH_OPTUNA_TRIAL"  # set by the sweeper in each trial's environment: its trial number
