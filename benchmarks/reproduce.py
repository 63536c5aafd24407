"""The reproduction table (issue 17): the paper's CIFAR results at full budget, with baselines,
seeds and the omega ablation, from one prepared script that a GPU session can call several times.

Each call prepares the data it needs, runs the planned training runs in the plan's order (so each
call adds whole rows), `--parallel N` at a time, resumes whatever an earlier call left unfinished
(`concutmix train --resume`, exact) and skips finished runs. `--time-budget SECONDS` ends a call
cleanly: before the budget runs out the trainers get SIGTERM, which makes them checkpoint at the
next optimizer step and exit. Then the table is written from the run folders (repro_table.py).

    python benchmarks/reproduce.py --dry-run                     # the plan and each run's state
    python benchmarks/reproduce.py --parallel 2 --time-budget 500
    python benchmarks/reproduce.py --table-only --doc docs/benchmarks.md
    python benchmarks/reproduce.py --tiny                         # CPU smoke run, seconds

Exit codes: 0 every selected run finished; 3 runs are left (time budget or a stop signal):
call again; 1 a run or a data preparation failed (its log under OUT/logs names why), or a bug
(one `error: internal error` line); 2 bad arguments, a run folder that holds another run or is
damaged, an archive that is not one, an output that may not be written: one `error:` line on
stderr, checked before anything is trained, unpacked or written.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import filecmp
import gzip
import io
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import repro_table as table  # noqa: E402  (beside this file)
from argtypes import positive  # noqa: E402  (beside this file)
from repro_table import Reference  # noqa: E402

from concutmix_cli.config import STEP_MODES, build_config, read_by_method, upgrade_saved_config  # noqa: E402
from concutmix_cli.engine.checkpoint import RunFolder  # noqa: E402
from concutmix_cli.engine.resume import changed_settings  # noqa: E402
from concutmix_cli.engine.runlock import LOCK_NAME  # noqa: E402
from concutmix_cli.errors import UserError  # noqa: E402
from concutmix_cli.fileio import atomic_write_text, json_text  # noqa: E402
from concutmix_cli.outputs import check_outputs  # noqa: E402

EXIT_DONE, EXIT_FAILED, EXIT_USAGE, EXIT_LEFT = 0, 1, 2, 3
CIFAR100_NPZ = REPO.parent / "shared" / "data" / "cifar100.npz"

# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Run:
    """One training run of the table: preset (dataset x IF) x method x subset seed x training
    seed x extra config overrides."""

    id: str
    dataset: str
    imbalance: int
    subset_seed: int
    method: str = "concutmix"
    seed: int = 0
    overrides: tuple[str, ...] = ()
    what: str = ""

    @property
    def preset(self) -> str:
        return f"{self.dataset}-if{self.imbalance}"

    def setting(self) -> str:
        name = {"cifar100-lt": "CIFAR-100-LT", "cifar10-lt": "CIFAR-10-LT"}[self.dataset]
        return f"{name} IF {self.imbalance}" + (f", {self.what}" if self.what else "")


OMEGA_PUBLISHED = "20/255"
PLAN: tuple[Run, ...] = (  # the order of value: each call adds whole rows
    Run("r01", "cifar100-lt", 100, 10),
    Run("r02", "cifar100-lt", 100, 0),
    Run("r03", "cifar100-lt", 100, 10, method="ce"),
    Run("r04", "cifar100-lt", 100, 10, method="bcl"),
    Run("r05", "cifar100-lt", 50, 10),
    Run("r06", "cifar100-lt", 10, 10),
    Run("r07", "cifar10-lt", 100, 10),
    Run("r08", "cifar100-lt", 100, 10, seed=1),
    Run("r09", "cifar100-lt", 100, 10, seed=2),
    Run("r10", "cifar100-lt", 100, 10, overrides=("method.omega=0.0",), what="omega = 0"),
    Run("r11", "cifar100-lt", 100, 10, overrides=("method.omega=1.0",), what="omega = 1.0"),
)
SEED_GROUP = ("r01", "r08", "r09")
"""Rows that differ only in the training seed: mean +- std."""
ABLATION = (("0", "r10"), (OMEGA_PUBLISHED + " (published)", "r01"), ("1.0", "r11"))

MACHINE_SETTINGS = ("data.path", "runtime.step")
"""Settings that say where and how fast a run trains, not what it learns: a run may be resumed
with another value (the repository moved; `--step` chose another mode on another card)."""

FULL_OVERRIDES = ('data.augment_on="device"',)
"""Batched views on the training device (3.3x faster an epoch on an H200, docs/benchmarks.md)."""
TINY_OVERRIDES = (
    'data.augment_on="device"', 'runtime.device="cpu"', "optim.epochs=2", "optim.batch_size=16",
    "runtime.max_steps_per_epoch=2", "optim.warmup_epochs=1", "optim.milestones=[]",
    "method.rectify_after_epoch=0", "method.top_k=3", "data.eval_batch_size=256",
)
"""--tiny: 2 epochs of 2 steps on 10-class synthetic data; epoch 2 is rectified (CI, seconds)."""

_C100 = Reference("53.16 (63.8 / 50.5 / 43.8); logs 53.16, 53.15", 53.16, (63.8, 50.5, 43.8),
                  {"cifar100_100.log": 53.16, "run1.log": 53.15})
REFERENCES: dict[str, Reference] = {
    "r01": _C100, "r02": _C100, "r08": _C100, "r09": _C100,
    "r03": Reference("CE about 38-41 (other papers, subset seed 0)"),
    "r04": Reference("BCL 51.9 (its paper, subset seed 0)", 51.9),
    "r05": Reference("57.40 (68.3 / 51.8 / 45.3); log 57.40", 57.40, (68.3, 51.8, 45.3),
                     {"cifar100_50.log": 57.40}),
    "r06": Reference("64.53; log 64.53", 64.53, None, {"cifar100_10.log": 64.53}),
    "r07": Reference("86.07; logs 86.07, 85.94", 86.07, None,
                     {"cifar10_100.log": 86.07, "run2.log": 85.94}),
}
"""The paper's numbers (docs/method-notes.md, METHOD.md section 7: best epoch on the test split)
and the final running best of the authors' logs of the same setting."""


def parse_only(text: str | None) -> list[str] | None:
    """--only's run ids: spaces around them and empty entries (a trailing comma) do not count;
    an --only that names no run at all is refused (an empty shell variable must not select
    the whole plan)."""
    if text is None:
        return None
    ids = [name.strip() for name in text.split(",") if name.strip()]
    if not ids:
        raise UserError(f"--only names no run (got {text!r}); give run ids such as r01,r03, or "
                        "leave --only out for the whole plan")
    return ids


def select(only: list[str] | None) -> list[Run]:
    """The plan's runs named by `only` (all by default), always in the plan's order."""
    if not only:
        return list(PLAN)
    known = {r.id for r in PLAN}
    unknown = [name for name in only if name not in known]
    if unknown:
        raise UserError(f"--only: unknown run {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return [r for r in PLAN if r.id in only]


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DataSpec:
    dataset: str
    imbalance: int
    subset_seed: int
    tiny: bool

    @property
    def name(self) -> str:
        return f"{'tiny-' if self.tiny else ''}{self.dataset}-if{self.imbalance}-seed{self.subset_seed}"

    def prepare_args(self, sources: dict[str, Path | None], download_root: Path) -> list[str]:
        common = ["--imbalance", str(self.imbalance), "--seed", str(self.subset_seed)]
        if self.tiny:  # 10 classes, 120 down to 1 image at IF 100, 50 test images a class
            return ["synthetic-lt", "--classes", "10", "--n-max", "120", *common]
        source = sources.get(self.dataset)
        where = ["--source", str(source)] if source else ["--root", str(download_root)]
        return [self.dataset, *common, *where]


def data_spec(run: Run, tiny: bool) -> DataSpec:
    return DataSpec(run.dataset, run.imbalance, run.subset_seed, tiny)


# ----------------------------------------------------------------------------- runs on disk


@dataclass
class Planned:
    run: Run
    folder: Path
    data: Path
    data_spec: DataSpec
    overrides: list[str]
    epochs: int
    state: str
    """new | resume | finished"""
    done: int = 0


def expected_config(run: Run, data: Path, tiny: bool):
    overrides = read_by_method(run.method, [*(TINY_OVERRIDES if tiny else FULL_OVERRIDES),
                                            *run.overrides])
    cfg = build_config(preset=run.preset, overrides=overrides, shortcuts={
        "data.path": str(data), "method.name": run.method, "runtime.seed": run.seed})
    return cfg, overrides


def plan_state(run: Run, out: Path, data_root: Path, tiny: bool) -> Planned:
    """Where `run` stands in `out`: not started, to resume, or finished. A folder that holds
    another run (other settings) is refused rather than resumed or overwritten."""
    spec = data_spec(run, tiny)
    data = data_root / spec.name
    cfg, overrides = expected_config(run, data, tiny)
    folder = out / run.id
    planned = Planned(run, folder, data, spec, overrides, cfg.optim.epochs, "new")
    if not folder.exists():
        return planned
    if not folder.is_dir():
        raise UserError(f"{folder} is a file where run {run.id}'s folder belongs; move it away")
    if not (folder / "config.json").is_file():
        if all(p.name == LOCK_NAME for p in folder.iterdir()):
            return planned  # a trainer stopped before it wrote anything: `train --out` reuses it
        raise UserError(f"{folder} exists but holds no run (no config.json); move it away")
    summary = table.summarize(folder)  # every file of the folder checked: damage is refused
    saved = upgrade_saved_config(table.read_object(folder / "config.json"))
    changes = [c for c in changed_settings(saved, cfg)
               if not c.startswith(tuple(f"{key}:" for key in MACHINE_SETTINGS))]
    if changes:
        raise UserError(f"{folder} holds a run with other settings ({'; '.join(changes[:3])}); "
                        f"use another --out")
    planned.done = summary.epochs_done
    planned.state = "finished" if planned.done >= planned.epochs else "resume"
    return planned


def train_command(p: Planned, step: str | None = None) -> list[str]:
    """The trainer's command line; `step`: runtime.step for this call (else the run's own)."""
    base = [sys.executable, "-m", "concutmix_cli", "train"]
    mode = ["--set", f'runtime.step="{step}"'] if step else []
    if p.state == "resume":  # the run's own config; --data: the repository may sit elsewhere now
        return [*base, "--resume", str(p.folder), "--data", str(p.data), *mode]
    sets = [arg for o in p.overrides for arg in ("--set", o)]
    return [*base, "--preset", p.run.preset, "--data", str(p.data), "--method", p.run.method,
            "--seed", str(p.run.seed), *sets, *mode, "--out", str(p.folder)]


# ----------------------------------------------------------------------------- the call


@dataclass
class Options:
    out: Path
    data_root: Path
    tiny: bool = False
    parallel: int = 1
    step: str | None = None
    time_budget: float | None = None
    stop_grace: float = 30.0
    min_start: float = 60.0
    mps: str = "auto"
    sources: dict[str, Path | None] = field(default_factory=dict)
    download_root: Path = Path("data/torchvision")
    doc: Path | None = None
    restore: Path | None = None
    archive: Path | None = None
    json_out: Path | None = None


@dataclass
class Child:
    planned: Planned
    proc: subprocess.Popen
    started: float
    started_at: str
    log: Any
    signalled: bool = False


class Runner:
    """Starts, watches and stops the trainer processes of one call."""

    def __init__(self, opts: Options, plan: list[Planned], say: Callable[[str], None]):
        self.opts, self.plan, self.say = opts, plan, say
        self.t0 = time.monotonic()
        self.children: list[Child] = []
        self.stop_asked = False
        self.failed: list[str] = []
        self.prepared: dict[str, bool] = {}
        self.card, self.torch_version = "?", "?"
        self.mps = False
        self.env = dict(os.environ)

    # time
    def left(self) -> float:
        if self.opts.time_budget is None:
            return float("inf")
        return self.opts.time_budget - (time.monotonic() - self.t0)

    def ask_stop(self, *_args) -> None:
        self.stop_asked = True

    # data
    def ensure_data(self, p: Planned) -> bool:
        name = p.data_spec.name
        if name not in self.prepared:
            if (p.data / "manifest.json").is_file():
                self.prepared[name] = True
            else:
                self.say(f"preparing {p.data}")
                args = p.data_spec.prepare_args(self.opts.sources, self.opts.download_root)
                cmd = [sys.executable, "-m", "concutmix_cli", "prepare", *args, "--out", str(p.data)]
                log_path = self.opts.out / "logs" / f"prepare-{name}.log"
                with open(log_path, "a") as log:
                    rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)
                self.prepared[name] = rc == 0
                if rc != 0:
                    last = _last_line(log_path)
                    self.say(f"prepare {name} failed (exit {rc}): {last}; its runs are skipped")
        if not self.prepared[name]:
            self.failed.append(f"{p.run.id}: no data ({name})")
        return self.prepared[name]

    # devices
    def probe_card(self) -> None:
        """The card the runs train on, as the run records it: torch's device name, or CPU."""
        if self.opts.tiny:
            self.card, self.torch_version = "CPU", _torch_version()
            return
        self.torch_version, self.card = self._probe()

    def _probe(self) -> tuple[str, str]:
        code = ("import torch; print(torch.__version__); print(torch.cuda.get_device_name() "
                "if torch.cuda.is_available() else 'CPU')")
        try:
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 env=self.env, timeout=120).stdout.split("\n")
            return out[0].strip(), out[1].strip()
        except (subprocess.SubprocessError, IndexError, OSError):
            return "?", "?"

    def start_mps(self) -> None:
        """MPS lets the kernels of concurrent processes share the GPU; started only for this call
        (its pipe and log folders under OUT) and stopped at its end."""
        want = self.opts.mps
        if want == "off" or self.opts.parallel < 2 or self.card == "CPU":
            return
        if shutil.which("nvidia-cuda-mps-control") is None:
            if want == "on":
                raise UserError("--mps on: nvidia-cuda-mps-control is not on PATH")
            return
        mps_dir = self.opts.out / ".mps"
        self.env["CUDA_MPS_PIPE_DIRECTORY"] = str(mps_dir / "pipe")
        self.env["CUDA_MPS_LOG_DIRECTORY"] = str(mps_dir / "log")
        for sub in ("pipe", "log"):
            (mps_dir / sub).mkdir(parents=True, exist_ok=True)
        rc = subprocess.call(["nvidia-cuda-mps-control", "-d"], env=self.env)
        self.mps = rc == 0
        if self.mps and self._probe()[1] != self.card:  # a daemon whose clients get no GPU
            self.stop_mps()
            self.say("MPS: a CUDA process sees no GPU under the daemon; running without MPS")
        else:
            self.say("MPS daemon started" if self.mps else f"MPS daemon did not start (exit {rc})")
        if not self.mps:
            for key in ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY"):
                self.env.pop(key, None)

    def stop_mps(self) -> None:
        if self.mps:
            subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True, env=self.env)
            self.mps = False

    # children
    def start(self, p: Planned) -> None:
        env = dict(self.env, PYTHONUNBUFFERED="1")
        if "OMP_NUM_THREADS" not in os.environ:  # share the CPU cores between the trainers
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.opts.parallel))
        log = open(self.opts.out / "logs" / f"{p.run.id}.log", "a")
        stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        cmd = train_command(p, self.opts.step)
        log.write(f"\n== {stamp} {p.state} (epochs done {p.done}/{p.epochs}): {shlex.join(cmd)}\n")
        log.flush()
        # same process group: whatever kills this call (a device limit) kills the trainers too
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.children.append(Child(p, proc, time.monotonic(), stamp, log))
        self.say(f"{p.run.id}: {'resumed at epoch ' + str(p.done + 1) if p.state == 'resume' else 'started'}"
                 f" ({p.run.setting()}, {p.run.method}, training seed {p.run.seed})")

    def signal_all(self, sig: int) -> None:
        for child in self.children:
            if child.proc.poll() is None:
                child.signalled = True
                child.proc.send_signal(sig)

    def reap(self) -> None:
        for child in [c for c in self.children if c.proc.poll() is not None]:
            self.children.remove(child)
            child.log.close()
            self.finish(child)

    def finish(self, child: Child) -> None:
        p, rc = child.planned, child.proc.returncode
        done = len(table.metrics_rows(p.folder))
        finished = rc == 0 and done >= p.epochs
        if finished:
            self.say(f"{p.run.id}: finished ({done}/{p.epochs} epochs)")
        elif child.signalled:
            self.say(f"{p.run.id}: stopped at {done}/{p.epochs} epochs; the next call resumes it")
        else:
            log = self.opts.out / "logs" / f"{p.run.id}.log"
            self.failed.append(f"{p.run.id}: exit {rc}, see {log}")
            self.say(f"{p.run.id}: failed (exit {rc}): {_last_line(log)}")
        if (p.folder / "config.json").is_file():
            self.record(child, done, rc)

    def record(self, child: Child, done: int, rc: int) -> None:
        """The sidecar of the run: every call's wall time, card and epochs (the table reads it)."""
        p = child.planned
        path = p.folder / table.SIDECAR
        try:
            sidecar = table.read_sidecar(p.folder)
        except UserError as err:  # damaged since the start of the call: kept for a person
            self.say(f"{p.run.id}: this session is not recorded: {err}")
            return
        sidecar = sidecar or {"run": p.run.id, "setting": p.run.setting(), "tiny": self.opts.tiny,
                              "sessions": []}
        sidecar.setdefault("sessions", [])
        sidecar["sessions"].append({
            "started": child.started_at, "wall_s": round(time.monotonic() - child.started, 3),
            "card": self.card, "torch": self.torch_version, "parallel": self.opts.parallel,
            "mps": self.mps, "step": self.opts.step or "run's own", "epochs_before": p.done,
            "epochs_after": done, "exit": rc,
        })
        atomic_write_text(path, json_text(sidecar, indent=2) + "\n")

    def execute(self) -> None:
        queue = [p for p in self.plan if p.state != "finished"]
        for p in self.plan:
            if p.state == "finished":
                self.say(f"{p.run.id}: finished earlier ({p.done}/{p.epochs} epochs), skipped")
        if not queue:
            return
        self.probe_card()
        self.start_mps()
        stopping_since, killed = None, False
        try:
            while True:
                self.reap()
                if stopping_since is None and (self.stop_asked or self.left() <= self.opts.stop_grace):
                    if self.children:
                        why = "stop signal" if self.stop_asked else "time budget"
                        self.say(f"{why}: asking {len(self.children)} trainer(s) to checkpoint and stop")
                        self.signal_all(signal.SIGTERM)
                    stopping_since = time.monotonic()
                if stopping_since is not None:
                    if not self.children:
                        break
                    if not killed and time.monotonic() - stopping_since > self.opts.stop_grace:
                        self.say("trainers still running after the grace period: killed "
                                 "(they resume from their last checkpoint)")
                        self.signal_all(signal.SIGKILL)
                        killed = True
                    time.sleep(0.2)
                    continue
                while (queue and len(self.children) < self.opts.parallel
                       and self.left() - self.opts.stop_grace >= self.opts.min_start):
                    p = queue.pop(0)
                    if self.ensure_data(p):
                        self.start(p)
                if not self.children:
                    break
                time.sleep(0.2)
        finally:
            self.signal_all(signal.SIGKILL)  # only if this loop itself failed
            for child in self.children:
                child.proc.wait()
            self.reap()
            self.stop_mps()


# ----------------------------------------------------------------------------- between machines


def archive_runs(plan: list[Planned], dest: Path, say: Callable[[str], None]) -> None:
    """One DEST/<id>.tgz per run of the selection, so that results and resume states leave a
    machine that is given back: a finished run without checkpoints/ (it has nothing to resume;
    last.safetensors and the metrics stay); an unfinished one with only what it resumes from
    (the newest checkpoint and an index listing it alone; an older end-of-epoch checkpoint kept
    beside a mid-epoch one stays behind), its last.safetensors stored as a hard link to that
    checkpoint's identical weights: about 5 MB instead of 8-13, so that two unfinished runs
    travel back to a device machine beside the data, inside a call's 64 MiB."""
    dest.mkdir(parents=True, exist_ok=True)
    for p in plan:
        if not (p.folder / "config.json").is_file():
            continue
        finished = len(table.metrics_rows(p.folder)) >= p.epochs
        newest = None if finished else RunFolder(p.folder).newest_only_index()
        needed = {f"{p.run.id}/{rel}" for rel in newest[1]} if newest else set()
        twin = None if finished else _weights_twin(p.folder, newest[1][0] if newest else None)

        def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
            parts = Path(info.name).parts
            if LOCK_NAME in parts or (finished and len(parts) > 1 and parts[1] == "checkpoints"):
                return None
            if newest and (info.name == f"{p.run.id}/checkpoints.json" or (
                    len(parts) > 2 and parts[1] == "checkpoints" and info.name not in needed)):
                return None  # the index is written below; older checkpoints are not needed
            if twin is not None and parts[1:] == ("last.safetensors",):
                info.type, info.linkname, info.size = tarfile.LNKTYPE, f"{p.run.id}/{twin}", 0
            return info

        tmp = dest / f".{p.run.id}.tgz.tmp"
        try:
            with tarfile.open(tmp, "w:gz") as tar:
                tar.add(p.folder, arcname=p.run.id, filter=keep)
                if newest:
                    body = newest[0].encode()
                    info = tar.gettarinfo(p.folder / "checkpoints.json", f"{p.run.id}/checkpoints.json")
                    info.size = len(body)
                    tar.addfile(info, io.BytesIO(body))
            os.replace(tmp, dest / f"{p.run.id}.tgz")
        except BaseException:  # no half-written archive left behind
            tmp.unlink(missing_ok=True)
            raise
    if plan and (plan[0].folder.parent / "table.md").is_file():
        shutil.copyfile(plan[0].folder.parent / "table.md", dest / "table.md")
    say(f"run archives written to {dest}")


def _weights_twin(folder: Path, newest: str | None = None) -> str | None:
    """The checkpoint weights file (relative to `folder`) that holds the same bytes as
    last.safetensors: `newest` (the index's newest weights) if given, else any checkpoint's; tar
    adds checkpoints/ before last.safetensors (it adds names sorted)."""
    last = folder / "last.safetensors"
    if not last.is_file():
        return None
    candidates = [folder / newest] if newest else sorted(
        (folder / "checkpoints").glob("*.safetensors"), reverse=True)
    for weights in candidates:
        if weights.is_file() and filecmp.cmp(weights, last, shallow=False):
            return weights.relative_to(folder).as_posix()
    return None


def _one_line(err: object) -> str:
    """A message on one line (tarfile's and others' span several)."""
    return " ".join(str(err).split()) or type(err).__name__


def unpack(archive: Path, staging: Path, run_id: str) -> Path:
    """Unpack `archive` into `staging`; the run folder it holds. One line for an archive that is
    not one (tarfile's own message spans lines), is cut short (EOFError, not a TarError), is
    damaged, reaches outside its folder or holds no run `run_id`."""
    again = "copy it again from the machine that wrote it"
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(staging, filter="data")
    except EOFError as err:
        raise UserError(f"{archive}: cut short ({_one_line(err)}); {again}") from None
    except tarfile.FilterError as err:
        raise UserError(f"{archive}: not an archive of a run folder ({_one_line(err)}); give "
                        "the folder that --archive wrote") from None
    except tarfile.ReadError as err:
        raise UserError(f"{archive}: not a gzip tar archive, or a damaged one "
                        f"({_one_line(err)}); give the folder that --archive wrote") from None
    except (tarfile.TarError, zlib.error, gzip.BadGzipFile) as err:
        raise UserError(f"{archive}: damaged ({_one_line(err)}); {again}") from None
    incoming = staging / run_id
    if not (incoming / "config.json").is_file():
        raise UserError(f"{archive}: holds no run {run_id} (no {run_id}/config.json); give the "
                        "folder that --archive wrote")
    return incoming


def restore_runs(plan: list[Planned], src: Path, out: Path, say: Callable[[str], None]) -> None:
    """Unpack SRC/<id>.tgz (written by --archive on another machine) for the runs of the
    selection. An existing run folder is replaced only by a later state of the same run (more
    epochs, same settings); otherwise it is kept as it is. Every archive is unpacked and checked
    before any run folder is replaced: one bad archive restores nothing."""
    staged: list[tuple[Planned, Path, Path]] = []
    created = not out.exists()
    try:
        for p in plan:
            archive = src / f"{p.run.id}.tgz"
            if not archive.is_file():
                continue
            staging = out / f".{p.run.id}.restore.tmp"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            staged.append((p, archive, staging))
            unpack(archive, staging, p.run.id)
            try:
                plan_state(p.run, staging, p.data.parent, p.data_spec.tiny)
            except UserError as err:  # named inside the archive, not in the staging folder
                why = str(err).replace(f"{staging}{os.sep}", "").replace(f"; {table.FIX}", "")
                raise UserError(f"{archive}: {why}; nothing was restored") from None
        for p, archive, staging in staged:
            incoming = staging / p.run.id
            here, there = len(table.metrics_rows(p.folder)), len(table.metrics_rows(incoming))
            if p.folder.exists() and here >= there:
                say(f"{p.run.id}: {p.folder} has {here} epochs, the archive {there}: kept")
                continue
            if p.folder.exists():
                old = out / f".{p.run.id}.old.tmp"
                os.replace(p.folder, old)
                os.replace(incoming, p.folder)
                shutil.rmtree(old)
            else:
                os.replace(incoming, p.folder)
            say(f"{p.run.id}: restored from {archive} ({there} epochs)")
    except OSError as err:
        where = f": {err.filename}" if err.filename else ""
        raise UserError(f"--restore {src}: cannot restore ({err.strerror or err}{where})") from None
    finally:
        for _, _, staging in staged:
            shutil.rmtree(staging, ignore_errors=True)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # nothing restored: no trace of the attempt


# ----------------------------------------------------------------------------- the table


def build_table(opts: Options) -> tuple[str, dict[str, Any]]:
    """Markdown and JSON of the whole plan, from the run folders under opts.out."""
    summaries = {r.id: table.summarize(opts.out / r.id) for r in PLAN}
    present = [s for s in summaries.values() if s is not None]
    lines = []
    if any(s.tiny for s in present):
        lines.append("**CPU smoke run of the script (`--tiny`: 2 epochs of 2 steps of batch 16 on "
                     "10-class synthetic data), NOT a result.**\n")
    lines.append("Last-epoch top-1 on the test split (percent; **bold**); the running best on the "
                 "test split is shown only to compare with the paper and the authors' logs, which "
                 "report it. Wall time: the trainer processes' own, summed over the calls.\n")
    lines += [table.HEADER, "|" + "---|" * table.HEADER.count(" | ") + "---|"]
    groups = []
    for run in PLAN:
        s = summaries[run.id]
        setting = run.setting() + (f" (data: {s.dataset})" if s and s.dataset != run.dataset else "")
        lines.append(table.run_row(run.id, setting, s, REFERENCES.get(run.id)))
        if run.id == SEED_GROUP[-1]:
            text, data = table.group_row("+".join(SEED_GROUP), [summaries[i] for i in SEED_GROUP])
            lines.append(text)
            groups.append(data)
    lines += ["", "omega ablation (CIFAR-100-LT IF 100, subset seed 10, training seed 0): what the "
              "rectification adds. omega * rho is the mean rectification weight of the last "
              "epoch's mixed batches (`inspect-labels` shows it per sample).", "",
              table.ABLATION_HEADER, "|" + "---|" * table.ABLATION_HEADER.count(" | ") + "---|"]
    lines += [table.ablation_row(summaries[rid], omega, rid) for omega, rid in ABLATION]
    data = {
        "runs": [{"id": r.id, "setting": r.setting(), "paper": _reference_json(REFERENCES.get(r.id)),
                  **(table.as_json(summaries[r.id]) or {"not_run": True})} for r in PLAN],
        "groups": groups,
        "ablation": [{"omega": omega, "run": rid} for omega, rid in ABLATION],
    }
    return "\n".join(lines) + "\n", data


def _reference_json(ref: Reference | None) -> dict[str, Any] | None:
    if ref is None:
        return None
    return {"text": ref.text, "top1": ref.top1, "groups": ref.groups, "logs": ref.logs}


def _under(path: Path, folder: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def _check_parent(option: str, path: Path) -> None:
    """The nearest existing folder above `path` is a folder (else the write fails half way)."""
    for parent in Path(path).absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{option} {path}: {parent} is a file, not a folder")
            return


def output_targets(opts: Options) -> dict[str, Path]:
    """The files this call writes (the table in --out, --json, --doc), checked before any work
    (outputs.check_outputs: no folder, special file, path under a file, or file a run or a
    dataset owns, no two onto one file), none inside a run folder or the logs; {what: the path
    to write}."""
    outputs: dict[str, Path | None] = {}
    if not opts.out.exists() or opts.out.is_dir():
        outputs.update({"table.md": opts.out / "table.md", "table.json": opts.out / "table.json"})
    outputs.update({"--json": opts.json_out, "--doc": opts.doc})
    ours = [opts.out / r.id for r in PLAN] + [opts.out / "logs", opts.out / ".mps"]
    for option in ("--json", "--doc"):
        path = outputs[option]
        if path is None:
            continue
        for folder in ours:
            if _under(path, folder):
                raise UserError(f"{option} {path} is inside {folder}, which this script keeps; "
                                "write it outside the run folders and logs")
    return check_outputs(outputs, force=True)  # the script's outputs are replaced each call


def write_outputs(opts: Options, say: Callable[[str], None]) -> None:
    """The table into OUT/table.md and table.json, --json and --doc; everything is worked out
    and checked before the first file is written."""
    markdown, data = build_table(opts)
    text = json_text(data, indent=2) + "\n"
    targets = output_targets(opts)
    writes = {}
    if opts.out.is_dir():
        writes.update({targets["table.md"]: markdown, targets["table.json"]: text})
    if opts.json_out is not None:
        writes[targets["--json"]] = text
    if opts.doc is not None:
        writes[targets["--doc"]] = table.replace_between_markers(read_doc(opts.doc), markdown)
    for path, content in writes.items():
        atomic_write_text(path, content)
    if opts.doc is not None:
        say(f"table written into {opts.doc}")
    for entry in data["runs"]:
        for note in entry.get("notes", []):
            say(f"{entry['id']}: note: {note}")
    sys.stdout.write(markdown)


def read_doc(doc: Path) -> str:
    """--doc's text, with one line if it cannot be read or has no single pair of markers."""
    try:
        text = doc.read_text(encoding="utf-8")
        table.replace_between_markers(text, "")
    except UnicodeDecodeError:
        raise UserError(f"--doc {doc}: not UTF-8 text; give the Markdown file that holds the "
                        "table's markers") from None
    except OSError as err:
        raise UserError(f"--doc {doc}: cannot read ({err.strerror or err})") from None
    except ValueError as err:
        raise UserError(f"--doc {doc}: {err}") from None
    return text


# ----------------------------------------------------------------------------- command line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (not argparse's usage block)
        raise UserError(message)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, Options]:
    parser = _Parser(prog="reproduce.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="run folders [runs/reproduce, --tiny: runs/reproduce-tiny]")
    parser.add_argument("--data-root", type=Path, default=Path("data"), help="prepared data folders")
    parser.add_argument("--only", help="comma-separated run ids (r01,r03); kept in the plan's order")
    parser.add_argument("--parallel", type=positive(int), default=1,
                        help="trainer processes at once on the one device")
    parser.add_argument("--step", choices=STEP_MODES,
                        help="runtime.step of the trainers in this call [each run's own]; a run "
                             "may be resumed in another mode")
    parser.add_argument("--time-budget", type=positive(float),
                        help="seconds this call may take; trainers are stopped cleanly before")
    parser.add_argument("--stop-grace", type=positive(float, True), default=30.0,
                        help="seconds before the budget's end to stop the trainers [30]")
    parser.add_argument("--min-start", type=positive(float, True),
                        help="start no run with less than this left [60; --tiny: 0]")
    parser.add_argument("--mps", choices=("auto", "on", "off"), default="auto",
                        help="CUDA MPS for --parallel > 1 where nvidia-cuda-mps-control exists")
    parser.add_argument("--cifar100-source", type=Path,
                        help=f"CIFAR-100 .npz [{CIFAR100_NPZ} if present, else torchvision]")
    parser.add_argument("--cifar10-source", type=Path, help="CIFAR-10 .npz [torchvision]")
    parser.add_argument("--download-root", type=Path, default=Path("data/torchvision"))
    parser.add_argument("--tiny", action="store_true", help="2 epochs of 2 steps on synthetic data, CPU")
    parser.add_argument("--dry-run", action="store_true", help="print the plan; train nothing")
    parser.add_argument("--table-only", action="store_true", help="only (re)write the table")
    parser.add_argument("--doc", type=Path, help="replace the marked table section of this file")
    parser.add_argument("--json", type=Path, dest="json_out", help="also write the table as JSON")
    parser.add_argument("--restore", type=Path, help="first unpack run archives (<id>.tgz) from here")
    parser.add_argument("--archive", type=Path, help="at the end write one <id>.tgz per run here")
    args = parser.parse_args(argv)
    if args.dry_run and args.table_only:
        raise UserError("--dry-run and --table-only exclude each other")
    default_c100 = CIFAR100_NPZ if CIFAR100_NPZ.is_file() else None
    sources = {"cifar100-lt": args.cifar100_source or default_c100, "cifar10-lt": args.cifar10_source}
    for flag, path in (("--cifar100-source", args.cifar100_source), ("--cifar10-source", args.cifar10_source)):
        if path is not None and not path.is_file():
            raise UserError(f"{flag} {path}: no such file")
    if args.doc is not None:
        read_doc(args.doc)
    opts = Options(
        out=args.out or Path("runs/reproduce-tiny" if args.tiny else "runs/reproduce"),
        data_root=args.data_root, tiny=args.tiny, parallel=args.parallel, step=args.step,
        time_budget=args.time_budget, stop_grace=args.stop_grace,
        min_start=args.min_start if args.min_start is not None else (0.0 if args.tiny else 60.0),
        mps=args.mps, sources=sources, download_root=args.download_root,
        doc=args.doc, json_out=args.json_out, restore=args.restore, archive=args.archive,
    )
    if opts.restore is not None and not opts.restore.is_dir():
        raise UserError(f"--restore {opts.restore}: no such folder")
    for flag, folder in (("--out", opts.out), ("--data-root", opts.data_root),
                         ("--archive", opts.archive)):
        if folder is not None and folder.exists() and not folder.is_dir():
            raise UserError(f"{flag} {folder} is a file; give a folder")
        if folder is not None:
            _check_parent(flag, folder)
    if opts.archive is not None and (
            os.path.realpath(opts.archive) == os.path.realpath(opts.out)
            or any(_under(opts.archive, opts.out / r.id) for r in PLAN)):
        raise UserError(f"--archive {opts.archive} is --out or inside a run folder; write the "
                        "archives to a folder of their own")
    output_targets(opts)  # before any work
    if opts.time_budget is not None and opts.time_budget <= opts.stop_grace:
        raise UserError(f"--time-budget {opts.time_budget:g} must exceed --stop-grace {opts.stop_grace:g}")
    return args, opts


def print_plan(plan: list[Planned], say: Callable[[str], None], step: str | None) -> None:
    for p in plan:
        state = {"new": "new", "finished": f"finished ({p.done}/{p.epochs})",
                 "resume": f"resume at epoch {p.done + 1}/{p.epochs}"}[p.state]
        say(f"{p.run.id}  {p.run.setting()}, {p.run.method}, subset seed {p.run.subset_seed}, "
            f"training seed {p.run.seed}  [{state}]")
        say(f"     {shlex.join(train_command(p, step))}")


def main(argv: list[str] | None = None) -> int:
    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    try:
        args, opts = parse_args(sys.argv[1:] if argv is None else argv)
        runs = select(parse_only(args.only))
        if not args.dry_run:
            build_table(opts)  # every run folder of the plan readable, before any work
        if opts.restore is not None and not args.dry_run:
            restore_runs([plan_state(r, opts.out, opts.data_root, opts.tiny) for r in runs],
                         opts.restore, opts.out, say)
        plan = [plan_state(r, opts.out, opts.data_root, opts.tiny) for r in runs]
        if args.table_only:
            write_outputs(opts, say)
            if opts.archive is not None:
                archive_runs(plan, opts.archive, say)
            return EXIT_DONE
        if args.dry_run:
            print_plan(plan, lambda text: print(text, flush=True), opts.step)
            return EXIT_DONE
        (opts.out / "logs").mkdir(parents=True, exist_ok=True)
        runner = Runner(opts, plan, say)
        previous = {sig: signal.signal(sig, runner.ask_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            runner.execute()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        write_outputs(opts, say)
        if opts.archive is not None:
            archive_runs(plan, opts.archive, say)
    except UserError as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:  # the file system said no (a full disk, permissions): the user's
        where = f": {err.filename}" if err.filename else ""
        print(f"error: {_one_line(err.strerror or err)}{where}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as err:  # noqa: BLE001 - a bug, not bad input: still one line
        print(f"error: internal error: {type(err).__name__}: {_one_line(err)} (please report "
              "it)", file=sys.stderr)
        return EXIT_FAILED
    left = [p.run.id for p in plan if len(table.metrics_rows(p.folder)) < p.epochs]
    if runner.failed:
        say("failed: " + "; ".join(runner.failed))
        return EXIT_FAILED
    if left:
        say(f"left for the next call: {', '.join(left)}")
        return EXIT_LEFT
    return EXIT_DONE


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _torch_version() -> str:
    try:
        from importlib.metadata import version

        return version("torch")
    except Exception:  # noqa: BLE001 - informational only
        return "?"


if __name__ == "__main__":
    sys.exit(main())
