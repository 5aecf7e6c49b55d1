"""Checkpoints: written in the background (training waits only for a CPU copy of the state), atomically;
read safely (``torch.load(weights_only=True)``: a checkpoint from someone else runs no code)."""
from __future__ import annotations

import os
import pickle
import re
import shutil
import threading
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import CheckpointError, describe
from .atomic import _atomic, fsync, write_error


def save_checkpoint(path: Path, state: dict) -> None:
    _atomic(path, lambda f: torch.save(state, f), "wb")


UPGRADE_COMMAND = "segbench upgrade-checkpoints"


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
            raise CheckpointError(f"the checkpoint '{path}' is damaged and cannot be read ({_reason(exc)})") from exc
        raise CheckpointError(
            f"the checkpoint '{path}' holds objects that a safe load (torch.load(weights_only=True)) refuses, since "
            f"loading them could run code ({_unsafe_global(exc)}); segbench before 0.2 wrote such files. If you "
            f"trust where it came from, convert it once: {UPGRADE_COMMAND} {_run_dir_of(Path(path))}") from exc
    except Exception as exc:  # noqa: BLE001 - torch.load's many ways to fail on a damaged file
        raise CheckpointError(f"the checkpoint '{path}' is damaged and cannot be read ({_reason(exc)})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"'{path}' is not a segbench checkpoint (it holds a {type(state).__name__}, not a dict)")
    return state


def _reason(exc: BaseException) -> str:
    """Why torch could not read a file, without torch's advice to load it with weights_only=False (which
    would run code from a file that may be someone else's): the unpickler's own words when there are any."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
        return f"{type(exc).__name__}: {' '.join(detail.split())}".rstrip(": ")
    if "weights_only" in text or "Weights only" in text:
        return type(exc).__name__
    return describe(exc)


# how torch's weights-only unpickler names an object it refuses ("Unsupported global: GLOBAL numpy...",
# "Trying to load unsupported GLOBAL posix.system ...")
_UNSAFE = re.compile(r"unsupported (?:global: )?GLOBAL ([\w.]+)", re.IGNORECASE)


def _unsafe_global(exc: BaseException) -> str:
    """The global a weights-only load refused, as torch names it (``numpy.core.multiarray._reconstruct``)."""
    match = _UNSAFE.search(str(exc))
    return f"it needs {match.group(1)}" if match else describe(exc)


def _run_dir_of(path: Path) -> Path:
    return path.parent.parent if path.parent.name == "checkpoints" else path


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
        fsync(tmp)
    os.replace(tmp, dst)
    fsync(dst.parent)


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
