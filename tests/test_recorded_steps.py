"""The architecture change (issue 24) changed no batch, loss or weight: every method on both
augmentation paths trains exactly as the recording made before it (tests/recorded_steps.py)."""

import json
import math

import numpy as np
import pytest

from tests.recorded_steps import METHODS, PATHS, RECORDING, machine, record_one

RECORDED = json.loads(RECORDING.read_text())
EXACT = RECORDED["machine"] == machine()
"""Bit for bit on the recording machine; other CPUs or torch builds may round differently."""


def _same(now, then, rel: float, where: str) -> None:
    if isinstance(then, dict):
        assert sorted(now) == sorted(then), where
        for key in then:
            _same(now[key], then[key], rel, f"{where}.{key}")
    elif isinstance(then, list):
        assert len(now) == len(then), where
        for i, (a, b) in enumerate(zip(now, then)):
            _same(a, b, rel, f"{where}[{i}]")
    elif isinstance(then, float) and not EXACT:
        assert math.isclose(now, then, rel_tol=rel, abs_tol=rel), (where, now, then)
    else:
        assert now == then, (where, now, then)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("method", METHODS)
def test_training_equals_the_recording(tiny_data, tmp_path, method, path):
    then = RECORDED["runs"][f"{method}/{path}"]
    now = json.loads(json.dumps(record_one(method, path, tiny_data, tmp_path / "run")))
    for i, (a, b) in enumerate(zip(now["steps"], then["steps"])):
        # lambda now travels as a float32 tensor (the box was always drawn from it as float32)
        b = {**b, "lam": float(np.float32(b["lam"]))}
        # the decisions and classes exactly everywhere; the floats within 1e-5 off the recorder
        for key in ("epoch", "step", "labels", "fg_labels", "mixed", "box"):
            assert a[key] == b[key], (i, key)
        _same(a, b, 1e-5, f"step {i}")
    assert len(now["steps"]) == len(then["steps"]) == 6
    _same(now["rows"], then["rows"], 1e-4, "rows")
    _same(now["weights"], then["weights"], 1e-3, "weights")
