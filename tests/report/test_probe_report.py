"""Probe curves, probe cost and new events in the reports (trainlab.report.probe_plots and the Probes sections).

Two real runs (a few steps of the MLP on a+b mod 11, probed every other step) are trained once for the module;
fake run directories written by :func:`make_probe_run` cover what a few steps cannot show: events, per-layer
keys of a deep model, nulls, learning-rate schedules.
"""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

import trainlab
from trainlab.report import load_run, write_compare_report, write_run_report
from trainlab.report.plots import _event_marks, _run_figure, _save
from trainlab.report.probe_plots import (
    MAX_COMPARE_FIGURES,
    MAX_LEGEND_LINES,
    _compare_probe_figure,
    _probe_figure,
    plot_compare_probes,
    probe_events,
    probe_panels,
    shared_probe_keys,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REAL_OVERRIDES = ["workload.p=11", "steps=6", "eval_every=3", "probes.every=2", "probes.examples=16",
                  "probes.lanczos_iters=4"]  # fmt: skip


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two trained runs: A probes weights, hessian, softmax_collapse and attention_entropy (skipped on the MLP);
    B (another lr, no weight decay) probes weights and softmax_collapse. A writes its report at the end, as
    `trainlab run` does."""
    root = tmp_path_factory.mktemp("probe-runs")
    a = trainlab.run(None, [*REAL_OVERRIDES, "probes=weights,hessian,softmax_collapse,attention_entropy"],
                     out=root / "a", quiet=True)
    b = trainlab.run(None, [*REAL_OVERRIDES, "probes=weights,softmax_collapse", "optimizer.lr=0.01",
                            "optimizer.weight_decay=0"], out=root / "b", quiet=True, report=False)
    return Path(a), Path(b)


def _copy(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("checkpoints", "plots", "report.html"))
    return dest


def make_probe_run(
    root: Path,
    name: str,
    *,
    layers: int = 3,
    steps: int = 400,
    eval_every: int = 100,
    probe_every: int = 25,
    lr: float = 0.01,
    norm_scale: float = 1.0,
    events: bool = True,
    summary: bool = True,
    extra_keys: int = 0,
) -> Path:
    """A fake probed run in the trainer's format: evaluation rows every ``eval_every`` steps, probe-only rows
    (step/time/wall/lr and probe keys) every ``probe_every``, a warmup in the lr, and the new events."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    config = {"name": name, "workload": {"name": "modular", "p": 97}, "model": {"name": "mlp", "depth": layers},
              "optimizer": {"name": "adamw", "lr": lr, "weight_decay": 1.0}, "steps": steps,
              "eval_every": eval_every, "probes": {"names": ["weights", "hessian", "softmax_collapse"]}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    params = [f"body.fc{i}.weight" for i in range(layers - 1)] + ["head.weight"]
    rows, seconds = [], {"weights": [], "hessian": [], "softmax_collapse": []}
    for step in range(0, steps + 1, probe_every):
        rate = lr * min(1.0, (step + 1) / 50)  # warmup: 2/lr changes over the run
        row: dict = {"step": step, "time": 0.01 * step, "wall": 0.02 * step, "lr": rate}
        if step % eval_every == 0 or step == steps:
            acc = min(1.0, 0.01 + step / steps)
            row.update({"train_loss": 2.0 / (1 + step), "train_acc": acc, "val_loss": 2.5 / (1 + step),
                        "val_acc": acc * 0.9})
        for i, p in enumerate(params):
            row[f"weights/{p}"] = norm_scale * (5.0 + i + 0.01 * step)
        row["weights/total"] = norm_scale * (10.0 + 0.02 * step)
        row["weights/last_layer"] = row[f"weights/{params[-1]}"]
        eig = 1.0 + step
        row.update({"hessian/eig1": eig, "hessian/eig2": 0.5 * eig, "hessian/eos_ratio": eig * rate / 2})
        row.update({"softmax_collapse/fraction": min(1.0, step / steps), "softmax_collapse/zero_loss": 0.0})
        for k in range(extra_keys):
            row[f"extra/k{k}"] = float(k + step)
        for i, (probe, spent) in enumerate(seconds.items()):
            row[f"probe_seconds/{probe}"] = 0.001 * (1 + 3 * i) * (1 + step % 3)
            spent.append(row[f"probe_seconds/{probe}"])
        rows.append(row)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    event_list = []
    if events:
        event_list = [
            {"name": "loss_spike", "step": 150, "time": 1.5, "value": 3.2, "metric": "train_loss",
             "detail": "train loss 3.2 > 2 x its minimum 0.8"},
            {"name": "slingshot", "step": 150, "time": 1.5, "value": 7.5, "metric": "weights/last_layer",
             "detail": "loss spike while the last layer's norm grew +6.0%"},
            {"name": "edge_of_stability", "step": 175, "time": 1.75, "value": 0.93, "metric": "hessian/eos_ratio",
             "detail": "sharpness x lr / 2 = 0.93 >= 0.9"},
            {"name": "loss_spike", "step": 250, "time": 2.5, "value": 2.0, "metric": "train_loss",
             "detail": "train loss 2 > 2 x its minimum 0.5"},
            {"name": "softmax_collapse", "step": 300, "time": 3.0, "value": 0.75, "metric": "softmax_collapse/fraction",
             "detail": "75.0% of the probe batch has a one-hot softmax"},
        ]  # fmt: skip
    (run_dir / "events.json").write_text(json.dumps(event_list))
    if summary:
        data = {
            "name": name, "status": "completed", "workload": "modular", "metric": "acc", "higher_is_better": True,
            "threshold": 0.99, "steps": steps, "train_time": 0.01 * steps, "wall_time": 0.02 * steps,
            "final": rows[-1], "events": {"memorized": None, "generalized": None},
            "probes": {"cost": {p: {"calls": len(s), "seconds": round(sum(s), 3)} for p, s in seconds.items()},
                       "skipped": {"attention_entropy": "MLP has no attention_weights(idx) method"}},
            "event_list": event_list,
        }  # fmt: skip
        (run_dir / "summary.json").write_text(json.dumps(data))
    return run_dir


@pytest.fixture
def text_only(monkeypatch):
    """Skip rendering the loss/metric plots (and the probe figures of one run) in tests about the page's text."""
    import trainlab.report.html as report_html

    monkeypatch.setattr(report_html, "plot_run", lambda run, out_dir: [])
    monkeypatch.setattr(report_html, "plot_probes", lambda run, out_dir: [])
    monkeypatch.setattr(report_html, "plot_compare", lambda runs, out_dir: [])
    return report_html


def assert_png(path: Path, min_bytes: int = 5000) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > min_bytes, f"{path} is suspiciously small ({len(data)} bytes)"


def embedded(page: str, path: Path) -> bool:
    return base64.b64encode(path.read_bytes()).decode("ascii") in page


def cost_rows(page: str) -> dict[str, list[str]]:
    """The probe cost table's rows: first cell (probe) -> the other cells' text."""
    table = re.search(r'<table class="probe-cost">(.*?)</table>', page, re.DOTALL)
    assert table, "no probe cost table"
    out = {}
    for row in re.findall(r"<tr>(.*?)</tr>", table.group(1), re.DOTALL):
        cells = [html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
        if cells:
            out[cells[0]] = cells[1:]
    return out


# ----------------------------------------------------------------------------------------- real runs


def test_real_run_report_shows_probe_figures(real_runs):
    run_dir, _ = real_runs
    page = (run_dir / "report.html").read_text()  # written by the run itself
    assert "<h2>Probes</h2>" in page
    for probe in ("weights", "hessian", "softmax_collapse"):
        for suffix in ("", "_logx"):
            png = run_dir / "plots" / f"probe_{probe}{suffix}.png"
            assert_png(png, 10_000)
            assert embedded(page, png), f"{png.name} is not on the page"
            assert f'alt="probe_{probe}{suffix}"' in page
    assert not (run_dir / "plots" / "probe_attention_entropy.png").exists()  # skipped: no values
    assert page.count("data:image/png;base64,") == 4 + 6


def test_real_run_cost_table_equals_summary(real_runs):
    run_dir, _ = real_runs
    summary = json.loads((run_dir / "summary.json").read_text())
    cost, train_time = summary["probes"]["cost"], summary["train_time"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    probed = [r for r in rows if "probe_seconds/weights" in r]
    assert [r["step"] for r in probed] == [0, 2, 4, 6]
    assert set(cost) == {"weights", "hessian", "softmax_collapse", "attention_entropy"}
    table = cost_rows((run_dir / "report.html").read_text())  # written by the run itself
    for probe in ("weights", "hessian", "softmax_collapse"):
        calls, seconds = cost[probe]["calls"], cost[probe]["seconds"]
        assert calls == len(probed)
        assert table[probe] == [str(calls), f"{seconds:.3f}", f"{seconds / calls:.4g}",
                                f"{100 * seconds / train_time:.1f}%"]  # fmt: skip
    assert table["attention_entropy (skipped)"][:2] == ["0", "0.000"]
    total = sum(c["seconds"] for c in cost.values())
    assert table["all probes"][1] == f"{total:.3f}"
    assert table["all probes"][3] == f"{100 * total / train_time:.1f}%"


def test_real_run_skipped_probe_reason_shown(real_runs):
    run_dir, _ = real_runs
    reason = json.loads((run_dir / "summary.json").read_text())["probes"]["skipped"]["attention_entropy"]
    assert "attention" in reason
    page = (run_dir / "report.html").read_text()
    skipped = re.search(r'<table class="probe-skipped">(.*?)</table>', page, re.DOTALL)
    assert skipped and "attention_entropy" in skipped.group(1)
    assert html.escape(reason, quote=True) in skipped.group(1)


def test_real_runs_compare_report_overlays_shared_probe_keys(real_runs, tmp_path):
    a_dir, b_dir = real_runs
    a, b = load_run(a_dir), load_run(b_dir)
    shared = shared_probe_keys([a, b])
    assert shared[:2] == ["weights/last_layer", "weights/total"]
    assert "softmax_collapse/fraction" in shared
    assert not any(k.startswith("hessian/") for k in shared)  # only run A measured the Hessian

    fig = _compare_probe_figure([a, b], "weights/last_layer", {id(a): "a", id(b): "b"}, {id(a): "C0", id(b): "C1"})
    lines = [line for line in fig.axes[0].lines if len(line.get_xdata()) > 1]
    assert len(lines) == 2
    for line, run in zip(lines, (a, b)):
        steps, values = run.series("weights/last_layer")
        np.testing.assert_array_equal(line.get_xdata(), steps)
        np.testing.assert_allclose(line.get_ydata(), values)
    assert not np.allclose(lines[0].get_ydata(), lines[1].get_ydata())  # two different runs, really

    page = write_compare_report([a_dir, b_dir], tmp_path / "cmp.html").read_text()
    assert "<h2>Probes</h2>" in page
    assert 'alt="probe_weights__last_layer"' in page and 'alt="probe_hessian__eig1"' not in page
    assert page.count("data:image/png;base64,") == 4 + min(len(shared), MAX_COMPARE_FIGURES)
    cost = re.search(r'<table class="probe-cost">(.*?)</table>', page, re.DOTALL).group(1)
    assert cost.count("<td>a</td>") >= 4 and cost.count("<td>b</td>") >= 2  # one cost row per probe per run
    assert list(tmp_path.iterdir()) == [tmp_path / "cmp.html"]


def test_probe_only_rows_leave_evaluation_curves_whole(real_runs):
    """Rows of steps probed between evaluations lack train_*/val_*: the curves skip them, not break at them."""
    run = load_run(real_runs[0])
    assert run.steps.tolist() == [0, 2, 3, 4, 6]
    fig = _run_figure(run, "acc", logx=False)
    curves = [line for line in fig.axes[0].lines if line.get_label() in ("train", "validation")]
    assert len(curves) == 2
    for line in curves:
        assert line.get_xdata().tolist() == [0, 3, 6]
        assert np.isfinite(line.get_ydata()).all()


def test_null_probe_values_and_trailing_probe_row(real_runs, tmp_path):
    """null probe values (NaN/inf in the probe), a key null in every row, and a run still in progress whose last
    row is a probe-only row: nothing crashes, and the probe-only row is not taken for divergence."""
    run_dir = _copy(real_runs[0], tmp_path / "nulls")
    (run_dir / "summary.json").unlink()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        if "hessian/eig1" in row:
            row["hessian/eos_ratio"] = None  # null throughout
        if row["step"] == 2:
            row["hessian/eig1"] = None
            row["weights/last_layer"] = None
    last = {k: v for k, v in rows[-1].items() if not k.startswith(("train_", "val_"))}
    rows.append({**last, "step": 8, "weights/total": None})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    run = load_run(run_dir)
    assert np.isnan(run.metrics["hessian/eos_ratio"]).all() and run.carried("hessian/eos_ratio").sum() == 5
    assert not any(name == "diverged" for name, _ in _event_marks(run))
    assert run.summary["final"]["train_acc"] == rows[-2]["train_acc"]  # the last row carrying it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        page = write_run_report(run_dir).read_text()
    assert_png(run_dir / "plots" / "probe_hessian.png")
    assert "diverged" not in page
    assert "<td>weights</td><td class=num>5</td>" in page  # derived cost: 5 calls (no summary.json)


# ----------------------------------------------------------------------------------------- fake runs


def test_fake_run_report_events_and_cost(tmp_path, text_only):
    run_dir = make_probe_run(tmp_path, "fake")
    page = write_run_report(run_dir).read_text()
    events = json.loads((run_dir / "events.json").read_text())
    for event in events:  # every new event in the events table, with its detail text
        assert html.escape(event["detail"], quote=True) in page
        assert f"<td>{event['name']}</td>" in page
    assert page.count("<td>loss_spike</td>") == 2
    summary = json.loads((run_dir / "summary.json").read_text())
    table = cost_rows(page)
    for probe, entry in summary["probes"]["cost"].items():
        assert table[probe][:2] == [str(entry["calls"]), f"{entry['seconds']:.3f}"]
    assert "MLP has no attention_weights(idx) method" in page


def test_events_fall_back_to_summary_event_list(tmp_path):
    run_dir = make_probe_run(tmp_path, "no-events-file")
    (run_dir / "events.json").unlink()
    run = load_run(run_dir)
    assert [e["name"] for e in run.events][:3] == ["loss_spike", "slingshot", "edge_of_stability"]
    assert run.events[1]["detail"] == "loss spike while the last layer's norm grew +6.0%"


def test_event_markers_concern_the_probe(tmp_path):
    run = load_run(make_probe_run(tmp_path, "fake"))
    assert {n for n, _ in probe_events(run, "hessian")} == {"edge_of_stability", "loss_spike"}
    assert {n for n, _ in probe_events(run, "weights")} == {"slingshot", "loss_spike"}
    assert {n for n, _ in probe_events(run, "softmax_collapse")} == {"softmax_collapse"}
    panels = probe_panels("hessian", run.probes["hessian"])
    fig = _probe_figure(run, "hessian", panels, probe_events(run, "hessian"), logx=False)
    for ax in fig.axes:  # a vertical line per event in every panel (one line per name), labelled in the first
        vlines = sorted(x for line in ax.lines if str(line.get_gid()).startswith("event:")
                        for x in line.get_xdata()[::3])  # fmt: skip
        assert vlines == [150.0, 175.0, 250.0]
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert "edge_of_stability @ 175" in labels and "loss_spike (\u00d72) @ 150" in labels
    assert not fig.axes[1].texts or all("@" not in t.get_text() for t in fig.axes[1].texts)


def test_edge_of_stability_lines(tmp_path):
    run = load_run(make_probe_run(tmp_path, "eos"))
    panels = probe_panels("hessian", run.probes["hessian"])
    assert [p.keys for p in panels] == [["eig1", "eig2"], ["eos_ratio"]]
    fig = _probe_figure(run, "hessian", panels, [], logx=False)
    eig_ax, ratio_ax = fig.axes[:2]
    two_over_lr = [line for line in eig_ax.lines if line.get_label() == "2/lr"]
    assert len(two_over_lr) == 1
    steps, _ = run.series("hessian/eig1")
    np.testing.assert_array_equal(two_over_lr[0].get_xdata(), steps)
    np.testing.assert_allclose(two_over_lr[0].get_ydata(), 2.0 / run.metrics["lr"])  # warmup: not constant
    ones = [line for line in ratio_ax.lines if list(line.get_ydata()) == [1.0, 1.0]]
    assert len(ones) == 1 and "edge of stability" in ones[0].get_label()
    assert [line.get_label() for line in eig_ax.lines[:2]] == ["eig1", "eig2"]


def test_per_layer_panel_limits_its_legend(tmp_path):
    run = load_run(make_probe_run(tmp_path, "deep", layers=20))
    panels = probe_panels("weights", run.probes["weights"])
    assert [p.keys for p in panels[:2]] == [["total"], ["last_layer"]]
    assert panels[2].per_layer and len(panels[2].keys) == 20
    fig = _probe_figure(run, "weights", panels, [], logx=True)
    ax = fig.axes[2]
    assert len([line for line in ax.lines if len(line.get_xdata()) > 2]) == 20
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(texts) == MAX_LEGEND_LINES + 1
    assert texts[0] == "body.fc0" and texts[MAX_LEGEND_LINES - 1] == "head"
    assert texts[-1] == f"+{20 - MAX_LEGEND_LINES} more (colour: depth)"
    _save(fig, tmp_path / "deep.png")
    assert_png(tmp_path / "deep.png")


def test_figure_with_an_empty_grid_cell_saves(tmp_path):
    """Five panels on a 3-column grid leave a hidden axes, which has no bounding box: saving the figure used to
    fail with AttributeError ('NoneType' object has no attribute 'x0') in the left-margin fit."""
    run = load_run(make_probe_run(tmp_path, "five", extra_keys=5))
    panels = probe_panels("extra", run.probes["extra"])
    assert len(panels) == 5
    fig = _probe_figure(run, "extra", panels, [], logx=False)
    assert [ax.get_visible() for ax in fig.axes] == [True] * 5 + [False]
    _save(fig, tmp_path / "five.png")
    assert_png(tmp_path / "five.png")


def test_compare_caps_overlays_and_names_the_rest(tmp_path, text_only, monkeypatch):
    a = make_probe_run(tmp_path, "a", extra_keys=3)
    b = make_probe_run(tmp_path, "b", extra_keys=3, norm_scale=2.0, events=False)
    shared = shared_probe_keys([load_run(a), load_run(b)])
    assert len(shared) == 7 + 3 + 3  # 7 scalar keys, 3 extra, 3 weight matrices
    assert shared[:2] == ["weights/last_layer", "weights/total"]
    assert shared.index("extra/k0") < shared.index("weights/body.fc0.weight")  # per-layer keys come last
    assert 3 < MAX_COMPARE_FIGURES < len(shared) + 20
    monkeypatch.setattr(text_only, "MAX_COMPARE_FIGURES", 3)  # the cap, made small to keep the test fast
    page = write_compare_report([a, b], tmp_path / "cmp.html").read_text()
    assert page.count("data:image/png;base64,") == 3
    assert [f"probe_{k.replace('/', '__')}" for k in shared[:3]] == re.findall(r'alt="(probe_[^"]+)"', page)
    left = re.search(r"Left out: (.*?)</p>", page).group(1)
    assert re.findall(r"<code>(.*?)</code>", left) == shared[3:]


def test_compare_without_shared_probe_keys(tmp_path, text_only):
    a = make_probe_run(tmp_path, "a")
    from test_report import make_run  # the plain fake run of tests/report/test_report.py

    b = make_run(tmp_path, "no-probes")
    assert plot_compare_probes([load_run(a), load_run(b)], tmp_path / "p") == []
    page = write_compare_report([a, b], tmp_path / "cmp.html").read_text()
    assert "No probe key was recorded by more than one run." in page


def test_run_without_probes_has_no_probe_section(tmp_path, text_only):
    from test_report import make_run  # the plain fake run of tests/report/test_report.py

    page = write_run_report(make_run(tmp_path, "plain")).read_text()
    assert "<h2>Probes</h2>" not in page and "probe-cost" not in page


def test_panel_layout_of_other_probes():
    """attention entropy: a panel per statistic with a line per layer; a probe with many keys stays readable."""
    from trainlab.report.probe_plots import MAX_PANELS

    panels = probe_panels("attention_entropy", ["layer0_min", "layer0_mean", "layer1_min", "layer1_mean", "min"])
    assert [(p.keys, p.per_layer) for p in panels] == [
        (["min"], False), (["layer0_min", "layer1_min"], True), (["layer0_mean", "layer1_mean"], True)]
    assert panels[1].labels == ["layer 0", "layer 1"]
    many = [f"k{i}" for i in range(MAX_PANELS + 5)]
    panels = probe_panels("someday_probe", many)
    assert len(panels) == MAX_PANELS and [p.keys for p in panels[:-1]] == [[k] for k in many[: MAX_PANELS - 1]]
    assert panels[-1].keys == many[MAX_PANELS - 1:] and panels[-1].per_layer
    assert [p.keys for p in probe_panels("local_complexity", ["train", "val", "random"])] == [["train", "val", "random"]]


# ---------------------------------------------------------------------------------- robustness / certified


def make_robust_run(root: Path, name: str, steps: int = 400, every: int = 50) -> Path:
    """A fake run probing robustness (clean and PGD accuracy at three radii) and certified (IBP-verified accuracy),
    with memorized / generalized / robust events and a loss spike (which concerns neither probe)."""
    run_dir = make_probe_run(root, name, steps=steps, eval_every=every, probe_every=every, events=False)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        t = row["step"] / steps
        # keys out of order (the trainer writes clean first, then the radii as listed): the panel's order must
        # come from the radii themselves
        row.update({"robustness/adv_acc_eps0.2": 0.004 + 0.3 * t, "robustness/clean_acc": 0.1 + 0.9 * t,
                    "robustness/adv_acc_eps0.05": 0.05 + 0.8 * t, "robustness/adv_acc_eps0.1": 0.02 + 0.6 * t,
                    "certified/verified_acc_eps0.1": 0.3 * t, "certified/verified_acc_eps0.05": 0.5 * t})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    events = [{"name": "memorized", "step": 100}, {"name": "loss_spike", "step": 150},
              {"name": "generalized", "step": 200}, {"name": "robust", "step": 350}]
    (run_dir / "events.json").write_text(json.dumps(events))
    return run_dir


def test_accuracy_under_attack_shares_one_panel_ordered_by_radius():
    panels = probe_panels("robustness", ["adv_acc_eps0.2", "clean_acc", "adv_acc_eps0.05", "adv_acc_eps1e-05",
                                         "adv_acc_eps0.1"])
    assert len(panels) == 1 and panels[0].title == "accuracy under attack (PGD)"
    assert panels[0].keys == ["clean_acc", "adv_acc_eps1e-05", "adv_acc_eps0.05", "adv_acc_eps0.1", "adv_acc_eps0.2"]
    assert panels[0].labels == ["clean", "eps 1e-05", "eps 0.05", "eps 0.1", "eps 0.2"]
    assert panels[0].accuracy and not panels[0].per_layer
    verified = probe_panels("certified", ["verified_acc_eps0.2", "verified_acc_eps0.05"])
    assert [(p.title, p.keys, p.labels) for p in verified] == [
        ("verified accuracy (IBP)", ["verified_acc_eps0.05", "verified_acc_eps0.2"], ["eps 0.05", "eps 0.2"])]
    # a key that is no radius keeps a panel of its own; the same key names in another probe are not grouped
    assert [p.keys for p in probe_panels("robustness", ["clean_acc", "adv_acc_eps0.1", "adv_acc_epsx"])] == [
        ["clean_acc", "adv_acc_eps0.1"], ["adv_acc_epsx"]]
    assert [p.keys for p in probe_panels("other", ["clean_acc", "adv_acc_eps0.1"])] == [["clean_acc"],
                                                                                      ["adv_acc_eps0.1"]]


def test_robust_event_on_both_robustness_figures(tmp_path):
    run = load_run(make_robust_run(tmp_path, "robust"))
    for probe in ("robustness", "certified"):
        marks = probe_events(run, probe)
        assert sorted(marks) == [("generalized", 200.0), ("memorized", 100.0), ("robust", 350.0)], probe
        fig = _probe_figure(run, probe, probe_panels(probe, run.probes[probe]), marks, logx=False)
        (ax,) = [a for a in fig.axes if a.get_visible()]
        events = {str(line.get_gid()): sorted(set(line.get_xdata()[::3])) for line in ax.lines
                  if str(line.get_gid()).startswith("event:")}  # fmt: skip
        assert events == {"event:memorized": [100.0], "event:generalized": [200.0], "event:robust": [350.0]}
        assert any(t.get_text() == "robust @ 350" for t in ax.texts)
        curves = [line for line in ax.lines if not str(line.get_gid()).startswith("event:")]
        n_keys = 4 if probe == "robustness" else 2
        assert len(curves) == n_keys
        # the curves are the metrics' values (one line per key, in the panel's order)
        for line, key in zip(curves, probe_panels(probe, run.probes[probe])[0].keys):
            np.testing.assert_array_equal(line.get_ydata(), run.series(f"{probe}/{key}")[1])
        # clean 0.1..1 against adversarial 0.004..: a span > LOG_Y_SPAN, still a linear 0-1 axis for accuracies
        assert ax.get_yscale() == "linear" and ax.get_ylim() == pytest.approx((-0.03, 1.03))
    assert {n for n, _ in probe_events(run, "weights")} == {"memorized", "generalized", "loss_spike"}


def test_robustness_report_has_captioned_figures(tmp_path):
    run_dir = make_robust_run(tmp_path, "robust-report")
    page = write_run_report(run_dir).read_text()
    for probe in ("robustness", "certified"):
        assert embedded(page, run_dir / "plots" / f"probe_{probe}.png"), probe
        assert_png(run_dir / "plots" / f"probe_{probe}.png")
    assert "robustness: Accuracy under attack: clean accuracy and accuracy under PGD" in page
    assert "certified: Verified accuracy at each radius eps" in page
    assert "<td>robust</td>" in page  # in the events table too


def make_info_plane_run(root: Path, name: str, layers: int = 3) -> Path:
    """A fake run whose rows carry info_plane keys: layer i moves from (2 + i, 0.2) to (6 - i, 1.0 - 0.1 i)."""
    run_dir = make_probe_run(root, name)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]["step"]
    for row in rows:
        f = row["step"] / last
        for method in ("fixed", "adaptive"):
            for i in range(layers):
                row[f"info_plane/{method}/I_XT/layer{i}"] = 2.0 + i + f * (4.0 - 2 * i)
                row[f"info_plane/{method}/I_TY/layer{i}"] = 0.2 + f * (0.8 - 0.1 * i)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_dir


def test_info_plane_figure_is_written_with_a_path_per_layer(tmp_path):
    from trainlab.report.probe_plots import _info_plane_figure, plot_info_plane, plot_probes

    run = load_run(make_info_plane_run(tmp_path, "ip"))
    written = plot_probes(run, tmp_path / "plots")
    plane = tmp_path / "plots" / "probe_info_plane_plane.png"
    assert plane in written and (tmp_path / "plots" / "probe_info_plane.png") in written
    assert_png(plane, 10_000)
    fig = _info_plane_figure(run, {"fixed": [0, 1, 2], "adaptive": [0, 1, 2]})
    axes = [ax for ax in fig.axes if ax.get_xlabel() == "I(X;T) (bits)"]
    assert [ax.get_title(loc="left") for ax in axes] == ["fixed bins", "adaptive bins"]
    steps = run.series("info_plane/fixed/I_XT/layer1")[0]
    for ax in axes:
        assert len(ax.lines) == 3  # one path per layer, drawn through the probed steps
        path = ax.lines[1]
        np.testing.assert_allclose(path.get_xdata(), run.series("info_plane/fixed/I_XT/layer1")[1])
        np.testing.assert_allclose(path.get_ydata(), run.series("info_plane/fixed/I_TY/layer1")[1])
        colours = ax.collections[1].get_array()  # the points are coloured by their step
        np.testing.assert_allclose(np.asarray(colours), steps)
        assert sorted(t.get_text() for t in ax.texts) == ["layer 0", "layer 1", "layer 2"]
    assert any(ax.get_ylabel() == "step" for ax in fig.axes)  # the colour bar
    # the curves figure groups the keys: a panel per estimator and quantity, a line per layer
    panels = probe_panels("info_plane", run.probes["info_plane"])
    assert [p.title for p in panels] == ["I(X;T) per layer, fixed bins (bits)", "I(T;Y) per layer, fixed bins (bits)",
                                         "I(X;T) per layer, adaptive bins (bits)",
                                         "I(T;Y) per layer, adaptive bins (bits)"]
    assert all(p.per_layer and p.labels == ["layer 0", "layer 1", "layer 2"] for p in panels)
    # a run without info_plane keys gets no plane
    assert plot_info_plane(load_run(make_probe_run(tmp_path, "plain")), tmp_path / "plain-plots") == []
    assert not (tmp_path / "plain-plots").exists()
