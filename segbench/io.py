"""Atomic file writers (temp file + rename, so a kill leaves the previous version) and the background
checkpoint writer. Which files a run has, and their formats, is :mod:`segbench.rundir`'s."""
from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import math
import os
import pickle
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from .errors import CheckpointError, TrainingError, describe


class DiskFull(TrainingError):
    """A write failed because the filesystem is full; the message names the file."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_file(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that takes a file name (an exporter, say); on
    success it becomes ``path`` with the usual permissions, on any error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _FILE_MODE)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException as exc:
        full = isinstance(exc, Exception) and no_space(exc, path)  # asked before the partial file is removed
        Path(tmp).unlink(missing_ok=True)
        if full:
            raise DiskFull(f"could not write {path}: no space left on device (ENOSPC); free some space and "
                           "resume: the previous version of the file is intact") from exc
        raise


def _atomic(path: Path, write: Callable[[Any], None], mode: str) -> None:
    with atomic_file(path) as tmp, open(tmp, mode) as f:
        write(f)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def copy_file(src: Path, dst: Path) -> None:
    """``dst`` becomes a copy of ``src`` (a new file, atomically)."""
    with atomic_file(dst) as tmp:
        shutil.copyfile(src, tmp)


def write_json(path: Path, data: dict) -> None:
    text = json.dumps(_jsonable(data), indent=2)
    _atomic(path, lambda f: f.write(text + "\n"), "w")


def write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    _atomic(path, lambda f: f.write(buf.getvalue()), "w")


def save_checkpoint(path: Path, state: dict) -> None:
    _atomic(path, lambda f: torch.save(state, f), "wb")


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    _atomic(path, lambda f: np.savez(f, **arrays), "wb")


UPGRADE_COMMAND = "python -m segbench.upgrade_checkpoints"


def load_checkpoint(path: Path) -> dict:
    """A checkpoint as saved, every tensor on the CPU (RNG states must stay there; weights are copied
    to the model's device by ``load_state_dict``).

    Read with ``torch.load(weights_only=True)``: tensors and plain containers only, so a checkpoint
    from someone else runs no code when it is loaded. A file that needs more (one written by segbench
    before 0.2, which pickled numpy's RNG state, or one with a payload) is refused with a
    CheckpointError that says why and how to convert a trusted one. A file that is not a readable
    checkpoint is a CheckpointError naming it (checkpoints are written atomically, so only a copy or an
    edit can damage one)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as exc:
        if _UNSAFE.search(str(exc)) is None:  # not a refused object: a file that is not a checkpoint
            raise CheckpointError(f"the checkpoint '{path}' is damaged and cannot be read ({describe(exc)})") from exc
        raise CheckpointError(
            f"the checkpoint '{path}' holds objects that a safe load (torch.load(weights_only=True)) refuses, since "
            f"loading them could run code ({_unsafe_global(exc)}); segbench before 0.2 wrote such files. If you "
            f"trust where it came from, convert it once: {UPGRADE_COMMAND} {_run_dir_of(Path(path))}") from exc
    except Exception as exc:  # noqa: BLE001 - torch.load's many ways to fail on a damaged file
        raise CheckpointError(f"the checkpoint '{path}' is damaged and cannot be read ({describe(exc)})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"'{path}' is not a segbench checkpoint (it holds a {type(state).__name__}, not a dict)")
    return state


# how torch's weights-only unpickler names an object it refuses ("Unsupported global: GLOBAL numpy...",
# "Trying to load unsupported GLOBAL posix.system ...")
_UNSAFE = re.compile(r"unsupported (?:global: )?GLOBAL ([\w.]+)", re.IGNORECASE)


def _unsafe_global(exc: BaseException) -> str:
    """The global a weights-only load refused, as torch names it (``numpy.core.multiarray._reconstruct``)."""
    match = _UNSAFE.search(str(exc))
    return f"it needs {match.group(1)}" if match else describe(exc)


def _run_dir_of(path: Path) -> Path:
    return path.parent.parent if path.parent.name == "checkpoints" else path


def no_space(exc: BaseException, path: Path) -> bool:
    """Whether writing ``path`` failed because its filesystem is full: an ENOSPC anywhere in the error's
    chain, or (torch's zip writer reports a short write as 'unexpected pos ...') no free space left."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, DiskFull) or isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        usage = shutil.disk_usage(Path(path).parent)
    except OSError:
        return False
    return usage.free < 1024 * 1024  # less than 1 MiB left: the write did not fit


def write_error(exc: BaseException, path: Path, what: str = "") -> TrainingError:
    """The error of a failed write of ``path`` (``what``: "checkpoint "): "no space left on device" when
    the disk is full (torch's zip writer says only 'unexpected pos ...'), else the library's own message."""
    if no_space(exc, path):
        return TrainingError(f"could not write {what}{path}: no space left on device (ENOSPC); free some space "
                             "and resume: the previous version of the file is intact")
    return TrainingError(f"could not write {what}{path}: {describe(exc)}")


def _cpu_copy(obj: Any, reuse: Any = None) -> Any:
    """A copy of ``obj`` whose tensors are detached CPU copies: later optimizer steps cannot change it.

    Tensors are copied into the matching tensors of ``reuse`` (the previous copy, no longer being
    written) where shapes and dtypes agree, so that steady-state checkpoints allocate nothing; new
    copies of CUDA tensors go to pinned memory, which the GPU copies to fastest.
    """
    if isinstance(obj, torch.Tensor):
        obj = obj.detach()
        if isinstance(reuse, torch.Tensor) and reuse.shape == obj.shape and reuse.dtype == obj.dtype:
            return reuse.copy_(obj)
        if obj.is_cuda:
            return torch.empty_strided(obj.size(), obj.stride(), dtype=obj.dtype, pin_memory=True).copy_(obj)
        return obj.to("cpu", copy=True)
    if isinstance(obj, dict):
        reuse = reuse if isinstance(reuse, dict) else {}
        return {k: _cpu_copy(v, reuse.get(k)) for k, v in obj.items()}
    if type(obj) in (list, tuple):
        reuse = reuse if type(reuse) is type(obj) and len(reuse) == len(obj) else [None] * len(obj)
        return type(obj)(_cpu_copy(v, r) for v, r in zip(obj, reuse))
    return obj


def _link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` the same file as ``src`` (a hard link; a copy where the filesystem has none), atomically."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


class CheckpointWriter:
    """Writes checkpoints in a background thread, so training waits only for a copy of the state.

    :meth:`save` waits for the previous write, snapshots the state (every tensor copied
    to the CPU) and returns; a thread then writes it atomically. Each path in ``also``
    becomes the same file (a hard link: ``best.pt`` costs no second write). :meth:`wait`
    blocks until the last write is on disk and raises its error, naming the file.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._path: Path | None = None
        self._snapshot: dict | None = None  # the last state written; its tensors are reused by the next

    def save(self, path: Path, state: dict, also: Sequence[Path] = ()) -> None:
        self.wait()
        snapshot = self._snapshot = _cpu_copy(state, self._snapshot)
        self._path = Path(path)
        self._thread = threading.Thread(target=self._write, args=(self._path, snapshot, [Path(p) for p in also]),
                                        name="segbench-checkpoint")
        self._thread.start()

    def _write(self, path: Path, snapshot: dict, also: list[Path]) -> None:
        try:
            save_checkpoint(path, snapshot)
            for other in also:
                _link_or_copy(path, other)
        except BaseException as exc:  # handed to the training thread by wait()
            self._error = exc

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise write_error(error, self._path, "checkpoint ") from error
