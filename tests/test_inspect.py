"""`concutmix inspect-labels` (issue 4): the dump, the rectification it records, the outputs, errors.

One tiny synthetic dataset and a 2-step trained run are made once for the module (a few seconds);
every test reuses them.
"""

from __future__ import annotations

import csv
import json
import sys

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from concutmix_cli import __version__, cli
from concutmix_cli.inspect import draw_mixed_samples, inspect_labels

NUM = 6
TENSOR_SHAPES = {  # name -> (shape with N, C, D symbols, dtype)
    "images": (("N", 3, 32, 32), torch.float32),
    "class_a": (("N",), torch.int64),
    "class_b": (("N",), torch.int64),
    "lam": (("N",), torch.float32),
    "area_labels": (("N", "C"), torch.float32),
    "features": (("N", "D"), torch.float32),
    "prototypes": (("C", "D"), torch.float32),
    "class_counts": (("C",), torch.float32),
    "semantic_labels": (("N", "C"), torch.float32),
    "rho": (("N",), torch.float32),
    "rectified_labels": (("N", "C"), torch.float32),
    "probs": (("N", "C"), torch.float32),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these tiny batches run several times faster than with a thread pool
    competing for shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_thread):
    from concutmix_cli.data.prepare import prepare
    from concutmix_cli.engine.train import TrainRequest, run_training

    tmp = tmp_path_factory.mktemp("inspect")
    # IF 10 from 120 images: counts 120 .. 12, so there are many-, medium- and few-shot classes.
    prepare("synthetic-lt", out=tmp / "data", n_max=120, imbalance=10)
    run_training(TrainRequest(preset="smoke", out=tmp / "run", overrides=[
        f'data.path="{tmp / "data"}"', "optim.epochs=1", "optim.batch_size=16",
        "runtime.max_steps_per_epoch=2", "method.rectify_after_epoch=-1",
        "data.eval_batch_size=500",
    ]))
    prepare("synthetic-lt", out=tmp / "data5", classes=5, n_max=20, imbalance=10)
    (tmp / "untrained").mkdir()
    (tmp / "untrained" / "config.json").write_text("{}")
    return tmp


@pytest.fixture(scope="module")
def loaded(setup):
    from concutmix_cli.data.prepared import load_prepared
    from concutmix_cli.engine.evaluate import load_trained_model

    model, cfg, meta = load_trained_model(setup / "run" / "last.safetensors", torch.device("cpu"))
    return model, cfg, load_prepared(setup / "data")


def run_cli(args, capsys, monkeypatch):
    """`concutmix ARGS` in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["concutmix", *map(str, args)])
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr(cli.console, "width", 200)  # the console may have fixed its width already
    code = 0
    try:
        cli.main()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def reference_rectification(area, features, prototypes, counts, omega, top_k, kept=None):
    """docs/method-notes.md section 6 written out plainly (float64), independent of concutmix_cli.rectify.

    `kept` [N, C] bool: the top-k set to use when distances tie to within float32 precision (an
    undertrained model puts prototypes nearly equidistant, and float32 vs float64 may then break
    the tie differently); it is checked to be a valid top-k set of the float64 similarities.
    """
    f, p = features.double(), prototypes.double()
    dist = ((f[:, None, :] - p[None, :, :]) ** 2).sum(-1).sqrt()
    s = 1.0 / dist
    if kept is None:
        kept = torch.zeros_like(s, dtype=torch.bool)
        kept.scatter_(1, s.topk(top_k, dim=1).indices, True)
    else:
        assert (kept.sum(dim=1) == top_k).all()
        lowest_kept = torch.where(kept, s, torch.full_like(s, float("inf"))).min(dim=1).values
        highest_dropped = torch.where(kept, torch.full_like(s, -float("inf")), s).max(dim=1).values
        assert (lowest_kept >= highest_dropped * (1 - 1e-6)).all()
    s = torch.where(kept, s, torch.zeros_like(s))
    semantic = s / s.sum(dim=1, keepdim=True)
    n = counts.double()
    rho = torch.log((area.double() * n).sum(dim=1)) / torch.log(n).sum()
    w = (omega * rho).clamp(max=1.0)[:, None]
    return semantic, rho, (1 - w) * area.double() + w * semantic


def test_cli_dump_png_csv(setup, capsys, monkeypatch):
    out, png, table = setup / "dump.safetensors", setup / "grid.png", setup / "rows.csv"
    code, stdout, stderr = run_cli(
        ["inspect-labels", setup / "run", "--num", NUM, "--seed", 3, "--out", out,
         "--image", png, "--csv", table], capsys, monkeypatch)
    assert code == 0, stderr
    assert "omega*rho" in stdout and "head (many)" in stdout and "tail (few)" in stdout

    with safe_open(str(out), framework="pt") as handle:
        meta = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    c = len(json.loads(meta["classes"]))
    d = tensors["features"].shape[1]
    sizes = {"N": NUM, "C": c, "D": d}
    for name, (shape, dtype) in TENSOR_SHAPES.items():
        assert name in tensors, name
        assert tuple(tensors[name].shape) == tuple(sizes.get(s, s) for s in shape), name
        assert tensors[name].dtype == dtype, name
    assert c == 10 and d == 128
    assert float(meta["omega"]) == pytest.approx(20 / 255) and int(meta["top_k"]) == 3
    assert json.loads(meta["epoch"]) == 1
    assert meta["source"].endswith("last.safetensors") and meta["toolkit_version"] == __version__

    images = tensors["images"]
    assert images.min() >= 0 and images.max() <= 1
    lam, a, b = tensors["lam"], tensors["class_a"], tensors["class_b"]
    rows = torch.arange(NUM)
    area = tensors["area_labels"]
    assert torch.allclose(area.sum(1), torch.ones(NUM))
    assert torch.allclose(area[rows, a], torch.where(a == b, torch.ones(NUM), lam))
    assert torch.allclose(tensors["probs"].sum(1), torch.ones(NUM), atol=1e-5)
    manifest = json.loads((setup / "data" / "manifest.json").read_text())
    assert tensors["class_counts"].tolist() == [float(n) for n in manifest["train_counts"]]

    semantic, rho, rectified = reference_rectification(
        area, tensors["features"], tensors["prototypes"], tensors["class_counts"],
        float(meta["omega"]), int(meta["top_k"]), kept=tensors["semantic_labels"] > 0)
    assert torch.allclose(tensors["rectified_labels"].double(), rectified, atol=1e-6, rtol=0)
    assert torch.allclose(tensors["semantic_labels"].double(), semantic, atol=1e-6, rtol=0)
    assert torch.allclose(tensors["rho"].double(), rho, atol=1e-6, rtol=0)

    with Image.open(png) as grid:
        grid.load()
        info = grid.text
        width, height = grid.size
    assert int(info["tiles"]) == NUM
    cols, pad = int(info["columns"]), int(info["padding"])
    tile_w, tile_h = int(info["tile_width"]), int(info["tile_height"])
    grid_rows = -(-NUM // cols)
    assert (width, height) == (cols * (tile_w + pad) + pad, grid_rows * (tile_h + pad) + pad)
    assert cols * grid_rows >= NUM > cols * (grid_rows - 1)

    with open(table, newline="") as handle:
        csv_rows = list(csv.DictReader(handle))
    assert len(csv_rows) == NUM
    classes = json.loads(meta["classes"])
    assert [r["class_a"] for r in csv_rows] == [classes[i] for i in a.tolist()]
    assert float(csv_rows[0]["rect_a"]) == pytest.approx(float(tensors["rectified_labels"][0, a[0]]))


def test_json_summary(setup, capsys, monkeypatch):
    code, stdout, stderr = run_cli(
        ["inspect-labels", setup / "run", "--num", 12, "--omega", 0.5, "--top-k", 2, "--json"],
        capsys, monkeypatch)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["num"] == 12 and summary["omega"] == 0.5 and summary["top_k"] == 2
    assert summary["epoch"] == 1
    assert sum(summary[g]["n"] for g in ("many", "medium", "few")) == 12
    overall = summary["all"]
    fractions = (overall["semantic_top1_a"], overall["semantic_top1_b"],
                 overall["semantic_top1_neither"])
    assert sum(fractions) == pytest.approx(1.0)
    assert 0 < overall["omega_rho_mean"] <= overall["omega_rho_max"] <= 1
    assert overall["l1_mean"] > 0


def test_omega_zero_and_stronger(loaded):
    model, cfg, data = loaded
    model.train()
    rng_before = torch.random.get_rng_state()
    runs = {omega: inspect_labels(model, data, 10, seed=7, omega=omega, top_k=3, device="cpu")
            for omega in (0.0, 0.5, 2.0)}
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the global RNG is untouched
    assert model.training  # the model's mode is restored (it loads in train mode)
    zero, mid, strong = runs[0.0], runs[0.5], runs[2.0]
    assert torch.equal(zero.images, strong.images) and torch.equal(zero.lam, strong.lam)
    assert torch.equal(zero.rectified_labels, zero.area_labels)
    assert torch.equal(zero.semantic_labels, strong.semantic_labels)

    def gap(r):  # L1 distance of the rectified label to the semantic label, per sample
        return (r.rectified_labels - r.semantic_labels).abs().sum(dim=1)

    assert (strong.weight > mid.weight).all() and (strong.weight < 1).all()
    assert (gap(strong) < gap(mid)).all() and (gap(mid) < gap(zero)).all()
    assert torch.allclose(gap(strong), (1 - strong.weight) * gap(zero), atol=1e-5)


def test_draws_reproducible_and_varied(loaded):
    _, _, data = loaded
    first = draw_mixed_samples(data, 16, seed=1)
    again = draw_mixed_samples(data, 16, seed=1)
    other = draw_mixed_samples(data, 16, seed=2)
    assert torch.equal(first.images, again.images) and torch.equal(first.lam, again.lam)
    assert not torch.equal(first.index_a, other.index_a)
    assert torch.equal(first.class_a, torch.from_numpy(data.train.labels)[first.index_a])
    # as training: one box for a batch (16 samples < the default batch of 128), then one per
    # batch of 4, and one per sample only when asked for
    assert len({tuple(b) for b in first.boxes.tolist()}) == 1
    in_fours = draw_mixed_samples(data, 16, seed=1, batch_size=4)
    assert [len({tuple(b) for b in in_fours.boxes[i:i + 4].tolist()}) for i in range(0, 16, 4)] == [1] * 4
    assert len({tuple(b) for b in in_fours.boxes.tolist()}) > 1
    each = draw_mixed_samples(data, 16, seed=1, per_sample_boxes=True)
    assert len({tuple(b) for b in each.boxes.tolist()}) > 8 and len(set(each.lam.tolist())) > 8
    assert torch.equal(each.index_b, first.index_b)  # the same images, only the mix differs


def test_inspect_draws_its_mix_with_trainings_cutmix(loaded):
    """inspect-labels' boxes are `CutMix.decide` on the inspection's stream, the very draw the
    training planner makes on its own stream: one code path."""
    import numpy as np

    from concutmix_cli.data.sampling import counter_rng
    from concutmix_cli.inspect import _INSPECT_STREAM, _LAMBDA
    from concutmix_cli.mixing import CutMix

    _, _, data = loaded
    got = draw_mixed_samples(data, 10, seed=3, cutmix_beta=0.7, batch_size=4)
    rng = counter_rng(3, _INSPECT_STREAM, _LAMBDA)
    cutmix = CutMix(1.0, 0.7, "balanced", data.view_side("cifar"))
    want = [cutmix.decide(rng).box for _ in range(3)]
    expected = torch.stack([want[0]] * 4 + [want[1]] * 4 + [want[2]] * 2)
    assert torch.equal(got.boxes, expected)
    _, lam = CutMix.apply(torch.zeros(10, 1, 32, 32), torch.ones(10, 1, 32, 32), expected)
    assert torch.equal(got.lam, lam)
    assert np.isclose(float(lam[0]), 1 - float(((want[0][1] - want[0][0]) * (want[0][3] - want[0][2]))) / 1024)


@pytest.mark.parametrize("case", ["num", "untrained", "classes", "top_k", "omega"])
def test_errors_one_line_exit_2(setup, capsys, monkeypatch, case):
    args = {
        "num": [setup / "run", "--num", 0],
        "untrained": [setup / "untrained"],
        "classes": [setup / "run", "--data", setup / "data5"],
        "top_k": [setup / "run", "--top-k", 11],
        "omega": [setup / "run", "--omega", -1],
    }[case]
    code, stdout, stderr = run_cli(["inspect-labels", *args], capsys, monkeypatch)
    assert code == 2
    assert stderr.startswith("error:") and stderr.strip().count("\n") == 0, stderr
    assert "Traceback" not in stderr
    expected = {"num": "--num", "untrained": "no trained model", "classes": "classes",
                "top_k": "--top-k", "omega": "--omega"}[case]
    assert expected in stderr


def test_train_mode_prototypes_leave_model_untouched(loaded):
    import copy

    model, _, data = loaded
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = inspect_labels(model, data, 2, seed=0, omega=0.1, top_k=3, train_mode_prototypes=True)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    expected = copy.deepcopy(model).train().prototypes().detach()
    assert torch.allclose(result.prototypes, expected, atol=1e-6)
