"""Training a run, start to end: the request's config and run folder, the folder's lock, the
checks of a resume, then the loop (engine/loop.py) over the run's parts (engine/parts.py).

`run` is the library's entry (api.train calls it); `run_training` is `concutmix train`'s (and
torchrun's). Library code: no printing, no signal handlers, no global RNG seeding. What happens
is sent as events (events.py) to the caller's callbacks; a stop is asked for through a
`StopFlag`. The CLI (cli.py) renders the events and owns the signals.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from concutmix_cli.config import Config, build_config, upgrade_saved_config
from concutmix_cli.data.prepared import PreparedData
from concutmix_cli.engine import distributed as dist_utils
from concutmix_cli.engine import resume
from concutmix_cli.engine.checkpoint import RunFolder
from concutmix_cli.engine.loop import StopRequested, Trainer
from concutmix_cli.engine.runlock import RunLock
from concutmix_cli.errors import UserError
from concutmix_cli.events import Callback, Message, StopFlag, emitter
from concutmix_cli.fileio import atomic_write_bytes, atomic_write_text


@dataclass
class TrainRequest:
    preset: str | None = None
    out: Path | None = None
    resume: Path | None = None
    overrides: list[str] = field(default_factory=list)
    shortcuts: dict[str, Any] = field(default_factory=dict)


def resolve_request(request: TrainRequest) -> tuple[Config, RunFolder, bool]:
    """The config and run folder of a new run or of a resumed one."""
    if request.resume is not None:
        run = RunFolder(request.resume)
        if request.out is not None and os.path.realpath(request.out) != os.path.realpath(run.path):
            raise UserError(f"--out {request.out} with --resume {run.path}: a resumed run continues "
                            "in its own folder; drop --out (or copy the run folder to "
                            f"{request.out} and resume that copy)")
        if not run.config_path.is_file():
            raise UserError(f"--resume {run.path}: no config.json there; not a run folder")
        import json

        try:
            saved = json.loads(run.config_path.read_text())
            if not isinstance(saved, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:  # bad JSON, not UTF-8, not an object
            raise UserError(f"{run.config_path}: unreadable ({err}); not a run's config") from None
        if request.preset is not None:
            raise UserError("--resume reads the run's own config; do not pass --preset with it")
        cfg = build_config(base=upgrade_saved_config(saved), overrides=request.overrides,
                           shortcuts=request.shortcuts)
        return cfg, run, True
    cfg = build_config(preset=request.preset or "smoke", overrides=request.overrides,
                       shortcuts=request.shortcuts)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return cfg, RunFolder(request.out or Path("runs") / f"{cfg.preset}-{stamp}"), False


@dataclass(frozen=True)
class TrainResult:
    """What `train` did: the run folder, the metrics rows of the epochs trained now, and whether
    it stopped early on request (then `exit_code` says why and the run can be resumed)."""

    run_dir: Path
    rows: list[dict[str, Any]]
    stopped: bool = False
    exit_code: int = 0


def run(cfg: Config, run: RunFolder, resuming: bool, *, data: PreparedData | None = None,
        callbacks: Callback | list[Callback] | None = None,
        stop: StopFlag | None = None, check_run_data: bool = True) -> TrainResult:
    """Train `cfg` into `run` (a new folder, or the run to resume), under torchrun too.
    `check_run_data`: on resume, check that the run's own data is still where it was."""
    emit = emitter(callbacks)
    if cfg.runtime.tensorboard:  # a missing extra: one line before anything is written
        from concutmix_cli.tensorboard import require_summary_writer

        require_summary_writer()
    if resuming and data is None and check_run_data:
        resume.check_run_data(cfg.data.path, str(run.config_path), resume.recorded_checksum(run.path))
    if data is None:
        resume.absolute_data_path(cfg)
    else:  # the config (saved in the run) names the data the run trains on
        cfg = cfg.model_copy(deep=True)
        cfg.data.path = str(Path(data.folder).resolve())
    ctx = dist_utils.init_from_env(cfg.runtime.device)
    if not ctx.is_main:
        emit = emitter(None)
    for note in cfg.notes:  # settings of the preset that the method ignores, said once
        emit(Message(note, "note"))
    lock = RunLock(run.path)  # one writer per run folder (rank 0 holds it for the job)
    board = None
    try:
        if not resuming:  # rank 0 creates the folder; every rank then uses rank 0's path
            def create() -> str:
                run.create()
                _note(emit, lock.acquire())
                run.check_new()  # another `train --out` may have taken the folder meanwhile
                atomic_write_text(run.config_path, cfg.to_json())
                return str(run.path)

            run = RunFolder(Path(dist_utils.main_first(create, ctx)))
        elif ctx.is_main:
            _note(emit, lock.acquire())
        if resuming:
            check_resume_target(run, cfg, run.read_index(strict=False))  # before any write
        emit, board = _with_tensorboard(emit, cfg, run, ctx)
        try:
            trainer = Trainer(cfg, run, ctx, data=data, on_event=emit, stop=stop,
                              fresh=not resuming)
        except BaseException:
            if ctx.is_main and not resuming:  # bad data or config: leave no empty run behind
                lock.release()
                run.discard_new()
            raise
        if resuming:  # checks model and data against the checkpoint before anything is written
            _resume_notes(emit, run, cfg, trainer)
            trainer.restore()
            check_resume_target(run, cfg, [{"epoch": trainer.start_epoch}])
            if trainer.start_epoch >= cfg.optim.epochs:
                emit(Message(f"{run.path} already finished its {trainer.start_epoch} epoch(s): "
                             "nothing to train (extend it with more optim.epochs)"))
        if ctx.is_main and not (resuming and trainer.start_epoch >= cfg.optim.epochs):
            atomic_write_bytes(run.path / "manifest.json",
                               (trainer.data.folder / "manifest.json").read_bytes())
            if resuming:  # what the run now continues with (the changes were said above)
                atomic_write_text(run.config_path, cfg.to_json())
        if not resuming:
            emit(Message(f"training {cfg.method.name} ({cfg.preset}) on {trainer.data.folder} "
                         f"-> {run.path}  ({trainer.device.type}, {trainer.precision.name})"))
        try:
            rows = trainer.fit()
        except StopRequested as stopped:
            return TrainResult(run.path, [], stopped=True, exit_code=stopped.exit_code)
        except Exception:
            if ctx.is_main and not resuming:  # failed before its first checkpoint: nothing kept,
                if board is not None:         # so the same command can be run again
                    board.close()
                    board = None
                lock.release()
                run.discard_new()
            raise
        return TrainResult(run.path, rows)
    finally:
        if board is not None:
            board.close()
        lock.release()
        dist_utils.shutdown()


def check_resume_target(run: RunFolder, cfg: Config, entries: list[dict[str, Any]]) -> None:
    """A resume may extend a run (more optim.epochs) or set a new, nearer target, but never
    one before the epochs it has trained: config.json would then say fewer epochs than its
    metrics hold ("2 of 1 epochs"). Refused before anything is written."""
    done = max((int(e.get("epoch", 0)) for e in entries), default=0)
    if cfg.optim.epochs < done:
        raise UserError(
            f"--resume {run.path}: the run has trained {done} epoch(s), so optim.epochs = "
            f"{cfg.optim.epochs} (--epochs) would end it before where it is; nothing was changed: "
            f"give at least {done} epochs (more extends it), or train a new run with --out"
        )


def _with_tensorboard(emit: Callback, cfg: Config, run: RunFolder, ctx):
    """`emit` plus, with runtime.tensorboard on rank 0, a TensorBoard log of the events."""
    if not (cfg.runtime.tensorboard and ctx.is_main):
        return emit, None
    from concutmix_cli.tensorboard import TensorBoardLog

    board = TensorBoardLog(run.path)
    return emitter([emit, board]), board


def run_training(request: TrainRequest, callbacks: Callback | list[Callback] | None = None,
                 stop: StopFlag | None = None) -> TrainResult:
    """`concutmix train` (and torchrun): the request's config and folder, then `run`."""
    cfg, folder, resuming = resolve_request(request)
    return run(cfg, folder, resuming, callbacks=callbacks, stop=stop,
               check_run_data=not _names_data(request))


def _names_data(request: TrainRequest) -> bool:
    """Whether the command line chose the data (--data or --set data.path=...)."""
    return request.shortcuts.get("data.path") is not None or any(
        o.split("=", 1)[0].strip() == "data.path" for o in request.overrides)


def _note(emit: Callback, note: str | None) -> None:
    if note:
        emit(Message(note, "note"))


def _resume_notes(emit: Callback, run: RunFolder, cfg: Config, trainer: Trainer) -> None:
    """Say what a resume changes: other settings than the run's, other data."""
    import json

    try:
        saved = json.loads(run.config_path.read_text())
    except (OSError, ValueError):
        saved = {}
    changes = resume.changed_settings(saved if isinstance(saved, dict) else {}, cfg)
    if changes:
        emit(Message(f"resuming with changed settings ({'; '.join(changes)}); "
                     "the run continues validly but will not equal an uninterrupted one", "note"))
    _note(emit, resume.other_data_note(resume.recorded_checksum(run.path),
                                          trainer.data.manifest.get("checksum"),
                                          trainer.data.folder))
