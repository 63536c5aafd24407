"""The training methods as one table: each row names every rule of its method.

A row says which classification loss the step computes (cross-entropy with a logit adjustment
of strength tau: the configured `method.tau`, or a fixed one), whether the balanced contrastive
loss is added (views 1 and 2, the projection head, the prototypes), where CutMix's foreground
comes from (or no mixing), and whether mixed labels are rectified. Everything that behaves
differently per method (the planner, the data layer's views, the step's losses, DDP's
unused-parameter check, the config's checks of settings, inspect-labels' notes) reads the row,
so a new method is one new row (plus, at most, a loss function). docs/method-notes.md says what
each property means for the losses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from concutmix_cli.mixing import Foreground

MethodName = Literal["ce", "cutmix", "bcl", "concutmix", "balanced-softmax"]

CONTRAST_SETTINGS = ("alpha", "beta", "temperature")
MIXING_SETTINGS = ("cutmix_prob", "cutmix_beta")
RECTIFY_SETTINGS = ("omega", "top_k", "rectify_after_epoch")


@dataclass(frozen=True)
class Method:
    """What a method computes, as the rest of the package needs to know it."""

    name: str
    contrast: bool
    """Adds beta * the balanced contrastive loss (views 1 and 2, the projection head and the
    prototypes) to alpha * the classification loss; without it the loss is the classification
    loss alone."""
    foreground: Foreground | None
    """Where CutMix's foreground images come from: a shuffle of the same batch ('batch'), a
    class-balanced draw from the training set ('balanced'), or no mixing (None)."""
    rectifies: bool
    """Mixed labels are rectified with the contrastive space's semantic similarity after E_r."""
    tau: float | None
    """The logit adjustment of the classification loss, CE(logits + tau * log prior): None takes
    the configured `method.tau`; a number is the method's own (0: plain CE on raw logits)."""
    source: str
    """Where the method comes from (shown by `concutmix train --help` and the docs)."""

    @property
    def views(self) -> int:
        """Augmented views of each background image: view 0, plus views 1 and 2 when contrastive."""
        return 3 if self.contrast else 1

    @property
    def mixes(self) -> bool:
        return self.foreground is not None

    @property
    def settings(self) -> tuple[str, ...]:
        """The `method.*` settings this method reads; any other is ignored by it."""
        return ("name",
                *(CONTRAST_SETTINGS if self.contrast else ()),
                *(("tau",) if self.tau is None else ()),
                *(MIXING_SETTINGS if self.mixes else ()),
                *(RECTIFY_SETTINGS if self.rectifies else ()))

    def logit_adjustment(self, cfg: Any) -> float:
        """tau of the classification loss under the method settings `cfg` (a MethodConfig)."""
        return float(cfg.tau) if self.tau is None else self.tau

    def loss_weights(self, cfg: Any) -> dict[str, float]:
        """The weight of each loss term the step sums: 'cls', and 'bcl' when contrastive."""
        return {"cls": float(cfg.alpha), "bcl": float(cfg.beta)} if self.contrast else {"cls": 1.0}

    def rectifies_in(self, cfg: Any, epoch: int) -> bool:
        """Whether mixed batches of the 0-based `epoch` get rectified labels: methods that
        rectify, and only after E_r (`epoch > cfg.rectify_after_epoch`, the reference's
        `epoch > args.l_d_warm`)."""
        return self.rectifies and epoch > cfg.rectify_after_epoch


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("ce", contrast=False, foreground=None, rectifies=False, tau=0.0,
               source="cross-entropy on raw logits (the paper's CE baseline)"),
        Method("cutmix", contrast=False, foreground="batch", rectifies=False, tau=0.0,
               source="CutMix (Yun et al., ICCV 2019) with plain CE"),
        Method("bcl", contrast=True, foreground=None, rectifies=False, tau=None,
               source="Balanced Contrastive Learning (Zhu et al., CVPR 2022)"),
        Method("concutmix", contrast=True, foreground="balanced", rectifies=True, tau=None,
               source="ConCutMix (Pan et al., arXiv 2407.04911)"),
        Method("balanced-softmax", contrast=False, foreground=None, rectifies=False, tau=1.0,
               source="Balanced Softmax (Ren et al., NeurIPS 2020): CE(logits + log prior)"),
    )
}
assert tuple(METHODS) == get_args(MethodName), "the table and the config's names must agree"


def method(name: str) -> Method:
    """The properties of method `name` (one of `MethodName`)."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}") from None
