"""Tests for trainlab.report: reading run directories, plots, HTML pages.

Fake run directories are written by :func:`make_run` in the trainer's format: a grokking-like curve (train
accuracy rises early, validation accuracy late) with ``memorized`` / ``generalized`` events.
"""

from __future__ import annotations

import json
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

from trainlab.errors import RunDirError
from trainlab.report import load_run, plot_compare, plot_run, write_compare_report, write_run_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STEPS = 3000
EVAL_EVERY = 100
THRESHOLD = 0.99


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def make_run(
    root: Path,
    name: str = "grok-adamw",
    *,
    summary: bool = True,
    metric: str = "acc",
    train_mid: float = 400.0,
    val_mid: float = 2000.0,
    lr: float = 1e-3,
    weight_decay: float = 1.0,
    extra_rows: list[dict] | None = None,
    truncate: bool = False,
) -> Path:
    """Write a fake run directory ``root/name`` and return its path."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    config = {
        "name": name,
        "workload": {"name": "modular", "p": 97, "operation": "add", "train_fraction": 0.3},
        "model": {"name": "mlp", "width": 128, "depth": 2},
        "optimizer": {"name": "adamw", "lr": lr, "weight_decay": weight_decay, "betas": [0.9, 0.98]},
        "schedule": {"name": "constant", "warmup_steps": 10},
        "steps": STEPS,
        "seed": 0,
        "eval_every": EVAL_EVERY,
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    steps = np.arange(0, STEPS + 1, EVAL_EVERY)
    train_acc = 0.01 + 0.99 * _sigmoid((steps - train_mid) / 60.0)
    val_acc = 0.01 + 0.99 * _sigmoid((steps - val_mid) / 120.0)
    rows = []
    for i, step in enumerate(steps):
        row = {
            "step": int(step),
            "time": 0.01 * step,
            "wall": 0.012 * step + 0.5,
            "lr": lr,
            "train_loss": float(1e-4 - np.log(train_acc[i])),
            "val_loss": float(1e-4 - np.log(val_acc[i])),
            f"train_{metric}": float(train_acc[i]),
            f"val_{metric}": float(val_acc[i]),
            "grad_norm": 1.0 / (1.0 + step / 500.0),
        }
        if step >= 1000:
            row["weight_norm"] = 30.0 - step / 200.0  # a probe that starts late
        rows.append(row)
    rows += extra_rows or []
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if truncate:
        text += '{"step": 3100, "time": 31.0, "train_lo'
    (run_dir / "metrics.jsonl").write_text(text)

    def first(values: np.ndarray) -> int:
        return int(steps[np.argmax(values >= THRESHOLD)])

    memorized, generalized = first(train_acc), first(val_acc)
    events = [
        {"name": "memorized", "step": memorized, "time": 0.01 * memorized, "value": THRESHOLD, "metric": metric,
         "detail": f"train {metric} >= {THRESHOLD}"},
        {"name": "generalized", "step": generalized, "time": 0.01 * generalized, "value": THRESHOLD,
         "metric": metric, "detail": f"val {metric} >= {THRESHOLD}"},
    ]  # fmt: skip
    (run_dir / "events.json").write_text(json.dumps(events))
    if summary:
        data = {
            "name": name,
            "status": "completed",
            "workload": "modular",
            "metric": metric,
            "higher_is_better": True,
            "threshold": THRESHOLD,
            "steps": STEPS,
            "train_time": 0.01 * STEPS,
            "wall_time": 0.012 * STEPS + 0.5,
            "final": rows[-1],
            "events": {
                "memorized": memorized,
                "generalized": generalized,
                "grokking_delay_steps": generalized - memorized,
                "grokking_delay_seconds": 0.01 * (generalized - memorized),
            },
            "versions": {"trainlab": "0.1.0", "torch": "2.4.0", "python": "3.11"},
            "command": f"trainlab run modular --name {name}",
        }
        (run_dir / "summary.json").write_text(json.dumps(data))
    return run_dir


def event_steps(run_dir: Path) -> dict[str, int]:
    return {e["name"]: e["step"] for e in json.loads((run_dir / "events.json").read_text())}


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 5000, f"{path} is suspiciously small ({len(data)} bytes)"


def assert_self_contained(page: str, *, images: bool = True) -> None:
    if images:
        assert "data:image/png;base64," in page
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower()
    # Every src/href points at embedded data, never at a file or a server.
    for ref in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page):
        assert ref.startswith("data:"), ref


# ----------------------------------------------------------------------------------------------- runs


def test_load_run_parses_everything(tmp_path):
    run_dir = make_run(tmp_path)
    run = load_run(run_dir)
    assert run.name == "grok-adamw"
    assert run.path == run_dir
    assert run.metric == "acc"
    assert run.has_summary and run.status == "completed" and run.threshold == THRESHOLD
    assert run.config["workload"]["p"] == 97 and run.config["optimizer"]["lr"] == 1e-3
    n = STEPS // EVAL_EVERY + 1
    assert run.steps.dtype.kind == "i" and run.steps[0] == 0 and run.steps[-1] == STEPS
    for column in ("time", "wall", "lr", "train_loss", "val_loss", "train_acc", "val_acc", "grad_norm"):
        assert run.metrics[column].shape == (n,), column
        assert np.isfinite(run.metrics[column]).all(), column
    # A key that only later rows carry is NaN before it appears.
    weight_norm = run.metrics["weight_norm"]
    assert np.isnan(weight_norm[run.steps < 1000]).all() and np.isfinite(weight_norm[run.steps >= 1000]).all()
    assert [e["name"] for e in run.events] == ["memorized", "generalized"]
    assert run.summary["events"]["generalized"] == event_steps(run_dir)["generalized"]


def test_truncated_last_line_is_skipped(tmp_path):
    run_dir = make_run(tmp_path, truncate=True)
    with pytest.warns(UserWarning, match="unparsable last line"):
        run = load_run(run_dir)
    assert run.steps[-1] == STEPS and len(run.steps) == STEPS // EVAL_EVERY + 1


def test_corrupt_middle_line_is_an_error(tmp_path):
    run_dir = make_run(tmp_path)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    lines[3] = lines[3][:20]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="line 4 is not valid JSON"):
        load_run(run_dir)


@pytest.mark.parametrize("kind", ["empty dir", "missing", "file"])
def test_not_a_run_directory(tmp_path, kind):
    target = tmp_path / "nope"
    if kind == "empty dir":
        target.mkdir()
    elif kind == "file":
        target.write_text("hello")
    with pytest.raises(ValueError) as info:
        load_run(target)
    message = str(info.value)
    assert message.startswith("not a trainlab run directory: ") and str(target) in message
    assert "\n" not in message


def test_empty_metrics_is_an_error(tmp_path):
    run_dir = tmp_path / "empty"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match="no metrics") as info:
        load_run(run_dir)
    assert "\n" not in str(info.value)


def test_summary_json_is_used_as_written(tmp_path):
    run_dir = make_run(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.update(final={"train_acc": 0.5}, wall_time=None, threshold=0.9)  # what the run says, not the rows
    del summary["command"], summary["events"]["grokking_delay_seconds"]
    (run_dir / "summary.json").write_text(json.dumps(summary))
    run = load_run(run_dir)
    assert run.summary["final"] == {"train_acc": 0.5} and run.summary["wall_time"] is None
    assert run.threshold == 0.9 and run.summary["status"] == "completed"
    # only what it lacks is derived
    assert run.summary["command"] == "" and run.summary["events"]["grokking_delay_seconds"] == pytest.approx(
        run.summary["events"]["grokking_delay_steps"] * 0.01)


@pytest.mark.parametrize("file, content, problem", [
    ("summary.json", "{", "summary.json: not valid JSON"),
    ("events.json", '{"a": 1}', "events.json: expected a list"),
    ("config.yaml", "a: [", "config.yaml: not valid YAML"),
    ("config.yaml", "- 1", "config.yaml: expected a mapping"),
])
def test_damaged_files_are_one_line_errors(tmp_path, file, content, problem):
    run_dir = make_run(tmp_path)
    (run_dir / file).write_text(content)
    with pytest.raises(RunDirError) as info:
        load_run(run_dir)
    assert str(info.value).startswith(f"{run_dir / problem.split(':')[0]}:") and problem in str(info.value)
    assert "\n" not in str(info.value)


def test_inf_written_by_the_trainer_is_read_as_inf(tmp_path):
    run_dir = make_run(tmp_path, "inf", summary=False, extra_rows=[{"step": 3100, "train_loss": "inf"}])
    run = load_run(run_dir)
    assert np.isposinf(run.metrics["train_loss"][-1]) and run.summary["final"]["train_loss"] == float("inf")


def test_nulls_nan_and_inf_are_read(tmp_path):
    extra = [
        {"step": 3100, "train_loss": float("nan"), "val_loss": float("inf"), "train_acc": None, "val_acc": 0.5},
        {"step": 3200, "train_loss": float("-inf"), "val_loss": None, "note": "text is not a column"},
    ]
    run = load_run(make_run(tmp_path, extra_rows=extra))
    assert np.isnan(run.metrics["train_loss"][-2]) and np.isposinf(run.metrics["val_loss"][-2])
    assert np.isnan(run.metrics["train_acc"][-2]) and np.isnan(run.metrics["val_acc"][-1])
    assert np.isnan(run.metrics["time"][-1])
    assert "note" not in run.metrics


def test_rows_repeated_after_resume_keep_the_last(tmp_path):
    extra = [{"step": 2900, "train_loss": 0.123, "val_loss": 0.2}, {"step": 3000, "train_loss": 0.111, "val_loss": 0.1}]
    run = load_run(make_run(tmp_path, extra_rows=extra))
    assert (np.diff(run.steps) > 0).all() and run.steps[-1] == STEPS
    assert run.metrics["train_loss"][-1] == 0.111 and run.metrics["train_loss"][-2] == 0.123


def test_missing_summary_is_derived(tmp_path):
    run_dir = make_run(tmp_path, "in-progress", summary=False)
    run = load_run(run_dir)
    steps = event_steps(run_dir)
    assert not run.has_summary and run.status == "incomplete"
    assert run.name == "in-progress" and run.metric == "acc" and run.workload == "modular"
    assert run.summary["steps"] == STEPS and run.summary["train_time"] == pytest.approx(0.01 * STEPS)
    delay = steps["generalized"] - steps["memorized"]
    assert run.summary["events"]["grokking_delay_steps"] == delay
    assert run.summary["events"]["grokking_delay_seconds"] == pytest.approx(0.01 * delay)


# ---------------------------------------------------------------------------------------------- plots


def test_plot_run_survives_non_finite_values(tmp_path):
    nan, inf = float("nan"), float("inf")
    extra = [
        {"step": 3100, "train_loss": inf, "val_loss": nan, "train_acc": None, "val_acc": nan},
        {"step": 3200, "train_loss": nan, "val_loss": -inf, "train_acc": inf, "val_acc": None},
    ]
    run = load_run(make_run(tmp_path, "diverged", extra_rows=extra))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no runtime warnings from plotting NaN/inf either
        paths = plot_run(run, tmp_path / "plots")
    assert len(paths) == 4
    for path in paths:
        assert_png(path)


def test_plot_run_with_no_finite_values_at_all(tmp_path):
    run_dir = tmp_path / "all-nan"
    run_dir.mkdir()
    row = {"train_loss": None, "val_loss": float("nan"), "train_acc": None, "val_acc": None}
    rows = [{"step": 0, **row}, {"step": 9, **row}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths = plot_run(load_run(run_dir), tmp_path / "plots")
    assert len(paths) == 4
    for path in paths:
        assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_plot_compare_overlays_runs(tmp_path):
    # Two runs share a metric (one plot pair for both); a third has another metric (a plot pair of its own).
    a = load_run(make_run(tmp_path, "wd-1.0", weight_decay=1.0))
    b = load_run(make_run(tmp_path, "wd-0.1", weight_decay=0.1, val_mid=2600.0))
    c = load_run(make_run(tmp_path, r"mse $\frac$ run", metric="mse"))  # '$' must not be read as mathtext
    paths = plot_compare([a, b, c], tmp_path / "cmp")
    names = [p.name for p in paths]
    assert names == ["loss.png", "loss_logx.png", "metric_acc.png", "metric_acc_logx.png", "metric_mse.png",
                     "metric_mse_logx.png"]  # fmt: skip
    for path in paths:
        assert_png(path)


# ----------------------------------------------------------------------------------------------- html


def test_write_run_report(tmp_path):
    run_dir = make_run(tmp_path)
    already_had_pyplot = "matplotlib.pyplot" in sys.modules
    out = write_run_report(run_dir)
    if not already_had_pyplot:
        assert "matplotlib.pyplot" not in sys.modules  # plots never touch pyplot's global state
    assert out == run_dir / "report.html"
    page = out.read_text()
    assert "grok-adamw" in page
    for step in event_steps(run_dir).values():
        assert f"{step:,}" in page
    assert page.count("data:image/png;base64,") == 4
    assert_self_contained(page)
    for name in ("loss.png", "loss_logx.png", "metric.png", "metric_logx.png"):
        assert_png(run_dir / "plots" / name)
    # Summary (optimizer, lr, wd, delay), events and the resolved config are all on the page.
    assert "adamw, lr 0.001, wd 1" in page
    assert "memorized" in page and "generalized" in page and "<details" in page and "train_fraction: 0.3" in page


@pytest.fixture
def no_plots(monkeypatch):
    """Skip rendering in page tests that are about text (the plots are tested on their own)."""
    import trainlab.report.html as report_html

    monkeypatch.setattr(report_html, "plot_run", lambda run, out_dir: [])


def test_report_escapes_user_text(tmp_path, no_plots):
    run_dir = make_run(tmp_path, "evil")
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["name"] = "<script>alert(1)</script> & co"
    (run_dir / "summary.json").write_text(json.dumps(summary))
    events = json.loads((run_dir / "events.json").read_text())
    events[0]["detail"] = '<img src="x" onerror="boom">'
    (run_dir / "events.json").write_text(json.dumps(events))
    page = write_run_report(run_dir).read_text()
    assert "<script>" not in page and '<img src="x"' not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in page
    assert_self_contained(page, images=False)


def test_report_for_run_without_summary(tmp_path):
    run_dir = make_run(tmp_path, "still-running", summary=False)
    page = write_run_report(run_dir).read_text()
    assert "still-running" in page and "no summary.json" in page and "incomplete" in page
    for step in event_steps(run_dir).values():
        assert f"{step:,}" in page
    assert_self_contained(page)


def test_report_for_diverged_run(tmp_path, no_plots):
    extra = [{"step": 3100 + 100 * i, "train_loss": float("nan"), "val_loss": float("inf"), "train_acc": None,
              "val_acc": float("nan")} for i in range(3)]  # fmt: skip
    run_dir = make_run(tmp_path, "diverged", summary=False, extra_rows=extra)
    page = write_run_report(run_dir).read_text()
    assert "diverged" in page and ">nan<" in page  # a non-finite final value is shown as it is
    assert_self_contained(page, images=False)


def test_write_compare_report(tmp_path):
    a = make_run(tmp_path, "wd-1.0", weight_decay=1.0)
    b = make_run(tmp_path, "wd-0.1", weight_decay=0.1, val_mid=2600.0, summary=False)
    out = write_compare_report([a, b], tmp_path / "out" / "compare.html")
    assert out == tmp_path / "out" / "compare.html"
    page = out.read_text()
    assert "wd-1.0" in page and "wd-0.1" in page
    assert "wd 0.1" in page and "wd 1" in page
    assert page.count("data:image/png;base64,") == 4
    assert_self_contained(page)
    assert list((tmp_path / "out").iterdir()) == [out]  # plots are embedded, not left beside the page


def test_compare_report_needs_runs(tmp_path):
    with pytest.raises(ValueError):
        write_compare_report([], tmp_path / "x.html")
    with pytest.raises(ValueError, match="not a trainlab run directory"):
        write_compare_report([tmp_path], tmp_path / "x.html")

