"""Self-contained HTML reports.

A page embeds its plots as base64 PNG data URIs and carries its CSS inline: no scripts, fonts, stylesheets or
images are fetched from anywhere, so a report can be mailed, archived or opened offline. Every piece of text
that comes from a run (names, config values, event details, commands) is escaped with :func:`html.escape`.
Pages and plots are written by :mod:`trainlab.report.output`: atomically, as valid UTF-8, never over a run's
records.

A run that used probes gets a "Probes" section: each probe's cost (calls, seconds, seconds per call and share of
the training time, from ``summary.json``'s ``probes.cost``), the probes skipped and why, and one figure per
probe (:mod:`trainlab.report.probe_plots`); the comparison page overlays the probe keys several runs share.

A task sequence gets a "Continual learning" section (from ``summary.json``'s ``continual`` entry,
:mod:`trainlab.continual.metrics`): ACC, BWT, FWT, forgetting, min-ACC and WC-ACC, the accuracy matrix as a
table and a heat-map, each task's accuracy over the steps and around each switch
(:mod:`trainlab.report.continual_plots`), the stability gaps and the ``stability_gap`` events; the comparison
page puts the runs' metrics and matrices side by side and their ``val_acc`` on one plot.
"""

from __future__ import annotations

import base64
import html
import math
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence, TypeGuard

import numpy as np
import yaml

from trainlab.report.continual_plots import matrix_rows, plot_compare_continual, plot_continual
from trainlab.report.output import write_text
from trainlab.report.plots import _safe, metric_label, plot_compare, plot_run
from trainlab.report.probe_plots import MAX_COMPARE_FIGURES, plot_compare_probes, plot_probes, shared_probe_keys
from trainlab.report.runs import Run, load_run
from trainlab.rundir import PLOTS, REPORT, check_output_path

__all__ = ["write_run_report", "write_compare_report"]


_CSS = """
:root { --fg: #1f2328; --muted: #656d76; --line: #d0d7de; --bg-soft: #f6f8fa; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; line-height: 1.45;
       font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1200px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 1.6rem; margin: 0 0 4px; word-break: break-word; }
h2 { font-size: 1.15rem; margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 1rem; margin: 18px 0 6px; }
p.meta { color: var(--muted); margin: 0 0 6px; }
.note { background: #fff8c5; border: 1px solid #d4a72c66; border-radius: 6px; padding: 8px 12px; margin: 12px 0; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.9rem; font-variant-numeric: tabular-nums; }
th, td { padding: 6px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: var(--bg-soft); font-weight: 600; white-space: nowrap; }
td.num { text-align: right; white-space: nowrap; }
tbody tr:hover { background: #f3f6fa; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 0.8rem; font-weight: 600;
         background: #eaeef2; color: #424a53; white-space: nowrap; }
.badge.completed { background: #dafbe1; color: #1a7f37; }
.badge.interrupted { background: #fff1e5; color: #bc4c00; }
.badge.running { background: #ddf4ff; color: #0969da; }
.badge.incomplete { background: #eaeef2; color: #57606a; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(460px, 1fr)); gap: 18px; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 8px; background: #fff; }
figure img { width: 100%; height: auto; display: block; }
figcaption { color: var(--muted); font-size: 0.85rem; padding: 4px 4px 0; }
.plots.wide { grid-template-columns: 1fr; }
.plots.wide figure img { max-width: 1210px; margin: 0 auto; }
figure details { margin: 8px 0 0; background: #fff; }
figure details > summary { font-weight: normal; color: var(--muted); font-size: 0.85rem; padding: 4px 8px; }
details { margin: 8px 0; border: 1px solid var(--line); border-radius: 6px; background: var(--bg-soft); }
details > summary { cursor: pointer; padding: 8px 12px; font-weight: 600; }
details pre { margin: 0; padding: 10px 14px; border-top: 1px solid var(--line); background: #fff;
              overflow-x: auto; font-size: 0.85rem; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace; }
code { background: var(--bg-soft); padding: 1px 5px; border-radius: 4px; font-size: 0.85rem; word-break: break-all; }
.empty { color: var(--muted); font-style: italic; }
footer { margin-top: 40px; color: var(--muted); font-size: 0.8rem; }
"""


# ---------------------------------------------------------------------------------------------- pages


def write_run_report(run_dir: str | Path) -> Path:
    """Write ``plots/*.png`` and ``report.html`` into the run directory ``run_dir``; returns the page's path."""
    run = load_run(run_dir)
    plots = plot_run(run, run.path / PLOTS)
    probe_plots = plot_probes(run, run.path / PLOTS)
    continual_plots = plot_continual(run, run.path / PLOTS)
    body = [
        _header(run.name, _run_meta(run)),
        _notes([run]),
        _section("Summary", _summary_table([run])),
        _continual_section([run], continual_plots),
        _section("Events", _events_table([run], with_run=False)),
        _section("Plots", _figures(plots, run.metric)),
        _probes_section([run], probe_plots),
        _section("Configuration", _run_details(run, open_config=True)),
    ]
    return write_text(run.path / REPORT, _page(f"trainlab report: {run.name}", body))


def write_compare_report(run_dirs: Sequence[str | Path], out_file: str | Path) -> Path:
    """Write one self-contained page comparing the runs in ``run_dirs`` to ``out_file``; returns its path."""
    run_dirs = list(run_dirs)
    if not run_dirs:
        raise ValueError("write_compare_report needs at least one run directory")
    check_output_path(out_file)  # before the plotting, which takes a while
    runs = [load_run(d) for d in run_dirs]
    shared = shared_probe_keys(runs)
    with tempfile.TemporaryDirectory(prefix="trainlab-compare-") as tmp:
        plots = plot_compare(runs, tmp)
        metrics = {run.metric for run in runs if run.metric != "loss"}
        figures = _figures(plots, next(iter(metrics)) if len(metrics) == 1 else "")
        probe_plots = plot_compare_probes(runs, Path(tmp) / "probes", shared[:MAX_COMPARE_FIGURES])
        probes = _probes_section(runs, probe_plots, shared=shared)
        continual = _continual_section(runs, plot_compare_continual(runs, Path(tmp) / "continual"))
    names = ", ".join(run.name for run in runs)
    configs = "".join(
        f"<h3>{_e(run.name)}</h3>{_run_details(run, open_config=False)}" for run in runs
    )
    body = [
        _header(f"Comparing {len(runs)} run{'s' if len(runs) != 1 else ''}", [_e(names)]),
        _notes(runs),
        _section("Summary", _summary_table(runs)),
        continual,
        _section("Events", _events_table(runs, with_run=True)),
        _section("Plots", '<p class="meta">One colour per run; solid lines: validation, dashed: train.</p>' + figures),
        probes,
        _section("Configurations", configs),
    ]
    return write_text(out_file, _page(f"trainlab comparison: {names}", body))


# -------------------------------------------------------------------------------------------- pieces


def _page(title: str, body: Iterable[str]) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(part for part in body if part)
        + '\n<footer>Generated by trainlab.</footer>\n</main>\n</body>\n</html>\n'
    )


def _header(title: str, meta: list[str]) -> str:
    """``meta`` items are already-escaped HTML fragments."""
    line = " &middot; ".join(m for m in meta if m)
    return f"<header>\n<h1>{_e(title)}</h1>\n" + (f'<p class="meta">{line}</p>\n' if line else "") + "</header>"


def _run_meta(run: Run) -> list[str]:
    meta = [_badge(run.status)]
    if run.workload:
        meta.append(f"workload <strong>{_e(run.workload)}</strong>")
    meta.append(f"directory <code>{_e(str(run.path))}</code>")
    command = run.summary.get("command")
    if command:
        meta.append(f"<code>{_e(str(command))}</code>")
    return meta


def _notes(runs: Sequence[Run]) -> str:
    notes = []
    for run in runs:
        if not run.has_summary:
            notes.append(
                f"<strong>{_e(run.name)}</strong>: no summary.json (the run is in progress or was stopped before "
                "it finished); the summary below is derived from metrics.jsonl and events.json."
            )
        notes.extend(f"<strong>{_e(run.name)}</strong>: {_e(w)}" for w in run.warnings)
    return "".join(f'<div class="note">{n}</div>' for n in notes)


def _section(title: str, content: str) -> str:
    return f"<section>\n<h2>{_e(title)}</h2>\n{content}\n</section>"


def _badge(status: str) -> str:
    cls = re.sub(r"[^a-z0-9-]", "", status.lower())
    return f'<span class="badge {cls}">{_e(status)}</span>'


_SUMMARY_COLUMNS = [
    ("run", False),
    ("workload", False),
    ("optimizer", False),
    ("steps", True),
    ("train time", True),
    ("final train metric", True),
    ("final val metric", True),
    ("memorized @ step", True),
    ("generalized @ step", True),
    ("grokking delay (steps)", True),
    ("grokking delay (time)", True),
    ("status", False),
]


def _summary_table(runs: Sequence[Run]) -> str:
    metrics = {run.metric for run in runs}
    single_metric = metric_label(next(iter(metrics))) if len(metrics) == 1 else None
    heads = []
    for name, numeric in _SUMMARY_COLUMNS:
        if single_metric and name.startswith("final "):
            name = name.replace("metric", single_metric)
        heads.append(f'<th{" class=num" if numeric else ""}>{_e(name)}</th>')
    rows = []
    for run in runs:
        events = run.summary.get("events")
        if not isinstance(events, dict):
            events = {}
        train_m, val_m = _final(run, f"train_{run.metric}"), _final(run, f"val_{run.metric}")
        suffix = "" if single_metric else f" {run.metric}"
        cells = [
            (_e(run.name), False),
            (_e(run.workload) or _DASH, False),
            (_e(_optimizer_text(run.config)), False),
            (_e(_int(run.summary.get("steps"))), True),
            (_e(_seconds(run.summary.get("train_time"))), True),
            (_e(_num(train_m) + (suffix if train_m is not None else "")), True),
            (_e(_num(val_m) + (suffix if val_m is not None else "")), True),
            (_e(_int(events.get("memorized"))), True),
            (_e(_int(events.get("generalized"))), True),
            (_e(_int(events.get("grokking_delay_steps"))), True),
            (_e(_seconds(events.get("grokking_delay_seconds"))), True),
            (_badge(run.status), False),
        ]
        rows.append("<tr>" + "".join(f'<td{" class=num" if n else ""}>{c}</td>' for c, n in cells) + "</tr>")
    return (
        '<div class="scroll"><table>\n<thead><tr>' + "".join(heads) + "</tr></thead>\n<tbody>\n"
        + "\n".join(rows) + "\n</tbody></table></div>"
    )  # fmt: skip


def _events_table(runs: Sequence[Run], *, with_run: bool, name: str | None = None) -> str:
    """The runs' events in step order (only those called ``name``, when given)."""
    rows = []
    for run in runs:
        for event in sorted(run.events, key=_event_sort_key):
            if name is not None and event.get("name") != name:
                continue
            cells = [_e(run.name)] if with_run else []
            cells += [
                _e(str(event.get("name", ""))),
                _e(_int(event.get("step"))),
                _e(_seconds(event.get("time"))),
                _e(_num(event.get("value"))),
                _e(str(event.get("metric") or "")),
                _e(str(event.get("detail") or "")),
            ]
            rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    if not rows:
        return f'<p class="empty">No {_e(name) + " " if name else ""}events recorded.</p>'
    heads = (["run"] if with_run else []) + ["event", "step", "time", "value", "metric", "detail"]
    return (
        '<div class="scroll"><table>\n<thead><tr>' + "".join(f"<th>{h}</th>" for h in heads)
        + "</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody></table></div>"
    )  # fmt: skip


def _event_sort_key(event: dict[str, Any]) -> float:
    step = event.get("step")
    return float(step) if isinstance(step, (int, float)) and not isinstance(step, bool) else math.inf


_CAPTIONS = {
    "loss": "Loss: train vs validation.",
    "loss_logx": "Loss on a log step axis (step 0 left out).",
    "metric": "{m}: train vs validation; dashed line: threshold.",
    "metric_logx": "{m} on a log step axis (step 0 left out).",
    "fed_time": "Federated runs: validation {m} against simulated time (each run's steps are server updates).",
    "fed_bytes": "Federated runs: validation {m} against the megabytes clients and server sent (up + down).",
}


def _figures(paths: Sequence[Path], metric: str, captions: dict[str, str] | None = None) -> str:
    """The PNGs at ``paths`` embedded as figures; a caption from ``captions`` (by file stem), else the
    standard ones."""
    if not paths:
        return '<p class="empty">No plots.</p>'
    label = metric_label(metric).capitalize() if metric and metric != "loss" else "Metric"
    parts = []
    for path in paths:
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        stem = Path(path).stem
        if captions and stem in captions:
            caption = captions[stem]
        else:
            caption = _CAPTIONS.get(stem, stem.replace("_", " ")).format(m=label)
        parts.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{_e(stem)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>"
        )
    return '<div class="plots">\n' + "\n".join(parts) + "\n</div>"


def _probe_figures(paths: Sequence[Path], captions: dict[str, str]) -> str:
    """One full-width figure per probe, its log-step variant (``*_logx.png``) folded under it."""
    by_stem = {Path(p).stem: Path(p) for p in paths}
    parts = []
    for stem, path in by_stem.items():
        if stem.endswith("_logx") and stem[: -len("_logx")] in by_stem:
            continue
        parts.append(f'<figure><img src="{_data_uri(path)}" alt="{_e(stem)}">'
                     f"<figcaption>{_e(captions.get(stem, stem))}</figcaption>")
        logx = by_stem.get(f"{stem}_logx")
        if logx is not None:
            parts.append(f"<details><summary>On a log step axis</summary>"
                         f'<img src="{_data_uri(logx)}" alt="{_e(logx.stem)}"></details>')
        parts.append("</figure>")
    return '<div class="plots wide">\n' + "".join(parts) + "\n</div>"


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


# Probe captions: what the figure shows (the probes' definitions are in trainlab.probes and `trainlab list probes`).
_PROBE_CAPTIONS = {
    "weights": "Parameter norms: all parameters, the last layer (slingshot cycles: it grows in bursts with loss "
               "spikes), and each weight matrix (coloured by depth).",
    "grad_alignment": "Cosine between the gradient and the weights (close to -1: the update mostly scales the "
                      "weights, naive loss minimisation).",
    "hessian": "Top Hessian eigenvalue(s) by Lanczos with 2/lr (dashed; from each row's learning rate), and the "
               "edge-of-stability ratio sharpness·lr/2 with its threshold 1 (gradient descent is stable below).",
    "hessian_trace": "Hessian trace by Hutchinson (band: ± standard error) and trace·lr/2 with a line at 1.",
    "update_sharpness": "Curvature along the update actually taken, with 2/lr, and its ratio to 2/lr with a line "
                        "at 1.",
    "noise_scale": "Gradient noise scale B_simple = tr(Σ)/|G|² and its parts.",
    "rank": "Effective rank of W − W₀: the mean, and each weight matrix (coloured by depth).",
    "ntk": "Empirical NTK: distance from the kernel at step 0 (lazy: stays near 0; rich: moves) and its "
           "alignment with the labels.",
    "local_complexity": "Local complexity (linear regions in a neighbourhood) around train, validation and "
                        "random points.",
    "softmax_collapse": "Fraction of the probe batch whose softmax rounds to one-hot, and of exactly-zero losses.",
    "attention_entropy": "Attention entropy: the lowest head over all layers, and the lowest and mean head per "
                         "layer (nats).",
    "margin": "Classification margin, raw and normalised by the parameter norm.",
    "jacobian": "Input–output Jacobian Frobenius norm (GrokAlign's estimate) and centroid alignment.",
    "data_diet": "Mean EL2N and GraNd scores (per-example scores in data_diet/step_N.csv).",
    "robustness": "Accuracy under attack: clean accuracy and accuracy under PGD at each radius eps on the probe's "
                  "validation examples (an attack bounds the robust accuracy from above). The robust event: "
                  "adversarial accuracy at the largest eps reaching 0.9 x the clean accuracy after generalisation.",
    "certified": "Verified accuracy at each radius eps: the fraction of the probe's validation examples that "
                 "interval bounds prove correct over the whole eps-ball (a lower bound on the robust accuracy).",
}


def _probe_captions(paths: Sequence[Path], runs: Sequence[Run]) -> dict[str, str]:
    captions: dict[str, str] = {}
    for path in paths:
        stem = Path(path).stem
        if len(runs) > 1:
            captions[stem] = "Overlay of the runs that recorded this probe key (one colour per run)."
            continue
        base = stem.removesuffix("_logx")
        probe = next((p for p in runs[0].probes if f"probe_{_safe(p)}" == base), base[len("probe_"):])
        text = _PROBE_CAPTIONS.get(probe, f"Probe {probe}: each of its keys over the probed steps.")
        captions[stem] = f"{probe}: {text} Dotted lines: events that concern this probe."
    return captions


def _probes_section(runs: Sequence[Run], plots: Sequence[Path], *, shared: Sequence[str] | None = None) -> str:
    """Probe figures, each probe's cost and the probes that were skipped; empty when no run used probes."""
    if not any(run.probes or run.probe_cost or run.probes_skipped for run in runs):
        return ""
    compare = len(runs) > 1
    parts = []
    if not compare:
        run = runs[0]
        carried = [run.carried(f"{p}/{k}") for p, keys in run.probes.items() for k in keys]
        n = int(np.logical_or.reduce(carried).sum()) if carried else 0
        parts.append(f'<p class="meta">{n:,} probed step{"s" if n != 1 else ""}; values as the trainer wrote them '
                     "in metrics.jsonl (<code>&lt;probe&gt;/&lt;key&gt;</code>); a null value is a gap.</p>")
    parts.append("<h3>Cost</h3>" + _probe_cost_table(runs))
    skipped = _probe_skipped_table(runs)
    if skipped:
        parts.append("<h3>Skipped</h3>" + skipped)
    if compare:
        keys = list(shared or [])
        if keys:
            left = keys[MAX_COMPARE_FIGURES:]
            parts.append("<h3>Probe keys recorded by more than one run</h3>")
            if left:
                parts.append(f'<p class="meta">{len(keys)} keys are shared; the first {MAX_COMPARE_FIGURES} are '
                             f"plotted. Left out: {', '.join(f'<code>{_e(k)}</code>' for k in left)}.</p>")
            parts.append(_figures(plots, "", _probe_captions(plots, runs)))
        else:
            parts.append('<p class="empty">No probe key was recorded by more than one run.</p>')
    elif plots:
        parts.append("<h3>Curves</h3>" + _probe_figures(plots, _probe_captions(plots, runs)))
    else:
        parts.append('<p class="empty">No probe values recorded.</p>')
    return _section("Probes", "\n".join(parts))


def _probe_cost_table(runs: Sequence[Run]) -> str:
    """Calls, seconds, seconds per call and share of the training time of each probe (``summary.json``'s
    ``probes.cost`` beside its ``train_time``, which excludes the probes: the trainer pauses its timer)."""
    compare = len(runs) > 1
    rows = []
    for run in runs:
        who = run.name if compare else None
        train_time = run.summary.get("train_time")
        train_time = float(train_time) if _is_num(train_time) and math.isfinite(train_time) else None
        skipped = run.probes_skipped
        total_calls, total_seconds = 0, 0.0
        cost = run.probe_cost
        for name, entry in cost.items():
            calls, seconds = entry.get("calls"), entry.get("seconds")
            calls = int(calls) if _is_num(calls) else None
            seconds = float(seconds) if _is_num(seconds) else None
            total_calls += calls or 0
            total_seconds += seconds or 0.0
            note = " (skipped)" if name in skipped else ""
            rows.append(_cost_row(who, compare, _e(name) + note, calls, seconds, train_time))
        if len(cost) > 1:
            rows.append(_cost_row(who, compare, "<strong>all probes</strong>", total_calls, round(total_seconds, 3),
                                  train_time))
        if not cost:
            rows.append(_cost_row(who, compare, '<span class="empty">no cost recorded</span>', None, None,
                                  train_time))
    heads = (["run"] if compare else []) + ["probe"]
    heads_num = ["calls", "total seconds", "seconds per call", "% of training time"]
    if compare:
        heads_num.append("training time (s)")
        where = "the run's training time"
    else:
        train_time = runs[0].summary.get("train_time")
        where = f"the training time, {_e(_num(train_time))} s" if _is_num(train_time) else "the training time"
    return (
        '<div class="scroll"><table class="probe-cost">\n<thead><tr>' + "".join(f"<th>{h}</th>" for h in heads)
        + "".join(f"<th class=num>{h}</th>" for h in heads_num) + "</tr></thead>\n<tbody>\n" + "\n".join(rows)
        + "\n</tbody></table></div>"
        f'<p class="meta">% of training time: the probe\'s seconds over {where}, which excludes the probes (the '
        "trainer pauses its clock while they run).</p>"
    )  # fmt: skip


def _cost_row(run: str | None, with_time: bool, probe_html: str, calls: int | None, seconds: float | None,
              train_time: float | None) -> str:
    per_call = seconds / calls if seconds is not None and calls else None
    share = 100.0 * seconds / train_time if seconds is not None and train_time else None
    cells = ([f"<td>{_e(run)}</td>"] if run is not None else []) + [f"<td>{probe_html}</td>"]
    cells += [
        f"<td class=num>{_int(calls)}</td>",
        f"<td class=num>{_DASH if seconds is None else f'{seconds:.3f}'}</td>",
        f"<td class=num>{_DASH if per_call is None else f'{per_call:.4g}'}</td>",
        f"<td class=num>{_DASH if share is None else f'{share:.1f}%'}</td>",
    ]
    if with_time:  # several runs: each row says its run's training time; one run: the note under the table does
        cells.append(f"<td class=num>{_DASH if train_time is None else f'{train_time:.3f}'}</td>")
    return "<tr>" + "".join(cells) + "</tr>"


def _probe_skipped_table(runs: Sequence[Run]) -> str:
    compare = len(runs) > 1
    rows = []
    for run in runs:
        for name, reason in run.probes_skipped.items():
            cells = ([_e(run.name)] if compare else []) + [_e(name), _e(reason)]
            rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    if not rows:
        return ""
    heads = (["run"] if compare else []) + ["probe", "why it was skipped"]
    return (
        '<div class="scroll"><table class="probe-skipped">\n<thead><tr>' + "".join(f"<th>{h}</th>" for h in heads)
        + "</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody></table></div>"
    )  # fmt: skip


# ------------------------------------------------------------------------------------- continual learning

# The metrics of summary.json's ``continual`` entry: (key, name, what it is); k is the last finished task.
_CONTINUAL_METRICS = [
    ("acc", "ACC", "mean accuracy over the tasks seen, at the end of task k: 1/(k+1) Σ_j R[k][j]"),
    ("bwt", "BWT", "backward transfer: 1/k Σ_{j<k} (R[k][j] − R[j][j]); negative: forgetting"),
    ("fwt", "FWT", "forward transfer: 1/k Σ_{1≤j≤k} (R[j−1][j] − b[j]), before task j trains"),
    ("forgetting", "forgetting", "1/k Σ_{j<k} (max_{l<k} R[l][j] − R[k][j]) (Chaudhry et al. 2018)"),
    ("min_acc", "min-ACC", "each old task's lowest accuracy after it was learned, averaged (De Lange et al. 2023)"),
    ("wc_acc", "WC-ACC", "worst-case accuracy: A/(k+1) + (1 − 1/(k+1)) min-ACC, A the current task's accuracy at the "
                         "last evaluation (De Lange et al. 2023)"),
]
_CONTINUAL_CAPTIONS = {
    "continual_matrix": "Accuracy matrix R[i][j]: accuracy on task j (columns) at the end of task i (rows); "
                        "init: before training (b).",
    "continual_tasks": "Validation accuracy on each task over the steps; dashed: task switches; triangles: "
                       "stability_gap events.",
    "continual_switches": "Around each switch, on a log axis of steps since it (the dense evaluations): each old "
                          "task's dip below its accuracy at the switch (dotted) and its recovery: the stability gap.",
    "continual_matrices": "Each run's accuracy matrix (rows: after task i; columns: task j; init: before training).",
    "continual_val_acc": "val_acc, the mean accuracy over the tasks seen so far, of each run; dashed: task switches.",
}
MAX_MATRIX_TABLE_TASKS = 20  # longer sequences get the heat-map only
MAX_GAP_ROWS = 60  # the stability-gap table shows the deepest gaps up to this many (all are in summary.json)


def _continual_section(runs: Sequence[Run], plots: Sequence[Path]) -> str:
    """Metrics, accuracy matrix, figures, stability gaps and stability_gap events of the runs that are task
    sequences; empty when none is."""
    sequences = [run for run in runs if run.continual is not None]
    if not sequences:
        return ""
    parts = [_continual_table(sequences, with_run=len(runs) > 1), _continual_legend()]
    if len(runs) == 1:
        entry = sequences[0].continual
        assert entry is not None
        parts += ["<h3>Accuracy matrix</h3>", _matrix_table(entry), _figures(plots, "", _CONTINUAL_CAPTIONS),
                  "<h3>Stability gaps</h3>", _gaps_table(entry),
                  "<h3>stability_gap events</h3>", _events_table(runs, with_run=False, name="stability_gap")]
    else:
        parts.append(_figures(plots, "", _CONTINUAL_CAPTIONS))
    return _section("Continual learning", "\n".join(parts))


def _continual_table(runs: Sequence[Run], *, with_run: bool) -> str:
    heads = (["run"] if with_run else []) + ["tasks finished"] + [name for _, name, _ in _CONTINUAL_METRICS]
    heads += ["stability_gap events", "deepest gap"]
    rows = []
    for run in runs:
        entry = run.continual or {}
        gaps = entry.get("stability_gaps") or []
        deepest = max((g["depth"] for g in gaps if _is_num(g.get("depth"))), default=None)
        cells = [f"<td>{_e(run.name)}</td>"] if with_run else []
        cells.append(f"<td class=num>{len(entry.get('matrix') or [])} of {_e(_int(entry.get('tasks')))}</td>")
        cells += [_acc_cell(entry.get(key)) for key, _, _ in _CONTINUAL_METRICS]
        cells += [f"<td class=num>{sum(e.get('name') == 'stability_gap' for e in run.events)}</td>",
                  _acc_cell(deepest)]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (
        '<div class="scroll"><table class="continual-metrics">\n<thead><tr>' + "".join(f"<th>{h}</th>" for h in heads)
        + "</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody></table></div>"
    )  # fmt: skip


def _continual_legend() -> str:
    items = "".join(f"<li><strong>{name}</strong>: {_e(what)}</li>" for _, name, what in _CONTINUAL_METRICS)
    return (
        '<details><summary>What the metrics are</summary><ul class="meta">'
        "<li>R[i][j]: accuracy on task j at the end of task i (Lopez-Paz &amp; Ranzato 2017); b[j]: at step 0; "
        "k: the last finished task (the last of the sequence once it has run to the end).</li>"
        f"{items}<li>stability gap: an old task's accuracy at a switch minus its lowest while the next task "
        "trains, and the steps until it is back near its value at the switch.</li></ul></details>"
    )  # fmt: skip


def _matrix_table(entry: dict[str, Any]) -> str:
    """R under b (row ``init``), each cell an accuracy (its exact value in ``data-value``)."""
    rows, labels = matrix_rows(entry)
    count = len(rows[0]) if rows else 0
    if count > MAX_MATRIX_TABLE_TASKS:
        return (f'<p class="meta">{count} tasks: too many columns for a table; the heat-map below draws the matrix, '
                "summary.json holds its numbers (continual.matrix).</p>")
    heads = "<th>after task \\ task</th>" + "".join(f"<th class=num>{j}</th>" for j in range(count))
    body = [f"<tr><th>{_e(label)}</th>" + "".join(_acc_cell(v) for v in row) + "</tr>"
            for label, row in zip(labels, rows)]
    return (
        f'<div class="scroll"><table class="continual-matrix">\n<thead><tr>{heads}</tr></thead>\n<tbody>\n'
        + "\n".join(body) + "\n</tbody></table></div>"
    )  # fmt: skip


def _gaps_table(entry: dict[str, Any]) -> str:
    """The stability gaps deeper than the recovery tolerance (an old task already forgotten at a switch has none
    to show), the deepest :data:`MAX_GAP_ROWS` of them in switch order."""
    tolerance = entry.get("recovery_tolerance") if _is_num(entry.get("recovery_tolerance")) else 0.0
    every = [g for g in entry.get("stability_gaps") or [] if isinstance(g, dict) and _is_num(g.get("depth"))]
    gaps = [g for g in every if g["depth"] > tolerance]
    if not gaps:
        return f'<p class="empty">No old task fell more than {_e(_num(tolerance))} after a switch.</p>'
    shown = sorted(sorted(gaps, key=lambda g: -g["depth"])[:MAX_GAP_ROWS], key=lambda g: (g["step"], g["task"]))
    rows = []
    for g in shown:
        recovery = g.get("recovery_steps")
        cells = [f"<td class=num>{_e(_int(g.get('switch')))}</td>", f"<td class=num>{_e(_int(g.get('step')))}</td>",
                 f"<td class=num>{_e(_int(g.get('task')))}</td>", _acc_cell(g.get("at_switch")),
                 _acc_cell(g.get("min")), f"<td class=num>{_e(_int(g.get('min_step')))}</td>",
                 _acc_cell(g.get("depth")),
                 f"<td class=num>{'not recovered' if recovery is None else _e(_int(recovery))}</td>"]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    heads = ["to task", "at step", "old task", "acc at switch", "lowest", "at step", "depth", "recovery (steps)"]
    note = (f"recovery: steps from the switch until the old task is back within {_e(_num(tolerance))} of its "
            "accuracy at the switch, before the next switch")
    if len(every) > len(gaps):
        note += f". {len(every) - len(gaps)} (switch, old task) pairs that fell less are left out"
    if len(gaps) > len(shown):
        note += f"; the {len(shown)} deepest of {len(gaps)} gaps are shown"
    note += "; all are in summary.json (continual.stability_gaps)"
    return (
        '<div class="scroll"><table class="continual-gaps">\n<thead><tr>'
        + "".join(f"<th class=num>{h}</th>" for h in heads) + "</tr></thead>\n<tbody>\n" + "\n".join(rows)
        + f'\n</tbody></table></div><p class="meta">{note}.</p>'
    )  # fmt: skip


def _acc_cell(value: Any) -> str:
    """A numeric cell of an accuracy-like value: three decimals shown, the exact value in ``data-value``."""
    if not _is_num(value) or not math.isfinite(value):
        return f"<td class=num>{_DASH}</td>"
    return f'<td class=num data-value="{float(value)!r}">{value:.3f}</td>'


def _run_details(run: Run, *, open_config: bool) -> str:
    config = yaml.safe_dump(run.config, sort_keys=False, default_flow_style=False, allow_unicode=True)
    parts = [
        f"<details{' open' if open_config else ''}><summary>Resolved config (config.yaml)</summary>"
        f"<pre>{_e(config.strip() or '# no config.yaml')}</pre></details>"
    ]
    versions = run.summary.get("versions")
    if isinstance(versions, dict) and versions:
        text = yaml.safe_dump(versions, sort_keys=True, default_flow_style=False, allow_unicode=True)
        parts.append(f"<details><summary>Versions</summary><pre>{_e(text.strip())}</pre></details>")
    final = run.summary.get("final")
    if isinstance(final, dict) and final:
        text = "\n".join(f"{k}: {_num(v) if _is_num(v) else v}" for k, v in final.items())
        parts.append(f"<details><summary>Final metrics</summary><pre>{_e(text)}</pre></details>")
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------ formatting

_DASH = "\u2014"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _is_num(value: Any) -> TypeGuard[float]:  # an int or a float, not a bool
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _final(run: Run, column: str) -> float | None:
    """The final value of ``column``: from the summary's ``final`` row, else the last metrics row."""
    final = run.summary.get("final")
    if isinstance(final, dict) and _is_num(final.get(column)):
        return float(final[column])
    return run.last(column)  # the last row that carries it: a probe-only row has no train_*/val_* keys


def _num(value: Any) -> str:
    if not _is_num(value):
        return _DASH
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)  # nan, inf, -inf: show a diverged value as it is
    return f"{value:.4g}"


def _int(value: Any) -> str:
    if not _is_num(value) or not math.isfinite(value):
        return _DASH
    return f"{int(value):,}"


def _seconds(value: Any) -> str:
    if not _is_num(value) or not math.isfinite(value):
        return _DASH
    sign, value = ("-" if value < 0 else ""), abs(float(value))
    if value < 60:
        return f"{sign}{value:.1f} s"
    if value < 3600:
        minutes, seconds = divmod(round(value), 60)
        return f"{sign}{minutes} min {seconds:02d} s"
    hours, rest = divmod(round(value), 3600)
    return f"{sign}{hours} h {rest // 60:02d} min"


def _optimizer_text(config: dict[str, Any]) -> str:
    opt = config.get("optimizer")
    if not isinstance(opt, dict):
        return str(opt) if opt else _DASH
    parts = [str(opt.get("name") or "?")]
    for key, short in (("lr", "lr"), ("weight_decay", "wd")):
        if key in opt and opt[key] is not None:
            value = opt[key]
            parts.append(f"{short} {value:g}" if _is_num(value) else f"{short} {value}")
    return ", ".join(parts)
