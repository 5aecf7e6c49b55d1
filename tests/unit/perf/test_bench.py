"""python -m segbench.bench (bench.py): the table, and the trainer run with the chosen fast paths."""
import pytest
import torch

from segbench import bench
from segbench.engine import resolve_channels_last, resolve_precision

CPU = torch.device("cpu")


def test_bench_command_prints_the_table(capsys):
    bench.main(["--size", "32", "--base-width", "4", "--train-cases", "20", "--batch-size", "10", "--load-size", "32",
                "--epochs", "1", "--rounds", "1", "--warmup", "0", "--ph2-root", ""])
    out = capsys.readouterr().out
    for line in ("(a) reference notebook loop", "(b) segbench trainer", "(c) ceiling: fixed batch", "b/a = ", "b/c = ",
                 "(d) segbench trainer, augment=standard", "augment=standard costs", "checkpoint (model + Adam state",
                 "no PH2 root"):
        assert line in out
    from segbench.engine.device import cpu_name

    auto = resolve_precision("auto", CPU), resolve_channels_last("auto", CPU)
    assert (
        f"CPU {cpu_name()} (native bf16: " in out
        and f"auto resolves to precision {auto[0]}, channels_last {auto[1]}" in out
    )
    assert f"precision {auto[0]}, channels_last {auto[1]}, Adam, compile False" in out  # a CPU run's settings
    flops = float(out.split("GFLOP/s (median; ")[1].split(" GFLOP per image")[0])
    assert flops > 0
    b = [line for line in out.splitlines() if line.startswith("| (b)")][0].split("|")
    assert float(b[4]) == pytest.approx(float(b[2]) * flops, rel=0.01)  # GFLOP/s = images/s x GFLOP per image


def test_bench_runs_the_trainer_with_the_chosen_fast_paths(capsys):
    bench.main(
        [
            "--size",
            "32",
            "--base-width",
            "4",
            "--train-cases",
            "10",
            "--batch-size",
            "5",
            "--epochs",
            "1",
            "--rounds",
            "1",
            "--warmup",
            "0",
            "--ph2-root",
            "",
            "--precision",
            "bf16",
            "--channels-last",
            "true",
        ]
    )
    assert "precision bf16, channels_last True, Adam, compile False" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench.main(["--precision", "fp16"])  # needs CUDA
    assert "--precision=fp16 needs a CUDA device" in capsys.readouterr().err
