"""Trained runs scored and used: the evaluation settings and the test step (:mod:`.scoring`, with
:func:`~.scoring.decide`, the one decision from logits to mask), a run as a model and ensembles of runs
(:mod:`.trained`), runs scored on datasets (:mod:`.datasets`) and exported (:mod:`.export`)."""
