"""segbench's Hydra launcher plugin: ``hydra/launcher=slurm_local`` (see :mod:`.launcher`)."""
