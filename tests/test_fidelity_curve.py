"""benchmarks/fidelity_curve.py: the authors' logs read as a running best, our runs alike."""

from __future__ import annotations

import json

import pytest

from tests.conftest import load_benchmark

fidelity_curve = load_benchmark("fidelity_curve")


def test_a_missing_best_line_carries_the_running_best_forward(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("\n".join([
        "Epoch: [0][0/43] \tCE_Loss 4.7 (4.7)", "Best Prec@1: 3.100, Many Prec@1: 0.083",
        "Epoch: [1][0/43] \tCE_Loss 4.0 (4.0)",  # no improvement in epoch 1
        "Epoch: [2][0/43] \tCE_Loss 4.1 (4.1)", "Best Prec@1: 5.880, Many Prec@1: 0.094",
    ]))
    assert fidelity_curve.log_running_best(log, 4) == [3.1, 3.1, 5.88, 5.88]
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("\n".join(json.dumps({"test_top1": v}) for v in (0.02, 0.05, 0.04)))
    own, running = fidelity_curve.run_curve(run, 3)
    assert own == pytest.approx([2.0, 5.0, 4.0]) and running == pytest.approx([2.0, 5.0, 5.0])


def test_the_authors_logs_read_as_their_readme_says():
    logs = fidelity_curve.LOGS
    if not (logs / "cifar100_100.log").is_file():
        pytest.skip(f"{logs} not available")
    assert fidelity_curve.log_running_best(logs / "cifar100_100.log", 8) == [
        3.10, 3.53, 5.88, 5.88, 6.48, 7.09, 7.35, 9.27]
    assert fidelity_curve.log_running_best(logs / "run1.log", 8)[-1] == 10.57
