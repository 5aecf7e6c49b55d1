"""``python -m segbench.bench``: segbench's trainer against a plain notebook loop and the bare ceiling.

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
counted by torch.utils.flop_counter as ``segbench.summary`` counts them, per second), b/a, b/c and the
cost of the augmentation, the trainer's own per-batch work, the
time a checkpoint of the model costs the training loop, and the cold vs cached
load time of the dataset. Each loop is built once, warmed up (compilation,
autotuning), then timed in interleaved rounds.

    python -m segbench.bench                                     # CPU, small: under a minute
    python -m segbench.bench --size 256 --base-width 64 --device cuda --dataset ph2
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from .build import build_augment, optimizer_options
from .config import compose_config
from .data import PH2, SegArrays, SyntheticDermoscopy
from .engine import (
    PRECISIONS, FitSettings, Normalizer, Trainer, autocast, maybe_compile, resolve_channels_last, resolve_device,
    resolve_precision, resolve_switch,
)
from .engine.device import cpu_has_avx512, cpu_name, cpu_native_bf16
from .errors import UserError
from .runs.checkpoint import CheckpointWriter, save_checkpoint
from .losses import BCELoss
from .metrics import image_metrics
from .models import UNet


SWITCHES = {"auto": "auto", "true": True, "false": False}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model(args, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    return UNet(base_width=args.base_width).to(device)


def _adam(model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """Adam as a segbench run builds it on ``device`` (fused on CUDA)."""
    options = optimizer_options(torch.optim.Adam, {}, device)
    return torch.optim.Adam(model.parameters(), lr=1e-4, **options)


Loop = Callable[[int], float]  # epochs -> seconds


def _timed(device: torch.device, body: Callable[[], None]) -> float:
    _sync(device)
    start = time.perf_counter()
    body()
    _sync(device)
    return time.perf_counter() - start


def reference_loop(train: SegArrays, args, device: torch.device) -> Loop:
    """(a) the notebook style: fp32, a DataLoader over numpy arrays, ``.item()`` every batch."""
    mean = train.images.float().div(255).mean((0, 2, 3)).view(3, 1, 1).numpy()
    std = train.images.float().div(255).std((0, 2, 3)).view(3, 1, 1).numpy()
    samples = [((img.numpy() / 255.0 - mean) / std, msk.numpy()) for img, msk in zip(train.images, train.masks)]
    samples = [(x.astype(np.float32), y.astype(np.float32)) for x, y in samples]
    loader = DataLoader(samples, batch_size=args.batch_size, shuffle=True)
    model = _model(args, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = BCELoss()

    def epochs(n: int) -> None:
        for _ in range(n):
            model.train()
            losses, ious = [], []
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                optimizer.zero_grad()
                logits = model(x)
                loss = loss_fn(logits, y)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                ious.append(image_metrics(logits.detach(), y)["iou"].mean().item())

    def run(n: int) -> float:
        torch.backends.cudnn.benchmark = False  # the notebooks' default
        return _timed(device, lambda: epochs(n))

    return run


def _settings(args) -> FitSettings:
    return FitSettings(epochs=1, batch_size=args.batch_size, eval_batch_size=args.batch_size,
                       precision=args.precision, channels_last=args.channels_last, compile=args.compile)


def trainer_loop(train: SegArrays, args, device: torch.device, augment: str = "none") -> Loop:
    """(b) segbench's Trainer epochs, set up as a run on ``device`` sets it up (no validation or checkpoints);
    (d) the same with the ``augment`` preset of conf/augment/ applied to every batch."""
    model = _model(args, device)
    augmentation = build_augment(compose_config([f"augment={augment}"]).augment)
    trainer = Trainer(model, BCELoss(), _adam(model, device), _settings(args), device, augment=augmentation)
    trainer.normalizer = Normalizer.fit(train.images)
    images, masks = train.images.to(device), train.masks.to(device)

    def run(n: int) -> float:
        torch.backends.cudnn.benchmark = device.type == "cuda"
        return _timed(device, lambda: [trainer.train_epoch(images, masks, epoch) for epoch in range(1, n + 1)])

    return run


def ceiling_loop(train: SegArrays, args, device: torch.device, batches_per_epoch: int) -> Loop:
    """(c) forward/backward/step on one fixed normalised batch, with the trainer's settings (precision,
    memory format, optimizer, compile); ``batches_per_epoch`` steps per epoch, as the other loops take."""
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = _model(args, device).to(memory_format=memory_format)
    optimizer = _adam(model, device)
    forward = maybe_compile(model) if args.compile else model
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    loss_fn = BCELoss()
    x = Normalizer.fit(train.images)(train.images[: args.batch_size].to(device)).contiguous(memory_format=memory_format)
    y = train.masks[: args.batch_size].to(device).float()

    def steps(n: int) -> None:
        for _ in range(n):
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, args.precision):
                loss = loss_fn(forward(x), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    def run(n: int) -> float:
        torch.backends.cudnn.benchmark = device.type == "cuda"
        return _timed(device, lambda: steps(n * batches_per_epoch))

    return run


def step_flops_per_image(args, device: torch.device) -> float:
    """Floating-point operations of one training step (forward and backward of the bench's U-Net and
    loss, at the bench's batch size and image size) per image, as torch.utils.flop_counter counts them
    (2 per multiply-add, as ``segbench.summary``); the optimizer's own update is not counted."""
    from torch.utils.flop_counter import FlopCounterMode

    model = _model(args, device)
    x = torch.zeros(args.batch_size, 3, args.size, args.size, device=device)
    y = torch.zeros(args.batch_size, 1, args.size, args.size, device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        BCELoss()(model(x), y).backward()
    return counter.get_total_flops() / args.batch_size


def trainer_overhead(train: SegArrays, args, device: torch.device, repeats: int = 50) -> float:
    """Seconds per batch of the trainer's own work besides forward/backward/step: gathering and
    normalising the batch, and its IoU (the rest of its bookkeeping is a few scalar operations)."""
    trainer = Trainer(_model(args, device), BCELoss(), None, _settings(args), device)
    trainer.normalizer = Normalizer.fit(train.images)
    images, masks = train.images.to(device), train.masks.to(device)
    idx = torch.randperm(len(train))[: args.batch_size].to(device)
    logits = torch.randn((len(idx), 1, *images.shape[2:]), device=device)

    def work() -> torch.Tensor:
        x, y = trainer.prepare_batch(images, masks, idx)
        return image_metrics(logits, y, trainer.settings.threshold)["iou"].sum() + x[0, 0, 0, 0]

    for _ in range(5):
        work()
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        work()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def checkpoint_times(args, device: torch.device, repeats: int = 3) -> tuple[float, float, float]:
    """A checkpoint of the bench's model and Adam state: (MB, seconds to write it in the foreground,
    seconds the training loop waits for the trainer's background writer); medians of ``repeats``."""
    model = _model(args, device)
    optimizer = _adam(model, device)
    model(torch.zeros(1, 3, 32, 32, device=device)).mean().backward()
    optimizer.step()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
    foreground, waited = [], []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "last.pt"
        writer = CheckpointWriter()
        for _ in range(repeats):
            start = time.perf_counter()
            save_checkpoint(path, state)
            foreground.append(time.perf_counter() - start)
            start = time.perf_counter()
            writer.save(path, state, also=[Path(tmp) / "best.pt"])
            waited.append(time.perf_counter() - start)
            writer.wait()
        size = path.stat().st_size / 1e6
    return size, float(np.median(foreground)), float(np.median(waited))


def load_times(args) -> tuple[float, float] | None:
    """Cold (decode + resize) and cached load time of PH2 at ``--load-size``, or None without PH2."""
    if not args.ph2_root or not Path(args.ph2_root).is_dir():
        return None
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        PH2(args.ph2_root, image_size=args.load_size, cache_dir=cache).arrays
        cold = time.perf_counter() - start
        start = time.perf_counter()
        PH2(args.ph2_root, image_size=args.load_size, cache_dir=cache).arrays
        return cold, time.perf_counter() - start


def _interleaved(loops: dict[str, Loop], args) -> dict[str, list[float]]:
    """Warm each loop up (compilation, cuDNN autotuning), then time ``args.rounds`` rounds of all of them.

    Each round starts one loop later than the last, so that neither a slower or faster phase of the
    machine nor the position in a round favours one loop; ratios are taken within a round.
    """
    if args.warmup:
        for loop in loops.values():
            loop(args.warmup)
    times: dict[str, list[float]] = {k: [] for k in loops}
    names = list(loops)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(loops[name](args.epochs))
    return times


def main(argv: list[str] | None = None) -> None:
    import os

    parser = argparse.ArgumentParser(prog="python -m segbench.bench", description=__doc__.splitlines()[0])
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
    parser.add_argument("--channels-last", default="auto", choices=SWITCHES, help="(b) and (c), as trainer.channels_last")
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
    times = _interleaved(loops, args)
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


if __name__ == "__main__":
    main()
