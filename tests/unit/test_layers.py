"""The package's layers (docs/architecture.md): every module imports only from its own layer or the layers
before it, read from the source (imports inside functions and under TYPE_CHECKING count too)."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "segbench"

# from the most basic to the commands; a module's layer is that of its first name below segbench
LAYERS = [
    ("base", {"", "errors", "validation", "metrics", "names"}),
    ("config", {"config"}),
    ("storage", {"runs", "compat"}),
    ("components", {"augment", "losses", "models", "data", "splits", "engine"}),
    ("build", {"build"}),
    ("features", {"loggers", "evaluation", "report", "search", "perf"}),
    ("run", {"train"}),
    # segbench/cli/, and the short modules that keep ``python -m segbench.<command>`` working
    ("commands", {"cli", "__main__", "bench", "check_data", "compare", "evaluate", "export", "predict", "rescore",
                  "summary", "upgrade_checkpoints"}),
]
RANK = {top: rank for rank, (_, tops) in enumerate(LAYERS) for top in tops}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top(module: str) -> str:
    return (module.split(".") + [""])[1]


def imports_of(name: str, is_package: bool, source: str) -> set[str]:
    """The segbench modules (or packages) that the module ``name`` with this ``source`` imports."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            if base.split(".")[0] == "segbench":
                found.add(base)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "segbench"}
    return found


def upward(name: str, found: set[str]) -> list[str]:
    mine = RANK[top(name)]
    return sorted(m for m in found if RANK.get(top(m), -1) > mine)


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    unplaced = sorted({top(module_name(p)) for p in MODULES} - set(RANK))
    assert not unplaced, f"add {unplaced} to a layer in LAYERS (and to docs/architecture.md)"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_go_to_the_same_or_a_more_basic_layer(path):
    name = module_name(path)
    bad = upward(name, imports_of(name, path.name == "__init__.py", path.read_text()))
    assert not bad, (f"{name} ({LAYERS[RANK[top(name)]][0]} layer) imports {bad} from a later layer: "
                     "move the shared piece down, or the caller up")


def test_the_checker_sees_relative_lazy_and_type_only_imports():
    source = ("from typing import TYPE_CHECKING\nfrom .device import x\nfrom ..runs import RunDir\n"
              "if TYPE_CHECKING:\n    from ..report.render import y\n"
              "def f():\n    import segbench.train\n")
    found = imports_of("segbench.engine.loop", False, source)
    assert found == {"segbench.engine.device", "segbench.runs", "segbench.report.render", "segbench.train"}
    assert upward("segbench.engine.loop", found) == ["segbench.report.render", "segbench.train"]
    assert imports_of("segbench.data", True, "from .base import SegArrays") == {"segbench.data.base"}
