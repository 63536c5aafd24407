"""The GPU window's decisions (benchmarks/gpu_window.py) from measurements written as the window's
scripts write them, and the ImageNet-scale benchmark's parts (benchmarks/imagenet_scale.py).
No GPU needed: the decisions are pure functions of the files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import load_benchmark, refused

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


window = load_benchmark("gpu_window")
scale = load_benchmark("imagenet_scale")


def write_modes(work: Path, speeds: dict[str, float], diffs: dict[str, float], noise: float = 0.0,
                loss: dict[str, float] | None = None, bad: dict[str, int] | None = None) -> None:
    loss, bad = loss or {}, bad or {}
    modes = {"eager": {"host_syncs": 3, "max_weight_diff_vs_eager": 0.0, "loss_sum": 100.0,
                       "steps": 24, "bad": 0},
             "eager_again": {"host_syncs": 3, "max_weight_diff_vs_eager": noise, "loss_sum": 100.0,
                             "steps": 24, "bad": 0}}
    for mode, diff in diffs.items():
        modes[mode] = {"host_syncs": 0, "max_weight_diff_vs_eager": diff,
                       "loss_sum": loss.get(mode, 100.0), "steps": 24, "bad": bad.get(mode, 0)}
    work.mkdir(parents=True, exist_ok=True)
    (work / "step-equality.json").write_text("log line\n" + json.dumps({"modes": modes}) + "\n")
    for mode, sps in speeds.items():
        (work / f"throughput-{mode}.json").write_text(json.dumps(
            {"samples_per_s": sps, "ceiling_samples_per_s": 3 * sps, "ratio": 1 / 3,
             "tflops": 1.0, "ceiling_tflops": 3.0}) + "\n")


@pytest.mark.parametrize("speeds, diffs, noise, extra, picked", [
    # graphed 30 % faster and within max(10 x noise, 1e-3): graphed
    ({"eager": 1000, "sync_free": 1040, "graphed": 1300}, {"sync_free": 0.0, "graphed": 1.5e-3},
     2e-4, {}, "graphed"),
    # graphed drifts past the tolerance: not the same model; sync_free gains only 4 %: eager
    ({"eager": 1000, "sync_free": 1040, "graphed": 1300}, {"sync_free": 0.0, "graphed": 3e-3},
     2e-4, {}, "eager"),
    # sync_free 6 % faster: it earns its place
    ({"eager": 1000, "sync_free": 1060, "graphed": 1300}, {"sync_free": 0.0, "graphed": 3e-3},
     0.0, {}, "sync_free"),
    # graphed fast but its loss sums differ: not the same model
    ({"eager": 1000, "sync_free": 1000, "graphed": 1500}, {"sync_free": 0.0, "graphed": 0.0},
     0.0, {"loss": {"graphed": 100.2}}, "eager"),
    # a skipped (non-finite) step: not the same model
    ({"eager": 1000, "sync_free": 1500}, {"sync_free": 0.0}, 0.0, {"bad": {"sync_free": 1}}, "eager"),
    # both gain, the faster one wins
    ({"eager": 1000, "sync_free": 1200, "graphed": 1100}, {"sync_free": 0.0, "graphed": 0.0},
     0.0, {}, "sync_free"),
])
def test_the_picked_step_is_the_fastest_that_trains_the_same_model(tmp_path, speeds, diffs, noise,
                                                                    extra, picked):
    write_modes(tmp_path, speeds, diffs, noise, **extra)
    assert window.pick_step(tmp_path)[0] == picked


def test_without_measurements_the_step_stays_eager(tmp_path):
    assert window.pick_step(tmp_path) == ("eager", "eager: the modes were not measured")


def write_solo(work: Path, train_s: float, eval_s: float, epochs: int = 4) -> None:
    (work / "solo").mkdir(parents=True, exist_ok=True)
    rows = [{"epoch": 1, "seconds": 9.0, "eval_seconds": 2.0, "samples_per_s": 1.0}]  # warm-up: left out
    rows += [{"epoch": e, "seconds": train_s, "eval_seconds": eval_s, "samples_per_s": 8000 / train_s}
             for e in range(2, epochs + 1)]  # 8,000 samples an epoch
    (work / "solo" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (work / "solo" / "config.json").write_text(json.dumps({"runtime": {"step": "eager"}}))


def expected_parallel(alone: float, gpu: float, left: float, rows: int, cap: int) -> int:
    """The rule written plainly: the largest n whose runs of 200 epochs all finish."""
    best = 0
    for n in range(1, min(cap, rows) + 1):
        if 30 + 200 * max(alone, n * gpu) * 1.15 <= left:
            best = n
    return best


@pytest.mark.parametrize("left", [400.0, 700.0, 2000.0])
def test_the_plan_takes_the_most_rows_that_all_finish(tmp_path, left):
    write_modes(tmp_path, {"eager": 8000}, {})  # ceiling 24000 samples/s
    write_solo(tmp_path, train_s=1.0, eval_s=0.25)
    rows = ["r01", "r03", "r04", "r08", "r09"]
    decided = window.plan(tmp_path, rows, left, tmp_path / "data", tmp_path / "runs", False, cpus=16)
    gpu = 8000 / 24000 + 0.25  # the epoch's samples at the ceiling's rate, and the evaluation
    n = expected_parallel(1.25, gpu, left, len(rows), cap=6)
    assert n >= 1
    assert decided["parallel"] == n and decided["rows"] == rows[:n]
    assert decided["todo"] == {r: 200 for r in rows}
    assert decided["gpu_s_per_epoch"] == pytest.approx(gpu)


def test_window_2_plans_from_the_options_base_measured_in_the_given_mode(tmp_path):
    """Window 2 measures no modes: its only throughput in the runs' mode is the options stage's
    base. The plan must size the runs from it, not fall back to "no measured epoch time"
    (found by rehearsing window 2 under the device's Python and torch)."""
    write_solo(tmp_path, train_s=1.0, eval_s=0.25)
    (tmp_path / "step.json").write_text(json.dumps({"step": "sync_free", "how": "given as STEP"}))
    base = {"step": "sync_free", "samples_per_s": 8000.0, "ceiling_samples_per_s": 24000.0}
    (tmp_path / "throughput-options-base.json").write_text(json.dumps(base))
    rows = ["r03", "r04", "r08", "r09", "r10", "r11"]
    decided = window.plan(tmp_path, rows, 2000.0, tmp_path / "data", tmp_path / "runs", False, cpus=16)
    gpu = 8000 / 24000 + 0.25
    assert decided["gpu_s_per_epoch"] == pytest.approx(gpu)
    n = expected_parallel(1.25, gpu, 2000.0, len(rows), cap=6)
    assert n > window.MAX_UNFINISHED  # the fallback would have started two
    assert decided["parallel"] == n and decided["rows"] == rows[:n]
    # a base measured in another mode does not size these runs
    (tmp_path / "throughput-options-base.json").write_text(json.dumps({**base, "step": "graphed"}))
    decided = window.plan(tmp_path, rows, 2000.0, tmp_path / "data", tmp_path / "runs", False, cpus=16)
    assert decided["parallel"] == window.MAX_UNFINISHED and "no measured epoch time" in decided["why"]


def test_an_unknown_row_is_one_line(tmp_path, capsys):
    refused(capsys, lambda: window.run(lambda: window.main(
        ["plan", str(tmp_path), "--rows", "r01,r99", "--left", "100"])), "--only: unknown run r99")
    assert not (tmp_path / "plan.json").exists()


@pytest.mark.parametrize("left", ["nan", "-1", "inf", "soon"])
def test_the_plans_seconds_are_a_finite_number_of_zero_or_more(tmp_path, capsys, left):
    refused(capsys, lambda: window.main(["plan", str(tmp_path), "--rows", "r01", "--left", left]),
            "argument --left: must be")
    assert not (tmp_path / "plan.json").exists()


@pytest.mark.parametrize("argv", [["plan", "{missing}", "--rows", "r01", "--left", "100"],
                                  ["results", "{missing}", "--into", "{here}"],
                                  ["results", "{here}", "--into", "{missing}"],
                                  ["pick-step", "{missing}"]])
def test_a_missing_window_folder_is_one_line(tmp_path, capsys, argv):
    missing = tmp_path / "missing"
    refused(capsys, lambda: window.main([a.format(missing=missing, here=tmp_path) for a in argv]),
            f"{missing} is not a folder")
    assert list(tmp_path.iterdir()) == []  # nothing written anywhere


def test_when_no_row_can_finish_at_most_two_start(tmp_path):
    write_modes(tmp_path, {"eager": 8000}, {})
    write_solo(tmp_path, train_s=1.0, eval_s=0.25)
    decided = window.plan(tmp_path, ["r01", "r03", "r04"], 200.0, tmp_path / "data", tmp_path / "runs",
                          False, cpus=16)
    # 1.25 s alone against 0.58 s of GPU work: two run at full speed, and no more than two
    assert decided["parallel"] == 2 and decided["rows"] == ["r01", "r03"]
    assert "no row can finish" in decided["why"]
    # few CPU cores cap it: one trainer for each two cores
    decided = window.plan(tmp_path, ["r01", "r03", "r04"], 5000.0, tmp_path / "data",
                          tmp_path / "runs", False, cpus=2)
    assert decided["parallel"] == 1


def test_the_record_summary_and_document_section(tmp_path, capsys):
    work = tmp_path / "work"
    write_modes(work, {"eager": 1000, "sync_free": 1100}, {"sync_free": 0.0})
    write_solo(work, train_s=1.5, eval_s=0.5)
    (work / "throughput-epoch-views-off.json").write_text(json.dumps({"samples_per_s": 800.0}))
    (work / "throughput-prefetch.json").write_text(json.dumps({"samples_per_s": 1111.0}))
    (work / "device.json").write_text(json.dumps({"date": "2026-12-05", "card": "NVIDIA H200",
                                                  "torch": "2.11.0"}))
    record = window.results(work)
    assert record["card"] == "NVIDIA H200" and record["picked_step"] == "sync_free"
    assert record["seconds_200_epochs"] == pytest.approx(200 * 2.0)
    views, prefetch = record["options"]["epoch-views-off"], record["options"]["prefetch"]
    # epoch views are on by default: 1100 with them, 800 without: +27 % for the option
    assert views["gain_of_option"] == pytest.approx(300 / 1100) and views["earns_its_place"]
    assert prefetch["gain_of_option"] == pytest.approx(11 / 1100) and not prefetch["earns_its_place"]
    assert window.card_slug(record["card"]) == "nvidia-h200"
    # the options stage measures its own base beside the options; that one is the reference
    (work / "throughput-options-base.json").write_text(json.dumps({"samples_per_s": 1000.0}))
    assert window.options(work, "sync_free")["epoch-views-off"]["gain_of_option"] == pytest.approx(0.2)
    (work / "throughput-options-base.json").unlink()
    text = window.summary(record)
    assert "Picked: **sync_free**" in text and "200 epochs in 6.7 min" in text

    results = tmp_path / "results"
    results.mkdir()
    (results / "2026-12-05-nvidia-h200.json").write_text(json.dumps(record))
    doc = tmp_path / "doc.md"
    doc.write_text(f"# head\n\n{window.BEGIN}\nold\n{window.END}\n\ntail\n")
    window.write_doc(results, doc)
    assert doc.read_text() == f"# head\n\n{window.BEGIN}\n{text}{window.END}\n\ntail\n"
    doc.write_text("no markers\n")
    refused(capsys, lambda: window.write_doc(results, doc), "no single pair of gpu-results markers")
    assert doc.read_text() == "no markers\n"


@pytest.mark.parametrize("body", ["{", "[1]", '{"card": "NVIDIA H200"}', None])
def test_a_file_that_is_no_record_is_one_line_and_the_document_is_kept(tmp_path, capsys, body):
    record = tmp_path / "results" / "2026-12-05-nvidia-h200.json"
    record.parent.mkdir()
    if body is not None:  # None: the file is missing (only `summary` names one)
        record.write_text(body)
    refused(capsys, lambda: window.main(["summary", str(record)]),
            f"{record} is not a GPU window's record")
    if body is None:
        return
    doc = tmp_path / "doc.md"
    doc.write_text(f"# head\n\n{window.BEGIN}\nold\n{window.END}\n")
    before = doc.read_bytes()
    refused(capsys, lambda: window.main(["doc", "--results", str(record.parent), "--doc", str(doc)]),
            f"{record} is not a GPU window's record")
    assert doc.read_bytes() == before


def test_a_missing_document_is_one_line(tmp_path, capsys):
    doc = tmp_path / "doc.md"
    refused(capsys, lambda: window.main(["doc", "--results", str(tmp_path), "--doc", str(doc)]),
            f"cannot read {doc}")
    assert not doc.exists()


def test_the_documents_gpu_section_is_the_generated_one(tmp_path):
    """docs/benchmarks.md holds, byte for byte, what `gpu_window.py doc` writes from
    benchmarks/results (so no hand edit and no record left out)."""
    doc = BENCH.parent / "docs" / "benchmarks.md"
    copy = tmp_path / "benchmarks.md"
    copy.write_bytes(doc.read_bytes())
    window.write_doc(BENCH / "results", copy)
    assert copy.read_bytes() == doc.read_bytes()
    assert window.BEGIN in copy.read_text()


# ----------------------------------------------------------------------------- ImageNet scale


def test_the_class_profile_is_long_tailed_with_the_asked_imbalance():
    counts = scale.class_counts(100, 10_000, 100.0)
    assert len(counts) == 100 and all(a >= b for a, b in zip(counts, counts[1:]))
    assert abs(counts[-1] - counts[0] / 100) <= 1  # the imbalance, up to rounding the tail
    assert sum(counts) == pytest.approx(10_000, rel=0.01)
    assert min(scale.class_counts(1000, 100, 256.0)) == 1  # at least one image a class


def test_the_synthetic_tree_is_prepared_by_the_imagenet_lt_route(tmp_path, cli):
    made = scale.make_tree(tmp_path / "tree", classes=3, images=9, imbalance=4.0, width=40,
                           height=30, quality=90, test_per_class=1, workers=1)
    lines = (tmp_path / "tree" / "ImageNet_LT_train.txt").read_text().splitlines()
    assert len(lines) == made["train_images"] == sum(scale.class_counts(3, 9, 4.0))
    path, label = lines[0].split()
    with Image.open(tmp_path / "tree" / path) as image:
        assert image.format == "JPEG" and image.size == (40, 30) and label == "0"
    code, _, err = cli("prepare", "imagenet-lt", "--root", tmp_path / "tree",
                       "--train-list", tmp_path / "tree" / "ImageNet_LT_train.txt",
                       "--test-list", tmp_path / "tree" / "ImageNet_LT_test.txt",
                       "--out", tmp_path / "prepared")
    assert code == 0, err
    manifest = json.loads((tmp_path / "prepared" / "manifest.json").read_text())
    assert manifest["train_counts"] == scale.class_counts(3, 9, 4.0)


def test_each_setting_of_the_tree_has_its_own_folder(tmp_path):
    """A rerun with another size or profile must not measure (and report) the tree made for
    other settings: every argument of make_tree that shapes the tree is part of its folder."""
    import inspect

    base = {"classes": 1000, "images": 8000, "imbalance": 256.0, "width": 500, "height": 375,
            "quality": 90, "test_per_class": 1}
    shaping = set(inspect.signature(scale.make_tree).parameters) - {"root", "workers"}
    assert shaping == set(base)
    folder = scale.tree_folder(tmp_path, **base)
    assert folder.parent == tmp_path and scale.tree_folder(tmp_path, **base) == folder
    for key, value in base.items():
        other = {**base, key: value * 2 if key != "imbalance" else 100.0}
        assert scale.tree_folder(tmp_path, **other) != folder, key


def test_the_summary_names_the_saturating_worker_count_and_the_projection():
    rows = [{"num_workers": w, "samples_per_s": s, "ceiling_samples_per_s": 2000.0, "device": "d",
             "batch_size": 256, "arch": "resnext50_32x4d"}
            for w, s in ((4, 500.0), (8, 980.0), (12, 1000.0), (15, 990.0))]
    rows.append({"num_workers": 16, "failed": "exit 1: out of memory"})
    out = scale.summarize(rows, {"classes": 1000})
    assert (out["best_workers"], out["saturating_workers"]) == (12, 8)
    assert out["loader_bound_by"] == pytest.approx(2.0)
    assert out["hours_90_epochs"] == pytest.approx(90 * 115_846 / 1000 / 3600)
    assert out["hours_90_epochs_at_ceiling"] == pytest.approx(90 * 115_846 / 2000 / 3600)


# ----------------------------------------------------------------------------- pinned staging A/B


def test_the_pageable_staging_switch_reaches_every_module_that_stages(monkeypatch):
    """throughput.py --pageable-staging must replace `stage` wherever the device path reads it,
    or the A/B would silently measure pinned staging twice."""
    import concutmix_cli.data.device.plan  # noqa: F401 - every module that stages, imported
    from concutmix_cli.data import loader
    from concutmix_cli.data.device import shipping

    original = shipping.stage
    monkeypatch.setattr(shipping, "stage", original)  # restored after the test
    monkeypatch.setattr(loader, "stage", loader.stage)
    throughput = load_benchmark("throughput")
    throughput.use_pageable_staging()
    holders = [name for name, module in list(sys.modules.items())
               if name.startswith("concutmix_cli") and getattr(module, "stage", None) is original]
    assert holders == []
    assert shipping.stage is not original and loader.stage is shipping.stage


def test_the_weights_twin_is_found_only_for_identical_bytes(tmp_path):
    """reproduce.py --archive links last.safetensors to the checkpoint with the same bytes only
    (tests/test_reproduce.py unpacks such an archive)."""
    run = tmp_path / "r01"
    (run / "checkpoints").mkdir(parents=True)
    weights = bytes(range(256)) * 64
    (run / "checkpoints" / "epoch-0001.safetensors").write_bytes(weights)
    (run / "checkpoints" / "epoch-0001.state.pt").write_bytes(b"state")
    (run / "last.safetensors").write_bytes(weights)
    (run / "config.json").write_text("{}")
    reproduce = load_benchmark("reproduce")
    assert reproduce._weights_twin(run) == "checkpoints/epoch-0001.safetensors"
    (run / "last.safetensors").write_bytes(weights[:-1] + b"x")
    assert reproduce._weights_twin(run) is None
