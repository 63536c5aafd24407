"""The run folder: atomic writes, safetensors weights with self-describing metadata, resume state
that loads with `torch.load(weights_only=True)`, and a checksummed index of checkpoints.

Layout of RUN/:
  config.json            the resolved config
  manifest.json          a copy of the data's manifest
  metrics.jsonl          one JSON line per finished epoch
  last.safetensors       weights of the newest checkpoint (metadata: config, epoch, classes, ...)
  best.safetensors       weights chosen on the validation split (datasets that have one)
  checkpoints/epoch-NNNN.safetensors + .state.pt   the newest `runtime.keep` checkpoints
  checkpoints.json       index of those, with the sha256 of every file (written last), and
                         the sha256 of last.safetensors and best.safetensors ("files")

Every file is written to a temporary name (.NAME.XXXX.tmp), flushed, fsynced and renamed over
NAME; `read_weights` verifies a run folder's weights against the index before using them.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from concutmix_cli import __version__
from concutmix_cli.errors import UserError
from concutmix_cli.fileio import (
    TMP_SUFFIX, atomic_write_bytes, atomic_write_text, json_text, read_json_lines, sha256_bytes,
    sha256_file,
)

WEIGHTS_FORMAT = "concutmix-weights/1"
INDEX = "checkpoints.json"
INTEGRITY = "integrity"
"""Metadata key of the checksums a run's weights file carries about itself (and, for a checkpoint,
about its resume state), so that a lost checkpoints.json can be rebuilt from verified files."""


# ----------------------------------------------------------------------------- weights


def weights_bytes(state_dict: dict[str, torch.Tensor], metadata: dict[str, Any]) -> bytes:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    meta = {"format": WEIGHTS_FORMAT, "toolkit_version": __version__}
    meta.update({k: v if isinstance(v, str) else json_text(v) for k, v in metadata.items()})
    return st_save(tensors, metadata=meta)


WRITER_WAIT_S = 10.0
"""How long a reader waits for a training run to finish a checkpoint (its weights file and its
index are two atomic renames) before it takes a mismatch as damage."""


def _stamps(*paths: Path) -> tuple:
    """What changes when a file is replaced or rewritten (inode, size, mtime), per path."""
    found = []
    for path in paths:
        try:
            st = os.stat(path)
            found.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            found.append(None)
    return tuple(found)


def _read_verified(path: Path) -> bytes:
    """The bytes of a weights file that match its run's index. A run in training replaces
    last.safetensors, then checkpoints.json: a reader between the two renames (about 1 read in
    200 in a tight loop) sees a pair that does not match. So a mismatch is read again while the
    files change under the reader or a live `train` holds the run's lock (up to WRITER_WAIT_S);
    only a mismatch that stays is damage."""
    from concutmix_cli.engine.runlock import being_written

    index = _index_of(path)
    started = time.monotonic()
    while True:
        before = _stamps(path, index)
        try:
            raw = path.read_bytes()
        except OSError as err:
            raise UserError(f"{path}: cannot read ({err.strerror})") from None
        recorded = recorded_checksums(path)
        if recorded is None or sha256_bytes(raw) in recorded[1]:
            return raw
        moving = _stamps(path, index) != before
        if moving or (being_written(recorded[0].parent)
                      and time.monotonic() - started < WRITER_WAIT_S):
            time.sleep(0.02 if moving else 0.05)
            continue
        raise UserError(
            f"{path}: checksum mismatch with {recorded[0]}, the file was damaged or modified (or "
            f"the run was killed while saving: resume it with `concutmix train --resume "
            f"{recorded[0].parent}`); use an intact checkpoint from {recorded[0].parent / 'checkpoints'}"
        )


def _index_of(path: Path) -> Path:
    """checkpoints.json of the run folder a weights file sits in (or would)."""
    folder = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return folder / INDEX


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a weights file (verified against its run's index, see `_read_verified`); metadata
    values that are JSON come back decoded."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    raw = _read_verified(path)
    try:
        tensors = st_load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + header_len])
    except (SafetensorError, ValueError, OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not a readable safetensors file ({err})") from None
    meta = header.get("__metadata__", {}) or {}
    if meta.get("format") != WEIGHTS_FORMAT:
        raise UserError(f"{path}: not a concutmix weights file (no '{WEIGHTS_FORMAT}' metadata)")
    decoded: dict[str, Any] = {}
    for key, value in meta.items():
        try:
            decoded[key] = json.loads(value)
        except (json.JSONDecodeError, TypeError):
            decoded[key] = value
    record = decoded.pop(INTEGRITY, None)  # not the model's metadata: checked here
    if isinstance(record, dict) and record.get("tensors_sha256") != sha256_bytes(
            raw[8 + header_len:]):
        raise UserError(f"{path}: its tensors do not match the checksum the file records (damaged "
                        "or modified); use an intact checkpoint")
    return tensors, decoded


def _split_header(raw: bytes) -> tuple[dict[str, Any], bytes]:
    """(header, tensor bytes) of a safetensors blob."""
    length = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def with_integrity(weights: bytes, **extra: Any) -> bytes:
    """The same weights file with an `integrity` metadata record: the sha256 of its tensor bytes
    and `extra` (a checkpoint adds its epoch, step and the sha256 of its resume state). Only the
    header changes; the tensors are not re-serialized."""
    header, data = _split_header(weights)
    meta = dict(header.get("__metadata__") or {})
    meta[INTEGRITY] = json_text({"tensors_sha256": sha256_bytes(data), **extra}, sort_keys=True)
    header["__metadata__"] = meta
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors keeps the tensor bytes 8-byte aligned
    return len(text).to_bytes(8, "little") + text + data


def integrity_record(path: Path) -> dict[str, Any] | None:
    """The integrity record of a weights file if its tensor bytes still match it, else None."""
    try:
        header, data = _split_header(Path(path).read_bytes())
        record = json.loads(header["__metadata__"][INTEGRITY])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(record, dict) or record.get("tensors_sha256") != sha256_bytes(data):
        return None
    return record


def recorded_checksums(path: Path) -> tuple[Path, set[str]] | None:
    """(index, accepted sha256s) for a weights file inside a run folder, None if none recorded.

    A checkpoint file must match its entry; last.safetensors one of the checkpoints (or the one
    recorded for it); best.safetensors the one recorded for it."""
    path = Path(path)
    folder = _index_of(path).parent
    run = RunFolder(folder)
    if not run.index_path.is_file():
        return None
    entries = run.read_index()
    files = run.read_recorded_files()
    try:
        rel = path.resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        return None
    shas = {e["weights_sha256"] for e in entries if e["weights"] == rel}
    if rel == "last.safetensors":
        shas |= {e["weights_sha256"] for e in entries}
    if rel in files:
        shas.add(files[rel])
    return (run.index_path, shas) if shas else None


# ----------------------------------------------------------------------------- resume state


def state_bytes(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def read_state(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure means "not a usable state file"
        raise UserError(f"{path}: unreadable resume state ({type(err).__name__})") from None


# ----------------------------------------------------------------------------- the run folder


def _index_text(entries: list[dict[str, Any]], files: dict[str, str]) -> str:
    """checkpoints.json's text: the checkpoints (oldest first) and the recorded sha256 of
    last.safetensors / best.safetensors."""
    return json_text({"checkpoints": entries, "files": files}, indent=1)


class RunFolder:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._best_sha256: str | None = None

    # files
    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def last_weights(self) -> Path:
        return self.path / "last.safetensors"

    @property
    def best_weights(self) -> Path:
        return self.path / "best.safetensors"

    @property
    def index_path(self) -> Path:
        return self.path / INDEX

    def create(self) -> None:
        self.check_new()
        self.path.mkdir(parents=True, exist_ok=True)

    # metrics
    def read_metrics(self) -> list[dict[str, Any]]:
        """The rows up to the first line that is not a JSON object (a line cut by a crash: it
        and anything after it are redone); the reader report, plot and reproduce.py use too."""
        if not self.metrics_path.is_file():
            return []
        return read_json_lines(self.metrics_path)[0]

    def append_metrics(self, row: dict[str, Any]) -> None:
        rows = self.read_metrics() + [row]
        atomic_write_text(self.metrics_path, "".join(json_text(r) + "\n" for r in rows))

    def truncate_metrics(self, epochs_done: int) -> None:
        rows = [r for r in self.read_metrics() if r.get("epoch", 0) <= epochs_done]
        atomic_write_text(self.metrics_path, "".join(json_text(r) + "\n" for r in rows))

    def check_new(self) -> None:
        """Raise if a new run cannot use this folder (before anything is loaded or written)."""
        from concutmix_cli.engine.runlock import LOCK_NAME

        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--out {self.path} is a file, not a folder; a run needs a new folder: "
                            "choose another --out")
        if self.path.exists() and (not self.path.is_dir() or any(
                p.name != LOCK_NAME for p in self.path.iterdir())):
            raise UserError(
                f"run folder {self.path} already exists and is not empty; "
                f"use --resume {self.path} to continue it, or choose another --out"
            )

    def discard_new(self) -> None:
        """Undo `create` of a new run that was rejected or failed before its first checkpoint,
        so that the same command can run again: remove what training wrote (config, manifest,
        metrics rows of an epoch whose checkpoint failed, TensorBoard events, temporary files)
        and the folder. A folder holding anything else (a checkpoint, a user's file) is kept."""
        from concutmix_cli.tensorboard import LOG_DIR

        if not self.path.is_dir() or self.index_path.exists() or (self.path / "checkpoints").exists():
            return
        known = {"config.json", "manifest.json", "metrics.jsonl", LOG_DIR}
        self.remove_temporaries()
        if any(p.name not in known for p in self.path.iterdir()):
            return
        for entry in self.path.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        try:
            self.path.rmdir()
        except OSError:
            pass

    def remove_temporaries(self) -> list[Path]:
        """Delete the temporary files a killed process left behind (see `atomic_write_bytes`)."""
        removed = []
        for folder in (self.path, self.path / "checkpoints"):
            for leftover in sorted(folder.glob(f".*{TMP_SUFFIX}")) if folder.is_dir() else []:
                try:
                    leftover.unlink()
                    removed.append(leftover)
                except OSError:
                    pass
        return removed

    # checkpoints
    def _read_index_body(self, strict: bool) -> dict[str, Any]:
        if not self.index_path.is_file():
            return {}
        try:
            body = json.loads(self.index_path.read_text())
            entries = body["checkpoints"]
            if not isinstance(entries, list) or not all(map(_valid_entry, entries)):
                raise ValueError("malformed checkpoint entries")
            if not isinstance(body.get("files", {}), dict):
                raise ValueError("malformed 'files'")
            return body
        except (ValueError, KeyError, TypeError, OSError) as err:
            if not strict:
                return {}
            raise UserError(
                f"{self.index_path}: damaged ({err}), so the checkpoints of {self.path} cannot be "
                f"verified; restore the file from a backup or start a new run"
            ) from None

    def read_index(self, strict: bool = True) -> list[dict[str, Any]]:
        """The checkpoints, oldest first. A damaged index raises (strict) or reads as empty."""
        return list(self._read_index_body(strict).get("checkpoints", []))

    def newest_only_index(self) -> tuple[str, list[str]] | None:
        """The index text of a copy that keeps only the newest checkpoint, and that checkpoint's
        files (relative to the run): what a copy needs to resume, as `save_checkpoint` would have
        left it with no older checkpoint. None when the index is missing, damaged or empty."""
        body = self._read_index_body(strict=False)
        entries = body.get("checkpoints") or []
        if not entries:
            return None
        newest = entries[-1]
        return _index_text([newest], body.get("files", {})), [newest["weights"], newest["state"]]

    def read_recorded_files(self) -> dict[str, str]:
        """sha256 of last.safetensors and best.safetensors as recorded with the newest checkpoint."""
        return dict(self._read_index_body(strict=True).get("files", {}))

    def write_best(self, weights: bytes) -> None:
        """Write best.safetensors; its sha256 is recorded with the next checkpoint."""
        weights = with_integrity(weights)
        atomic_write_bytes(self.best_weights, weights)
        self._best_sha256 = sha256_bytes(weights)

    def sync_last(self, entry: dict[str, Any]) -> bool:
        """Make last.safetensors the weights of `entry` (after a resume fell back past it)."""
        if self.last_weights.is_file() and sha256_file(self.last_weights) == entry["weights_sha256"]:
            return False
        atomic_write_bytes(self.last_weights, (self.path / entry["weights"]).read_bytes())
        return True

    def save_checkpoint(
        self, epoch: int, step: int, weights: bytes, state: bytes, keep: int
    ) -> dict[str, Any]:
        """Write epoch weights + state, refresh last.safetensors, then the index; prune old ones.

        The index keeps the newest `keep` end-of-epoch checkpoints, plus a mid-epoch one (written
        by a graceful stop) until the next checkpoint replaces it. A process killed anywhere in
        here leaves the previous index, whose files are all intact (each write is atomic, and
        files are deleted only after the new index is in place)."""
        name = _checkpoint_name(epoch, step)
        folder = self.path / "checkpoints"
        weights_path, state_path = folder / f"{name}.safetensors", folder / f"{name}.state.pt"
        # the weights carry their own checksums and their state's: an index lost later can be
        # rebuilt from verified files (`recover_index`)
        weights = with_integrity(weights, epoch=epoch, step=step, state_sha256=sha256_bytes(state))
        atomic_write_bytes(weights_path, weights)
        atomic_write_bytes(state_path, state)
        atomic_write_bytes(self.last_weights, weights)
        entry = {
            "epoch": epoch,
            "step": step,
            "weights": weights_path.relative_to(self.path).as_posix(),
            "weights_sha256": sha256_bytes(weights),
            "state": state_path.relative_to(self.path).as_posix(),
            "state_sha256": sha256_bytes(state),
        }
        old = self._read_index_body(strict=False)
        previous = [e for e in old.get("checkpoints", []) if e["weights"] != entry["weights"]]
        epoch_entries = [e for e in previous if not e.get("step")]
        kept = epoch_entries[-keep:] + [entry] if step else (epoch_entries + [entry])[-keep:]
        files = {**old.get("files", {}), "last.safetensors": entry["weights_sha256"]}
        if self._best_sha256 is not None:
            files["best.safetensors"] = self._best_sha256
        self._write_index(kept, files)
        in_use = {e[key] for e in kept for key in ("weights", "state")}
        for gone in previous:
            for key in ("weights", "state"):
                if gone[key] not in in_use:
                    (self.path / gone[key]).unlink(missing_ok=True)
        return entry

    def _write_index(self, entries: list[dict[str, Any]], files: dict[str, str]) -> None:
        atomic_write_text(self.index_path, _index_text(entries, files))

    def recover_index(self) -> list[str]:
        """Rebuild a missing checkpoints.json from the checkpoints' own integrity records.

        Without it, resume would take the run as never checkpointed, start over and overwrite
        intact checkpoints. Each checkpoint is taken only if its weights match their recorded
        tensor checksum and its state file the recorded state checksum; if checkpoints exist and
        none verifies, resume stops (UserError) with nothing changed. Returns what it did."""
        folder = self.path / "checkpoints"
        if self.index_path.exists() or not folder.is_dir():
            return []
        candidates = sorted(folder.glob("epoch-*.safetensors"))
        if not candidates and not any(folder.glob("epoch-*.state.pt")):
            return []
        entries, damaged, unfinished = [], [], []
        for weights_path in candidates:
            record = integrity_record(weights_path)
            epoch, step = (record or {}).get("epoch"), (record or {}).get("step")
            if not isinstance(epoch, int) or not isinstance(step, int) or \
                    weights_path.name != f"{_checkpoint_name(epoch, step)}.safetensors":
                damaged.append(f"{weights_path} has no intact checksum record")
                continue
            state_path = weights_path.with_name(f"{_checkpoint_name(epoch, step)}.state.pt")
            if not state_path.is_file():  # killed between the two writes: never completed
                unfinished.append(f"{weights_path.name} was never completed (no state file); "
                                  "ignored")
                continue
            if sha256_file(state_path) != record.get("state_sha256"):
                damaged.append(f"{state_path} is truncated or modified")
                continue
            entries.append({
                "epoch": epoch, "step": step,
                "weights": weights_path.relative_to(self.path).as_posix(),
                "weights_sha256": sha256_file(weights_path),
                "state": state_path.relative_to(self.path).as_posix(),
                "state_sha256": record["state_sha256"],
            })
        notes = damaged + unfinished
        if not entries and not damaged:  # only an unfinished first checkpoint: start over
            return notes
        if not entries:
            raise UserError(
                f"{self.path}: has checkpoints but no {INDEX}, and none can be verified without it "
                f"({'; '.join(notes)}); nothing was changed: restore {INDEX} from a backup, or "
                f"start a new run with --out"
            )
        entries.sort(key=lambda e: (e["epoch"], e["step"]))
        files = {"last.safetensors": entries[-1]["weights_sha256"]}
        if self.best_weights.is_file() and integrity_record(self.best_weights) is not None:
            files["best.safetensors"] = sha256_file(self.best_weights)
        self._write_index(entries, files)
        return notes + [f"{self.index_path} was missing: rebuilt it from {len(entries)} "
                        f"checkpoint(s) whose files verify"]

    def verify(self, entry: dict[str, Any]) -> str | None:
        """None if both files of a checkpoint match their recorded sha256, else what is wrong."""
        for key in ("weights", "state"):
            path = self.path / entry[key]
            if not path.is_file():
                return f"{path} is missing"
            if sha256_file(path) != entry[f"{key}_sha256"]:
                return f"{path} is truncated or modified (checksum mismatch)"
        return None

    def newest_intact(self) -> tuple[dict[str, Any] | None, list[str]]:
        """The newest checkpoint whose files verify, and a note for each one skipped."""
        notes = []
        for entry in reversed(self.read_index()):
            problem = self.verify(entry)
            if problem is None:
                return entry, notes
            notes.append(problem)
        return None, notes


def _checkpoint_name(epoch: int, step: int) -> str:
    return f"epoch-{epoch:04d}" + (f"-step-{step:06d}" if step else "")


def _valid_entry(entry: Any) -> bool:
    """An index entry names two files inside RUN/checkpoints and their sha256 (a tampered index
    must not make resume read, or pruning delete, anything else)."""
    if not isinstance(entry, dict):
        return False
    for key in ("weights", "state"):
        name = entry.get(key)
        if not isinstance(name, str) or not isinstance(entry.get(f"{key}_sha256"), str):
            return False
        parts = Path(name).parts
        if len(parts) != 2 or parts[0] != "checkpoints" or parts[1] in ("", ".", ".."):
            return False
    return isinstance(entry.get("epoch"), int) and isinstance(entry.get("step"), int)
