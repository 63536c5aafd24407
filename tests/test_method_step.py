"""`MethodStep`'s total loss for each method, and for the rectified branch, against the formulas of
docs/method-notes.md (sections 3, 5, 6) written out plainly here, in float64 loops.

The model is a stand-in with fixed linear maps, so the expected value depends only on the batch;
the `Batch` carries the plan (mixed, lambda, box) exactly as the data layer makes it.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from concutmix_cli.config import MethodConfig
from concutmix_cli.data.batch import Batch
from concutmix_cli.engine.distributed import DistContext
from concutmix_cli.engine.step import MethodStep
from concutmix_cli.methods import method as method_of

N, C, D, H = 6, 4, 5, 8
COUNTS = torch.tensor([40.0, 12.0, 5.0, 2.0])


class StandIn(torch.nn.Module):
    """logits = A x, projection = B x (x the flattened image), prototypes = P (fixed)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = torch.nn.Parameter(torch.randn(C, 3 * H * H, generator=g) * 0.05)
        self.b = torch.nn.Parameter(torch.randn(D, 3 * H * H, generator=g) * 0.05)
        self.p = torch.nn.Parameter(torch.randn(C, D, generator=g))

    def forward(self, x, project=False, with_prototypes=False):
        flat = x.flatten(1)
        return SimpleNamespace(logits=flat @ self.a.T, projection=flat @ self.b.T if project else None,
                               prototypes=self.p if with_prototypes else None)


def _batch(mixed: bool) -> Batch:
    g = torch.Generator().manual_seed(1)
    views = {k: torch.randn(N, 3, H, H, generator=g) for k in ("view0", "view1", "view2", "fg_view0")}
    labels = torch.tensor([0, 0, 1, 2, 3, 0])
    if not mixed:
        views.pop("fg_view0")
        return Batch(epoch=0, step=0, labels=labels, **views)
    return Batch(epoch=0, step=0, labels=labels, fg_labels=torch.tensor([1, 0, 3, 2, 0, 2]),
                 mixed=True, lam=torch.tensor(0.6), box=torch.tensor([2, 7, 1, 5]), **views)


def plain_ce(logits: list[float], target: list[float]) -> float:
    """-sum_c t_c log softmax(logits)_c."""
    m = max(logits)
    log_z = m + math.log(sum(math.exp(v - m) for v in logits))
    return -sum(t * (v - log_z) for v, t in zip(logits, target))


def onehot(c: int) -> list[float]:
    return [1.0 if k == c else 0.0 for k in range(C)]


def plain_bcl(z: list[list[float]], labels: list[int], protos: list[list[float]], temp: float) -> float:
    """Balanced contrastive loss: each k != i in the denominator divided by its class's count in
    the set (features + prototypes) less one if k is a positive of i; mean over anchors."""
    unit = [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in z + protos]
    lab = labels + list(range(C))
    dot = lambda u, v: sum(x * y for x, y in zip(u, v)) / temp  # noqa: E731
    total = 0.0
    for i in range(len(z)):
        pos = [k for k in range(len(unit)) if k != i and lab[k] == lab[i]]
        denom = sum(math.exp(dot(unit[i], unit[k])) / (lab.count(lab[k]) - (k in pos))
                    for k in range(len(unit)) if k != i)
        total += -sum(dot(unit[i], unit[k]) - math.log(denom) for k in pos) / len(pos)
    return total / len(z)


def plain_rectified(area: list[float], f: list[float], protos: list[list[float]], omega: float,
                    top_k: int) -> list[float]:
    """(1 - omega rho) y_area + omega rho y_sem; y_sem the top-k inverse distances, normalized;
    rho = log(sum_c N_c y_area_c) / sum_c log N_c."""
    s = [1.0 / math.sqrt(sum((a - b) ** 2 for a, b in zip(f, p))) for p in protos]
    keep = sorted(range(C), key=lambda c: -s[c])[:top_k]
    sem = [s[c] if c in keep else 0.0 for c in range(C)]
    sem = [v / sum(sem) for v in sem]
    n = COUNTS.tolist()
    rho = math.log(sum(a * k for a, k in zip(area, n))) / sum(math.log(k) for k in n)
    w = min(omega * rho, 1.0)
    return [(1 - w) * a + w * s_ for a, s_ in zip(area, sem)]


def expected_total(method: str, batch: Batch, model: StandIn, cfg: MethodConfig, rectified: bool) -> float:
    view0 = batch.view0.clone()
    lam = [1.0] * N
    if batch.mixed:  # the box (y0, y1, x0, x1) of B pasted into A; lambda = A's pixels left
        y0, y1, x0, x1 = batch.box.tolist()
        view0[:, :, y0:y1, x0:x1] = batch.fg_view0[:, :, y0:y1, x0:x1]
        lam = [1.0 - (y1 - y0) * (x1 - x0) / (H * H)] * N
    with torch.no_grad():
        logits = model(view0).logits.double().tolist()
        z = torch.cat([batch.view1, batch.view2]).flatten(1).double() @ model.b.double().T
        f0 = (view0.flatten(1).double() @ model.b.double().T).tolist()
    row = method_of(method)  # the expectation follows the method's row of the table
    contrast = row.contrast
    tau = cfg.tau if row.tau is None else row.tau
    log_prior = [math.log(c / float(COUNTS.sum())) for c in COUNTS.tolist()]
    protos = model.p.double().tolist()
    cls = 0.0
    for i in range(N):
        adjusted = [v + tau * lp for v, lp in zip(logits[i], log_prior)]
        a = int(batch.labels[i])
        if not batch.mixed:
            cls += plain_ce(adjusted, onehot(a))
            continue
        b = int(batch.fg_labels[i])
        area = onehot(a) if a == b else [lam[i] * x + (1 - lam[i]) * y for x, y in zip(onehot(a), onehot(b))]
        if rectified:
            cls += plain_ce(adjusted, plain_rectified(area, f0[i], protos, cfg.omega, cfg.top_k))
        else:
            cls += lam[i] * plain_ce(adjusted, onehot(a)) + (1 - lam[i]) * plain_ce(adjusted, onehot(b))
    cls /= N
    if not contrast:
        return cls
    labels = batch.labels.tolist()
    return cfg.alpha * cls + cfg.beta * plain_bcl(z.tolist(), labels + labels, protos, cfg.temperature)


@pytest.mark.parametrize("method,mixed,epoch,rectified", [
    ("ce", False, 0, False),
    ("cutmix", True, 0, False),
    ("bcl", False, 0, False),
    ("concutmix", True, 1, False),  # epoch E_r = 1 itself: the lambda-weighted CE
    ("concutmix", True, 2, True),  # after E_r: the rectified label
    ("concutmix", False, 2, False),  # an unmixed step of ConCutMix: BCL's loss
    ("balanced-softmax", False, 0, False),
])
def test_total_loss_is_the_plain_formula(method, mixed, epoch, rectified):
    cfg = MethodConfig(name=method, top_k=2, omega=0.3, rectify_after_epoch=1, tau=0.7)
    model = StandIn()
    step = MethodStep(cfg, COUNTS, DistContext(), None, False)
    batch = _batch(mixed)
    result = step(model, batch, epoch)
    assert (result.rect_weight is not None) == rectified
    assert float(result.loss.detach()) == pytest.approx(expected_total(method, batch, model, cfg, rectified), rel=1e-5)
    # and the total is what back-propagates
    result.loss.backward()
    assert model.a.grad is not None and (model.p.grad is not None) == method_of(method).contrast


def test_balanced_softmax_is_ce_of_logits_plus_log_class_frequency():
    """Ren et al. (NeurIPS 2020), eq. 4 in its training form: softmax over exp(logit_c) * n_c,
    i.e. CE of (logits + log n_c) (log n_c and log n_c / N give the same softmax), whatever
    method.tau says, with no contrast and no mixing."""
    cfg = MethodConfig(name="balanced-softmax", tau=0.3)  # tau is not this method's
    model = StandIn()
    batch = _batch(False)
    result = MethodStep(cfg, COUNTS, DistContext(), None, False)(model, batch, 0)
    with torch.no_grad():
        logits = model(batch.view0).logits.double().tolist()
    want = sum(plain_ce([v + math.log(n) for v, n in zip(logits[i], COUNTS.tolist())],
                        onehot(int(batch.labels[i]))) for i in range(N)) / N
    assert float(result.loss.detach()) == pytest.approx(want, rel=1e-5)
    assert set(result.terms) == {"cls"}
