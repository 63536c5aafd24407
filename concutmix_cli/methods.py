"""The four training methods as one table of properties.

Every place that behaves differently per method (the planner's foreground draw, the views the data
layer makes, the step's losses, DDP's unused-parameter check, the config's batch-size check,
inspect-labels' notes) asks this table instead of comparing method names, so a fifth method is
one new row (docs/method-notes.md describes what each property means for the losses).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

MethodName = Literal["ce", "cutmix", "bcl", "concutmix"]
Foreground = Literal["batch", "balanced"]


@dataclass(frozen=True)
class Method:
    """What a method computes, as the rest of the package needs to know it."""

    name: str
    contrast: bool
    """Uses the balanced contrastive loss: views 1 and 2, the projection head and the prototypes."""
    foreground: Foreground | None
    """Where CutMix's foreground images come from: a shuffle of the same batch ('batch'), a
    class-balanced draw from the training set ('balanced'), or no mixing (None)."""
    rectifies: bool
    """Mixed labels are rectified with the contrastive space's semantic similarity after E_r."""

    @property
    def views(self) -> int:
        """Augmented views of each background image: view 0, plus views 1 and 2 when contrastive."""
        return 3 if self.contrast else 1

    @property
    def mixes(self) -> bool:
        return self.foreground is not None


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("ce", contrast=False, foreground=None, rectifies=False),
        Method("cutmix", contrast=False, foreground="batch", rectifies=False),
        Method("bcl", contrast=True, foreground=None, rectifies=False),
        Method("concutmix", contrast=True, foreground="balanced", rectifies=True),
    )
}
assert tuple(METHODS) == get_args(MethodName), "the table and the config's names must agree"


def method(name: str) -> Method:
    """The properties of method `name` (one of `MethodName`)."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}") from None
