"""One training step of any method, as data: `Batch` -> (mix) -> model -> losses.

The batch carries its plan (mixed, lambda, box); the method's row (methods.py) decides what is
computed, and the step sums the terms the row names (docs/method-notes.md sections 3, 5, 6):
- the classification loss: CE of the logits adjusted by tau * log prior (the row's tau: 0 for
  ce and cutmix, 1 for balanced-softmax, `method.tau` for bcl and concutmix) on view 0; on a
  mixed batch the lambda-weighted CE of the two classes, or, for a method that rectifies and in
  the 0-based epochs after E_r, the CE against the rectified label;
- for a contrastive method, weighted by alpha and beta, plus BCL on views 1 and 2.
The mix itself (paste and area labels) is `mixing.CutMix`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from concutmix_cli import losses
from concutmix_cli.config import MethodConfig
from concutmix_cli.data.batch import Batch
from concutmix_cli.engine.distributed import DistContext, gather_no_grad, gather_with_grad
from concutmix_cli.methods import method as method_of
from concutmix_cli.mixing import CutMix
from concutmix_cli.rectify import rectify_labels


@dataclass
class StepResult:
    loss: torch.Tensor
    """The total loss to back-propagate (already weighted)."""
    terms: dict[str, torch.Tensor]
    """Detached loss terms for logging: cls, bcl."""
    correct: torch.Tensor
    """Number of view-0 predictions equal to the background class a (detached)."""
    rect_weight: torch.Tensor | None
    """Mean omega * rho over the batch when the labels were rectified, else None."""


class MethodStep:
    """Computes the loss of one batch for the configured method."""

    def __init__(self, method: MethodConfig, class_counts: torch.Tensor, ctx: DistContext,
                 autocast_dtype: torch.dtype | None, channels_last: bool,
                 device: torch.device | str = "cpu", autocast_cache: bool = True):
        self.cfg = method
        self.method = method_of(method.name)
        # constants live on the training device once, not copied there every step
        self.class_counts = class_counts.float().to(device)
        self.log_prior = losses.log_prior_from_counts(class_counts).to(device)
        self.autocast_cache = autocast_cache
        """Off for CUDA-graph capture (autocast's weight cache must not outlive a capture)."""
        self.num_classes = len(class_counts)
        self.ctx = ctx
        self.autocast_dtype = autocast_dtype
        self.channels_last = channels_last
        self.tau = self.method.logit_adjustment(method)
        self.weights = self.method.loss_weights(method)

    def __call__(self, model, batch: Batch, epoch: int) -> StepResult:
        cfg = self.cfg
        device = batch.view0.device
        labels = batch.labels
        n = labels.shape[0]
        mixed = batch.mixed
        view0, lam_vec = (CutMix.apply(batch.view0, batch.fg_view0, batch.box) if mixed
                          else (batch.view0, None))
        contrast = self.method.contrast
        inputs = torch.cat([view0, batch.view1, batch.view2]) if contrast else view0
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=self.autocast_dtype,
                            enabled=self.autocast_dtype is not None,
                            cache_enabled=self.autocast_cache):
            # The prototypes come out of the forward pass, so that under DDP the prototype head
            # is part of the forward DDP tracks (its gradients are averaged like all others).
            out = model(inputs, project=contrast, with_prototypes=contrast)
            prototypes = out.prototypes
        logits = out.logits[:n].float()
        log_prior = self.log_prior.to(device)  # a no-op on the device it was made for
        rect_weight = None
        if mixed:
            fg_labels = batch.fg_labels
            if self.method.rectifies_in(cfg, epoch):
                area = CutMix.targets(labels, fg_labels, lam_vec, self.num_classes)
                rect = rectify_labels(area, out.projection[:n].float(), prototypes.float(),
                                      self.class_counts.to(device), cfg.omega, cfg.top_k)
                cls = losses.logit_adjusted_ce(logits, rect.rectified, log_prior, self.tau)
                rect_weight = (cfg.omega * rect.rho).mean().detach()
            else:
                cls = losses.mixed_ce(logits, labels, fg_labels, lam_vec, log_prior, self.tau)
        else:
            cls = losses.logit_adjusted_ce(logits, labels, log_prior, self.tau)
        terms = {"cls": cls}
        if contrast:
            # Under torchrun the contrastive set is the GLOBAL batch: every rank's features and
            # labels are gathered (gradients flow back to the local part) and the rank's own rows
            # are the anchors; the prototypes are computed identically on every rank. The mean
            # over local anchors, averaged over ranks by DDP, is the single-process loss. The
            # classification term and the rectification above are per sample, so local.
            z = F.normalize(out.projection[n:].float(), dim=1)  # views 1 and 2
            z_labels = torch.cat([labels, labels])
            z_all = gather_with_grad(z, self.ctx)
            labels_all = gather_no_grad(z_labels, self.ctx)
            anchors = None
            if self.ctx.enabled:
                local = z.shape[0]
                anchors = torch.arange(local, device=device) + self.ctx.rank * local
            bcl = losses.balanced_contrastive_loss(
                z_all, labels_all, F.normalize(prototypes.float(), dim=1), cfg.temperature,
                anchor_index=anchors,
            )
            terms["bcl"] = bcl
        loss = sum_terms(terms, self.weights)
        terms = {name: term.detach() for name, term in terms.items()}
        correct = (logits.argmax(dim=1) == labels).sum().detach()
        return StepResult(loss=loss, terms=terms, correct=correct, rect_weight=rect_weight)


def sum_terms(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """The loss: each term the method's row names, times its weight; a term of weight 1 (the
    lone classification loss) is the loss itself, with no multiply."""
    assert set(terms) == set(weights), (sorted(terms), sorted(weights))
    if len(terms) == 1:
        ((name, term),) = terms.items()
        return term if weights[name] == 1.0 else weights[name] * term
    total = None
    for name, term in terms.items():
        total = weights[name] * term if total is None else total + weights[name] * term
    return total
