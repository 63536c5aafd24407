"""The benchmark scripts that run unattended in a GPU window refuse bad input before they make or
measure anything: one `error:` line, exit 2 (benchmarks/argtypes.py); and the ImageNet-scale run
keeps what it measured when one worker count is slow or the window cuts it off."""

from __future__ import annotations

import argparse
import json

import pytest

from tests.conftest import load_benchmark, refused

argtypes = load_benchmark("argtypes")
scale = load_benchmark("imagenet_scale")


# ----------------------------------------------------------------------------- the argument types


@pytest.mark.parametrize("text,kind,allow_zero,expected", [
    ("3", int, False, 3), ("0", int, True, 0), ("2.5", float, False, 2.5), ("0", float, True, 0.0)])
def test_positive_takes_finite_numbers_in_range(text, kind, allow_zero, expected):
    value = argtypes.positive(kind, allow_zero)(text)
    assert value == expected and type(value) is kind


@pytest.mark.parametrize("text,kind,allow_zero,message", [
    ("0", int, False, "must be more than 0"), ("-1", int, True, "must be 0 or more"),
    ("1.5", int, False, "must be a number"), ("x", float, False, "must be a number"),
    ("nan", float, True, "must be 0 or more"), ("inf", float, False, "must be more than 0"),
    ("-inf", float, True, "must be 0 or more")])
def test_positive_refuses_the_rest(text, kind, allow_zero, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        argtypes.positive(kind, allow_zero)(text)


def test_between_includes_both_ends():
    parse = argtypes.between(1, 100)
    assert (parse("1"), parse("100")) == (1, 100)
    for text in ("0", "101", "50.0", "q"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


def test_counts_and_size_parse_what_the_window_passes():
    assert argtypes.counts("6,10,15") == [6, 10, 15] and argtypes.counts("0") == [0]
    assert argtypes.size("500x375") == (500, 375) and argtypes.size("32X16") == (32, 16)
    for bad in ("4,x", "4,,8", "-1", "4,4"):
        with pytest.raises(argparse.ArgumentTypeError):
            argtypes.counts(bad)
    for bad in ("500", "500x", "x375", "0x375", "500x375x3", "axb"):
        with pytest.raises(argparse.ArgumentTypeError):
            argtypes.size(bad)


def test_a_refusal_that_spans_lines_is_one_line(capsys):
    from concutmix_cli.errors import UserError

    def main():
        raise UserError("bad value for 'x':\n  Input should be\tgreater than 0")

    with pytest.raises(SystemExit) as stop:
        argtypes.run(main)
    assert stop.value.code == 2
    assert capsys.readouterr().err == "error: bad value for 'x': Input should be greater than 0\n"


# ----------------------------------------------------------------------------- each script


@pytest.mark.parametrize("extra,fragment", [
    (["--size", "500"], "argument --size: must be WIDTHxHEIGHT"),
    (["--size", "0x375"], "argument --size: must be more than 0"),
    (["--workers", "4,x"], "argument --workers: must be a number"),
    (["--classes", "1"], "argument --classes: must be from 2"),
    (["--images", "0"], "argument --images: must be more than 0"),
    (["--images", "3"], "--images 3 is fewer than --classes 4"),
    (["--imbalance", "0.5"], "argument --imbalance: must be 1 or more"),
    (["--quality", "101"], "argument --quality: must be from 1 to 100"),
    (["--test-per-class", "0"], "argument --test-per-class: must be more than 0"),
    (["--steps", "0"], "argument --steps: must be more than 0"),
    (["--timeout", "-1"], "argument --timeout: must be more than 0"),
    (["--step", "fast"], "argument --step: invalid choice"),
    (["--json", "{root}/no/such/out.json"], "give a file in an existing folder"),
])
def test_imagenet_scale_refuses_bad_input_before_making_a_tree(tmp_path, capsys, extra, fragment):
    root = tmp_path / "root"
    argv = ["--root", str(root), "--classes", "4", "--images", "8", "--device", "cpu",
            *(a.format(root=tmp_path) for a in extra)]
    refused(capsys, lambda: scale.main(argv), fragment)
    assert list(tmp_path.iterdir()) == []  # no tree, no prepared folder, no record


def test_imagenet_scale_refuses_a_root_that_is_a_file(tmp_path, capsys):
    root = tmp_path / "root"
    root.write_bytes(b"mine")
    refused(capsys, lambda: scale.main(["--root", str(root)]), f"--root {root} is a file")
    assert root.read_bytes() == b"mine"


def test_a_worker_count_that_times_out_is_a_failed_row(tmp_path):
    """One slow count must not end the run (and lose the counts measured before it):
    throughput.py is killed at --timeout and the row says so."""
    args = scale.parse_args(["--root", str(tmp_path), "--timeout", "0.01", "--device", "cpu"])
    row = scale.measure(tmp_path / "prepared", 3, args)
    assert row == {"num_workers": 3, "failed": "timed out after 0.01 s"}


def test_the_record_is_written_after_each_worker_count(tmp_path, monkeypatch):
    """A window's outer timeout may kill the run in its third count: the record on disk then holds
    the two counts measured, summarized, not nothing."""
    made = {"classes": 4, "train_images": 8, "test_images": 4, "mean_file_kb": 1.0}
    folder = scale.tree_folder(tmp_path, 4, 8, 256.0, 500, 375, 90, 1)
    (folder / "prepared").mkdir(parents=True)
    (folder / "prepared" / "manifest.json").write_text("{}")
    (folder / "tree.json").write_text(json.dumps(made))
    speeds = {1: 100.0, 2: 190.0}

    def fake_measure(data, workers, args):  # the third count is where the window's timeout hits
        if workers not in speeds:
            raise KeyboardInterrupt
        return {"num_workers": workers, "samples_per_s": speeds[workers], "ceiling_samples_per_s": 400.0,
                "ratio": speeds[workers] / 400.0, "device": "cpu", "batch_size": 2, "arch": "a"}

    monkeypatch.setattr(scale, "measure", fake_measure)
    out = tmp_path / "imagenet.json"
    with pytest.raises(KeyboardInterrupt):
        scale.main(["--root", str(tmp_path), "--classes", "4", "--images", "8", "--workers", "1,2,3",
                    "--json", str(out)])
    record = json.loads(out.read_text())
    assert [r["num_workers"] for r in record["per_workers"]] == [1, 2]
    assert (record["best_workers"], record["best_samples_per_s"]) == (2, 190.0)
    assert record["tree"] == made


@pytest.mark.parametrize("argv,fragment", [
    (["--synthetic", "--steps", "0"], "argument --steps: must be more than 0"),
    (["--synthetic", "--rounds", "0"], "argument --rounds: must be more than 0"),
    (["--synthetic", "--warmup", "-1"], "argument --warmup: must be 0 or more"),
    (["--synthetic", "--batch-size", "0"], "argument --batch-size: must be more than 0"),
    (["--synthetic", "--profile-steps", "0"], "argument --profile-steps: must be more than 0"),
    (["--data", "{missing}", "--steps", "1"], "prepared data folder not found"),
])
def test_throughput_refuses_bad_input(tmp_path, capsys, argv, fragment):
    throughput = load_benchmark("throughput")
    argv = [a.format(missing=tmp_path / "missing") for a in argv]
    refused(capsys, lambda: argtypes.run(lambda: throughput.main(argv)), fragment)


@pytest.mark.parametrize("argv,fragment", [
    (["--synthetic", "--steps", "0"], "argument --steps: must be more than 0"),
    (["--synthetic", "--batch-size", "-2"], "argument --batch-size: must be more than 0"),
    (["--data", "{missing}"], "prepared data folder not found"),
])
def test_step_equality_refuses_bad_input(tmp_path, capsys, argv, fragment):
    equality = load_benchmark("step_equality")
    argv = [a.format(missing=tmp_path / "missing") for a in argv]
    refused(capsys, lambda: argtypes.run(lambda: equality.main(argv)), fragment)


@pytest.mark.parametrize("argv,fragment", [
    (["--seeds", "0"], "argument --seeds: must be more than 0"),
    (["--images", "-5"], "argument --images: must be more than 0"),
    (["--data", "{missing}"], "no train.safetensors there"),
])
def test_autoaugment_strength_refuses_bad_input(tmp_path, capsys, argv, fragment):
    strength = load_benchmark("autoaugment_strength")
    argv = [a.format(missing=tmp_path / "missing") for a in argv]
    refused(capsys, lambda: strength.main(argv), fragment)
