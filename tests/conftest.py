import os
import sys
from pathlib import Path

# The suite runs in 2 pytest-xdist workers that also start CLI subprocesses, so several torch processes
# share the cores; OpenMP threads that spin while they wait would slow all of them down. Set before torch
# is imported (the workers and every subprocess inherit it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
from skimage import io as skio

from segbench.config import CONF_DIR, compose_config
from segbench.engine import Trainer

ROOT = Path(__file__).resolve().parents[1]
CONF = CONF_DIR

# A tiny synthetic run: seconds on a CPU. On the base config (experiment=none: no augmentation, fixed
# threshold, ...), so that each test switches on only what it tests; test_configs.py runs the default recipe.
TINY = [
    "experiment=none",
    "dataset=synthetic",
    "dataset.num_cases=12",          # split 6/3/3 (holdout: half, a quarter, a quarter)
    "dataset.image_size=32",
    "model.base_width=4",
    "trainer.epochs=2",
    "trainer.batch_size=4",
    "trainer.eval_batch_size=4",
    "trainer.progress=false",
    "trainer.device=cpu",
    "trainer.precision=fp32",        # the same maths on every CPU (auto picks bf16 where it is native)
    "trainer.channels_last=false",
    "eval.num_predictions=2",
    "trainer.threads=1",             # 2 pytest workers, each starting CLI runs: 1 thread each, no oversubscription
]


def tiny_data(n=4, size=8):
    """``n`` random uint8 images (and random binary masks) of ``size`` x ``size``, seeded."""
    import torch

    from segbench.data import SegArrays

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    masks = (torch.rand(n, 1, size, size, generator=g) > 0.5).to(torch.uint8)
    return SegArrays(images, masks, [f"C{i}" for i in range(n)])


compose_cfg = compose_config  # conf/config.yaml composed as the CLI would, without running the job


def interrupt_in_epoch(monkeypatch, stop_epoch):
    """Make training raise KeyboardInterrupt (as Ctrl-C does) when ``stop_epoch`` starts; returns the undo."""
    train_epoch = Trainer.train_epoch

    def interrupted(self, images, masks, epoch):
        if epoch == stop_epoch:
            raise KeyboardInterrupt
        return train_epoch(self, images, masks, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", interrupted)
    return lambda: monkeypatch.setattr(Trainer, "train_epoch", train_epoch)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server a test starts)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(args, cwd, env=None):
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "segbench", *args],
        cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600,
    )


@pytest.fixture
def ph2_root():
    root = os.environ.get("SEGBENCH_PH2_ROOT")
    if not root:
        pytest.skip("SEGBENCH_PH2_ROOT is not set: point it at a PH2Dataset folder to run the PH2 tests")
    if not Path(root).is_dir():
        pytest.skip(f"SEGBENCH_PH2_ROOT={root} is not a folder")
    return Path(root)


def write_case(images_dir: Path, case: str, size=(40, 48), mask_values=(0, 255), image_ext="png", mask=True):
    """Write one PH2-layout case with a square lesion; returns the case folder."""
    h, w = size
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    folder = images_dir / case
    (folder / f"{case}_Dermoscopic_Image").mkdir(parents=True)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    skio.imsave(folder / f"{case}_Dermoscopic_Image" / f"{case}.{image_ext}", image, check_contrast=False)
    if mask:
        (folder / f"{case}_lesion").mkdir()
        m = np.full((h, w), mask_values[0], dtype=np.uint8)
        m[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = mask_values[1]
        skio.imsave(folder / f"{case}_lesion" / f"{case}_lesion.png", m, check_contrast=False)
    return folder


@pytest.fixture
def fake_ph2(tmp_path):
    """A small PH2-layout tree: 9 cases, a diagnosis table, and some non-case entries."""
    root = tmp_path / "PH2Dataset"
    images = root / "PH2 Dataset images"
    images.mkdir(parents=True)
    cases = [f"IMD{i:03d}" for i in range(1, 10)]
    for i, case in enumerate(cases):
        write_case(images, case, size=(40 + i % 2, 48))
    (images / ".DS_Store").write_text("junk")
    (images / "notes").mkdir()
    lines = ["Name\tClinical Diagnosis\tAsymmetry"] + [f"{c}\t{i % 3}\t0" for i, c in enumerate(cases)]
    (root / "PH2_dataset.txt").write_text("\r\n".join(lines) + "\r\n")
    return root


def needs(*modules: str, extra: str):
    """Skip a test, saying which extra installs them, when any of ``modules`` is missing
    (``.ci/run`` installs every extra, so these tests run in CI)."""
    import importlib.util

    def absent(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is None
        except ModuleNotFoundError:  # its parent package is missing too
            return True

    missing = [m for m in modules if absent(m)]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)}: pip install -e \".[{extra}]\"")


def _initdb() -> str | None:
    import glob
    import shutil

    found = shutil.which("initdb") or sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return found if isinstance(found, str) else (found[-1] if found else None)


@pytest.fixture(scope="module")
def postgres_url():
    """A private PostgreSQL server for the tests of a module: Debian's ``postgresql`` package's initdb in a temp
    dir, listening on 127.0.0.1 at a free port, run as a non-root user (``postgres`` when the tests run as
    root); its URL for SQLAlchemy with psycopg. Skipped, saying why, without the server or the driver."""
    import pwd
    import shutil
    import signal
    import subprocess
    import tempfile
    import time

    initdb = _initdb()
    if initdb is None:
        pytest.skip("needs PostgreSQL's server programs (initdb): apt-get install postgresql")
    try:
        import psycopg
    except ImportError:
        pytest.skip('needs psycopg: pip install -e ".[cluster]"')
    bin_dir = os.path.dirname(os.path.realpath(initdb))
    user = None
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root, and there is no 'postgres' user to run the server as")
    root = Path(tempfile.mkdtemp(prefix="segbench-postgres-"))  # not under pytest's tmp: its dirs are the user's only
    data = root / "data"
    as_user = {"user": user.pw_uid, "group": user.pw_gid} if user else {}
    if user:
        shutil.chown(root, user.pw_uid, user.pw_gid)
    subprocess.run([os.path.join(bin_dir, "initdb"), "-D", str(data), "-U", "segbench", "-A", "trust",
                    "--no-sync", "-E", "UTF8"], check=True, capture_output=True, **as_user)
    port = free_port()
    server = subprocess.Popen([os.path.join(bin_dir, "postgres"), "-D", str(data), "-h", "127.0.0.1",
                               "-p", str(port), "-k", str(root), "-F"],
                              stdout=subprocess.DEVNULL, stderr=open(root / "server.log", "w"), **as_user)
    deadline = time.time() + 60
    while True:
        try:
            psycopg.connect(f"host=127.0.0.1 port={port} user=segbench dbname=postgres", connect_timeout=2).close()
            break
        except psycopg.OperationalError:
            if server.poll() is not None or time.time() > deadline:
                server.kill()
                pytest.fail(f"the PostgreSQL server did not start: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.2)
    yield f"postgresql+psycopg://segbench@127.0.0.1:{port}/postgres"
    server.send_signal(signal.SIGINT)  # a fast shutdown: the test process's connections are cut
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
    shutil.rmtree(root, ignore_errors=True)
