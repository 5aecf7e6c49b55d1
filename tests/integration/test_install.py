"""Packaging: the wheel carries the config tree and a console script; users add configs of their own."""
import json
import subprocess
import sys
import zipfile

import pytest
import tomllib
import yaml
from setuptools import find_packages

from segbench.cli.main import COMMANDS
from tests.conftest import CONF, ROOT, TINY, run_cli


def test_pyproject_names_every_package():
    """pyproject.toml lists the packages by hand (conf/ and its folders are mapped into segbench.conf, and the
    sweeper lives in Hydra's namespace package hydra_plugins): none may be missing."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    plugins = {f"hydra_plugins.{p}" for p in find_packages(ROOT / "hydra_plugins")}
    conf = {"segbench.conf"} | {"segbench.conf." + d.relative_to(CONF).as_posix().replace("/", ".")
                                for d in CONF.rglob("*") if d.is_dir() and d.name != "__pycache__"}
    assert set(find_packages(ROOT, include=["segbench*"])) | conf | plugins == listed


MY_MODEL = '''
import torch


class MyNet(torch.nn.Module):
    """A user's own model: one 3x3 conv to logits."""

    def __init__(self, in_channels=3, num_classes=1, base_width=4):
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, num_classes, 3, padding=1)

    def forward(self, x):
        return self.conv(x)
'''


def _user_config(tmp_path):
    (tmp_path / "mymodels.py").write_text(MY_MODEL)
    folder = tmp_path / "myconf" / "model"
    folder.mkdir(parents=True)
    (folder / "mynet.yaml").write_text("_target_: mymodels.MyNet\nin_channels: 3\nnum_classes: 1\nbase_width: 4\n")
    return tmp_path / "myconf"


def test_own_config_folder_with_config_dir(tmp_path):
    """``--config-dir`` adds a folder of the user's YAML: model=mynet is their file, with their _target_."""
    conf = _user_config(tmp_path)
    run_dir = tmp_path / "run"
    result = run_cli(["--config-dir", str(conf), "model=mynet", *TINY, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "done" and metrics["model"] == "mynet" and metrics["params"] == 3 * 9 + 1


def test_own_config_folder_with_searchpath(tmp_path):
    conf = _user_config(tmp_path)
    result = run_cli([f"hydra.searchpath=[file://{conf}]", "model=mynet", "--cfg", "job"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert yaml.safe_load(result.stdout)["model"]["_target_"] == "mymodels.MyNet"


@pytest.mark.slow
def test_wheel_installs_a_working_cli(tmp_path):
    """pip wheel ., install it into a fresh venv, run the console script from an unrelated directory."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("segbench-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    for path in CONF.rglob("*.yaml"):
        assert f"segbench/conf/{path.relative_to(CONF).as_posix()}" in shipped, path

    # A fresh venv holding only the wheel; its dependencies (torch, hydra, ...) come from this environment,
    # through a .pth line placed after the venv's own site-packages (this checkout's editable install is not
    # on that path: .pth files of a directory added that way are not processed).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (tmp_path / "venv" / site.split(str(venv) + "/", 1)[1] / "deps.pth").write_text("\n".join(deps) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    str(wheel)], check=True, capture_output=True, timeout=300)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(python), "-c", "import segbench; print(segbench.__file__)"], cwd=elsewhere,
                           check=True, capture_output=True, text=True).stdout
    assert where.startswith(str(venv)), where  # the installed package, not this checkout
    segbench = venv / "bin" / "segbench"
    helped = subprocess.run([str(segbench), "--help"], cwd=elsewhere, capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0, helped.stderr[-2000:]
    listed = [line.split()[0] for line in helped.stdout.split("commands:\n")[1].split("\n\n")[0].splitlines()]
    assert listed == list(COMMANDS), helped.stdout  # every command, one line each
    helped = subprocess.run([str(segbench), "train", "--help"], cwd=elsewhere, capture_output=True, text=True,
                            timeout=120)
    assert helped.returncode == 0, helped.stderr[-2000:]
    assert "segbench" in helped.stdout and "model: " in helped.stdout and "unet_strided" in helped.stdout
    result = subprocess.run([str(segbench), *TINY], cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (elsewhere / "outputs").glob("*/*_unet_bce")
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "done"
