"""Training under faults (issue 7): exact resume after SIGKILL / SIGTERM at several points,
checkpoint integrity (atomic writes, checksums, --keep, fallback), numerical faults, graceful stop
and safe loading. docs/reliability.md says what these tests establish and what they do not.

The exact-resume test drives the real console entry point in child processes. Two of its kill
points are chosen deterministically by a test-only wrapper (CHILD below) around
`concutmix_cli.cli.main`; the production code has no test hooks:
- CCM_TEST_KILL_DURING_WRITE=NAME: when the temporary file of NAME is about to be fsynced, cut it
  to half its size and SIGKILL the process (what a kill in the middle of the write leaves);
- CCM_TEST_SIGNAL_AT=EPOCH:STEP:SIG: send SIG to the process itself when step STEP (0-based) of
  epoch EPOCH (0-based) is planned, i.e. while that step runs.
A third kill is a plain SIGKILL from outside at a seeded random moment.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from concutmix_cli.engine.checkpoint import RunFolder, read_state, read_weights, state_bytes, weights_bytes
from concutmix_cli.fileio import atomic_write_bytes
from concutmix_cli.errors import UserError

WALL_CLOCK = {"seconds", "samples_per_s", "eval_seconds"}
EPOCHS = 3
TRAIN_ARGS = [
    "--preset", "smoke", "--epochs", str(EPOCHS), "--batch-size", "8", "--deterministic",
    "--device", "cpu", "--keep", "2", "--seed", "5",
    "--set", "runtime.max_steps_per_epoch=2", "--set", "data.num_workers=0",
    "--set", "method.rectify_after_epoch=0",
]

CHILD = r"""
import os, signal, sys

kill_on = os.environ.get("CCM_TEST_KILL_DURING_WRITE")
if kill_on:
    real_fsync = os.fsync

    def fsync(fd):
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if name.startswith(f".{kill_on}.") and name.endswith(".tmp"):
            os.ftruncate(fd, os.fstat(fd).st_size // 2)
            os.kill(os.getpid(), signal.SIGKILL)
        real_fsync(fd)

    os.fsync = fsync

signal_at = os.environ.get("CCM_TEST_SIGNAL_AT")
if signal_at:
    from concutmix_cli.data.sampling import EpochPlanner

    epoch_at, step_at, signame = signal_at.split(":")
    real_plan = EpochPlanner.plan

    def plan(self, epoch, step):
        if (epoch, step) == (int(epoch_at), int(step_at)):
            os.kill(os.getpid(), getattr(signal, signame))
        return real_plan(self, epoch, step)

    EpochPlanner.plan = plan

from concutmix_cli.cli import main

sys.argv = ["concutmix", *sys.argv[1:]]
main()
"""


def _child(args, **env) -> subprocess.Popen:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "PYTHONUNBUFFERED": "1", "COLUMNS": "1000", **env}
    return subprocess.Popen([sys.executable, "-c", CHILD, "train", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=full_env)


def _finish(proc: subprocess.Popen, timeout: float = 480) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in rows]


def _index(run: Path) -> list[dict]:
    try:
        return json.loads((run / "checkpoints.json").read_text())["checkpoints"]
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*.tmp")]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def _assert_same_weights(a: Path, b: Path) -> None:
    """Every tensor bit for bit (not just ==: -0.0 and NaN payloads count), and the metadata.
    (The files' bytes may differ: safetensors writes metadata keys in hash-map order.)"""
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    differ = [k for k in ta if ta[k].dtype != tb[k].dtype or ta[k].shape != tb[k].shape
              or not torch.equal(_bits(ta[k]), _bits(tb[k]))]
    assert not differ, f"tensors differ: {differ[:5]}"
    assert read_weights(a)[1] == read_weights(b)[1]


_REFERENCE: dict[Path, subprocess.Popen] = {}


@pytest.fixture(scope="module")
def reference(data4, tmp_path_factory) -> Path:
    """The uninterrupted run, started in the background (the exact-resume test runs its own
    children meanwhile); `_wait_reference` waits for it."""
    run = tmp_path_factory.mktemp("ref") / "run"
    _REFERENCE[run] = proc = _child(["--data", data4, "--out", run, *TRAIN_ARGS])
    yield run
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


def _wait_reference(run: Path) -> Path:
    proc = _REFERENCE[run]
    if proc.returncode is None:
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, out
    assert proc.returncode == 0
    return run


@pytest.fixture(autouse=True)
def _restore_global_torch_state():
    """In-process runs switch on deterministic algorithms; do not leak that into other tests."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(deterministic)


@pytest.fixture
def terminal_signals():
    """The signal handlers of a command started from a terminal, whatever the test runner's: a
    background job or nohup starts pytest with SIGINT / SIGHUP ignored, which training keeps."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    yield
    for sig, handler in previous.items():
        signal.signal(sig, handler)


@pytest.fixture
def one_thread():
    """Bit-exact results need the same intra-op thread count as the children (OMP=1): CPU
    kernels split their reductions by thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_exact_resume_after_kills_and_a_graceful_stop(data4, reference, tmp_path):
    run = tmp_path / "run"
    first = ["--data", data4, "--out", run, *TRAIN_ARGS]
    resume = ["--resume", run]

    # 1. SIGKILL while the first checkpoint's state file is being written: no checkpoint exists,
    #    but epoch 1's metrics row does; a half-written temporary file is left behind
    code, out = _finish(_child(first, CCM_TEST_KILL_DURING_WRITE="epoch-0001.state.pt"))
    assert code == -signal.SIGKILL, out
    assert _index(run) == [] and len(_metrics(run)) == 1 and _temporaries(run)

    # 2. resume: starts over (metrics truncated, temporary removed); SIGTERM during step 1 of
    #    epoch 2 -> the step finishes, a mid-epoch checkpoint is written, exit 143
    code, out = _finish(_child(resume, CCM_TEST_SIGNAL_AT="1:0:SIGTERM"))
    assert code == 143, out
    assert "starting from the beginning" in out and "removed an unfinished write" in out
    assert f"stopped; resume with: concutmix train --resume {run}" in out
    assert [(e["epoch"], e["step"]) for e in _index(run)] == [(1, 0), (1, 1)]
    assert len(_metrics(run)) == 1 and not _temporaries(run)

    # 3. resume mid-epoch; SIGKILL while the index of epoch 2's checkpoint is being written
    #    (its weights, state and last.safetensors are already in place, the index is not)
    code, out = _finish(_child(resume, CCM_TEST_KILL_DURING_WRITE="checkpoints.json"))
    assert code == -signal.SIGKILL, out
    assert "at epoch 2, step 1" in out
    assert [(e["epoch"], e["step"]) for e in _index(run)] == [(1, 0), (1, 1)]
    assert len(_metrics(run)) == 2  # epoch 2's row was written before its checkpoint

    # 4. resume (from the mid-epoch checkpoint again); SIGKILL at a seeded random moment after
    #    epoch 2's row is written: during its checkpoint, epoch 3's steps or its evaluation
    proc = _child(resume)
    deadline = time.monotonic() + 240
    while len(_metrics(run)) < 2 or _index(run)[-1]["step"] != 0:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.02)
    time.sleep(random.Random(7).uniform(0.0, 1.5))
    proc.kill()
    _finish(proc)

    # 5. resume to the end
    code, out = _finish(_child(resume))
    assert code == 0, out
    assert not _temporaries(run)

    ref = _wait_reference(reference)
    _assert_same_weights(run / "last.safetensors", ref / "last.safetensors")
    assert _metrics(run) == _metrics(ref)
    assert [r["epoch"] for r in _metrics(run)] == [1, 2, 3]
    # the optimizer (momentum buffers) ends identical too, and --keep 2 kept two epochs
    assert [(e["epoch"], e["step"]) for e in _index(run)] == [(2, 0), (3, 0)]
    assert [(e["epoch"], e["step"]) for e in _index(ref)] == [(2, 0), (3, 0)]
    sa = read_state(run / _index(run)[-1]["state"])["optimizer"]["state"]
    sb = read_state(ref / _index(ref)[-1]["state"])["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"]) for k in sa)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "epoch-0002.safetensors", "epoch-0002.state.pt",
        "epoch-0003.safetensors", "epoch-0003.state.pt"]


def test_damaged_newest_checkpoint_falls_back_and_redoes_exactly(cli, wide, one_thread, reference,
                                                                 tmp_path):
    ref = _wait_reference(reference)
    run = tmp_path / "copy"
    shutil.copytree(ref, run)
    damaged = run / "checkpoints" / "epoch-0003.safetensors"
    blob = bytearray(damaged.read_bytes())
    blob[-3] ^= 0xFF  # one tensor byte: safetensors still parses it, only the checksum sees it
    damaged.write_bytes(bytes(blob))

    # eval of the damaged file names it; the resume skips it, says so, and redoes epoch 3
    code, _, err = cli("eval", damaged)
    assert code == 2 and "checksum mismatch" in err and str(damaged) in err
    code, out, err = cli("train", "--resume", run)
    assert code == 0, err
    assert f"skipping checkpoint: {damaged} is truncated or modified" in out
    assert f"resuming {run} at epoch 3 (the newest intact checkpoint" in out
    _assert_same_weights(run / "last.safetensors", ref / "last.safetensors")
    assert _metrics(run) == _metrics(ref)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(cli, reference, tmp_path):
    ref = _wait_reference(reference)
    run = tmp_path / "copy"
    shutil.copytree(ref, run)
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    code, out, err = cli("train", "--resume", run, "--epochs", "4", "--set", "optim.lr=1e30")
    assert code == 2
    assert err.startswith("error: epoch 4, step ") and err.count("\n") == 1, err
    assert "non-finite" in err and "loss" in err and "last good checkpoint kept" in err
    assert "runtime.max_bad_steps" in err
    # nothing was written: the epoch-3 checkpoint is intact and still the one to resume from
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before
    entry, notes = RunFolder(run).newest_intact()
    assert (entry["epoch"], entry["step"], notes) == (3, 0, [])
    assert len(_metrics(run)) == 3 and not _temporaries(run)


# ----------------------------------------------------------------------------- in-process


def _trainer(data: Path, run: Path, *overrides: str):
    from concutmix_cli.config import build_config
    from concutmix_cli.engine.loop import Trainer

    cfg = build_config(preset="smoke", overrides=[
        f"data.path='{data}'", "optim.batch_size=8", "runtime.max_steps_per_epoch=2",
        "data.num_workers=0", "runtime.device='cpu'", *overrides])
    folder = RunFolder(run)
    folder.create()
    return Trainer(cfg, folder)


def test_skipped_bad_batch_is_counted_and_training_goes_on(data4, tmp_path):
    from concutmix_cli.engine.loop import NonFiniteLoss

    trainer = _trainer(data4, tmp_path / "r", "runtime.max_bad_steps=1", "method.name='ce'")
    real = trainer.step.step_fn

    def nan_at_the_first_step(model, batch, epoch):
        result = real(model, batch, epoch)
        if batch.step == 0:
            result.loss = result.loss * float("nan")
            result.terms["cls"] = result.terms["cls"] * float("nan")
        return result

    trainer.step.step_fn = nan_at_the_first_step
    lines: list[str] = []
    trainer.emit = lambda event: lines.append(f"{event.kind}: {event.text}" if hasattr(event, "kind") else "")
    row = trainer.train_epoch(0)  # the first batch is skipped, the second trains
    assert row["steps"] == 1 and row["samples_per_s"] > 0 and trainer.bad_steps == 1
    assert any("skipping batch" in t and "epoch 1, step 1: non-finite cls loss (1/1)" in t
               for t in lines)
    # a second one is over the limit of 1: the run stops, naming epoch, step and term
    with pytest.raises(NonFiniteLoss, match=r"^epoch 2, step 1: non-finite cls loss; stopped"):
        trainer.train_epoch(1)


def test_grad_scaler_skipped_steps_are_counted(data4, tmp_path):
    trainer = _trainer(data4, tmp_path / "r", "runtime.max_steps_per_epoch=1")
    # a scale so large that the scaled fp32 loss (about 5 here) overflows: the scaler skips the
    # step and halves the scale, as in fp16 training (fp16 itself needs CUDA)
    trainer.scaler = trainer.step.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    row = trainer.train_epoch(0)
    assert row["skipped_steps"] == 1 and row["steps"] == 1
    assert trainer.scaler.get_scale() == 2.0**126
    assert all(torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))
    assert trainer._state(0, 1)["scaler"]["scale"] == 2.0**126  # saved with the checkpoint


def _signal_at_first_step(monkeypatch, *signals: int) -> None:
    """The in-process run sends itself `signals` as it plans step 0 of epoch 0 (in training)."""
    from concutmix_cli.data.sampling import EpochPlanner

    real_plan = EpochPlanner.plan

    def plan(self, epoch, step):
        if (epoch, step) == (0, 0):
            for sig in signals:
                os.kill(os.getpid(), sig)
        return real_plan(self, epoch, step)

    monkeypatch.setattr(EpochPlanner, "plan", plan)


def test_sigint_finishes_the_step_saves_and_exits_130(cli, wide, data4, tmp_path, monkeypatch,
                                                       terminal_signals):
    _signal_at_first_step(monkeypatch, signal.SIGINT)
    before = signal.getsignal(signal.SIGINT)
    run = tmp_path / "r"
    code, out, err = cli("train", "--data", data4, "--out", run, *TRAIN_ARGS)
    assert code == 130, err
    assert f"stopped; resume with: concutmix train --resume {run}" in out
    assert [(e["epoch"], e["step"]) for e in _index(run)] == [(0, 1)]
    state = read_state(run / _index(run)[0]["state"])
    assert state["partial"]["steps"] == 1 and state["partial"]["samples"] == 8
    assert not (run / "metrics.jsonl").exists() and not _temporaries(run)
    assert signal.getsignal(signal.SIGINT) is before  # the trainer restored the handler it found


def test_sigterm_during_setup_stops_before_training_and_resume_starts_over(
        cli, data4, tmp_path, monkeypatch, terminal_signals):
    """A scheduler's SIGTERM while the run is set up (before the first epoch) is not fatal:
    the run stops with 143 before any step, leaves its config and no checkpoint, and releases
    its lock; --resume then trains from the beginning."""
    from concutmix_cli.engine import train as train_module

    real_init = train_module.Trainer.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(train_module.Trainer, "__init__", init)
    before = signal.getsignal(signal.SIGTERM)
    run = tmp_path / "r"
    code, out, err = cli("train", "--data", data4, "--out", run, *TRAIN_ARGS)
    assert code == 143, err
    # one line however long the path, though the captured console is 80 columns wide
    assert f"stopped; resume with: concutmix train --resume {run}\n" in out
    assert (run / "config.json").is_file() and _index(run) == []
    assert not (run / ".concutmix.lock").exists() and not _temporaries(run)
    assert signal.getsignal(signal.SIGTERM) is before
    monkeypatch.setattr(train_module.Trainer, "__init__", real_init)
    code, out, err = cli("train", "--resume", run)
    assert code == 0, err
    assert "no checkpoint yet: starting from the beginning" in out
    assert [r["epoch"] for r in _metrics(run)] == list(range(1, EPOCHS + 1))


def test_a_second_signal_interrupts_at_once(cli, data4, tmp_path, monkeypatch, terminal_signals):
    """The first SIGINT asks for a stop at the step's end; a second one, before it comes, does
    not wait: "interrupted", exit 130, the lock released and no temporary left."""
    _signal_at_first_step(monkeypatch, signal.SIGINT, signal.SIGINT)
    before = signal.getsignal(signal.SIGINT)
    run = tmp_path / "r"
    code, out, err = cli("train", "--data", data4, "--out", run, *TRAIN_ARGS)
    assert code == 130, err
    assert "interrupted" in err and "stopped; resume" not in out
    assert _index(run) == [] and not (run / ".concutmix.lock").exists()
    assert not _temporaries(run)
    assert signal.getsignal(signal.SIGINT) is before


def test_sighup_under_nohup_does_not_stop_training(cli, data4, tmp_path, monkeypatch,
                                                   terminal_signals):
    """`nohup concutmix train`: the terminal closing (SIGHUP, ignored by nohup) used to stop the
    run with 129, as training took SIGHUP over. Now it stays ignored: all epochs, exit 0."""
    _signal_at_first_step(monkeypatch, signal.SIGHUP)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    run = tmp_path / "r"
    code, out, err = cli("train", "--data", data4, "--out", run, *TRAIN_ARGS)
    assert code == 0, err
    assert f"done: {run}" in out and "stopped" not in out
    assert [r["epoch"] for r in _metrics(run)] == list(range(1, EPOCHS + 1))
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN


# ----------------------------------------------------------------------------- the run folder


def _entry_bytes(tag: int) -> tuple[bytes, bytes]:
    weights = weights_bytes({"w": torch.full((64,), float(tag))}, {"epoch": tag})
    return weights, state_bytes({"epoch": tag, "step": 0, "x": torch.arange(tag + 1)})


def test_keep_n_prunes_epoch_checkpoints_and_mid_epoch_ones(tmp_path):
    run = RunFolder(tmp_path / "r")
    run.create()
    for epoch in range(1, 5):
        run.save_checkpoint(epoch, 0, *_entry_bytes(epoch), keep=2)
    run.save_checkpoint(4, 1, *_entry_bytes(41), keep=2)  # a graceful stop in epoch 5
    assert [(e["epoch"], e["step"]) for e in run.read_index()] == [(3, 0), (4, 0), (4, 1)]
    run.save_checkpoint(5, 0, *_entry_bytes(5), keep=2)  # the mid-epoch one is not kept
    assert [(e["epoch"], e["step"]) for e in run.read_index()] == [(4, 0), (5, 0)]
    assert sorted(p.name for p in (run.path / "checkpoints").iterdir()) == [
        "epoch-0004.safetensors", "epoch-0004.state.pt",
        "epoch-0005.safetensors", "epoch-0005.state.pt"]
    assert read_weights(run.last_weights)[1]["epoch"] == 5
    assert not _temporaries(run.path)


@pytest.mark.parametrize("dies_at", ["epoch-0002.safetensors", "epoch-0002.state.pt",
                                     "last.safetensors", "checkpoints.json"])
def test_a_kill_during_any_write_of_a_checkpoint_leaves_an_intact_one(tmp_path, monkeypatch,
                                                                      dies_at):
    """In-process and exhaustive over the writes of one checkpoint (the subprocess test kills
    during two of them): the process 'dies' with the temporary file half written."""
    from concutmix_cli.engine import checkpoint

    run = RunFolder(tmp_path / "r")
    run.create()
    run.save_checkpoint(1, 0, *_entry_bytes(1), keep=1)

    class Killed(BaseException):
        pass

    real = checkpoint.atomic_write_bytes

    def dying(path, data):
        if Path(path).name == dies_at:
            (Path(path).parent / f".{Path(path).name}.x1y2.tmp").write_bytes(data[: len(data) // 2])
            raise Killed
        real(path, data)

    from concutmix_cli import fileio

    # every write goes through fileio.atomic_write_bytes (atomic_write_text included)
    monkeypatch.setattr(checkpoint, "atomic_write_bytes", dying)
    monkeypatch.setattr(fileio, "atomic_write_bytes", dying)
    with pytest.raises(Killed):
        run.save_checkpoint(2, 0, *_entry_bytes(2), keep=1)
    monkeypatch.setattr(checkpoint, "atomic_write_bytes", real)
    monkeypatch.setattr(fileio, "atomic_write_bytes", real)

    fresh = RunFolder(run.path)
    entry, notes = fresh.newest_intact()
    assert (entry["epoch"], notes) == (1, [])  # the index still names epoch 1, whose files exist
    assert [p.name for p in fresh.remove_temporaries()] == [f".{dies_at}.x1y2.tmp"]
    fresh.sync_last(entry)
    assert read_weights(fresh.last_weights)[1]["epoch"] == 1  # and last matches it again


def test_truncated_files_are_named_and_skipped(tmp_path):
    run = RunFolder(tmp_path / "r")
    run.create()
    for epoch in (1, 2, 3):
        run.save_checkpoint(epoch, 0, *_entry_bytes(epoch), keep=3)
    state3 = run.path / "checkpoints" / "epoch-0003.state.pt"
    state3.write_bytes(state3.read_bytes()[:100])
    (run.path / "checkpoints" / "epoch-0002.safetensors").unlink()
    entry, notes = run.newest_intact()
    assert entry["epoch"] == 1
    assert notes == [f"{state3} is truncated or modified (checksum mismatch)",
                     f"{run.path / 'checkpoints' / 'epoch-0002.safetensors'} is missing"]
    # last.safetensors (epoch 3) still verifies; a truncated one is named
    last = run.last_weights
    last.write_bytes(last.read_bytes()[:-10])
    with pytest.raises(UserError, match=f"{last}: checksum mismatch"):
        read_weights(last)


def test_tampered_index_is_refused_not_followed(tmp_path):
    run = RunFolder(tmp_path / "r")
    run.create()
    run.save_checkpoint(1, 0, *_entry_bytes(1), keep=1)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    body = json.loads(run.index_path.read_text())
    body["checkpoints"][0]["weights"] = str(victim)
    run.index_path.write_text(json.dumps(body))
    with pytest.raises(UserError, match="checkpoints.json: damaged"):
        run.newest_intact()
    run.save_checkpoint(2, 0, *_entry_bytes(2), keep=1)  # pruning never deletes outside the run
    assert victim.read_text() == "keep me"
    run.index_path.write_text("{not json")
    with pytest.raises(UserError, match="damaged"):
        run.read_index()


def test_no_pickle_from_a_run_folder_is_ever_unpickled(tmp_path):
    """A state file carrying a pickle payload (with a matching checksum in the index) is refused
    by `weights_only=True`; a weights file is only ever parsed as safetensors."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import io
    import pickle

    evil = io.BytesIO()
    torch.save({"epoch": 1, "step": 0, "x": Payload()}, evil)
    run = RunFolder(tmp_path / "r")
    run.create()
    weights, _ = _entry_bytes(1)
    entry = run.save_checkpoint(1, 0, weights, evil.getvalue(), keep=1)
    assert run.verify(entry) is None  # the checksum matches: only the loader stands in the way
    with pytest.raises(UserError, match="unreadable resume state"):
        read_state(run.path / entry["state"])
    (run.path / "weights.safetensors").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(UserError, match="not a readable safetensors file"):
        read_weights(run.path / "weights.safetensors")
    assert not marker.exists()


def test_every_write_is_atomic_and_names_the_file_on_a_full_disk(tmp_path, monkeypatch):
    import errno

    target = tmp_path / "sub" / "file.bin"
    atomic_write_bytes(target, b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as caught:
        atomic_write_bytes(target, b"new" * 1000)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert target.read_bytes() == b"old" and os.listdir(target.parent) == ["file.bin"]
