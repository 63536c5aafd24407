"""Tests of concutmix_cli.models: CIFAR ResNet-32, cosine classifier, heads and the ConCutMix net."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from concutmix_cli.config import ModelConfig
from concutmix_cli.models import (
    CifarResNet,
    ConCutMixNet,
    CosineClassifier,
    ModelOutput,
    ProjectionHead,
    build_model,
    count_parameters,
    resnet32,
)
from concutmix_cli.models.resnet_cifar import PadShortcut


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _small_cfg(**kw) -> ModelConfig:
    base = dict(arch="resnet32", proj_hidden=32, proj_dim=16)
    base.update(kw)
    return ModelConfig(**base)


# ----------------------------------------------------------------------------- ResNet-32


def test_resnet32_output_shape_and_feature_dim():
    net = resnet32()
    assert net.feature_dim == 64
    h = net(torch.randn(3, 3, 32, 32))
    assert h.shape == (3, 64)
    assert torch.isfinite(h).all()


def _cifar_resnet_param_count(depth: int, widths=(16, 32, 64), in_channels: int = 3) -> int:
    """Conv weights 3*3*cin*cout (no bias) + BN weight and bias (2*cout) for every conv;
    option-A shortcuts have no parameters, there is no fc layer."""
    n = (depth - 2) // 6
    convs = [(in_channels, widths[0])]  # stem
    cin = widths[0]
    for width in widths:
        for _ in range(n):
            convs.append((cin, width))  # block conv1
            convs.append((width, width))  # block conv2
            cin = width
    return sum(3 * 3 * ci * co + 2 * co for ci, co in convs)


@pytest.mark.parametrize("depth", [20, 32, 56])
def test_cifar_resnet_parameter_count_matches_formula(depth):
    net = CifarResNet(depth)
    assert count_parameters(net) == _cifar_resnet_param_count(depth)


def test_resnet32_parameter_count_and_structure():
    net = resnet32()
    assert count_parameters(net) == _cifar_resnet_param_count(32)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 3 * 5 * 2  # 31 convs + (fc elsewhere) = the "32" layers
    assert all(c.kernel_size == (3, 3) and c.bias is None for c in convs)
    shortcuts = [m for m in net.modules() if isinstance(m, PadShortcut)]
    assert len(shortcuts) == 2  # entering stages 2 and 3
    assert all(sum(p.numel() for p in s.parameters()) == 0 for s in shortcuts)
    assert len(net.layer1) == len(net.layer2) == len(net.layer3) == 5


def test_option_a_shortcut_subsamples_and_zero_pads():
    sc = PadShortcut(16, 32, stride=2)
    x = torch.randn(2, 16, 8, 8)
    y = sc(x)
    assert y.shape == (2, 32, 4, 4)
    # 8 zero channels before, the subsampled input, 8 zero channels after
    assert torch.equal(y[:, :8], torch.zeros(2, 8, 4, 4))
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert torch.equal(y[:, 24:], torch.zeros(2, 8, 4, 4))


def test_cifar_resnet_rejects_bad_depth():
    with pytest.raises(ValueError):
        CifarResNet(33)


def test_resnet32_kaiming_init_of_convs():
    net = resnet32()
    w = net.layer3[1].conv1.weight  # 64*3*3 fan_in
    expected_std = (2.0 / (64 * 9)) ** 0.5
    assert abs(w.std().item() - expected_std) / expected_std < 0.05


# ----------------------------------------------------------------------------- cosine classifier


def test_cosine_classifier_weight_orientation_and_init():
    clf = CosineClassifier(64, 10, scale=30.0)
    assert clf.weight.shape == (64, 10)  # columns are class weights
    assert torch.allclose(clf.weight.norm(dim=0), torch.ones(10), atol=1e-5)


def test_cosine_logits_equal_scaled_cosine_and_are_bounded():
    clf = CosineClassifier(8, 5, scale=30.0)
    h = torch.randn(7, 8)
    logits = clf(h)
    W = clf.weight.detach()
    expected = torch.empty(7, 5)
    for i in range(7):
        for c in range(5):
            hi, wc = h[i], W[:, c]
            expected[i, c] = 30.0 * (hi @ wc) / (hi.norm() * wc.norm())
    assert torch.allclose(logits, expected, atol=1e-4)
    assert logits.abs().max().item() <= 30.0 + 1e-4
    # a feature equal to a class column gives exactly the scale
    assert torch.allclose(clf(W[:, 2].unsqueeze(0))[0, 2], torch.tensor(30.0), atol=1e-4)


def test_cosine_logits_invariant_to_scaling_h_and_w_columns():
    clf = CosineClassifier(8, 5, scale=10.0)
    h = torch.randn(6, 8)
    ref = clf(h)
    row_scale = torch.rand(6, 1) * 5 + 0.1
    assert torch.allclose(clf(h * row_scale), ref, atol=1e-5)
    with torch.no_grad():
        clf.weight.mul_(torch.rand(1, 5) * 5 + 0.1)
    assert torch.allclose(clf(h), ref, atol=1e-5)


def test_cosine_logits_float32_under_cpu_autocast():
    clf = CosineClassifier(8, 5, scale=30.0)
    h = torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = clf(h.bfloat16())
    assert logits.dtype == torch.float32
    assert logits.abs().max().item() <= 30.0 + 1e-4


# ----------------------------------------------------------------------------- heads and the net


def test_projection_head_structure():
    head = ProjectionHead(64, 32, 16)
    kinds = [type(m) for m in head.net]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert head(torch.randn(5, 64)).shape == (5, 16)


def test_model_output_shapes_and_project_flag():
    model = build_model(_small_cfg(), num_classes=7)
    x = torch.randn(4, 3, 32, 32)
    out = model(x)
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (4, 7)
    assert out.projection is not None and out.projection.shape == (4, 16)
    assert out.prototypes is None
    no_proj = model(x, project=False)
    assert no_proj.projection is None and no_proj.logits.shape == (4, 7)
    both = model(x, with_prototypes=True)
    assert both.prototypes is not None and both.prototypes.shape == (7, 16)
    assert (model.num_classes, model.feature_dim, model.proj_dim) == (7, 64, 16)


def test_projection_is_g_of_h_unnormalized():
    model = build_model(_small_cfg(), num_classes=5).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        h = model.backbone(x)
        assert torch.allclose(out.projection, model.projector(h), atol=1e-6)
        assert torch.allclose(out.logits, model.classifier(h), atol=1e-6)
    # not normalized: norms are generally not 1
    assert not torch.allclose(out.projection.norm(dim=1), torch.ones(3), atol=1e-3)


@pytest.mark.parametrize("kind, weight_shape", [("linear", (6, 64)), ("cosine", (64, 6))])
def test_prototypes_shape_and_gradient_reaches_classifier_weight(kind, weight_shape):
    model = build_model(_small_cfg(classifier=kind), num_classes=6)
    protos = model.prototypes()
    assert protos.shape == (6, 16)
    loss = (F.normalize(protos, dim=1) * torch.randn(6, 16)).sum()
    loss.backward()
    grad = model.classifier.weight.grad
    assert grad is not None and grad.shape == weight_shape
    assert grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.prototype_head.parameters())
    assert model.projector.net[0].weight.grad is None  # g is untouched


def _class_weight(model, c: int) -> torch.Tensor:
    """Class c's weight vector, written per kind: the linear layer's ROW c, the cosine one's column c."""
    w = model.classifier.weight
    return w[c, :] if isinstance(model.classifier, nn.Linear) else w[:, c]


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_prototypes_follow_each_class_weight_vector(kind):
    model = build_model(_small_cfg(classifier=kind), num_classes=4).eval()
    with torch.no_grad():
        before = model.prototypes().clone()
        expected_row = model.prototype_head(_class_weight(model, 1).unsqueeze(0))
        assert torch.allclose(before[1], expected_row[0], atol=1e-6)
        _class_weight(model, 2).add_(1.0)
        after = model.prototypes()
    assert torch.allclose(before[[0, 1, 3]], after[[0, 1, 3]], atol=1e-6)
    assert not torch.allclose(before[2], after[2])


def test_train_step_backward_through_all_parts():
    model = build_model(_small_cfg(), num_classes=5).train()
    x = torch.randn(4, 3, 32, 32)
    out = model(x, with_prototypes=True)
    loss = (
        F.cross_entropy(out.logits, torch.tensor([0, 1, 2, 3]))
        + F.normalize(out.projection, dim=1).sum()
        + (F.normalize(out.prototypes, dim=1) * torch.randn(5, 16)).sum()
    )
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []


def test_channels_last_matches_contiguous_in_eval():
    model = build_model(_small_cfg(), num_classes=5).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        out_cl_input = model(x.to(memory_format=torch.channels_last))
        model_cl = model.to(memory_format=torch.channels_last)
        out_cl_both = model_cl(x.to(memory_format=torch.channels_last))
    for out in (out_cl_input, out_cl_both):
        assert torch.allclose(out.logits, ref.logits, atol=1e-4, rtol=1e-4)
        assert torch.allclose(out.projection, ref.projection, atol=1e-4, rtol=1e-4)


def test_channels_last_train_backward():
    model = build_model(_small_cfg(), num_classes=5).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    out = model(x)
    (out.logits.sum() + out.projection.sum()).backward()
    assert model.backbone.conv1.weight.grad is not None


# ----------------------------------------------------------------------------- build_model


def test_linear_classifier_is_w_h_plus_b():
    model = build_model(_small_cfg(), num_classes=5).eval()  # the default classifier
    assert isinstance(model.classifier, nn.Linear) and model.classifier.weight.shape == (5, 64)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        h = model.backbone(x)
        expected = h @ model.classifier.weight.T + model.classifier.bias
        assert torch.allclose(model(x).logits, expected, atol=1e-5)


def test_heads_have_pytorchs_default_initialization():
    # The reference re-initializes only its backbone (Kaiming-normal); the classifier and both heads
    # keep nn.Linear's default: the same draws as freshly made layers from the same RNG state.
    torch.manual_seed(3)
    head = ProjectionHead(64, 512, 128)
    torch.manual_seed(3)
    ref = nn.Sequential(nn.Linear(64, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, 128))
    for a, b in zip(head.net.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)
    # std of a default Linear(64, .) weight: 1 / sqrt(3 * 64) = 0.072 (Kaiming-normal: 0.177)
    assert abs(head.net[0].weight.std().item() - 1 / math.sqrt(3 * 64)) < 0.003
    model = build_model(ModelConfig(), num_classes=100)
    bound = 1 / math.sqrt(64)
    assert model.classifier.weight.abs().max() <= bound and model.classifier.bias.abs().max() <= bound
    assert abs(model.projector.net[0].weight.std().item() - 1 / math.sqrt(3 * 64)) < 0.003


def test_build_model_uses_config_values():
    model = build_model(_small_cfg(classifier="cosine", cosine_scale=12.5, proj_hidden=24, proj_dim=8),
                        num_classes=3)
    assert isinstance(model, ConCutMixNet)
    assert model.classifier.scale == 12.5
    assert model.projector.hidden_dim == 24 and model.prototype_head.hidden_dim == 24
    assert model.proj_dim == 8 and model.prototypes().shape == (3, 8)
    assert model.arch == "resnet32"


def test_build_model_rejects_too_few_classes():
    with pytest.raises(ValueError):
        build_model(_small_cfg(), num_classes=1)


def test_count_parameters():
    model = build_model(_small_cfg(), num_classes=10)
    total = sum(p.numel() for p in model.parameters())
    assert count_parameters(model) == total
    head = 64 * 10 + 10 + 2 * (64 * 32 + 32 + 2 * 32 + 32 * 16 + 16)  # linear classifier: W and b
    assert total == _cifar_resnet_param_count(32) + head
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == head


@pytest.mark.parametrize(
    "arch, feature_dim", [("resnet32", 64), ("resnet50", 2048), ("resnext50_32x4d", 2048)]
)
def test_build_model_arch_feature_dim(arch, feature_dim):
    model = build_model(ModelConfig(arch=arch, proj_hidden=64, proj_dim=32), num_classes=11)
    assert model.feature_dim == feature_dim
    assert model.num_classes == 11
    assert model.classifier.weight.shape == (11, feature_dim)  # linear: one row per class
    assert model.prototypes().shape == (11, 32)
    size = 32 if arch == "resnet32" else 64  # tiny input for the ImageNet backbones
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.logits.shape == (2, 11)
    assert out.projection.shape == (2, 32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_channels_last_autocast_matches_cpu():
    model = build_model(_small_cfg(classifier="cosine"), num_classes=5).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = model(x, with_prototypes=True)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # compare in true float32
    try:
        _cuda_checks(model, x, ref)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32


def _cuda_checks(model, x, ref):
    with torch.no_grad():
        gpu = model.to("cuda", memory_format=torch.channels_last)
        xg = x.to("cuda", memory_format=torch.channels_last)
        out = gpu(xg, with_prototypes=True)
        assert torch.allclose(out.logits.cpu(), ref.logits, atol=1e-3, rtol=1e-3)
        assert torch.allclose(out.prototypes.cpu(), ref.prototypes, atol=1e-3, rtol=1e-3)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            amp = gpu(xg)
    assert amp.logits.dtype == torch.float32
    assert amp.logits.abs().max().item() <= model.classifier.scale + 1e-3
    gpu.train()
    out = gpu(xg, with_prototypes=True)
    (out.logits.sum() + out.projection.sum() + out.prototypes.sum()).backward()
    assert gpu.classifier.weight.grad is not None
