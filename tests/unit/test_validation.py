"""The one validation helper, and the one list of settings that do not define a configuration."""
import numpy as np
import pytest

from segbench.config import RUN_SETTINGS, differences, is_run_setting
from segbench.validation import InvalidValue, check_choice, check_int, check_number, check_sizes, check_switch


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: check_int("trainer.epochs", 0, low=1), "trainer.epochs=0 is invalid; expected an integer >= 1"),
        (lambda: check_int("trainer.epochs", True, low=1), "trainer.epochs=True is invalid; expected an integer >= 1"),
        (lambda: check_int("trainer.epochs", 2.0, low=1), "trainer.epochs=2.0 is invalid"),
        (lambda: check_int("k", 9, low=2, high=8), "k=9 is invalid; expected an integer >= 2 and <= 8"),
        (lambda: check_int("seed", "abc"), "seed='abc' is invalid; expected an integer$"),
        (
            lambda: check_number("optimizer.lr", 0, low=0, low_open=True),
            "optimizer.lr=0 is invalid; expected a number > 0",
        ),
        (lambda: check_number("p", float("inf"), 0, 1), "p=inf is invalid; expected a number >= 0 and <= 1"),
        (lambda: check_number("p", False, 0, 1), "p=False is invalid"),
        (lambda: check_number("p", 1.0, 0, 1, high_open=True), "p=1.0 is invalid; expected a number >= 0 and < 1"),
        (
            lambda: check_choice("trainer.precision", "bf61", ["auto", "fp32", "bf16", "fp16"]),
            r"trainer.precision='bf61' is invalid; expected one of \['auto', 'bf16', 'fp16', 'fp32'\]; "
            r"did you mean 'bf16'\?",
        ),
        (
            lambda: check_choice("mode", "zzz", ["max", "min"]),
            r"mode='zzz' is invalid; expected one of \['max', 'min'\]$",
        ),
        (lambda: check_choice("x", 1, [True, False]), r"x=1 is invalid"),
        (
            lambda: check_switch("trainer.compile", "yes"),
            "trainer.compile='yes' is invalid; expected true, false or auto",
        ),
        (
            lambda: check_sizes("split.sizes", [1, 2], 3, "train, val, test"),
            r"split.sizes=\[1, 2\] is invalid; expected three integers >= 1 \(train, val, test\)",
        ),
    ],
)
def test_one_message_form(call, message):
    with pytest.raises(InvalidValue, match=message):
        call()


def test_valid_values_pass_through():
    assert check_int("n", np.int64(3), low=1) == 3 and isinstance(check_int("n", np.int64(3)), int)
    assert check_number("lr", 1e-3, low=0, low_open=True) == 1e-3
    assert check_choice("x", True, [True, False]) is True and check_switch("c", "auto") == "auto"
    assert check_sizes("s", (1, 2, 3), 3, "a, b, c") == [1, 2, 3]


def test_invalid_value_is_a_value_error_and_can_be_prefixed():
    err = InvalidValue("base_width", 0, "an integer >= 1")
    assert isinstance(err, ValueError)
    assert str(err.under("model")) == "model.base_width=0 is invalid; expected an integer >= 1"


def test_run_settings_cover_their_sub_keys():
    assert is_run_setting("trainer.device") and is_run_setting("+dataset.root") and is_run_setting("cache_dir")
    assert not is_run_setting("trainer.epochs") and not is_run_setting("trainer.device_count")  # not a prefix match
    assert is_run_setting("trainer.devices")  # the ranks of a data-parallel run: a resume may use other counts
    assert all(k.count(".") <= 1 for k in RUN_SETTINGS)


def test_differences_leave_run_settings_out():
    saved = {
        "model": {"base_width": 4},
        "trainer": {"epochs": 4, "device": "cpu", "eval_batch_size": 4},
        "dataset": {"root": "/a"},
        "output_dir": "/x",
    }
    moved = {
        "model": {"base_width": 4},
        "trainer": {"epochs": 4, "device": "cuda", "eval_batch_size": 8},
        "dataset": {"root": "/b"},
        "output_dir": "/y",
    }
    assert differences(saved, moved) == []
    other = {**moved, "model": {"base_width": 8}, "trainer": {**moved["trainer"], "epochs": 5}}
    assert differences(saved, other) == ["model.base_width: 4 -> 8", "trainer.epochs: 4 -> 5"]
