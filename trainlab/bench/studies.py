"""Studies that make two papers' claims measurable: LR sensitivity and LR transfer across width.

Both are lists of :class:`~trainlab.bench.runner.Trial` run by :func:`~trainlab.bench.runner.run_trials` (the
bench's process pool, one torch thread per trial by default, and its resume: a trial whose run directory
finished is never rerun), then summarised from the run directories alone. Each writes into ``--out``:
``study.json`` (settings, command, machine, date), ``results.jsonl`` (one raw record per trial, with the
numbers below added), ``summary.md`` (the tables), ``plots/*.png`` and ``report.html``.

**LR sensitivity** (:func:`run_sensitivity`; Wortsman et al. 2023, "Small-scale proxies for large-scale
Transformer training instabilities", arXiv:2309.14322, §2 "LR sensitivity"). Train each workload and variant
at every learning rate of a log grid (default 7 points from 3e-4 to 3e-1, a factor sqrt(10) apart: the
paper's range) and read the *final loss* ``L(lr)``: the validation loss of the run's last evaluation (nats per
token for the character LM; ``inf`` when the run diverged or the loss is not finite). ``L0`` is the loss at
initialisation (the step-0 evaluation). The paper's metric::

    LR sensitivity = E_{lr in grid} [ min(L(lr), L0) ] - min_{lr in grid} L(lr)

the expectation uniform over the log-spaced grid (a plain mean), so a diverged lr costs ``L0 - best`` and
never more. Units: those of the loss (nats); 0 means every lr of the grid reaches the best loss. The paper's
claim: qk-layernorm (``model.qk_layernorm=true``, Dehghani et al. 2023) and z-loss (``loss.z_loss=1e-4``,
PaLM) lower it. Variants: ``base``, ``qk``, ``zloss``, ``qk+zloss``. Every trial: AdamW (registry defaults
except the lr), linear warm-up over 5% of the steps then cosine decay to 0 (the paper's schedule shape), the
same seed per (workload, seed) across lrs and variants.

**LR transfer across width** (:func:`run_transfer`; Bernstein & Newhouse, modular duality; Large et al., the
modular norm; the prototype was ``benchmarks/lr_transfer.py``). For each optimizer and each width of an MLP on
mnist1d, train at every lr of the optimizer's grid and score the *final training loss*: the mean per-step batch
loss over the last 10% of steps (``trace.jsonl``; ``inf`` if not finite). The best lr per width is a parabola
through the grid minimum and its two neighbours in (log lr, loss) -- a sub-grid estimate, marked when the
minimum sits at the grid's edge (not bracketed). Reported per optimizer: the best lr at each width, the shift
``log2(best lr at the widest / at the narrowest)`` (0 = perfect transfer), the spread max/min, and the
exponent ``e`` of a least-squares fit ``best lr ~ width^e`` (AdamW in standard parametrisation is expected
near -1 for hidden layers, a width-invariant method near 0).
"""

from __future__ import annotations

import datetime
import json
import math
import platform
import shlex
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from trainlab.bench.runner import BenchError, Trial, cores, keep_records, load_records, run_trials, trial_id
from trainlab.bench.submission import fmt
from trainlab.config import ConfigError
from trainlab.rundir import RunDir
from trainlab.report.output import write_text
from trainlab.rundir.atomic import atomic_write_text

STUDY_FILE = "study.json"
SUMMARY = "summary.md"
REPORT = "report.html"
PLOTS = "plots"

# ---------------------------------------------------------------------------------------------- defaults

#: Wortsman et al.'s range, 3e-4 .. 3e-1, log-spaced: 7 points a factor sqrt(10) apart.
SENSITIVITY_LRS: tuple[float, ...] = tuple(float(f"{3e-4 * 10 ** (k / 2):.3g}") for k in range(7))
#: Model/loss overrides of each variant of the sensitivity study.
VARIANTS: dict[str, tuple[str, ...]] = {
    "base": (),
    "qk": ("model.qk_layernorm=true",),
    "zloss": ("loss.z_loss=0.0001",),
    "qk+zloss": ("model.qk_layernorm=true", "loss.z_loss=0.0001"),
}
SENSITIVITY_WORKLOADS = ("charlm",)
SENSITIVITY_STEPS = 600
WARMUP_FRAC = 0.05

#: LR grids of the transfer study: 7 points a factor 2 apart around each optimizer's optimum on this MLP
#: (benchmarks/RESULTS.md: adamw ~3e-3, muon ~2e-2, dualized ~0.1 at widths 64-512).
TRANSFER_GRIDS: dict[str, tuple[float, ...]] = {
    "adamw": tuple(6.25e-4 * 2**k for k in range(7)),    # 6.25e-4 .. 4e-2
    "muon": tuple(3.125e-3 * 2**k for k in range(7)),    # 3.1e-3 .. 0.2
    "dualized": tuple(1.25e-2 * 2**k for k in range(7)),  # 1.25e-2 .. 0.8
}
TRANSFER_WIDTHS = (32, 64, 128, 256)
TRANSFER_STEPS = 300
TAIL_FRAC = 0.1


# --------------------------------------------------------------------------------------- the metrics


def lr_sensitivity(losses: Sequence[float], initial_loss: float) -> float:
    """Wortsman et al.'s LR sensitivity of final losses ``losses`` over a log-spaced lr grid.

    ``mean(min(L, L0)) - min(L)`` with non-finite losses (divergence) counted as ``inf`` (so capped at ``L0``);
    nan when no lr gave a finite loss. Same units as the loss.
    """
    values = [float(x) if x is not None and math.isfinite(float(x)) else math.inf for x in losses]
    if not values:
        raise ValueError("no losses")
    finite = [v for v in values if math.isfinite(v)]
    if not finite or not math.isfinite(initial_loss):
        return math.nan
    capped = [min(v, initial_loss) for v in values]
    return float(sum(capped) / len(capped) - min(finite))


def best_lr(lrs: Sequence[float], losses: Sequence[float]) -> tuple[float, bool]:
    """(best lr, bracketed): the vertex of the parabola through the grid minimum and its two neighbours in
    (log lr, loss), kept between those neighbours; the grid minimum itself (bracketed False) when it sits at
    an edge of the grid or a neighbour is not finite. ``lrs`` ascending; non-finite losses count as inf."""
    if len(lrs) != len(losses) or not lrs:
        raise ValueError("lrs and losses must be non-empty and of equal length")
    ys = [float(y) if y is not None and math.isfinite(float(y)) else math.inf for y in losses]
    i = min(range(len(ys)), key=ys.__getitem__)
    if not math.isfinite(ys[i]):
        return math.nan, False
    if i == 0 or i == len(ys) - 1 or not (math.isfinite(ys[i - 1]) and math.isfinite(ys[i + 1])):
        return float(lrs[i]), False
    x0, x1, x2 = (math.log(lrs[j]) for j in (i - 1, i, i + 1))
    y0, y1, y2 = ys[i - 1], ys[i], ys[i + 1]
    num = (x1 - x0) ** 2 * (y1 - y2) - (x1 - x2) ** 2 * (y1 - y0)
    den = (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0)
    x = x1 if den == 0 else x1 - 0.5 * num / den
    return float(math.exp(min(max(x, x0), x2))), True


def width_exponent(widths: Sequence[float], best: Sequence[float]) -> float:
    """Least-squares slope of log(best lr) on log(width): best lr ~ width^e (nan with < 2 finite points)."""
    pts = [(math.log(w), math.log(b)) for w, b in zip(widths, best) if b and math.isfinite(b) and b > 0]
    if len(pts) < 2:
        return math.nan
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return math.nan if sxx == 0 else sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


# ------------------------------------------------------------------------------- reading a trial's run


def _finite(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.inf


def eval_losses(run_dir: Path, column: str = "val_loss") -> tuple[float, float]:
    """(loss at step 0, loss at the last evaluation) of ``column`` in ``metrics.jsonl`` (inf when missing or
    not finite)."""
    rows = [r for r in RunDir(run_dir).metrics() if column in r]
    if not rows:
        return math.inf, math.inf
    first = next((r for r in rows if r["step"] == 0), None)
    return (_finite(first[column]) if first else math.inf), _finite(rows[-1][column])


def tail_train_loss(run_dir: Path, frac: float = TAIL_FRAC) -> float:
    """Mean per-step batch loss over the last ``frac`` of the steps in ``trace.jsonl`` (inf if not finite)."""
    losses = [row.get("loss") for row in RunDir(run_dir).trace()]
    if not losses:
        return math.inf
    tail = [x if isinstance(x, (int, float)) else math.nan for x in losses[-max(1, round(len(losses) * frac)):]]
    value = statistics.fmean(tail)
    return value if math.isfinite(value) else math.inf


# -------------------------------------------------------------------------------------------- parsing


def parse_floats(text: str | Sequence[float], what: str) -> list[float]:
    """``"1e-3,3e-3"`` -> [0.001, 0.003], ascending; a one-line ConfigError for anything else."""
    if not isinstance(text, str):
        values = [float(v) for v in text]
    else:
        try:
            values = [float(v) for v in text.replace(" ", "").split(",") if v]
        except ValueError:
            raise ConfigError(what, f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise ConfigError(what, f"expected positive numbers, got {text!r}")
    if len(set(values)) != len(values):
        raise ConfigError(what, f"repeated value in {text!r}")
    return sorted(values)


def parse_widths(text: str | Sequence[int]) -> list[int]:
    values = parse_floats(text if isinstance(text, str) else [float(v) for v in text], "--widths")
    if any(v != int(v) for v in values):
        raise ConfigError("--widths", f"expected integers, got {text!r}")
    if len(values) < 2:
        raise ConfigError("--widths", "give at least two widths")
    return [int(v) for v in values]


def _check_common(seeds: int, workers: int | None, threads: int | None, steps: int) -> None:
    if seeds < 1:
        raise ConfigError("--seeds", f"must be >= 1, got {seeds}")
    if workers is not None and workers < 0:
        raise ConfigError("--workers", f"must be >= 0, got {workers}")
    if threads is not None and threads < 1:
        raise ConfigError("--threads", f"must be >= 1, got {threads}")
    if steps < 2:
        raise ConfigError("--steps", f"must be >= 2, got {steps}")


def _check_extra(extra: Sequence[str]) -> list[str]:
    out = []
    for word in extra:
        key, eq, _ = word.partition("=")
        if not eq or not key:
            raise ConfigError("--set", f"expected KEY=VALUE, got {word!r}")
        out.append(word)
    return out


# ------------------------------------------------------------------------------------------- common


@dataclass
class StudyResult:
    out: Path
    files: list[Path]
    text: str
    summary: dict[str, Any]


def _prepare(out: Path, resume: bool, kind: str, settings: dict[str, Any]) -> None:
    file = out / STUDY_FILE
    if file.is_file():
        if not resume:
            raise BenchError(f"{out} already holds a study; add --resume to continue it, or choose another --out")
        old = json.loads(file.read_text()).get("kind")
        if old != kind:
            raise BenchError(f"{out} holds a {old} study, not a {kind} study")
    from trainlab import __version__

    argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else ["python"]
    info = {"kind": kind, **settings, "command": " ".join(shlex.quote(a) for a in argv),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {cores()} cores, {platform.platform()}", "trainlab": __version__}
    try:
        import os

        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        pass
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(file, json.dumps(info, indent=1, default=str) + "\n")


def _validate(trials: Sequence[Trial]) -> None:
    """Resolve each distinct configuration (lr aside) here, so a mistake stops the study before it starts."""
    from trainlab.train.config import from_cli

    seen: set[tuple[str, ...]] = set()
    for trial in trials:
        key = tuple(o for o in trial.overrides if not o.startswith(("optimizer.lr=", "seed=")))
        if key not in seen:
            seen.add(key)
            from_cli(None, list(trial.overrides))


def _run(trials: list[Trial], out: Path, *, workers: int | None, threads: int | None, progress: bool,
         label: str) -> list[dict[str, Any]]:
    try:
        rows = run_trials(trials, out, workers=workers, threads=threads or 1, progress=progress, label=label)
    except KeyboardInterrupt:
        print(f"trainlab: {label} interrupted; finished trials are kept: rerun the same command with --out {out} "
              "--resume", file=sys.stderr)
        raise
    keep_records(out, [t.id for t in trials])
    return rows


def _write_rows(out: Path, rows: Sequence[dict[str, Any]]) -> None:
    from trainlab.bench.runner import RESULTS_FILE

    atomic_write_text(out / RESULTS_FILE, "".join(json.dumps(r, default=_json_default) + "\n" for r in rows))


def _json_default(value: Any) -> Any:
    return str(value)


def _num(value: float | None, digits: int = 4) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def _clean(value: float) -> float | None:
    return value if value is not None and math.isfinite(value) else None


# ------------------------------------------------------------------------------------ LR sensitivity


def sensitivity_trials(workloads: Sequence[str], variants: Sequence[str], lrs: Sequence[float], *, seeds: int,
                       steps: int, extra: Sequence[str] = (), evals: int = 4) -> list[Trial]:
    """The trials of the sensitivity study: workload x variant x seed x lr (interleaved by lr)."""
    from trainlab.bench.suite import get

    out = []
    warmup = max(1, round(WARMUP_FRAC * steps))
    for name in workloads:
        workload = get(name)
        for variant in variants:
            for seed in range(seeds):
                for lr in lrs:
                    overrides = [*workload.overrides, *VARIANTS[variant], "optimizer=adamw", f"optimizer.lr={fmt(lr)}",
                                 "schedule=cosine", f"schedule.warmup={warmup}", f"steps={steps}", f"seed={seed}",
                                 f"eval_every={max(1, steps // evals)}", "trace=false", *extra]
                    meta = {"kind": "sensitivity", "workload": name, "variant": variant, "seed": seed, "lr": lr}
                    out.append(Trial(trial_id("sens", name, variant, f"lr{lr:.3g}", f"s{seed}", content=overrides),
                                     tuple(overrides), metric="val_loss", meta=meta))
    return out


def run_sensitivity(workloads: Sequence[str] = SENSITIVITY_WORKLOADS, *, lrs: Sequence[float] = SENSITIVITY_LRS,
                    variants: Sequence[str] = tuple(VARIANTS), seeds: int = 1, steps: int = SENSITIVITY_STEPS,
                    extra: Sequence[str] = (), workers: int | None = None, threads: int | None = 1,
                    out: str | Path = "results/sensitivity", resume: bool = False,
                    progress: bool = True) -> StudyResult:
    """The LR-sensitivity study (see the module docstring); ``trainlab bench sensitivity``."""
    from trainlab.bench.suite import WORKLOADS as BENCH_WORKLOADS

    _check_common(seeds, workers, threads, steps)
    workloads = list(workloads) or list(SENSITIVITY_WORKLOADS)
    for name in workloads:
        if name not in BENCH_WORKLOADS:
            raise ConfigError("bench sensitivity", f"unknown workload {name!r}; allowed: "
                                                   + ", ".join(BENCH_WORKLOADS.names()))
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        raise ConfigError("--variants", f"unknown variant {bad[0] if bad else ''!r}; allowed: {', '.join(VARIANTS)}")
    lrs = parse_floats(lrs, "--lrs")
    if len(lrs) < 2:
        raise ConfigError("--lrs", "give at least two learning rates")
    extra = _check_extra(extra)
    trials = sensitivity_trials(workloads, list(dict.fromkeys(variants)), lrs, seeds=seeds, steps=steps, extra=extra)
    _validate(trials)
    out_dir = Path(out)
    _prepare(out_dir, resume, "sensitivity", {"workloads": workloads, "variants": list(variants), "lrs": lrs,
                                              "seeds": seeds, "steps": steps, "extra": list(extra),
                                              "workers": workers, "threads": threads or 1})
    rows = _run(trials, out_dir, workers=workers, threads=threads, progress=progress, label="sensitivity")
    for row in rows:
        l0, final = eval_losses(out_dir / row["run_dir"])
        row["initial_loss"], row["final_loss"] = _clean(l0), _clean(final)
    _write_rows(out_dir, rows)
    return write_sensitivity_report(out_dir)


def sensitivity_summary(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (workload, variant): the seed-mean loss per lr, the sensitivity per seed and its mean, the best lr."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("kind") == "sensitivity":
            groups.setdefault((r["workload"], r["variant"]), []).append(r)
    out = []
    for (workload, variant), members in groups.items():
        lrs = sorted({float(r["lr"]) for r in members})
        seeds = sorted({int(r["seed"]) for r in members})
        per_seed: list[dict[str, Any]] = []
        curves: list[list[float]] = []
        for seed in seeds:
            by_lr = {float(r["lr"]): r for r in members if r["seed"] == seed}
            losses = [_finite(by_lr[lr].get("final_loss")) if lr in by_lr else math.inf for lr in lrs]
            inits = [_finite(r.get("initial_loss")) for r in by_lr.values()]
            inits = [x for x in inits if math.isfinite(x)]
            l0 = statistics.median(inits) if inits else math.inf
            per_seed.append({"seed": seed, "initial_loss": _clean(l0), "losses": [_clean(x) for x in losses],
                             "sensitivity": _clean(lr_sensitivity(losses, l0))})
            curves.append(losses)
        mean_curve = [statistics.fmean(c[i] for c in curves) if all(math.isfinite(c[i]) for c in curves)
                      else math.inf for i in range(len(lrs))]
        sens = [s["sensitivity"] for s in per_seed if s["sensitivity"] is not None]
        best, bracketed = best_lr(lrs, mean_curve)
        finite = [x for x in mean_curve if math.isfinite(x)]
        out.append({"workload": workload, "variant": variant, "lrs": lrs, "mean_losses": [_clean(x) for x in mean_curve],
                    "initial_loss": statistics.fmean(s["initial_loss"] for s in per_seed if s["initial_loss"] is not None)
                    if any(s["initial_loss"] is not None for s in per_seed) else None,
                    "sensitivity": statistics.fmean(sens) if sens else None,
                    "sensitivity_per_seed": [s["sensitivity"] for s in per_seed], "seeds": seeds,
                    "best_loss": min(finite) if finite else None, "best_lr": _clean(best), "bracketed": bracketed,
                    "diverged": sum(1 for c in curves for x in c if not math.isfinite(x)),
                    "runs": len(curves) * len(lrs)})
    return out


def write_sensitivity_report(out_dir: str | Path) -> StudyResult:
    from trainlab.bench.report import md, md_code  # escape what users gave (--set, the command)

    out = Path(out_dir)
    info = json.loads((out / STUDY_FILE).read_text())
    summary = sensitivity_summary(load_records(out))
    plot = plot_sensitivity(summary, out / PLOTS / "loss_vs_lr.png")
    main_table, curve_table = _sensitivity_tables(summary)
    summary_md = "\n".join([
        "# LR sensitivity (Wortsman et al. 2023)", "", md(_meta_line(info)), "",
        f"Command: {md_code(info.get('command', ''))}", "", markdown_table(*main_table), "", _SENS_NOTE, "", "## Final loss per learning rate", "",
        markdown_table(*curve_table), "", "![loss vs lr](plots/loss_vs_lr.png)", ""])
    write_text(out / SUMMARY, summary_md)
    html = _write_html(out / REPORT, "LR sensitivity", info,
                       [("LR sensitivity", main_table), ("Final loss per learning rate", curve_table)], [plot], _SENS_NOTE)
    text = markdown_table(*main_table) + f"\n\ntrainlab: study results in {out} ({SUMMARY}, {plot.name}, {REPORT})"
    return StudyResult(out, [out / SUMMARY, plot, html], text, {"groups": summary})


_SENS_NOTE = ("Final loss: validation loss at the last evaluation (nats); diverged = non-finite. LR sensitivity "
              "(Wortsman et al. 2023, §2): mean over the log-spaced lr grid of min(final loss, L0) minus the best final "
              "loss on the grid, L0 the loss at initialisation; mean over seeds. Best lr: parabola through the grid "
              "minimum and its neighbours in log lr (* = at the grid's edge).")


def _sensitivity_tables(summary: Sequence[dict[str, Any]]) -> tuple[tuple[list[str], list[list[str]]], ...]:
    headers = ["workload", "variant", "LR sensitivity", "per seed", "best final loss", "best lr", "L0", "diverged"]
    rows = []
    for g in summary:
        rows.append([g["workload"], g["variant"], _num(g["sensitivity"], 3),
                     ", ".join(_num(s, 3) for s in g["sensitivity_per_seed"]), _num(g["best_loss"]),
                     _num(g["best_lr"], 3) + ("" if g["bracketed"] else "*"), _num(g["initial_loss"]),
                     f"{g['diverged']}/{g['runs']}"])
    lrs = sorted({lr for g in summary for lr in g["lrs"]})
    curve_headers = ["workload", "variant", *(f"lr {lr:.3g}" for lr in lrs)]
    curve_rows = []
    for g in summary:
        by = dict(zip(g["lrs"], g["mean_losses"]))
        curve_rows.append([g["workload"], g["variant"],
                           *(("diverged" if by.get(lr, 0) is None else _num(by.get(lr), 4)) if lr in by else "—"
                             for lr in lrs)])
    return (headers, rows), (curve_headers, curve_rows)


def plot_sensitivity(summary: Sequence[dict[str, Any]], file: Path) -> Path:
    """Final loss vs lr (log x), one panel per workload, one line per variant; L0 dashed; diverged runs as x."""
    workloads = list(dict.fromkeys(g["workload"] for g in summary)) or ["(none)"]
    fig, axes = _figure(len(workloads))
    variants = list(dict.fromkeys(g["variant"] for g in summary))
    for ax, workload in zip(axes, workloads):
        top = 0.0
        for g in (g for g in summary if g["workload"] == workload):
            color = _color(variants.index(g["variant"]))
            xs = [lr for lr, y in zip(g["lrs"], g["mean_losses"]) if y is not None]
            ys = [y for y in g["mean_losses"] if y is not None]
            label = f"{g['variant']} (sens. {_num(g['sensitivity'], 3)})"
            ax.plot(xs, ys, marker="o", ms=4, lw=1.6, color=color, label=label)
            dead = [lr for lr, y in zip(g["lrs"], g["mean_losses"]) if y is None]
            if g["initial_loss"] is not None:
                ax.plot(dead, [g["initial_loss"]] * len(dead), "x", color=color, ms=8, mew=2)
                ax.axhline(g["initial_loss"], color="#999999", lw=0.8, ls="--")
                top = max(top, g["initial_loss"])
        ax.set_xscale("log")
        ax.set(xlabel="learning rate", ylabel="final validation loss", title=workload)
        if top:
            ax.set_ylim(top=top * 1.05)
        ax.legend(frameon=False, fontsize=8)
    _save_figure(fig, file)
    return file


# -------------------------------------------------------------------------------------- LR transfer


def parse_grids(spec: str | None, optimizers: Sequence[str]) -> dict[str, list[float]]:
    """``--lrs``: absent -> :data:`TRANSFER_GRIDS`; ``1e-3,2e-3`` -> that grid for all; ``adamw=..;muon=..``
    -> per optimizer (others keep their default grid)."""
    grids = {name: list(TRANSFER_GRIDS[name]) for name in optimizers if name in TRANSFER_GRIDS}
    if spec:
        parts = [p for p in spec.split(";") if p.strip()]
        if all("=" not in p for p in parts):
            values = parse_floats(spec.replace(";", ","), "--lrs")
            grids = {name: list(values) for name in optimizers}
        else:
            for part in parts:
                name, eq, grid = part.partition("=")
                name = name.strip()
                if not eq or name not in optimizers:
                    raise ConfigError("--lrs", f"expected OPTIMIZER=LR,LR,... for one of {', '.join(optimizers)}; "
                                               f"got {part!r}")
                grids[name] = parse_floats(grid, "--lrs")
    for name in optimizers:
        if name not in grids:
            raise ConfigError("--lrs", f"no default lr grid for {name!r}; give one: --lrs '{name}=1e-3,2e-3,...'")
        if len(grids[name]) < 3:
            raise ConfigError("--lrs", f"{name}: give at least three learning rates (the best lr is bracketed)")
    return grids


def transfer_trials(optimizers: Sequence[str], widths: Sequence[int], grids: Mapping[str, Sequence[float]], *,
                    seeds: int, steps: int, depth: int, batch_size: int, extra: Sequence[str] = ()) -> list[Trial]:
    out = []
    for seed in range(seeds):
        for width in widths:
            for name in optimizers:
                for lr in grids[name]:
                    overrides = ["workload=mnist1d", "model=mlp", f"model.width={width}", f"model.depth={depth}",
                                 f"optimizer={name}", f"optimizer.lr={fmt(float(lr))}", f"steps={steps}",
                                 f"batch_size={batch_size}", f"eval_every={steps}", f"seed={seed}", "trace=true", *extra]
                    meta = {"kind": "transfer", "optimizer": name, "width": width, "lr": float(lr), "seed": seed}
                    out.append(Trial(trial_id("xfer", name, f"w{width}", f"lr{lr:.3g}", f"s{seed}", content=overrides),
                                     tuple(overrides), metric="val_loss", meta=meta))
    return out


def run_transfer(optimizers: Sequence[str] = tuple(TRANSFER_GRIDS), *, widths: Sequence[int] = TRANSFER_WIDTHS,
                 lrs: str | Mapping[str, Sequence[float]] | None = None, seeds: int = 1, steps: int = TRANSFER_STEPS,
                 depth: int = 3, batch_size: int = 128, extra: Sequence[str] = (), workers: int | None = None,
                 threads: int | None = 1, out: str | Path = "results/transfer", resume: bool = False,
                 progress: bool = True) -> StudyResult:
    """The LR-transfer study (see the module docstring); ``trainlab bench transfer``."""
    from trainlab import optim

    _check_common(seeds, workers, threads, steps)
    optimizers = list(dict.fromkeys(optimizers)) or list(TRANSFER_GRIDS)
    for name in optimizers:
        if name not in optim.OPTIMIZERS:
            raise ConfigError("--optimizers", f"unknown optimizer {name!r} (see `trainlab list optimizers`)")
    widths = parse_widths(widths)
    if depth < 1 or batch_size < 1:
        raise ConfigError("--depth" if depth < 1 else "--batch-size", "must be >= 1")
    grids = {k: parse_floats(v, "--lrs") for k, v in lrs.items()} if isinstance(lrs, Mapping) else \
        parse_grids(lrs, optimizers)
    missing = [n for n in optimizers if n not in grids]
    if missing:
        raise ConfigError("--lrs", f"no lr grid for {missing[0]!r}")
    extra = _check_extra(extra)
    trials = transfer_trials(optimizers, widths, grids, seeds=seeds, steps=steps, depth=depth, batch_size=batch_size,
                             extra=extra)
    _validate(trials)
    out_dir = Path(out)
    _prepare(out_dir, resume, "transfer", {"optimizers": optimizers, "widths": widths, "grids": grids, "seeds": seeds,
                                           "steps": steps, "depth": depth, "batch_size": batch_size,
                                           "extra": list(extra), "workers": workers, "threads": threads or 1})
    rows = _run(trials, out_dir, workers=workers, threads=threads, progress=progress, label="transfer")
    for row in rows:
        run_dir = out_dir / row["run_dir"]
        row["final_loss"] = _clean(tail_train_loss(run_dir))
        row["final_val_loss"] = _clean(eval_losses(run_dir)[1])
    _write_rows(out_dir, rows)
    return write_transfer_report(out_dir)


def transfer_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per optimizer and width: the seed-mean loss per lr and the best lr; per optimizer: shift, spread, exponent."""
    per: dict[str, dict[int, dict[float, list[float]]]] = {}
    for r in rows:
        if r.get("kind") == "transfer":
            per.setdefault(r["optimizer"], {}).setdefault(int(r["width"]), {}).setdefault(float(r["lr"]), []).append(
                _finite(r.get("final_loss")))
    out: dict[str, Any] = {}
    for name, by_width in per.items():
        widths = sorted(by_width)
        entries: dict[int, dict[str, Any]] = {}
        for width in widths:
            lrs = sorted(by_width[width])
            losses = [statistics.fmean(by_width[width][lr]) if all(math.isfinite(x) for x in by_width[width][lr])
                      else math.inf for lr in lrs]
            best, bracketed = best_lr(lrs, losses)
            finite = [x for x in losses if math.isfinite(x)]
            entries[width] = {"lrs": lrs, "losses": [_clean(x) for x in losses], "best_lr": _clean(best),
                              "bracketed": bracketed, "best_loss": min(finite) if finite else None}
        bests = [entries[w]["best_lr"] for w in widths]
        ok = [b for b in bests if b]
        shift = math.log2(bests[-1] / bests[0]) if bests and bests[0] and bests[-1] else math.nan
        out[name] = {"widths": widths, "by_width": entries, "shift_log2": _clean(shift),
                     "spread": max(ok) / min(ok) if ok else None,
                     "exponent": _clean(width_exponent(widths, [b or math.nan for b in bests]))}
    return out


def write_transfer_report(out_dir: str | Path) -> StudyResult:
    from trainlab.bench.report import md, md_code  # escape what users gave (--set, the command)

    out = Path(out_dir)
    info = json.loads((out / STUDY_FILE).read_text())
    summary = transfer_summary(load_records(out))
    plots = [plot_transfer_curves(summary, out / PLOTS / "loss_vs_lr.png"),
             plot_best_lr(summary, out / PLOTS / "best_lr_vs_width.png")]
    main_table, curve_table = _transfer_tables(summary)
    summary_md = "\n".join([
        "# LR transfer across width", "", md(_meta_line(info)), "", f"Command: {md_code(info.get('command', ''))}", "",
        markdown_table(*main_table), "", _XFER_NOTE, "", "## Final training loss per learning rate", "",
        markdown_table(*curve_table), "", "![best lr vs width](plots/best_lr_vs_width.png)", "",
        "![loss vs lr](plots/loss_vs_lr.png)", ""])
    write_text(out / SUMMARY, summary_md)
    html = _write_html(out / REPORT, "LR transfer across width", info,
                       [("Best learning rate per width", main_table), ("Final loss per learning rate", curve_table)],
                       plots, _XFER_NOTE)
    text = markdown_table(*main_table) + f"\n\ntrainlab: study results in {out} ({SUMMARY}, plots, {REPORT})"
    return StudyResult(out, [out / SUMMARY, *plots, html], text, summary)


_XFER_NOTE = ("Final loss: mean per-step training loss over the last 10% of steps (trace.jsonl), mean over seeds; "
              "best lr: parabola through the grid minimum and its neighbours in log lr (* = minimum at the grid's "
              "edge, not bracketed). Shift: log2(best lr at the widest / at the narrowest width), 0 = perfect "
              "transfer. Exponent e: least-squares fit best lr ~ width^e.")


def _transfer_tables(summary: Mapping[str, Any]) -> tuple[tuple[list[str], list[list[str]]], ...]:
    widths = sorted({w for s in summary.values() for w in s["widths"]})
    headers = ["optimizer", *(f"best lr, width {w}" for w in widths),
               f"shift {widths[0]}→{widths[-1]} (log2)" if widths else "shift", "spread (max/min)", "exponent e",
               "best loss, narrowest / widest"]
    rows = []
    for name, s in summary.items():
        by = s["by_width"]
        cells = [(_num(by[w]["best_lr"], 3) + ("" if by[w]["bracketed"] else "*")) if w in by else "—" for w in widths]
        first, last = by[s["widths"][0]], by[s["widths"][-1]]
        rows.append([name, *cells, "—" if s["shift_log2"] is None else f"{s['shift_log2']:+.2f}",
                     "—" if s["spread"] is None else f"{s['spread']:.2f}x",
                     "—" if s["exponent"] is None else f"{s['exponent']:+.2f}",
                     f"{_num(first['best_loss'], 3)} / {_num(last['best_loss'], 3)}"])
    curve_headers = ["optimizer", "width", "losses at the grid's lrs (ascending)"]
    curve_rows = []
    for name, s in summary.items():
        for w in s["widths"]:
            e = s["by_width"][w]
            curve_rows.append([name, str(w), "  ".join(f"{lr:.3g}: {'div' if y is None else f'{y:.3f}'}"
                                                       for lr, y in zip(e["lrs"], e["losses"]))])
    return (headers, rows), (curve_headers, curve_rows)


def plot_transfer_curves(summary: Mapping[str, Any], file: Path) -> Path:
    """Final loss vs lr, one panel per optimizer, one line per width; the best lr marked."""
    names = list(summary) or ["(none)"]
    fig, axes = _figure(len(names))
    for ax, name in zip(axes, names):
        s = summary.get(name)
        if not s:
            continue
        for i, w in enumerate(s["widths"]):
            e = s["by_width"][w]
            xs = [lr for lr, y in zip(e["lrs"], e["losses"]) if y is not None]
            ys = [y for y in e["losses"] if y is not None]
            ax.plot(xs, ys, marker="o", ms=3, lw=1.5, color=_color(i), label=f"width {w}")
            if e["best_lr"]:
                ax.axvline(e["best_lr"], color=_color(i), lw=0.8, ls=":")
        ax.set(xscale="log", yscale="log", xlabel="learning rate", ylabel="final training loss", title=name)
        ax.legend(frameon=False, fontsize=8)
    _save_figure(fig, file)
    return file


def plot_best_lr(summary: Mapping[str, Any], file: Path) -> Path:
    """Best lr vs width (log-log), one line per optimizer, each normalised to its narrowest width; edge minima hollow."""
    from trainlab.report.plots import _new_figure, _save

    fig, ax = _new_figure()
    for i, (name, s) in enumerate(summary.items()):
        ws = [w for w in s["widths"] if s["by_width"][w]["best_lr"]]
        if not ws:
            continue
        ref = s["by_width"][ws[0]]["best_lr"]
        ys = [s["by_width"][w]["best_lr"] / ref for w in ws]
        e = s["exponent"]
        ax.plot(ws, ys, lw=1.8, color=_color(i), label=f"{name} (best lr at {ws[0]}: {ref:.3g}; e = "
                                                         f"{'—' if e is None else f'{e:+.2f}'})")
        for w, y in zip(ws, ys):
            filled = s["by_width"][w]["bracketed"]
            ax.plot([w], [y], "o", ms=6, color=_color(i), mfc=_color(i) if filled else "white")
    ax.axhline(1.0, color="#999999", lw=0.8, ls="--")
    ax.set(xscale="log", yscale="log", xlabel="width", ylabel="best lr / best lr at the narrowest width")
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    widths = sorted({w for s in summary.values() for w in s["widths"]})
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(FormatStrFormatter("%.2g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%.2g"))
    fig.subplots_adjust(left=0.12)
    ax.set_title("LR transfer across width (hollow: minimum at the grid's edge)", loc="left", fontsize=11)
    ax.legend(frameon=False, fontsize=8)
    _save(fig, file)
    return file


# ---------------------------------------------------------------------------------------------- output


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    from trainlab.bench.report import table

    return table(headers, rows)


def _meta_line(info: Mapping[str, Any]) -> str:
    load = info.get("load_average_at_start")
    parts = [f"machine: {info.get('machine', '?')}",
             f"workers: {info.get('workers') if info.get('workers') is not None else 'cores'} x "
             f"{info.get('threads', 1)} torch thread(s)", f"date: {info.get('date', '?')}",
             f"steps: {info.get('steps')}", f"seeds: {info.get('seeds')}"]
    if load:
        parts.append("load average at start: " + ", ".join(str(x) for x in load))
    if info.get("extra"):
        parts.append("extra overrides: " + " ".join(info["extra"]))
    return " · ".join(parts)


def _write_html(path: Path, title: str, info: Mapping[str, Any], tables: Sequence[tuple[str, tuple]],
                plots: Sequence[Path], note: str) -> Path:
    from trainlab.bench.report import table, write_page
    from trainlab.report.html import _e, _figures

    sections = [(name, table(*t, html=True)) for name, t in tables]
    sections.insert(1, ("Definitions", f'<p class="meta">{_e(note)}</p>'))
    sections.append(("Plots", _figures(list(plots), "")))
    meta = [_e(_meta_line(info)), f"<code>{_e(info.get('command', ''))}</code>"]
    return write_page(path, title, meta, sections)


def _color(i: int) -> str:
    from trainlab.report.plots import RUN_COLORS

    return RUN_COLORS[i % len(RUN_COLORS)]


def _figure(panels: int) -> tuple[Any, list[Any]]:
    """One row of ``panels`` axes in the report's style (:func:`trainlab.report.plots._new_figure` makes one)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from trainlab.report.plots import DPI, _style_axes

    fig = Figure(figsize=(4.6 * panels, 3.8), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, panels, i + 1) for i in range(panels)]
    for ax in axes:
        _style_axes(ax)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.14, top=0.9, wspace=0.3)
    return fig, axes


def _save_figure(fig: Any, file: Path) -> None:
    from trainlab.report.plots import _save

    _save(fig, file)


def write_report(out_dir: str | Path) -> StudyResult:
    """Redraw a study's summary.md, plots and report.html from its records (either kind)."""
    out = Path(out_dir)
    if not (out / STUDY_FILE).is_file():
        raise BenchError(f"{out} holds no study ({STUDY_FILE} missing)")
    kind = json.loads((out / STUDY_FILE).read_text()).get("kind")
    return write_sensitivity_report(out) if kind == "sensitivity" else write_transfer_report(out)
