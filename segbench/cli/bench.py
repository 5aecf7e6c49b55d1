"""``segbench bench``: segbench's trainer against a plain notebook loop and the bare ceiling.

In one process, with the same model, data and number of optimizer steps, it times
  (a) a reference loop written the way the seed notebooks do it: a DataLoader over
      a Python list of numpy arrays, fp32, per-batch ``.to(device)``, ``.item()``
      of the loss and IoU every batch;
  (b) segbench's Trainer epoch (in-memory uint8 split, batches indexed on the
      device, statistics accumulated on the device), with the settings a run
      resolves on the device (``--precision``, ``--channels-last``, ``--compile``;
      on CUDA: bf16 or fp16, channels-last, fused Adam, cudnn.benchmark);
  (c) forward/backward/step on one fixed, already-normalised batch with (b)'s
      settings (the ceiling);
  (d) (b) with the ``--augment`` preset (default ``standard``) applied to every batch;
and prints images/s of each (and the GFLOP/s of (b) and (c): the training step's floating-point operations,
counted by torch.utils.flop_counter as ``segbench summary`` counts them, per second), b/a, b/c and the
cost of the augmentation, the trainer's own per-batch work, the
time a checkpoint of the model costs the training loop, and the cold vs cached
load time of the dataset. Each loop is built once, warmed up (compilation,
autotuning), then timed in interleaved rounds.

    segbench bench                                     # CPU, small: under a minute
    segbench bench --size 256 --base-width 64 --device cuda --dataset ph2
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from ..build import optimizer_options
from ..data import PH2, SyntheticDermoscopy
from ..engine import PRECISIONS, resolve_channels_last, resolve_device, resolve_precision, resolve_switch
from ..engine.device import cpu_has_avx512, cpu_name, cpu_native_bf16
from ..errors import UserError, command
from ..perf.bench import (
    SWITCHES,
    ceiling_loop,
    checkpoint_times,
    interleaved,
    load_times,
    reference_loop,
    step_flops_per_image,
    trainer_loop,
    trainer_overhead,
)


@command("segbench bench")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segbench bench", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["synthetic", "ph2"], default="synthetic")
    parser.add_argument("--ph2-root", default=os.environ.get("SEGBENCH_PH2_ROOT"))
    parser.add_argument("--size", type=int, default=64, help="image side (default 64; the study uses 256)")
    parser.add_argument("--base-width", type=int, default=8, help="U-Net base width (default 8; the study uses 64)")
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--train-cases", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per loop and round")
    parser.add_argument("--rounds", type=int, default=6,
                        help="rounds of (a, b, c), each starting one loop later; medians over rounds are reported")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs of each loop first")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="(b) and (c), as trainer.precision")
    parser.add_argument("--channels-last", default="auto", choices=SWITCHES,
                        help="(b) and (c), as trainer.channels_last")
    parser.add_argument("--compile", default="false", choices=SWITCHES, help="(b) and (c), as trainer.compile")
    parser.add_argument("--load-size", type=int, default=256, help="image side for the PH2 load timing (default 256)")
    parser.add_argument("--augment", default="standard", help="augment preset timed in (d) (default standard)")
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)
        auto = resolve_precision("auto", device), resolve_channels_last("auto", device)
        args.precision = resolve_precision(args.precision, device)
    except UserError as exc:
        parser.error(str(exc).replace("trainer.", "--"))
    args.channels_last = resolve_channels_last(SWITCHES[args.channels_last], device)
    args.compile = resolve_switch("--compile", SWITCHES[args.compile], device)
    if args.dataset == "ph2":
        data = PH2(args.ph2_root, image_size=args.size,
                   cache_dir=os.environ.get("SEGBENCH_CACHE", "~/.cache/segbench")).arrays
    else:
        data = SyntheticDermoscopy(num_cases=args.train_cases, image_size=args.size).arrays
    train = data.subset(data.ids[: args.train_cases])
    batches_per_epoch = -(-len(train) // args.batch_size)
    steps = args.epochs * batches_per_epoch
    where = (f"CPU {cpu_name()} (native bf16: {'yes' if cpu_native_bf16() else 'no'}, AVX-512: "
             f"{'yes' if cpu_has_avx512() else 'no'})" if device.type == "cpu" else
             torch.cuda.get_device_name(device) if device.type == "cuda" else str(device))
    print(f"{where}; auto resolves to precision {auto[0]}, channels_last {auto[1]}")
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads; U-Net base width "
          f"{args.base_width}, {len(train)} {args.dataset} images at {args.size}px, batch {args.batch_size}, "
          f"{args.epochs} epochs = {steps} steps per loop and round, median of {args.rounds} interleaved rounds "
          f"(after {args.warmup} warm-up epoch(s))")
    fused = bool(optimizer_options(torch.optim.Adam, {}, device))
    print(f"(a) fp32, Adam, cudnn.benchmark off; (b) and (c) as a segbench run: precision {args.precision}, "
          f"channels_last {args.channels_last}, {'fused ' if fused else ''}Adam, compile {args.compile}"
          + (", cudnn.benchmark on" if device.type == "cuda" else ""))
    loops = {"a": reference_loop(train, args, device), "b": trainer_loop(train, args, device),
             "c": ceiling_loop(train, args, device, batches_per_epoch),
             "d": trainer_loop(train, args, device, args.augment)}
    times = interleaved(loops, args)
    # (c) runs full batches only; count the images it processed
    images = {"a": args.epochs * len(train), "b": args.epochs * len(train), "c": steps * args.batch_size,
              "d": args.epochs * len(train)}
    rates = {k: np.array([images[k] / t for t in v]) for k, v in times.items()}
    flops = step_flops_per_image(args, device)
    print()
    print(f"| loop | images/s (median) | range over rounds | GFLOP/s (median; {flops / 1e9:.4g} GFLOP per image "
          "and step) |")
    print("|---|---|---|---|")
    for key, label in (("a", "(a) reference notebook loop"), ("b", "(b) segbench trainer"),
                       ("c", "(c) ceiling: fixed batch"), ("d", f"(d) segbench trainer, augment={args.augment}")):
        gflops = f"{np.median(rates[key]) * flops / 1e9:.4g}" if key in "bc" else ""
        print(f"| {label} | {np.median(rates[key]):.1f} | {rates[key].min():.1f} - {rates[key].max():.1f} | {gflops} |")
    print()
    for num, den in (("b", "a"), ("b", "c"), ("d", "b")):
        ratio = rates[num] / rates[den]
        print(f"{num}/{den} = {np.median(ratio):.3f}   (per round: {' '.join(f'{x:.3f}' for x in ratio)})")
    cost = np.median(rates["b"] / rates["d"]) - 1
    print(f"augment={args.augment} costs {100 * cost:.1f} % of the trainer's step (median over rounds of b/d - 1)")
    step = args.batch_size / np.median(rates["c"])
    overhead = trainer_overhead(train, args, device)
    print(f"the trainer's own work per batch (gather, normalise, IoU): {overhead * 1e3:.2f} ms = "
          f"{100 * overhead / step:.1f} % of a ceiling step ({step * 1e3:.1f} ms)")
    size, foreground, waited = checkpoint_times(args, device)
    print(f"checkpoint (model + Adam state, {size:.1f} MB): written in the foreground {foreground:.3f} s; "
          f"the trainer's loop waits {waited:.3f} s (snapshot) and writes it in the background")
    loads = load_times(args)
    if loads is None:
        print("PH2 load: no PH2 root (set SEGBENCH_PH2_ROOT or --ph2-root) to time cold vs cached loading")
    else:
        print(f"PH2 load at {args.load_size}px: cold {loads[0]:.2f} s (decode + resize), cached {loads[1]:.3f} s")
    return 0
