"""segbench's Optuna sweeper for Hydra (``hparams_search=optuna``); see :mod:`.sweeper`."""
