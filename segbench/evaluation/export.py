"""A trained run as a standalone model file (ONNX or TorchScript), with its input normalisation inside and
its settings in ``<output>.json``, checked against PyTorch before it is written: the library of
``segbench export`` (:mod:`segbench.cli.export` says what the file takes and returns)."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import SegbenchError, describe, require
from ..runs.atomic import atomic_file, write_json
from .trained import TrainedModel

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}


def _check_batch(trained: TrainedModel) -> tuple[torch.Tensor, torch.Tensor]:
    """The traced input (1, 3, S, S) and a check input of another batch size and height (2, 3, S + 16, S)."""
    generator = torch.Generator().manual_seed(0)
    s = trained.image_size
    return torch.rand(1, 3, s, s, generator=generator), torch.rand(2, 3, s + 16, s, generator=generator)


def export_onnx(trained: TrainedModel, path: Path, opset: int | None = None) -> None:
    for module in ("onnx", "onnxscript"):  # what torch.onnx.export needs
        require(module, module, "export", "--format onnx")
    onnxruntime = require("onnxruntime", "onnxruntime", "export", "--format onnx")

    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)  # "no torchvision"
    traced, check = _check_batch(trained)
    batch, height, width = (torch.export.Dim(n, min=1) for n in ("batch", "height", "width"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation and tracing chatter
        program = torch.onnx.export(
            trained.network, (traced,), input_names=["images"], output_names=["logits"], dynamo=True,
            dynamic_shapes={"images": {0: batch, 2: height, 3: width}}, opset_version=opset, verbose=False,
        )
        program.save(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": check.numpy()})[0]
    _compare(trained, check, torch.from_numpy(got), "onnxruntime")


def export_torchscript(trained: TrainedModel, path: Path) -> None:
    traced, check = _check_batch(trained)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice and tracer warnings
        module = torch.jit.trace(trained.network, traced, check_trace=False)
        torch.jit.save(module, str(path))
        loaded = torch.jit.load(str(path))
        with torch.inference_mode():
            got = loaded(check)
    _compare(trained, check, got, "the saved TorchScript module")


def _compare(trained: TrainedModel, x: torch.Tensor, got: torch.Tensor, what: str) -> None:
    with torch.inference_mode():
        want = trained.network(x.to(trained.device)).float().cpu()
    if got.shape != want.shape:
        raise SegbenchError(f"the export gives logits of shape {tuple(got.shape)} on input {tuple(x.shape)}; "
                            f"PyTorch gives {tuple(want.shape)}")
    error = float((got.float() - want).abs().max())
    tolerance = 1e-3 * max(1.0, float(want.abs().max()))
    if not np.isfinite(error) or error > tolerance:
        raise SegbenchError(f"the export disagrees with PyTorch on a random batch {tuple(x.shape)}: max |difference| "
                            f"{error:.3g} > {tolerance:.3g} ({what}); nothing was written")


def export(trained: TrainedModel, fmt: str, output: Path, opset: int | None = None) -> dict:
    """Write the model to ``output`` (checked first, then moved into place) and ``<output>.json``."""
    with atomic_file(output, suffix=FORMATS[fmt]) as tmp:  # nothing is left behind on an error
        try:
            if fmt == "onnx":
                export_onnx(trained, tmp, opset)
            else:
                export_torchscript(trained, tmp)
        except SegbenchError:
            raise
        except Exception as exc:  # the exporters' own errors (unsupported op, tracing failure)
            raise SegbenchError(f"exporting to {fmt} failed, nothing was written: {describe(exc)}") from exc
    info = {
        "format": fmt, "run_dir": str(trained.run_dir.path), "input": "float32 (batch, 3, height, width) RGB in [0, 1]",
        "output": "logits (batch, classes, height, width)", "image_size": trained.image_size,
        "num_classes": trained.num_classes, "threshold": trained.threshold,
        "prediction": "sigmoid(logits) > threshold" if trained.num_classes == 1 else "argmax over classes",
        "not_included": {"tta": trained.tta, "postprocess": trained.postprocess},
    }
    write_json(Path(f"{output}.json"), info)
    return info


