"""The one ``segbench`` command: its list of commands, each command's --help, and the python -m aliases."""
import importlib

import pytest

from segbench.cli.main import COMMANDS, main


def test_help_lists_every_command_with_one_line(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, (_, line) in COMMANDS.items():
        assert f"  {name} " in out and line in out


@pytest.mark.parametrize("name", [n for n in COMMANDS if n != "train"])  # train --help: Hydra's (test_install)
def test_each_command_prints_its_usage(name, capsys):
    try:
        status = main([name, "--help"])
    except SystemExit as exc:  # argparse's --help
        status = exc.code
    out = capsys.readouterr().out
    assert status == 0 and f"segbench {name}" in out


@pytest.mark.parametrize("name", COMMANDS)
def test_python_m_segbench_module_is_the_same_command(name):
    module = "__main__" if name == "train" else COMMANDS[name][0]
    alias = importlib.import_module(f"segbench.{module}")
    target = importlib.import_module("segbench.cli.main" if name == "train" else f"segbench.cli.{module}")
    assert alias.main is target.main




def test_a_first_argument_that_is_not_a_command_trains(monkeypatch):
    called = []
    monkeypatch.setattr("segbench.cli.train.main", lambda args: called.append(args) or 0)
    assert main(["model=unet", "loss=dice"]) == 0 and called == [["model=unet", "loss=dice"]]
    assert main(["train", "-m", "model=unet"]) == 0 and called[-1] == ["-m", "model=unet"]
