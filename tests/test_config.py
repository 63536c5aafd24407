import json

import pytest

from concutmix_cli.config import (
    Config, apply_override, build_config, config_from_dict, list_presets, presets_dir,
    resolve_preset, saved_config, upgrade_saved_config,
)
from concutmix_cli.errors import UserError

EXPECTED_PRESETS = {
    "smoke", "cifar100-lt-if100", "cifar100-lt-if50", "cifar100-lt-if10", "cifar10-lt-if100",
    "cifar10-lt-if50", "cifar10-lt-if10", "cifar100-lt-if100-400ep", "cifar100-lt-short",
    "imagenet-lt-resnext50", "inat2018-resnet50", "places-lt-resnet50",
}


def test_every_shipped_preset_validates():
    assert EXPECTED_PRESETS <= set(list_presets())
    for name in list_presets():
        cfg = build_config(preset=name)
        assert cfg.preset == name


@pytest.mark.parametrize(
    "name, tau, omega, top_k",
    [
        ("cifar100-lt-if100", 0.9, 20 / 255, 30),
        ("cifar100-lt-if50", 0.75, 20 / 255, 30),
        ("cifar100-lt-if10", 1.0, 20 / 255, 30),
        ("cifar10-lt-if100", 0.85, 2 / 255, 3),
        ("cifar10-lt-if50", 0.81, 2 / 255, 3),
        ("cifar10-lt-if10", 1.0, 2 / 255, 3),
    ],
)
def test_cifar_presets_follow_the_published_recipe(name, tau, omega, top_k):
    cfg = build_config(preset=name)
    assert (cfg.optim.epochs, cfg.optim.batch_size, cfg.optim.lr) == (200, 256, 0.15)
    assert (cfg.optim.weight_decay, cfg.optim.warmup_epochs, cfg.optim.milestones) == (5e-4, 5, [160, 180])
    assert (cfg.method.alpha, cfg.method.beta, cfg.method.temperature) == (2.0, 0.6, 0.1)
    assert cfg.method.tau == tau and cfg.method.top_k == top_k
    assert cfg.method.omega == pytest.approx(omega, rel=1e-12)
    assert cfg.method.rectify_after_epoch == 100 and cfg.model.arch == "resnet32"
    # the published CIFAR runs: plain linear classifier, the last partial batch kept
    assert cfg.model.classifier == "linear" and cfg.optim.drop_last is False


def test_400_epoch_preset_follows_the_authors_script():
    cfg = build_config(preset="cifar100-lt-if100-400ep")
    assert (cfg.optim.epochs, cfg.optim.warmup_epochs, cfg.optim.milestones) == (400, 10, [360, 380])
    assert cfg.method.tau == 0.79 and cfg.method.rectify_after_epoch == 160
    assert cfg.model.classifier == "linear"


def test_large_scale_presets():
    inet = build_config(preset="imagenet-lt-resnext50")
    assert inet.model.arch == "resnext50_32x4d" and inet.optim.schedule == "cosine"
    assert (inet.model.classifier, inet.model.cosine_scale, inet.optim.warmup_epochs) == ("cosine", 30.0, 0)
    assert inet.method.rectify_after_epoch == 60
    assert (inet.method.alpha, inet.method.beta, inet.method.temperature, inet.method.tau) == (1.0, 0.35, 0.07, 0.99)
    assert inet.method.omega == pytest.approx(200 / 255)
    inat = build_config(preset="inat2018-resnet50")
    assert (inat.optim.epochs, inat.optim.lr, inat.optim.weight_decay) == (100, 0.2, 1e-4)
    assert inat.method.omega == pytest.approx(1628 / 255) and inat.method.rectify_after_epoch == 80
    assert (inat.model.classifier, inat.optim.warmup_epochs) == ("cosine", 0)
    # the authors' --batch-size 128 --grad_c: two batches of 128 per optimizer step
    assert (inat.optim.batch_size, inat.optim.accumulate) == (128, 2)


def test_a_config_saved_before_the_linear_classifier_keeps_its_meaning():
    # Configs saved before the linear classifier existed hold no model.classifier (always
    # cosine), name E_r rectify_start_epoch (the first rectified epoch) and dropped the last
    # partial batch.
    old = Config().model_dump()
    del old["model"]["classifier"], old["optim"]["drop_last"], old["method"]["rectify_after_epoch"]
    old["method"]["rectify_start_epoch"] = 7
    cfg = saved_config(old, origin="old run")
    assert (cfg.model.classifier, cfg.optim.drop_last, cfg.method.rectify_after_epoch) == ("cosine", True, 6)
    # a config of this version passes through unchanged
    new = build_config(preset="cifar100-lt-if100")
    assert saved_config(new.model_dump(), origin="new run") == new
    assert upgrade_saved_config(new.model_dump()) == new.model_dump()


def test_overrides_and_shortcuts_layer_in_order():
    cfg = build_config(
        preset="cifar100-lt-if100",
        shortcuts={"optim.epochs": 3, "method.name": "cutmix", "optim.lr": None},
        overrides=["optim.epochs=7", "method.cutmix_beta=0.5", 'data.path="elsewhere"', "optim.milestones=[1, 2]"],
    )
    assert cfg.optim.epochs == 7  # --set wins over a shortcut option
    assert cfg.method.name == "cutmix" and cfg.optim.lr == 0.15  # None shortcuts leave the preset value
    assert cfg.method.cutmix_beta == 0.5 and cfg.data.path == "elsewhere" and cfg.optim.milestones == [1, 2]


@pytest.mark.parametrize("name", ["ce", "cutmix", "bcl", "concutmix", "balanced-softmax"])
def test_a_setting_the_method_ignores_is_refused_from_the_command_line(name):
    from concutmix_cli.config import MethodConfig
    from concutmix_cli.methods import method as method_of

    uses = method_of(name).settings
    for key in MethodConfig.model_fields:
        value = 3 if key in ("top_k", "rectify_after_epoch") else 0.5
        call = lambda: build_config(preset="smoke", shortcuts={"method.name": name},  # noqa: E731
                                    overrides=[f"method.{key}={value}"] if key != "name" else [])
        if key in uses:
            call()
            continue
        with pytest.raises(UserError) as err:
            call()
        assert str(err.value).startswith(f"--set method.{key}={value}: method {name} does not use "
                                         f"method.{key}"), str(err.value)
        assert "\n" not in str(err.value)


def test_preset_settings_another_method_ignores_are_noted_once():
    cfg = build_config(preset="cifar100-lt-if100", shortcuts={"method.name": "ce"})
    assert cfg.notes == ["preset cifar100-lt-if100 sets method.alpha, method.beta, method.omega, "
                         "method.rectify_after_epoch, method.tau, method.temperature, method.top_k, "
                         "ignored by method ce"]
    assert build_config(preset="cifar100-lt-if100").notes == []  # the preset's own method
    bcl = build_config(preset="cifar100-lt-if100", shortcuts={"method.name": "bcl"})
    assert bcl.notes == ["preset cifar100-lt-if100 sets method.omega, method.rectify_after_epoch, "
                         "method.top_k, ignored by method bcl"]
    # a saved config (resume) holds every key: nothing to say; and notes are never saved
    assert build_config(base=json.loads(cfg.to_json())).notes == []
    assert "notes" not in json.loads(cfg.to_json())


def test_bare_string_override_is_accepted():
    raw = {}
    apply_override(raw, "data.path=data/x")
    assert raw == {"data": {"path": "data/x"}}


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.epochz=3", "unknown key 'optim.epochz'"),
        ("nonsense.key=1", "unknown key 'nonsense'"),
        ("optim.epochs=three", "bad value for 'optim.epochs'"),
        ("method.omega=-1", "bad value for 'method.omega'"),
        ("method.name=mixup", "bad value for 'method.name'"),
        ("optim.batch_size=1", "batch_size must be at least 2"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("[", r"\[")):
        build_config(preset="smoke", overrides=[override])


def test_bad_union_value_names_the_field_and_every_member():
    """`data.epoch_views` is "auto" | "off" | "epoch" | an int >= 1: the message names the field
    the user wrote (not pydantic's member tag) and what each member wanted."""
    with pytest.raises(UserError) as caught:
        build_config(preset="smoke", overrides=["data.epoch_views=-1"])
    assert str(caught.value) == ("--set data.epoch_views=-1: bad value for 'data.epoch_views' "
                                 "(-1): Input should be 'auto', 'off' or 'epoch'; or Input "
                                 "should be greater than or equal to 1")


def test_malformed_override():
    with pytest.raises(UserError, match="section.key=value"):
        build_config(preset="smoke", overrides=["justtext"])


def test_unknown_preset_lists_the_shipped_ones(tmp_path):
    with pytest.raises(UserError, match="unknown preset 'nope'.*smoke"):
        resolve_preset("nope")
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim]\nlearning_rate = 0.1\n")
    with pytest.raises(UserError, match="unknown key 'optim.learning_rate'"):
        build_config(preset=str(bad))
    broken = tmp_path / "broken.toml"
    broken.write_text("[optim\n")
    with pytest.raises(UserError, match="not valid TOML"):
        build_config(preset=str(broken))


def test_preset_by_path_and_resolved_config_round_trip(tmp_path):
    custom = tmp_path / "mine.toml"
    custom.write_text('[optim]\nepochs = 3\n[method]\nname = "bcl"\n')
    cfg = build_config(preset=str(custom))
    assert cfg.preset == "mine" and cfg.optim.epochs == 3 and cfg.method.name == "bcl"
    again = config_from_dict(json.loads(cfg.to_json()))
    assert again == cfg


def test_presets_resolve_from_the_package_folder():
    assert (presets_dir() / "smoke.toml").is_file()
    assert Config().method.name == "concutmix"
