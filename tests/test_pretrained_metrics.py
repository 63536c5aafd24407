"""model.pretrained from a local file (weights equal, mismatches refused in one line), the
imbalanced-test-set metrics against hand-computed values, and the shot thresholds of own data."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from conftest import one_error_line


def _backbone_state(seed: int) -> dict[str, torch.Tensor]:
    from concutmix_cli.models.resnet_cifar import resnet32

    torch.manual_seed(seed)
    state = resnet32().state_dict()
    return {k: (torch.randn_like(v) if v.is_floating_point() else v + 1) for k, v in state.items()}


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_local_state_dict_initializes_the_backbone(tiny_data, tmp_path, suffix):
    from concutmix_cli.config import build_config
    from concutmix_cli.engine.checkpoint import RunFolder
    from concutmix_cli.engine.loop import Trainer

    state = _backbone_state(7)
    path = tmp_path / f"backbone{suffix}"
    if suffix == ".pth":  # as torchvision ships them: with an ImageNet classifier fc.*
        torch.save({**state, "fc.weight": torch.zeros(1000, 64), "fc.bias": torch.zeros(1000)}, path)
    else:  # a whole model's weights: the backbone.* part is taken
        save_file({**{f"backbone.{k}": v for k, v in state.items()},
                   "classifier.weight": torch.zeros(10, 64)}, str(path))
    cfg = build_config(preset="smoke", overrides=[f"data.path='{tiny_data}'", "runtime.device='cpu'",
                                                  f"model.pretrained='{path}'"])
    events = []
    trainer = Trainer(cfg, RunFolder(tmp_path / "run"), on_event=events.append)
    got = trainer.model.backbone.state_dict()
    assert set(got) == set(state)
    assert all(torch.equal(got[k], state[k]) for k in state)
    assert any(str(path) in getattr(e, "text", "") for e in events)
    fresh = Trainer(cfg, RunFolder(tmp_path / "run2"), fresh=False)  # resuming: not loaded
    assert not torch.equal(fresh.model.backbone.state_dict()["conv1.weight"], state["conv1.weight"])


def test_a_mismatched_state_dict_is_refused_naming_the_keys(cli, tiny_data, tmp_path):
    state = _backbone_state(1)
    state.pop("layer3.4.bn2.weight")
    state["extra.weight"] = torch.zeros(3)
    state["conv1.weight"] = torch.zeros(16, 1, 3, 3)
    torch.save(state, tmp_path / "bad.pth")
    code, _, err = cli("train", "--data", tiny_data, "--out", tmp_path / "run", "--device", "cpu",
                       "--set", f"model.pretrained='{tmp_path / 'bad.pth'}'")
    assert code == 2
    one_error_line(err, "does not fit the backbone", "1 missing (layer3.4.bn2.weight)",
                   "1 unexpected (extra.weight)",
                   "1 of another shape (conv1.weight [16, 1, 3, 3] vs [16, 3, 3, 3])")
    assert not (tmp_path / "run").exists()  # no empty run left behind


def test_pretrained_errors(tmp_path):
    from concutmix_cli.errors import UserError
    from concutmix_cli.models.pretrained import init_pretrained
    from concutmix_cli.models.resnet_cifar import resnet32

    with pytest.raises(UserError, match="torchvision has no weights for model.arch = 'resnet32'"):
        init_pretrained(resnet32(), "resnet32", "torchvision")
    with pytest.raises(UserError, match="file not found"):
        init_pretrained(resnet32(), "resnet32", str(tmp_path / "nothing.pth"))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(UserError, match="not a readable state dict"):
        init_pretrained(resnet32(), "resnet32", str(tmp_path / "junk.pth"))


def test_balanced_accuracy_and_macro_f1_by_hand():
    from concutmix_cli.engine.evaluate import accuracy_report

    # 3 classes; true:      0 0 0 0 1 1 2
    #            predicted: 0 0 0 1 1 2 2
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    predicted = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    probs = torch.nn.functional.one_hot(predicted, 3).float() * 0.8 + 0.2 / 3
    report = accuracy_report(probs, labels, {"many": [0], "medium": [1], "few": [2]})
    # recall: 3/4, 1/2, 1/1 -> balanced accuracy 0.75; precision: 3/3, 1/2, 1/2
    # F1: class 0 2*.75/(1.75) = 6/7; class 1 0.5; class 2 2*.5/1.5 = 2/3
    assert report["balanced_accuracy"] == pytest.approx((0.75 + 0.5 + 1.0) / 3)
    assert report["macro_f1"] == pytest.approx((6 / 7 + 0.5 + 2 / 3) / 3)
    assert report["per_class_precision"] == pytest.approx([1.0, 0.5, 0.5])
    assert report["per_class_recall"] == pytest.approx([0.75, 0.5, 1.0])
    assert report["overall"] == pytest.approx(5 / 7)


def test_macro_f1_counts_a_predicted_absent_class_as_zero():
    from concutmix_cli.engine.evaluate import accuracy_report

    labels = torch.tensor([0, 0, 1])  # class 2 absent from the test set, predicted once
    probs = torch.nn.functional.one_hot(torch.tensor([0, 2, 1]), 4).float()
    report = accuracy_report(probs, labels, {})
    assert report["balanced_accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    # F1: class 0 2*1/(2+1) = 2/3; class 1 1; class 2 0 (predicted, absent); class 3 left out
    assert report["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert report["per_class_precision"] == [1.0, 1.0, 0.0, None]
    assert report["per_class_recall"][2] is None


def test_a_non_finite_output_counts_as_wrong_and_stays_out_of_the_ece():
    from concutmix_cli.engine.evaluate import accuracy_report, expected_calibration_error

    labels = torch.tensor([0, 1, 1, 2])
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [float("nan")] * 3, [0.2, 0.3, 0.5]])
    report = accuracy_report(probs, labels, {"many": [0], "medium": [1], "few": [2]})
    assert report["non_finite_outputs"] == 1
    assert report["overall"] == pytest.approx(3 / 4)  # the NaN row is wrong, not argmax's guess
    assert report["per_class_recall"] == pytest.approx([1.0, 0.5, 1.0])
    assert report["per_class_precision"] == pytest.approx([1.0, 1.0, 1.0])
    # ECE by hand over the three finite rows: all correct, confidences 0.7, 0.6, 0.5 in their
    # own bins -> (0.3 + 0.4 + 0.5) / 3
    assert report["ece"] == pytest.approx((0.3 + 0.4 + 0.5) / 3)
    assert report["ece"] == pytest.approx(expected_calibration_error(probs[[0, 1, 3]], labels[[0, 1, 3]]))
    nothing = accuracy_report(torch.full((2, 3), float("inf")), torch.tensor([0, 1]), {})
    assert (nothing["ece"], nothing["overall"], nothing["non_finite_outputs"]) == (None, 0.0, 2)


def test_eval_of_weights_that_overflow_is_valid_json_with_a_note(cli, tiny_data, tmp_path):
    """Finite weights whose logits overflow: `eval --json` reports (no internal error), and
    says how many images gave non-finite outputs."""
    import json

    from concutmix_cli.engine.checkpoint import read_weights, weights_bytes

    run = tmp_path / "run"
    code, _, err = cli("train", "--data", tiny_data, "--out", run, "--epochs", "1",
                       "--batch-size", "8", "--device", "cpu", "--set",
                       "runtime.max_steps_per_epoch=1", "--set", "data.num_workers=0")
    assert code == 0, err
    tensors, meta = read_weights(run / "last.safetensors")
    tensors["classifier.weight"] = tensors["classifier.weight"] * 1e38  # finite, logits are not
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(weights_bytes(tensors, meta))
    code, out, err = cli("eval", huge, "--data", tiny_data, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["non_finite_outputs"] > 0 and report["num_samples"] > 0
    assert any("non-finite outputs" in note for note in report["notes"])


def test_shot_thresholds_for_own_data():
    from concutmix_cli.data.longtail import choose_shot_thresholds, shot_groups

    cifar_like = [500, 300, 120, 60, 25, 10, 5]
    assert choose_shot_thresholds(cifar_like) == {"rule": "standard", "many_min": 101, "few_max": 19}
    small = [40, 30, 21, 14, 9, 6, 4]  # ceil(7 / 3) = 3 classes in the top and bottom groups
    limits = choose_shot_thresholds(small)
    assert limits == {"rule": "thirds", "many_min": 21, "few_max": 9}
    assert shot_groups(small, limits["many_min"], limits["few_max"]) == {
        "many": [0, 1, 2], "medium": [3], "few": [4, 5, 6]}
    balanced = choose_shot_thresholds([10, 10, 10])
    assert shot_groups([10, 10, 10], balanced["many_min"], balanced["few_max"])["many"] == [0, 1, 2]
