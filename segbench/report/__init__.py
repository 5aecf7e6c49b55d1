"""The comparison report over run directories: what each run recorded (:mod:`.collect`), per-image scores
pooled and compared (:mod:`.pooling`, :mod:`.stats`), the tables (:mod:`.render`) and plots
(:mod:`.plots`), and the sweep's Hydra callback that writes it (:mod:`.callback`)."""
from .render import build_report, parse_baseline

__all__ = ["build_report", "parse_baseline"]
