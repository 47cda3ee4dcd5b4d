"""The report of a task sequence: its Continual learning section (metrics, matrix, figures, stability gaps and
events) and the comparison of several sequences; a run that is no sequence is reported as before.

Fake run directories are written by :func:`make_sequence_run` in the trainer's format: three tasks of 100 steps,
evaluations every 25 steps and densely after each switch, an old task dipping after each switch and recovering.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from trainlab.continual import metrics
from trainlab.report import load_run, write_compare_report, write_run_report
from trainlab.rundir import RunDir

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TASKS, PER_TASK = 3, 100
STEPS = TASKS * PER_TASK


def _accuracy(task: int, step: int, dip: float) -> float:
    """Task ``task``'s accuracy at ``step``: chance before it trains, rising while it does, then a dip of ``dip``
    right after each later switch that recovers within 20 steps, on a slow decline (0.02 per task)."""
    start = task * PER_TASK
    if step <= start:
        return 0.1
    learned = min(1.0, (step - start) / 50)
    if step <= start + PER_TASK:
        return 0.1 + 0.85 * learned
    since = (step - start - PER_TASK) % PER_TASK
    drop = dip * max(0.0, 1 - since / 20) if since > 0 else 0.0
    return 0.95 - 0.02 * (step - start - PER_TASK) / PER_TASK - drop


def _steps() -> list[int]:
    dense = {start + offset for start in range(PER_TASK, STEPS, PER_TASK) for offset in (1, 2, 3, 5, 10, 20)}
    return sorted(set(range(0, STEPS + 1, 25)) | dense)


def make_sequence_run(root: Path, name: str = "seq", *, dip: float = 0.4, upto: int = STEPS,
                      summary: bool = True) -> Path:
    """A fake task-sequence run directory ``root/name`` with rows up to step ``upto`` (a run in progress has no
    summary.json); the events the trainer would record (``stability_gap`` at each switch when ``dip`` exceeds
    0.1) in events.json."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    config = {"name": name, "workload": {"name": "split_mnist1d", "tasks": TASKS, "steps_per_task": PER_TASK},
              "optimizer": {"name": "adamw", "lr": 1e-3}, "continual": {"method": "naive"}, "steps": STEPS,
              "threshold": 0.9}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    rows = []
    for step in (s for s in _steps() if s <= upto):
        task = min(step // PER_TASK, TASKS - 1)
        accs = [_accuracy(j, step, dip) for j in range(TASKS)]
        row = {"step": step, "time": step / 100, "wall": step / 90, "lr": 1e-3, "task": task,
               "train_loss": 1 - accs[task], "train_acc": accs[task]}
        for j, a in enumerate(accs):
            row[f"task{j}_loss"], row[f"task{j}_acc"] = 1 - a, a
        row["val_loss"] = sum(1 - a for a in accs[:task + 1]) / (task + 1)
        row["val_acc"] = sum(accs[:task + 1]) / (task + 1)
        rows.append(row)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    events = _gap_events(rows, dip)
    (run_dir / "events.json").write_text(json.dumps(events))
    if summary:
        (run_dir / "summary.json").write_text(json.dumps({
            "name": name, "status": "completed", "workload": "split_mnist1d", "metric": "acc",
            "higher_is_better": True, "threshold": 0.9, "steps": STEPS, "train_time": STEPS / 100,
            "events": {"stability_gap": events[0]["step"] if events else None}, "event_list": events,
            "continual": metrics.summary(rows, STEPS), "command": f"trainlab run --name {name}"}))
    return run_dir


def _gap_events(rows: list[dict], dip: float) -> list[dict]:
    """What the trainer's detector records: at the first row after each switch (the dip is deepest there)."""
    if dip < 0.1:
        return []
    return [{"name": "stability_gap", "step": s + 1, "time": (s + 1) / 100, "value": 0.5, "metric": "task0_acc",
             "detail": f"task 0 acc 0.5, {dip:g} below its 0.9 at the switch to task {s // PER_TASK}"}
            for s in range(PER_TASK, STEPS, PER_TASK) if any(r["step"] == s + 1 for r in rows)]


@pytest.fixture
def text_only(monkeypatch):
    """Skip rendering figures in tests about the page's text (the figures' own test renders them)."""
    import trainlab.report.html as report_html

    for name in ("plot_run", "plot_probes", "plot_continual", "plot_compare", "plot_compare_continual"):
        monkeypatch.setattr(report_html, name, lambda *args: [])


def values(page: str, table: str) -> list[list[float]]:
    """The exact values (``data-value``) of each row of the HTML table of class ``table``."""
    body = re.search(rf'<table class="{table}">.*?<tbody>(.*?)</tbody>', page, re.S).group(1)
    return [[float(v) for v in re.findall(r'data-value="([^"]+)"', tr)] for tr in re.findall(r"<tr>(.*?)</tr>", body)]


def expected(run_dir: Path) -> dict:
    return metrics.summary(RunDir.open(run_dir).metrics(), STEPS)


# --------------------------------------------------------------------------------------------- one run


def test_a_sequence_s_report_shows_the_numbers_metrics_computes(tmp_path, text_only):
    run_dir = make_sequence_run(tmp_path)
    page = write_run_report(run_dir).read_text()
    entry = expected(run_dir)
    assert "<h2>Continual learning</h2>" in page
    assert values(page, "continual-matrix") == [entry["initial"], *entry["matrix"]]
    deepest = max(g["depth"] for g in entry["stability_gaps"])
    keys = ("acc", "bwt", "fwt", "forgetting", "min_acc", "wc_acc")
    assert values(page, "continual-metrics") == [[entry[k] for k in keys] + [deepest]]
    assert ">3 of 3<" in page


def test_the_heat_map_and_curves_are_written(tmp_path):
    run_dir = make_sequence_run(tmp_path)
    page = write_run_report(run_dir).read_text()
    for stem in ("continual_matrix", "continual_tasks", "continual_switches"):
        assert (run_dir / "plots" / f"{stem}.png").read_bytes()[:8] == PNG_SIGNATURE
        assert f'alt="{stem}"' in page


def test_the_stability_gaps_and_their_events_are_listed(tmp_path, text_only):
    run_dir = make_sequence_run(tmp_path)
    page = write_run_report(run_dir).read_text()
    entry = expected(run_dir)
    deep = [g for g in entry["stability_gaps"] if g["depth"] > entry["recovery_tolerance"]]
    assert len(deep) == 3  # task 0 at both switches, task 1 at the second
    assert values(page, "continual-gaps") == [[g["at_switch"], g["min"], g["depth"]] for g in deep]
    assert all(g["recovery_steps"] == 20 for g in deep)  # back within the tolerance of its value at the switch
    section = page[page.index("<h2>Continual learning</h2>"):page.index("<h2>Events</h2>")]
    assert section.count("task 0 acc 0.5, 0.4 below its 0.9") == 2


def test_a_run_in_progress_shows_the_tasks_finished_so_far(tmp_path, text_only):
    run_dir = make_sequence_run(tmp_path, upto=250, summary=False)
    run = load_run(run_dir)
    assert run.continual == metrics.summary(RunDir.open(run_dir).metrics(), STEPS)  # derived as the trainer would
    assert len(run.continual["matrix"]) == 2
    page = write_run_report(run_dir).read_text()
    assert ">2 of 3<" in page and len(values(page, "continual-matrix")) == 3  # b and two tasks


def test_an_older_summary_without_the_entry_gets_it_derived(tmp_path):
    run_dir = make_sequence_run(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    del summary["continual"]
    (run_dir / "summary.json").write_text(json.dumps(summary))
    assert load_run(run_dir).continual == expected(run_dir)


def test_a_run_that_is_no_sequence_is_reported_as_before(tmp_path):
    from test_report import make_run  # the plain fake run of tests/report/test_report.py

    run_dir = make_run(tmp_path, "plain")
    run = load_run(run_dir)
    assert run.continual is None and "continual" not in run.summary
    page = write_run_report(run_dir).read_text()
    assert "Continual learning" not in page and "continual-" not in page
    assert sorted(p.name for p in (run_dir / "plots").iterdir()) == ["loss.png", "loss_logx.png", "metric.png",
                                                                      "metric_logx.png"]


# ------------------------------------------------------------------------------------------ several runs


def test_the_comparison_puts_the_methods_side_by_side(tmp_path):
    from test_report import make_run

    deep, shallow = make_sequence_run(tmp_path, "naive", dip=0.4), make_sequence_run(tmp_path, "replay", dip=0.02)
    plain = make_run(tmp_path, "plain")
    page = write_compare_report([deep, shallow, plain], tmp_path / "cmp.html").read_text()
    keys = ("acc", "bwt", "fwt", "forgetting", "min_acc", "wc_acc")
    rows = values(page, "continual-metrics")
    for run_dir, row in zip((deep, shallow), rows, strict=True):  # the plain run has no row
        entry = expected(run_dir)
        assert row[:6] == [entry[k] for k in keys]
    assert rows[0][4] < rows[1][4]  # min-ACC sees the deeper dip
    assert 'alt="continual_matrices"' in page and 'alt="continual_val_acc"' in page
    assert re.search(r"<td>naive</td><td class=num>3 of 3</td>", page)


def test_a_sequence_without_deep_gaps_says_so(tmp_path, text_only):
    page = write_run_report(make_sequence_run(tmp_path, dip=0.02)).read_text()
    assert "No old task fell more than 0.03 after a switch." in page
    assert "No stability_gap events recorded." in page
