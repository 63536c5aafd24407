"""`concutmix prepare`: build a dataset folder (images + manifest) by its route, atomically.

Each family of datasets is a route (data/routes/: cifar, synthetic, lists, own): the options it
accepts, their checks, its default folder and what it stages. Here the route is looked up, the
options it does not accept are refused, and what it staged is swapped into place with the
manifest (data/staging.py). CIFAR and synthetic folders are self-contained (uint8 arrays in
safetensors), so training never needs the source again; list datasets keep their split lists and
the image root; a user's own images (`folder`, `csv`) become either.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from concutmix_cli.data import longtail, routes, staging
from concutmix_cli.data.routes.base import Options, Route
from concutmix_cli.errors import UserError
from concutmix_cli.fileio import atomic_write_text, json_text


@dataclass
class PrepareResult:
    out: Path
    manifest: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    """What prepare did besides writing `out` (a killed prepare's leftovers cleaned, ...)."""


def prepare(dataset: str, out: Path | None = None, force: bool = False, callbacks=None,
            **options: Any) -> PrepareResult:
    """Build `out` (default: the route's folder) for `dataset`; returns the manifest written.

    The options are those of the dataset's route (data/routes/), e.g. `prepare("folder",
    root=..., image_size=32)`; `callbacks` receive a `WorkProgress` event per decoded image."""
    chosen = routes.route(dataset)
    asked = Options(dataset=dataset, out=None, callbacks=callbacks,
                    **_accepted(chosen, dataset, options))
    asked.out = Path(out) if out is not None else chosen.default_out(asked)
    chosen.check(asked)
    written: dict[str, Any] = {}

    def stage(staging_dir: Path) -> None:
        fields = chosen.stage(staging_dir, asked)
        written["manifest"] = _write_manifest(staging_dir, dataset, fields)

    notes = staging.write_atomically(asked.out, stage, force, chosen.inputs(asked))
    return PrepareResult(out=asked.out, manifest=written["manifest"], notes=notes)


def _accepted(chosen: Route, dataset: str, given: dict[str, Any]) -> dict[str, Any]:
    """The route's options, given or at their defaults. An option of another route is refused
    in one line that says which datasets take it, unless it is at its default (the CLI passes
    every option); a name no route knows is a TypeError, as for any function."""
    known = {option.name: option for option in routes.options()}
    for name in given:
        if name not in known:
            raise TypeError(f"prepare() got an unexpected keyword argument '{name}'")
    for option in known.values():
        foreign = option.name in given and option not in chosen.options
        if foreign and option.given(given[option.name]):
            takers = [f"prepare {name}" for name in routes.taking(option)]
            listed = takers[0] if len(takers) == 1 else f"{', '.join(takers[:-1])} and {takers[-1]}"
            raise UserError(f"{option.flag} is an option of {listed}, not of {dataset}")
    return {option.name: given.get(option.name, option.default) for option in chosen.options}


def _write_manifest(staging_dir: Path, dataset: str, fields: dict[str, Any]) -> dict[str, Any]:
    """manifest.json: the dataset, imbalance, seed and time first, then the route's fields (the
    file keeps this order), the usual shot groups where the route chose none, a checksum."""
    fields = dict(fields)
    imbalance, seed = fields.pop("imbalance"), fields.pop("seed")
    fields.setdefault("shot_groups", longtail.shot_groups(fields["train_counts"]))
    manifest = longtail.finalize_manifest({
        "dataset": dataset,
        "imbalance": imbalance,
        "seed": seed,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **fields,
    })
    atomic_write_text(staging_dir / longtail.MANIFEST, json_text(manifest, indent=1))
    return manifest
