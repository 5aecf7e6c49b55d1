"""Optional extras: importing a package that only an extra installs, with an error that names the extra."""
from __future__ import annotations

import importlib
from types import ModuleType

from .errors import UserError


def require(module: str, package: str, extra: str, needed_by: str) -> ModuleType:
    """Import ``module``, or raise a UserError saying that ``needed_by`` (``logger=mlflow``, ``--format
    onnx``) needs ``package`` and which ``pip install "segbench[<extra>]"`` installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UserError(f"{needed_by} needs the package '{package}', which is not installed: "
                        f'pip install "segbench[{extra}]"') from exc
