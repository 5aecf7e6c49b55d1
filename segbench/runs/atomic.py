"""Atomic file writers: a temp file beside the target, fsynced, then a rename (and the directory fsynced), so
a kill or a power cut at any moment leaves the previous complete version or the new one; a full disk is
named as such. Which files a run has, and their formats, is :mod:`segbench.runs.rundir`'s; checkpoints
are :mod:`segbench.runs.checkpoint`'s."""
from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import TrainingError, describe


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
        fsync(Path(tmp))  # the data on disk before the name points at it: a crash leaves old or new, never empty
        os.replace(tmp, path)
        fsync(path.parent)  # the rename itself on disk
    except BaseException as exc:
        full = isinstance(exc, Exception) and no_space(exc, path)  # asked before the partial file is removed
        Path(tmp).unlink(missing_ok=True)
        if full:
            raise DiskFull(f"could not write {path}: no space left on device (ENOSPC); free some space and "
                           "resume: the previous version of the file is intact") from exc
        raise


def fsync(path: Path) -> None:
    """Flush a file's (or a directory's: its entries') data to the disk. A filesystem that cannot fsync a
    directory (some network and Windows filesystems) is left to its own guarantees."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF) or not path.is_dir():
            raise
    finally:
        os.close(fd)


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


def write_text(path: Path, text: str) -> None:
    _atomic(path, lambda f: f.write(text), "w")


def write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    _atomic(path, lambda f: f.write(buf.getvalue()), "w")


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    _atomic(path, lambda f: np.savez(f, **arrays), "wb")


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
