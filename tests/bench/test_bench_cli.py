"""`trainlab bench` end to end on two tiny workloads, its reports, and its one-line errors (exit 2)."""

import importlib.util
import json

import pytest
from bench_testing import register_tiny

from trainlab import cli

SUBS = ["--submission", "adamw optimizer.lr=1e-2 name=adamw", "--baseline", "sgd optimizer.lr=0.1 optimizer.momentum=0.9 name=sgdm"]


@pytest.fixture(autouse=True)
def tiny():
    register_tiny()


@pytest.mark.slow
def test_tiny_bench_end_to_end(tmp_path, capsys):
    out = tmp_path / "bench"
    assert cli.main(["bench", "tiny", *SUBS, "--seeds", "1", "--workers", "2", "--heldout", "--out", str(out),
                     "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "benchmark score" in printed and "sgdm" in printed and "adamw" in printed
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    base = [r for r in records if r["variant"] == "base"]
    assert len(base) == 4 and {r["workload"] for r in base} == {"tiny_parity", "tiny_teacher"}
    assert all(r["score"]["reached"] for r in base)  # tiny budgets, easy targets
    assert len([r for r in records if r["variant"] == "heldout"]) == 4  # every hit is gated by its variant
    board = (out / "leaderboard.md").read_text()
    assert "| rank | submission | benchmark score" in board and "## Time to target" in board
    assert "tiny_teacher (val_mse <= 0.1)" in board
    for name in ("performance_profile.png", "time_to_target.png"):
        assert (out / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "Leaderboard" in page
    info = json.loads((out / "bench.json").read_text())
    assert info["baseline"] == "sgdm" and info["targets"]["tiny_parity"]["target"] == 0.95 and info["clock"] == "cost"
    costs = json.loads((out / "step_costs.json").read_text())  # the default clock's step costs, side by side
    assert {w: sorted(per) for w, per in costs["workloads"].items()} == {
        "tiny_parity": ["adamw", "sgdm"], "tiny_teacher": ["adamw", "sgdm"]}
    assert "## Step costs" in board and "clock: step-cost seconds to target" in board

    (out / "leaderboard.md").unlink()
    assert cli.main(["bench", "report", str(out)]) == 0  # from the records and step costs alone
    assert (out / "leaderboard.md").read_text() == board
    assert cli.main(["bench", "report", str(out), "--clock", "steps"]) == 0  # rescored on another clock
    rescored = (out / "leaderboard.md").read_text()
    assert "clock: steps to target" in rescored and "## Step costs" not in rescored
    assert json.loads((out / "bench.json").read_text())["clock"] == "cost"  # the bench's own clock stays
    (out / "step_costs.json").unlink()
    assert cli.main(["bench", "report", str(out)]) == 2  # the cost clock without its costs: one line
    assert "has no step costs" in capsys.readouterr().err
    assert cli.main(["bench", "report", str(out), "--clock", "cost", "--quiet"]) == 0  # measures them again
    assert (out / "step_costs.json").is_file()
    assert cli.main(["bench", "tiny", *SUBS, "--seeds", "1", "--out", str(out), "--quiet"]) == 2  # would mix benches
    assert "already holds a bench" in capsys.readouterr().err
    # resuming a finished bench runs nothing (no trial is rerun, no worker starts)
    assert cli.main(["bench", "tiny", *SUBS, "--seeds", "1", "--workers", "0", "--heldout", "--out", str(out),
                     "--quiet", "--resume"]) == 0
    assert [json.loads(line)["score"] for line in (out / "results.jsonl").read_text().splitlines()] == \
        [r["score"] for r in records]


@pytest.mark.parametrize("args, message", [
    (["bench", "no_such_workload", "--submission", "adamw"], "unknown suite or workload"),
    (["bench", "tiny", "--submission", "adamw steps=3"], "not a submission key"),
    (["bench", "tiny", "--submission", "adamw optimizer.nonsense=1"], "optimizer.nonsense"),
    (["bench", "tiny", "--submission", "no_such_optimizer"], "unknown optimizer"),
    (["bench", "report", "/nonexistent/dir"], "expected one results directory"),
    (["bench", "set-targets", "--submission", "adamw"], "takes no submissions"),
    (["bench", "set-targets", "--clock", "wall"], "sets targets, not times to target"),
    (["bench", "tiny", "--seeds", "0"], "--seeds"),
    (["bench", "tiny", "--submission", "adamw", "--targets", "/no/such/targets.json"], "is not a file"),
    (["bench", "set-targets", "--targets", "t.json"], "reads no targets"),
    (["bench", "tiny", "--submission", "adamw", "--targets-file", "t.json"], "only `bench set-targets` writes"),
    (["bench", "tiny", "--submission", "adamw", "--heldout", "--no-heldout"], "contradict"),
    (["bench", "tiny", "--submission", "adamw", "--target-quantile", "median"], "set-targets"),
])
def test_mistakes_exit_2_with_one_line(args, message, tmp_path, capsys):
    assert cli.main([*args, "--out", str(tmp_path / "o")] if args[1] != "report" else args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_ray_backend_without_ray_is_one_line(tmp_path, capsys, monkeypatch):
    find_spec = importlib.util.find_spec  # Ray is installed for the tests: make it look absent
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else find_spec(name, *a))
    code = cli.main(["bench", "tiny", "--submission", "adamw", "--no-baseline", "--seeds", "1", "--backend", "ray",
                     "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'trainlab[ray]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    text = capsys.readouterr().out
    assert "trainlab bench set-targets" in text and "--submission my_algo.py" in text


def fake_target_setting(trials, out, **_):
    """Target-setting records without training: best 0.9 (parity) or 0.2 (teacher), 2 s each."""
    return [{**t.meta, "score": {"best": 0.9 if "parity" in t.meta["workload"] else 0.2, "train_time": 2.0,
                                 "status": "completed"}} for t in trials]


def test_set_targets_writes_under_out_then_a_bench_reads_them_with_targets(tmp_path, monkeypatch, capsys):
    from trainlab.bench import bench, suite, targets

    packaged = suite.TARGETS_FILE.read_bytes()
    monkeypatch.setattr(targets, "run_trials", fake_target_setting)
    out = tmp_path / "targets"
    assert cli.main(["bench", "set-targets", "tiny", "--seeds", "2", "--out", str(out), "--quiet"]) == 0
    assert f"targets written to {out / 'targets.json'}" in capsys.readouterr().out
    assert suite.TARGETS_FILE.read_bytes() == packaged  # the installed package is not written into
    written = json.loads((out / "targets.json").read_text())["workloads"]
    assert written["tiny_parity"]["target"] == 0.9 and written["tiny_teacher/heldout"]["target"] == 0.2
    assert set(json.loads(packaged)["workloads"]) <= set(written)  # a new file starts from the packaged targets

    def stop(*args, **kwargs):
        raise RuntimeError("planned, not run")

    monkeypatch.setattr(bench, "run_trials", stop)
    results = tmp_path / "bench"
    with pytest.raises(RuntimeError, match="planned"):
        cli.main(["bench", "tiny", *SUBS, "--seeds", "1", "--out", str(results), "--targets",
                  str(out / "targets.json"), "--quiet"])
    info = json.loads((results / "bench.json").read_text())  # written before the trials run
    assert info["targets"]["tiny_parity"]["target"] == 0.9  # not the workload's own 0.95
    assert info["targets"]["tiny_parity/heldout"]["time_budget"] == written["tiny_parity/heldout"]["time_budget"]
    assert info["targets_source"]["file"] == str(out / "targets.json")
