"""benchmarks/reproduce.py (the reproduction table's runner) and benchmarks/repro_table.py (the
table from the run folders), in the script's --tiny mode on synthetic data on the CPU."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import load_benchmark, one_error_line, tree

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


reproduce = load_benchmark("reproduce")
table = load_benchmark("repro_table")  # the one reproduce.py imported from beside it
fidelity_curve = load_benchmark("fidelity_curve")
LOCK = reproduce.LOCK_NAME

ENV = dict(os.environ, OMP_NUM_THREADS="1")


def rows(folder: Path) -> list[dict]:
    path = folder / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def table_line(markdown: str, label: str) -> list[str]:
    """The cells of the table row whose first cell is `label`."""
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if cells[0] == label:
            return cells
    raise AssertionError(f"no row {label} in\n{markdown}")


def pct(fraction) -> str:
    return "-" if fraction is None else f"{100 * fraction:.2f}"


DOC = "# notes\n\nbefore\n{begin}\nold table\n{end}\nafter: kept\n"

STOP_HOOK = r"""
# Test-only (the production code has no test hooks; on the first call's PYTHONPATH alone): in
# r10's trainer, when step 0 of its second epoch is planned, SIGTERM the script (this trainer's
# parent) and wait until the stop it forwards has reached this process, so the stop lands
# mid-epoch whatever the machine's speed.
import os, signal, sys, time

if os.environ.get("CCM_TEST_STOP_SCRIPT_IN") and any(
        arg.endswith(os.sep + os.environ["CCM_TEST_STOP_SCRIPT_IN"]) for arg in sys.argv):
    from concutmix_cli.data.sampling import EpochPlanner
    from concutmix_cli.progress import TrainView

    received, real_on_signal, real_plan = [], TrainView._on_signal, EpochPlanner.plan

    def on_signal(self, signum, frame):
        received.append(signum)
        real_on_signal(self, signum, frame)

    def plan(self, epoch, step):
        if (epoch, step) == (1, 0) and not received:
            os.kill(os.getppid(), signal.SIGTERM)
            give_up = time.monotonic() + 600  # a guard against a hang, not a timing check
            while not received and time.monotonic() < give_up:
                time.sleep(0.01)
        return real_plan(self, epoch, step)

    TrainView._on_signal, EpochPlanner.plan = on_signal, plan
"""


@pytest.fixture(scope="module")
def calls(tmp_path_factory):
    """Call 1 trains r01, is stopped (SIGTERM to the script, sent by r10's trainer in step 0 of its
    second epoch: STOP_HOOK) while r10 is mid-epoch; call 2 completes r10 without touching r01
    and writes the table into a document."""
    root = tmp_path_factory.mktemp("reproduce")
    out, data, hook = root / "out", root / "data", root / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(STOP_HOOK)
    args = [sys.executable, str(BENCH / "reproduce.py"), "--tiny", "--only", "r10,r01",
            "--out", str(out), "--data-root", str(data)]
    stop_env = dict(ENV, CCM_TEST_STOP_SCRIPT_IN="r10", PYTHONPATH=os.pathsep.join(
        filter(None, [str(hook), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(args, capture_output=True, text=True, env=stop_env, timeout=900)
    first = {"rc": proc.returncode, "out": proc.stdout, "err": proc.stderr, "r01": tree(out / "r01"),
             "r10": tree(out / "r10"), "r10_rows": rows(out / "r10"),
             "table": (out / "table.md").read_text()}
    assert reproduce.main(["--table-only", *args[2:], "--archive", str(root / "arch1")]) == 0
    doc = root / "doc.md"
    doc.write_text(DOC.format(begin=table.BEGIN, end=table.END))
    second = subprocess.run([*args, "--doc", str(doc), "--json", str(root / "t.json"),
                             "--archive", str(root / "arch2")],
                            capture_output=True, text=True, env=ENV, timeout=900)
    return {"out": out, "data": data, "first": first, "second": second, "doc": doc, "root": root,
            "json": json.loads((root / "t.json").read_text())}


def test_a_stopped_call_keeps_finished_runs_and_leaves_the_rest_resumable(calls):
    first = calls["first"]
    assert first["rc"] == reproduce.EXIT_LEFT, first["err"]
    assert "r01: finished (2/2 epochs)" in first["err"]
    assert "stop signal: asking 1 trainer(s) to checkpoint and stop" in first["err"]
    assert "r10: stopped at 1/2 epochs; the next call resumes it" in first["err"]
    assert "left for the next call: r10" in first["err"]
    assert [r["epoch"] for r in first["r10_rows"]] == [1]
    assert table_line(first["table"], "r10")[5] == "1 / 2 **unfinished**"
    assert table_line(first["table"], "r01")[5] == "2 / 2"


def test_the_next_call_resumes_and_does_not_redo_finished_runs(calls):
    second, out = calls["second"], calls["out"]
    assert second.returncode == reproduce.EXIT_DONE, second.stderr
    assert "r01: finished earlier (2/2 epochs), skipped" in second.stderr
    assert "r10: resumed at epoch 2" in second.stderr
    assert tree(out / "r01") == calls["first"]["r01"]  # not a byte of r01 changed
    assert [r["epoch"] for r in rows(out / "r10")] == [1, 2]
    assert rows(out / "r10")[0] == calls["first"]["r10_rows"][0]
    log = (out / "logs" / "r10.log").read_text()
    assert log.count("\n== ") == 2 and "--resume" in log and "resuming" in log
    assert "at epoch 2, step 1\n" in log  # from the mid-epoch checkpoint STOP_HOOK's stop left
    sessions = json.loads((out / "r10" / table.SIDECAR).read_text())["sessions"]
    assert [(s["epochs_before"], s["epochs_after"]) for s in sessions] == [(0, 1), (1, 2)]
    assert sessions[0]["exit"] != 0 and sessions[1]["exit"] == 0
    assert {s["card"] for s in sessions} == {"CPU"}


@pytest.mark.parametrize("run_id", ["r01", "r10"])
def test_the_table_holds_the_numbers_of_the_runs_metrics(calls, run_id):
    metrics = rows(calls["out"] / run_id)
    last = metrics[-1]
    tops = [100 * r["test_top1"] for r in metrics]
    best = max(tops)
    markdown = (calls["out"] / "table.md").read_text()
    cells = table_line(markdown, run_id)
    assert cells[3:6] == ["10", "0", "2 / 2"]  # subset seed, training seed, epochs
    assert cells[6] == f"**{pct(last['test_top1'])}**"
    assert cells[7:10] == [pct(last["test_many"]), pct(last["test_medium"]), pct(last["test_few"])]
    assert cells[10] == f"{best:.2f} (epoch {tops.index(best) + 1})"
    assert cells[13] == "CPU"
    sidecar = json.loads((calls["out"] / run_id / table.SIDECAR).read_text())
    wall = sum(s["wall_s"] for s in sidecar["sessions"])
    assert cells[12] == (f"{wall:.0f} s" if wall < 120 else f"{wall / 60:.1f} min")
    entry = next(r for r in calls["json"]["runs"] if r["id"] == run_id)
    assert entry["last"]["top1"] == pytest.approx(100 * last["test_top1"])
    assert entry["best_top1"] == pytest.approx(best) and entry["finished"] is True
    omega = {"r01": "20/255 (published)", "r10": "0"}[run_id]
    assert table_line(markdown, omega)[7] == (
        "-" if last["rect_weight"] is None else f"{last['rect_weight']:.2e}")
    assert "NOT a result" in markdown


def test_the_table_goes_between_the_markers_and_nothing_else_changes(calls):
    text = calls["doc"].read_text()
    before, rest = text.split(table.BEGIN)
    inside, after = rest.split(table.END)
    assert before == "# notes\n\nbefore\n" and after == "\nafter: kept\n"
    assert inside.strip() == (calls["out"] / "table.md").read_text().strip()
    assert "old table" not in text


def _without_lock(files: dict[str, bytes]) -> dict[str, bytes]:
    return {name: data for name, data in files.items() if LOCK not in name}


def test_run_archives_carry_the_runs_to_another_machine(calls, capsys, tmp_path):
    """--archive on one machine, --restore on the next: finished runs come without their
    resume state, unfinished ones whole; a restore never replaces a later state by an earlier."""
    root, out2 = calls["root"], tmp_path / "out2"
    common = ["--tiny", "--only", "r01,r10", "--out", str(out2), "--data-root", str(calls["data"])]
    assert reproduce.main(["--table-only", *common, "--restore", str(root / "arch1")]) == 0
    # unfinished r10 comes with what it resumes from: its newest (mid-epoch) checkpoint and an
    # index listing it alone; the end-of-epoch checkpoint kept beside it stays behind
    original = _without_lock(calls["first"]["r10"])
    index = json.loads(original.pop("checkpoints.json"))
    assert len(index["checkpoints"]) == 2 and index["checkpoints"][-1]["step"] > 0
    newest = index["checkpoints"][-1]
    restored = _without_lock(tree(out2 / "r10"))
    assert json.loads(restored.pop("checkpoints.json")) == {"checkpoints": [newest],
                                                            "files": index["files"]}
    assert restored == {name: data for name, data in original.items()
                        if not name.startswith("checkpoints/")
                        or name in (newest["weights"], newest["state"])}
    finished = _without_lock(calls["first"]["r01"])
    assert _without_lock(tree(out2 / "r01")) == {
        name: data for name, data in finished.items() if not name.startswith("checkpoints/")}
    assert not (out2 / "r01" / "checkpoints").exists() and (out2 / "r01" / "last.safetensors").is_file()
    capsys.readouterr()
    assert reproduce.main(["--dry-run", *common]) == 0
    heads = [line for line in capsys.readouterr().out.splitlines() if line.startswith("r")]
    assert heads[0].endswith("[finished (2/2)]") and heads[1].endswith("[resume at epoch 2/2]")
    assert reproduce.main(["--table-only", *common, "--restore", str(root / "arch2")]) == 0
    err = capsys.readouterr().err
    assert "r10: restored from" in err and "r01: " in err and "archive 2: kept" in err
    assert [r["epoch"] for r in rows(out2 / "r10")] == [1, 2]
    later = tree(out2 / "r10")
    assert reproduce.main(["--table-only", *common, "--restore", str(root / "arch1")]) == 0
    assert "r10: " in capsys.readouterr().err and tree(out2 / "r10") == later
    assert sorted(p.name for p in out2.iterdir()) == ["r01", "r10", "table.json", "table.md"]


def test_an_unfinished_runs_archive_holds_its_weights_once(calls):
    """arch1's r10 is unfinished: last.safetensors travels as a hard link to the identical
    checkpoint weights (a third less to carry to a device machine); the restore above gave
    the same bytes back."""
    with tarfile.open(calls["root"] / "arch1" / "r10.tgz") as tar:
        last = tar.getmember("r10/last.safetensors")
        assert last.islnk() and last.linkname.startswith("r10/checkpoints/epoch-")
        target = tar.extractfile(last.linkname).read()
    assert target == calls["first"]["r10"]["last.safetensors"]
    with tarfile.open(calls["root"] / "arch2" / "r01.tgz") as tar:  # finished: no checkpoints
        assert tar.getmember("r01/last.safetensors").isfile()


def test_the_step_mode_is_a_machine_setting_not_another_run(calls, tmp_path):
    """--step sets runtime.step for new and resumed trainers; a run folder whose config differs
    from the plan only there is the same run (resumed, not refused)."""
    run = next(r for r in reproduce.PLAN if r.id == "r01")
    planned = reproduce.plan_state(run, tmp_path / "empty", calls["data"], True)
    new = reproduce.train_command(planned, "graphed")
    assert new[new.index("--out") - 2:new.index("--out")] == ["--set", 'runtime.step="graphed"']
    assert "runtime.step" not in " ".join(reproduce.train_command(planned))
    planned.state = "resume"
    assert reproduce.train_command(planned, "sync_free")[-2:] == ["--set", 'runtime.step="sync_free"']
    out = tmp_path / "out"
    shutil.copytree(calls["out"] / "r01", out / "r01")
    config = json.loads((out / "r01" / "config.json").read_text())
    config["runtime"]["step"] = "sync_free"
    (out / "r01" / "config.json").write_text(json.dumps(config))
    assert reproduce.plan_state(run, out, calls["data"], True).state == "finished"
    config["optim"]["lr"] = 0.5
    (out / "r01" / "config.json").write_text(json.dumps(config))
    with pytest.raises(reproduce.UserError, match="other settings"):
        reproduce.plan_state(run, out, calls["data"], True)


def test_dry_run_lists_the_plan_in_order_with_each_runs_state(calls, capsys, tmp_path):
    assert reproduce.main(["--dry-run", "--tiny", "--only", "r10,r03,r01", "--out", str(calls["out"]),
                           "--data-root", str(calls["data"])]) == 0
    lines = capsys.readouterr().out.splitlines()
    heads = [line for line in lines if line.startswith("r")]
    assert [h.split()[0] for h in heads] == ["r01", "r03", "r10"]
    assert heads[0].endswith("[finished (2/2)]") and heads[1].endswith("[new]")
    assert heads[2].endswith("[finished (2/2)]")
    assert not (calls["out"] / "r03").exists()


def test_dry_run_of_the_whole_plan_follows_the_issues_order(capsys, tmp_path):
    assert reproduce.main(["--dry-run", "--out", str(tmp_path / "o"), "--data-root", str(tmp_path)]) == 0
    heads = [line for line in capsys.readouterr().out.splitlines() if line.startswith("r")]
    assert [h.split()[0] for h in heads] == [f"r{i:02d}" for i in range(1, 12)]
    assert "IF 100, concutmix, subset seed 10, training seed 0" in heads[0]
    assert "IF 100, concutmix, subset seed 0, training seed 0" in heads[1]
    assert ", ce, " in heads[2] and ", bcl, " in heads[3]
    assert "omega = 0," in heads[9] and "omega = 1.0," in heads[10]
    assert not (tmp_path / "o").exists()  # a dry run writes nothing


def test_a_call_without_time_to_start_a_run_starts_none(capsys, tmp_path):
    code = reproduce.main(["--tiny", "--only", "r01", "--out", str(tmp_path / "o"), "--data-root",
                           str(tmp_path / "d"), "--time-budget", "3", "--stop-grace", "1",
                           "--min-start", "60"])
    assert code == reproduce.EXIT_LEFT
    assert "left for the next call: r01" in capsys.readouterr().err
    assert not (tmp_path / "o" / "r01").exists() and not (tmp_path / "d").exists()


@pytest.mark.parametrize("argv, fragment", [
    (["--parallel", "0"], "--parallel: must be more than 0 (got 0)"),
    (["--time-budget", "-5"], "--time-budget: must be more than 0"),
    (["--time-budget", "nan"], "--time-budget: must be more than 0"),
    (["--parallel", "two"], "must be a number"),
    (["--only", "r01,r99"], "--only: unknown run r99"),
    (["--mps", "maybe"], "--mps"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--time-budget", "20", "--stop-grace", "30"], "must exceed --stop-grace 30"),
    (["--cifar10-source", "nowhere.npz"], "--cifar10-source nowhere.npz: no such file"),
    (["--dry-run", "--table-only"], "exclude each other"),
])
def test_bad_arguments_are_one_line_and_exit_2(capsys, argv, fragment):
    assert reproduce.main([*argv, "--dry-run"] if "--dry-run" not in argv else argv) == 2
    one_error_line(capsys.readouterr().err, fragment)


def test_a_document_without_markers_is_refused_unchanged(capsys, tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("no markers here\n")
    assert reproduce.main(["--table-only", "--out", str(tmp_path / "o"), "--doc", str(doc)]) == 2
    one_error_line(capsys.readouterr().err, "needs exactly one")
    assert doc.read_text() == "no markers here\n"


def test_a_folder_holding_another_run_is_refused(capsys, tmp_path):
    folder = tmp_path / "o" / "r01"
    folder.mkdir(parents=True)
    cfg, _ = reproduce.expected_config(reproduce.PLAN[0], tmp_path / "d", tiny=True)
    cfg.runtime.seed = 5
    (folder / "config.json").write_text(cfg.to_json())
    assert reproduce.main(["--dry-run", "--tiny", "--only", "r01", "--out", str(tmp_path / "o")]) == 2
    one_error_line(capsys.readouterr().err, "holds a run with other settings",
                   "runtime.seed: 5 -> 0")


def test_the_script_itself_exits_2_with_one_line():
    done = subprocess.run([sys.executable, str(BENCH / "reproduce.py"), "--parallel", "-1"],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    one_error_line(done.stderr, "--parallel")


def _summary(folder: str, top1: float, done: int = 200, seed: int = 0) -> table.RunSummary:
    return table.RunSummary(
        folder=folder, method="concutmix", dataset="cifar100-lt", imbalance=100, subset_seed=10,
        train_seed=seed, omega=None, epochs_done=done, epochs_budget=200,
        last={"top1": top1, "many": top1 + 10, "medium": top1, "few": top1 - 10},
        best_top1=top1, best_epoch=done, rect_weight=None, wall_s=600.0, card="X", tiny=False)


def test_mean_and_std_are_over_the_finished_seeds_only():
    members = [_summary("a", 52.0), _summary("b", 53.5, seed=1), _summary("c", 40.0, 100, seed=2),
               None]
    text, data = table.group_row("g", members)
    assert data["n"] == 2 and data["runs"] == ["a", "b"]
    assert data["top1"]["mean"] == pytest.approx((52.0 + 53.5) / 2)
    assert data["top1"]["std"] == pytest.approx(((52.0 - 52.75) ** 2 + (53.5 - 52.75) ** 2) ** 0.5)
    assert f"**52.75 +- {statistics.stdev([52.0, 53.5]):.2f}**" in text
    assert "2 of 4 runs finished" in text
    _, alone = table.group_row("g", members[:1])
    assert alone["top1"] is None  # one seed has no spread


def test_a_running_best_is_placed_against_the_authors_logs():
    ref = reproduce.REFERENCES["r01"]
    assert "inside the authors' logs" in table.run_row("r", "s", _summary("a", 53.155), ref)
    assert "0.65 below the authors' logs" in table.run_row("r", "s", _summary("a", 52.5), ref)
    assert "0.84 above the authors' logs" in table.run_row("r", "s", _summary("a", 54.0), ref)
    unfinished = table.run_row("r", "s", _summary("a", 30.0, done=120), ref)
    assert "120 / 200 **unfinished**" in unfinished and "logs" not in unfinished.split("|")[11]


def test_the_reference_numbers_are_the_final_running_best_of_the_authors_logs():
    logs = fidelity_curve.LOGS
    if not logs.is_dir():
        pytest.skip(f"{logs} not available")
    for ref in reproduce.REFERENCES.values():
        for name, value in ref.logs.items():
            assert fidelity_curve.log_running_best(logs / name, 200)[-1] == value, name
