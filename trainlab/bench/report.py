"""The bench's outputs, from ``bench.json`` and ``results.jsonl`` only (never re-trains).

- ``leaderboard.md``: the standings (benchmark score, workloads solved, speedup over the baseline with a
  bootstrap CI, sign-test and permutation-test p-values, verdict), the time-to-target table (median over
  repetitions with a bootstrap CI, misses), the submissions, the targets and the command;
- ``plots/performance_profile.png`` and ``plots/time_to_target.png``;
- ``report.html``: the same, self-contained, in the style of ``trainlab report`` (its page, section and
  figure helpers are reused).

Every file is written by :mod:`trainlab.report.output` (atomically, as valid UTF-8). Text that users give --
submission names and specs, workload names, the command, the targets' source -- is escaped for each format:
:func:`md` and :func:`md_code` for markdown (no raw HTML, no broken table rows), :func:`html.escape` for HTML.

:func:`write_page` and :func:`table` are generic, for studies that want a page of their own.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from trainlab.bench import scoring, stepcost
from trainlab.bench.timing import CLOCK_UNITS
from trainlab.bench.results import Standings, standings
from trainlab.bench.runner import load_records
from trainlab.errors import BenchError
from trainlab.report.html import _e, _figures, _header, _page, _section
from trainlab.report.output import write_text
from trainlab.report.plots import RUN_COLORS, _new_figure, _save, _text
from trainlab.rundir import printable

BENCH_FILE = "bench.json"
LEADERBOARD = "leaderboard.md"
REPORT = "report.html"
PLOTS = "plots"


def load(out_dir: str | Path, clock: str | None = None) -> tuple[dict[str, Any], Standings]:
    """The bench in ``out_dir`` scored on its own clock, or on ``clock`` (its records hold every clock's times;
    the cost clock also needs ``step_costs.json``: :func:`trainlab.bench.stepcost.ensure_costs` measures them)."""
    out = Path(out_dir)
    info = json.loads((out / BENCH_FILE).read_text())
    if clock is not None:
        info = {**info, "clock": clock}
    subs = [s["name"] for s in info["submissions"]]
    records = load_records(out)
    if bench_clock(info) == "cost":
        records = _with_costs(out, info, records)
    return info, standings(records, info["workloads"], subs, info.get("baseline"),
                           heldout=bool(info.get("heldout", True)), clock=bench_clock(info))


def cost_reference(info: dict[str, Any]) -> str:
    """The submission whose step sets the cost clock's unit: the baseline, else the first submission."""
    return str(info.get("baseline") or info["submissions"][0]["name"])


def _with_costs(out: Path, info: dict[str, Any], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    data = stepcost.load_costs(out)
    if data is None or stepcost.missing(data["workloads"], stepcost.jobs_from_records(records)):
        raise BenchError(f"{out} has no step costs for every submission and workload; `trainlab bench report {out} "
                         "--clock cost` measures them")
    reference = cost_reference(info)
    return stepcost.with_cost_time(records, stepcost.cost_seconds(data["workloads"], reference), reference)


def bench_clock(info: dict[str, Any]) -> str:
    """The clock a bench scores on (bench.json's ``clock``); benches written before it was recorded: wall."""
    return str(info.get("clock", "wall"))


def write_report(out_dir: str | Path, clock: str | None = None) -> list[Path]:
    """Write leaderboard.md, the plots and report.html into ``out_dir``, scored on the bench's clock or on
    ``clock``; returns their paths."""
    out = Path(out_dir)
    if not (out / BENCH_FILE).is_file():
        raise BenchError(f"{out} holds no bench ({BENCH_FILE} missing)")
    info, st = load(out, clock)
    costs = stepcost.load_costs(out) if bench_clock(info) == "cost" else None
    plots = [plot_profile(st, out / PLOTS / "performance_profile.png"),
             plot_times(st, out / PLOTS / "time_to_target.png", bench_clock(info))]
    leaderboard = write_text(out / LEADERBOARD, markdown(info, st, costs))
    sections = [
        ("Leaderboard", table(*_standings_table(st), html=True) + _definitions_html()),
        ("Time to target", table(*_times_table(info, st), html=True)),
        *([("Step costs", table(*_costs_table(info, costs), html=True))] if costs else []),
        ("Plots", _figures(plots, "")),
        ("Submissions", table(*_submissions_table(info), html=True)),
        ("Trials", f"<details><summary>{len(load_records(out))} trial records (results.jsonl)</summary>"
                   + table(*_trials_table(out), html=True) + "</details>"),
    ]
    page = write_page(out / REPORT, f"trainlab bench: {info['suite']}", _meta(info), sections)
    return [leaderboard, *plots, page]


# ------------------------------------------------------------------------------------------------ tables


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, html: bool = False) -> str:
    """A markdown table, or (``html=True``) an HTML one; headers and cells are plain text, escaped here."""
    if html:
        head = "".join(f"<th>{_e(h)}</th>" for h in headers)
        body = "\n".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
        return f'<div class="scroll"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table></div>'
    lines = ["| " + " | ".join(md(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(md(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# Control characters (newlines included) and Unicode's line and paragraph separators: each would end a line.
_LINE_BREAKERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def _one_line(text: object) -> str:
    return _LINE_BREAKERS.sub(" ", printable(str(text)))


# A "<" where markdown would start raw HTML (a tag, a closing tag, a comment, a declaration) or an autolink.
_HTML_START = re.compile("<(?=[A-Za-z/!?])")


def md(text: object) -> str:
    """``text`` as literal markdown on one line: control characters (a newline would end a table row) as a
    space; ``&`` and a ``<`` that would open a tag as HTML entities (markdown passes raw HTML through, so a
    submission named ``<script>`` would be a script; ``<=`` stays as it is); ``\\`` and ``|`` (which ends a
    table cell) backslash-escaped."""
    text = _HTML_START.sub("&lt;", _one_line(text).replace("&", "&amp;"))
    return text.replace("\\", "\\\\").replace("|", "\\|")


def md_code(text: object) -> str:
    """``text`` as a markdown code span on one line, shown literally: fenced by one backtick more than the
    longest run of backticks inside it (a command may hold backticks)."""
    text = _one_line(text)
    fence = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""  # CommonMark strips one space on each side
    return f"{fence}{pad}{text}{pad}{fence}"


def leaderboard_table(st: Standings) -> str:
    """The standings as a markdown table (what ``trainlab bench`` prints at the end)."""
    return table(*_standings_table(st))


def _num(value: float, digits: int = 3) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def _p(value: float) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.2g}" if value >= 0.001 else "<0.001"


def _secs(value: float) -> str:
    return "miss" if not math.isfinite(value) else f"{value:.1f} s" if value >= 1 else f"{value:.2f} s"


def _standings_table(st: Standings) -> tuple[list[str], list[list[str]]]:
    base = st.baseline or "—"
    headers = ["rank", "submission", "benchmark score", "solved", f"speedup vs {base} [95% CI]",
               "speedup, misses = budget", "wins-losses", "p (sign)", "p (perm.)", "verdict"]
    rows = []
    for i, r in enumerate(st.rows, 1):
        if r.name == st.baseline:
            speed = "1 (baseline)"
        elif math.isfinite(r.speedup):
            speed = (f"{r.speedup:.2f}x [{_num(r.ci[0], 2)}, {_num(r.ci[1], 2)}] "
                     f"({r.speedup_used} workload{'s' if r.speedup_used != 1 else ''})")
        else:
            speed = "—"
        verdict = r.verdict
        if verdict == "not distinguishable":  # how large a difference it would have seen
            verdict += (f" (could detect >= {r.detectable:.2f}x)" if math.isfinite(r.detectable)
                        else " (too few repetitions to detect any speedup)")
        rows.append([str(i), r.name, f"{r.score:.3f}", f"{r.solved}/{len(st.workloads)}", speed,
                     "—" if r.name == st.baseline or not math.isfinite(r.speedup_algoperf)
                     else f"{r.speedup_algoperf:.2f}x",
                     "—" if r.name == st.baseline else f"{r.wins}-{r.losses}",
                     "—" if r.name == st.baseline else _p(r.p_sign),
                     "—" if r.name == st.baseline else f"{_p(r.p_perm)} ({r.perm_pairs} pairs)", verdict])
    return headers, rows


def _target_text(info: dict[str, Any], workload: str) -> str:
    t = info.get("targets", {}).get(workload, {})
    if not t:
        return workload
    op = ">=" if t.get("higher_is_better", True) else "<="
    return f"{workload} ({t['metric']} {op} {t['target']:.4g})"


def _on_clock(value: float, clock: str) -> str:
    if clock == "steps":
        return "miss" if not math.isfinite(value) else f"{value:g} steps"
    return _secs(value) + (" CPU" if clock == "cpu" and math.isfinite(value) else "")


def _costs_table(info: dict[str, Any], costs: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per workload and submission: the measured seconds per step and the cost relative to the reference's step
    (median over rounds of the paired ratio, with the range of the middle half of the rounds)."""
    ratios = stepcost.paired_ratios(costs["workloads"], cost_reference(info))
    headers = ["workload", *[s["name"] for s in info["submissions"]]]
    rows = []
    for w in info["workloads"]:
        row = [w]
        for s in headers[1:]:
            entry, paired = costs["workloads"].get(w, {}).get(s), ratios.get(w, {}).get(s)
            if entry is None or paired is None:
                row.append("—")
                continue
            q1, q2, q3 = np.quantile(paired, [0.25, 0.5, 0.75])
            row.append(f"{entry['seconds_per_step'] * 1e3:.3g} ms, {q2:.2f}x [{q1:.2f}, {q3:.2f}]")
        rows.append(row)
    return headers, rows


def _times_table(info: dict[str, Any], st: Standings) -> tuple[list[str], list[list[str]]]:
    clock = bench_clock(info)
    headers = ["workload (target)", *st.submissions]
    rows = []
    for w in st.workloads:
        row = [_target_text(info, w)]
        for s in st.submissions:
            cell = st.cell(s, w)
            if not cell.reps:
                row.append("not run")
                continue
            lo, hi = scoring.median_ci(cell.reps)
            text = _on_clock(cell.time, clock)
            if math.isfinite(cell.time):
                text += f" [{_on_clock(lo, clock)}, {_on_clock(hi, clock)}]"
                if clock != "steps":
                    steps = scoring.median([math.inf if s is None else s for s in cell.steps])
                    text += f", {steps:g} steps"
            notes = []
            if cell.misses:
                notes.append(f"{cell.misses}/{len(cell.reps)} missed")
            if cell.gated:
                notes.append(f"{cell.gated} by held-out")
            row.append(text + (f" ({'; '.join(notes)})" if notes else ""))
        rows.append(row)
    return headers, rows


def _submissions_table(info: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    return ["submission", "algorithm", "given as"], [[s["name"], s["describe"], s["spec"]] for s in info["submissions"]]


def _trials_table(out: Path) -> tuple[list[str], list[list[str]]]:
    headers = ["workload", "variant", "submission", "study", "trial", "seed", "hyperparameters", "status",
               "time to target", "step", "best"]
    rows = []
    for r in load_records(out):
        if r.get("kind") != "bench":
            continue
        score = r["score"]
        hp = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in (r.get("hyperparameters") or {}).items())
        rows.append([r["workload"], r["variant"], r["submission"], str(r["study"]), str(r["trial"]), str(r["seed"]),
                     hp or "—", r.get("error") or score["status"],
                     _secs(math.inf if score["time"] is None else score["time"]),
                     str(score["step"]) if score["step"] is not None else "—", _num(score["best"], 4)])
    return headers, rows


# ----------------------------------------------------------------------------------------------- markdown

_DEFINITIONS = (
    "Time to target: on the bench's clock (its header says which: step-cost seconds, the default, are the steps to "
    "target charged the submission's seconds per step measured side by side with the others in one process, so "
    "that the machine's load cancels (section 'Step costs'); the trial's CPU seconds of training; wall seconds of "
    "training; or optimizer steps), "
    "evaluation excluded, at the first evaluation meeting the validation target, median over repetitions (seed r for every submission; for a search space, the best trial of study r); "
    "a repetition counts as a miss when the held-out variant misses its target. Benchmark score: AlgoPerf's "
    "normalised area under the performance profile from tau = 1 to 4 (1 = fastest everywhere; ratios beyond 4 "
    "and misses count as never). Speedup: geometric mean over the workloads both solve of baseline time / "
    "submission time; CI: paired bootstrap over repetitions. 'Speedup, misses = budget': AlgoPerf's convention, "
    "the geometric mean over every workload with a miss charged the workload's budget (time or step budget on those "
    "clocks, the step budget at the baseline's step cost on the cost clock; none on the CPU clock, whose budgets are "
    "not CPU seconds). p (sign): one-sided "
    "sign test that the submission reaches the target first, over (workload, repetition) pairs (a hit beats a "
    "miss; on the cost clock, times within 10% of each other are ties: its step-cost ratio is one measurement shared "
    "by all the repetitions of a workload); p (perm.): sign-flip permutation test of the paired log time ratios. Verdict 'faster' needs p (sign) "
    "< 0.05; 'not distinguishable' names the smallest speedup the run could have detected (power 0.8, one-sided "
    "0.05, from the spread of the paired log ratios), or says that too few repetitions were run for the sign test "
    "to reach 0.05 at all (fewer than 5 pairs)."
)


_TIMES_NOTE = ("Median [95% bootstrap CI] over repetitions on the bench's clock, and the median step (steps do not "
               "depend on the machine's load; wall seconds do most, CPU seconds much less).")


_COSTS_NOTE = ("Seconds per training step of each submission's first trial configuration, measured side by side in one "
               "process ({rounds} rounds of one timed block each, rotating order; trainlab.bench.stepcost), and the "
               "cost relative to {reference}'s step: median over rounds of the paired ratio [middle half of the "
               "rounds]. The cost clock charges each step to target the relative cost times {reference}'s median "
               "seconds per step.")


def markdown(info: dict[str, Any], st: Standings, costs: dict[str, Any] | None = None) -> str:
    parts = [f"# trainlab bench: {md(info['suite'])}", "", " · ".join(md(m) for m in _meta_text(info)), "",
             f"Command: {md_code(info.get('command', ''))}", "",
             table(*_standings_table(st)), "", _DEFINITIONS, "",
             "## Time to target", "", _TIMES_NOTE, "",
             table(*_times_table(info, st)), "",
             *(["## Step costs", "", _COSTS_NOTE.format(rounds=costs.get("rounds"), reference=cost_reference(info)),
                "", table(*_costs_table(info, costs)), ""] if costs else []),
             "## Submissions", "", table(*_submissions_table(info)), "",
             "## Plots", "", "![performance profile](plots/performance_profile.png)", "",
             "![time to target](plots/time_to_target.png)", ""]
    targets = info.get("targets_source", {})
    if targets:
        source = (f"From {md_code(targets.get('file', ''))} (commit {md(targets.get('commit', '?'))}, "
                  f"{md(targets.get('date', '?'))}): {md(targets.get('procedure', ''))}")
        parts += ["## Targets", "", source, ""]
    return "\n".join(parts)


def _meta_text(info: dict[str, Any]) -> list[str]:
    ruleset = "external tuning" if info["ruleset"] == "external" else "self-tuning (3x budgets)"
    reps = f"repetitions: {info['seeds']} seeds / {info['studies']} studies of {info['trials']} trials"
    return [f"ruleset: {ruleset}", reps, f"held-out gate: {'on' if info.get('heldout', True) else 'off'}",
            f"clock: {CLOCK_UNITS[bench_clock(info)]} to target",
            f"machine: {info.get('machine', '?')}",
            f"workers: {info.get('workers')} x {info.get('threads') or 'cores // workers'} threads",
            f"date: {info.get('date', '?')}"]


# --------------------------------------------------------------------------------------------------- html


def _meta(info: dict[str, Any]) -> list[str]:
    return [_e(m) for m in _meta_text(info)] + [f"<code>{_e(info.get('command', ''))}</code>"]


def _definitions_html() -> str:
    return f'<p class="meta">{_e(_DEFINITIONS)}</p>'


def write_page(path: Path, title: str, meta: list[str], sections: Sequence[tuple[str, str]]) -> Path:
    """A self-contained page (trainlab report's style) with ``sections`` of already-built HTML."""
    body = [_header(title, meta), *(_section(name, content) for name, content in sections)]
    return write_text(path, _page(title, body))


# -------------------------------------------------------------------------------------------------- plots


def plot_profile(st: Standings, file: Path) -> Path:
    """ρ(τ) for τ in [1, 4], one step line per submission, its benchmark score in the legend."""
    taus = np.linspace(1.0, scoring.R_MAX, 601)
    profiles = scoring.profile(st.times(), taus)
    fig, ax = _new_figure()
    styles = ("-", "--", ":", "-.")
    for row in st.rows:  # best first; colours follow the submission order, as in the bars
        i = st.submissions.index(row.name)
        ax.step(taus, profiles[row.name], where="post", color=RUN_COLORS[i % len(RUN_COLORS)], lw=1.8,
                ls=styles[i % len(styles)], label=f"{_text(row.name)} (B = {row.score:.3f})")
    ax.set(xlabel="τ (time / fastest submission's time)", ylabel="ρ(τ): fraction of workloads",
           xlim=(1.0, scoring.R_MAX), ylim=(-0.02, 1.02))
    ax.set_title("performance profile", loc="left", fontsize=11)
    ax.legend(loc="lower right", frameon=False, fontsize=9)
    _save(fig, file)
    return file


def plot_times(st: Standings, file: Path, clock: str = "wall") -> Path:
    """Median time to target per workload and submission (log scale), bootstrap CI bars; misses marked."""
    fig, ax = _new_figure()
    n = max(len(st.submissions), 1)
    width = 0.8 / n
    finite = [st.cell(s, w).time for s in st.submissions for w in st.workloads
              if math.isfinite(st.cell(s, w).time)]
    floor = min(finite) / 2 if finite else 0.1
    for i, sub in enumerate(st.submissions):
        color = RUN_COLORS[i % len(RUN_COLORS)]
        xs = np.arange(len(st.workloads)) + (i - (n - 1) / 2) * width
        for x, w in zip(xs, st.workloads):
            cell = st.cell(sub, w)
            if not cell.reps or not math.isfinite(cell.time):
                ax.plot([x], [floor], marker="x", color=color, ms=8, mew=2)
                continue
            lo, hi = scoring.median_ci(cell.reps)
            hi = hi if math.isfinite(hi) else cell.time
            ax.bar([x], [cell.time], width=width * 0.9, color=color, alpha=0.85)
            ax.errorbar([x], [cell.time], yerr=[[cell.time - lo], [hi - cell.time]], color="#333333", lw=1, capsize=2)
    from matplotlib.patches import Patch

    handles = [Patch(color=RUN_COLORS[i % len(RUN_COLORS)], label=_text(sub)) for i, sub in enumerate(st.submissions)]
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(st.workloads)), [_text(w) for w in st.workloads], rotation=15, fontsize=9)
    ax.set_ylabel(f"training {CLOCK_UNITS[clock]} to target (x: miss)")
    ax.set_title("time to target", loc="left", fontsize=11)
    ax.legend(handles=handles, frameon=False, fontsize=9)
    _save(fig, file)
    return file
