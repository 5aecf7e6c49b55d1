"""Measuring segbench: the benchmark loops (``segbench bench``) and the model summary (``segbench summary``)."""
