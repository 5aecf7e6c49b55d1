"""``segbench export RUN_DIR --format onnx|torchscript [--output PATH]``: a trained run as a
standalone model file.

The exported model takes float32 RGB images in [0, 1], shape (batch, 3, height, width), any batch
size and any height and width (the run's input size gives its best results), and returns logits
(batch, classes, height, width); segbench's input normalisation is part of it. Binary runs:
mask = sigmoid(logits) > threshold; multi-class: argmax over classes. The run's threshold, input size
and evaluation settings are written beside it (``<output>.json``); test-time augmentation and
post-processing are not part of the graph.

Before the file is written, the export is run on a random batch of another batch size and height
than the traced one and compared with PyTorch (onnxruntime for ONNX); a mismatch is an error and no
file is written. ONNX needs the extra: pip install "segbench[export]".
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError, command
from ..evaluation.export import FORMATS, export
from ..evaluation.trained import CHECKPOINTS, load_trained


@command("segbench export")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segbench export", description=__doc__.split("\n\n")[1])
    parser.add_argument("run_dir", help="a finished run directory (holds checkpoints/best.pt)")
    parser.add_argument("--format", required=True, choices=sorted(FORMATS))
    parser.add_argument("--output", "-o", help="the file to write (default: RUN_DIR/export/model.onnx or "
                                               "model.torchscript.pt)")
    parser.add_argument("--checkpoint", choices=CHECKPOINTS, default="best")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file")
    args = parser.parse_args(argv)
    output = Path(args.output) if args.output else Path(args.run_dir) / "export" / f"model{FORMATS[args.format]}"
    if output.exists() and not args.overwrite:
        raise UserError(f"'{output}' exists; use --overwrite or another --output")
    trained = load_trained(args.run_dir, args.checkpoint, "cpu")
    info = export(trained, args.format, output, args.opset)
    print(f"wrote {output} ({args.format}; checked against PyTorch on a batch of 2 at "
          f"{info['image_size'] + 16}x{info['image_size']}) and {output}.json")
    return 0

