"""Composing the project's config outside a Hydra app (summary, check_data)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

# conf/ beside the package (an editable install), the same directory @hydra.main uses
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """conf/config.yaml composed with ``overrides`` as the CLI would, without creating a run dir."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))
