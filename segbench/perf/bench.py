"""The loops ``segbench bench`` times: a reference notebook loop, segbench's trainer, the ceiling (one fixed
batch) and the trainer with augmentation, and the timings of checkpoints, dataset loads and the trainer's
own per-batch work. :mod:`segbench.cli.bench` prints them; what each loop is, is said there."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..build import build_augment, optimizer_options
from ..config import compose_config
from ..data import PH2, SegArrays
from ..engine import (
    FitSettings,
    Normalizer,
    Trainer,
    autocast,
    maybe_compile,
)
from ..losses import BCELoss
from ..metrics import image_metrics
from ..models import UNet
from ..runs.checkpoint import CheckpointWriter, save_checkpoint

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
    (2 per multiply-add, as ``segbench summary``); the optimizer's own update is not counted."""
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


def interleaved(loops: dict[str, Loop], args) -> dict[str, list[float]]:
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
