"""The library API from Python, without the CLI: train, evaluate and inspect_labels return data,
print nothing, leave the caller's RNG and signal handlers alone, and report through callbacks."""

from __future__ import annotations

import signal

import pytest
import torch

import concutmix_cli
from concutmix_cli.data.prepared import load_prepared
from concutmix_cli.events import EpochDone, EpochStarted, Message, StepDone

FAST = ["optim.epochs=1", "optim.batch_size=16", "runtime.max_steps_per_epoch=2",
        "runtime.device='cpu'", "method.top_k=3", "method.rectify_after_epoch=-1"]


def test_train_evaluate_inspect_from_python(tiny_data, tmp_path, capsys):
    events = []
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    result = concutmix_cli.train("smoke", tmp_path / "run", data=load_prepared(tiny_data),
                                 overrides=FAST, callbacks=events.append)
    assert torch.equal(torch.get_rng_state(), rng)  # the run seeds its own generator
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
    assert not result.stopped and len(result.rows) == 1 and result.rows[0]["steps"] == 2
    kinds = [type(e) for e in events]
    assert kinds.index(EpochStarted) < kinds.index(StepDone) < kinds.index(EpochDone)
    assert any(isinstance(e, Message) and e.text.startswith("training concutmix") for e in events)

    report = concutmix_cli.evaluate(result.run_dir, device="cpu")
    assert report["overall"] == pytest.approx(result.rows[0]["test_top1"], abs=1e-12)
    inspected = concutmix_cli.inspect_labels(result.run_dir, num=3, device="cpu")
    assert len(inspected.rows) == 3 and inspected.summary["all"]["n"] == 3
    assert capsys.readouterr().out == ""  # the library prints nothing


def test_a_stop_request_during_training_ends_with_a_resumable_checkpoint(tiny_data, tmp_path):
    stop = concutmix_cli.StopFlag()

    def stop_after_first_step(event):
        if isinstance(event, StepDone):
            stop.request(143)

    result = concutmix_cli.train("smoke", tmp_path / "run", data=tiny_data, overrides=FAST,
                                 stop=stop, callbacks=stop_after_first_step)
    assert result.stopped and result.exit_code == 143 and result.rows == []
    assert (result.run_dir / "last.safetensors").is_file()


def test_a_stop_requested_before_training_saves_nothing(tiny_data, tmp_path):
    stop = concutmix_cli.StopFlag()
    stop.request(143)  # as a scheduler's SIGTERM during setup: nothing was trained
    result = concutmix_cli.train("smoke", tmp_path / "run", data=tiny_data, overrides=FAST, stop=stop)
    assert result.stopped and result.exit_code == 143
    assert not (result.run_dir / "last.safetensors").exists()
    assert (result.run_dir / "config.json").is_file()  # kept: `--resume` starts it over


def test_library_errors_name_the_parameter_not_a_flag(tiny_data, tmp_path):
    from concutmix_cli.errors import BadValue

    with pytest.raises(BadValue, match=r"^num must be at least 1 \(got 0\)") as caught:
        concutmix_cli.inspect_labels(tmp_path / "nowhere", num=0)
    assert caught.value.param == "num" and isinstance(caught.value, ValueError)
