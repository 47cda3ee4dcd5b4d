"""Claim 16: federated strategies under heterogeneous client speeds, compared at equal SIMULATED time.

(1) Fraboni et al. 2023 (FedFix, asynchronous FedAvg): asynchronous FedAvg is fast but unstable; FedFix is stable and
faster than synchronous FedAvg when clients' speeds differ. (2) Li et al. 2024 (FedCompass): faster than synchronous
FedAvg, more accurate than asynchronous FedAsync/FedBuff on non-IID data. (3) A time-to-accuracy table of all five
strategies (+ FedAvg with FedProx and FedSpeed clients).

MNIST-1D, 100 clients, Dirichlet 0.3, lognormal speeds (spread 1), MLP 2x64; seeds 1-3 (seed 0 was the pilot seed).
Every strategy keeps the whole fleet of 100 clients busy (participation 1); synchronous FedAvg waits for all 100 each
round. Horizon H = 300 simulated seconds for every arm; the FedAvg family also runs on to 30 rounds (its own,
longer horizon, 2900-5000 s) because it makes only 1-3 rounds within H. Steps (server updates) are calibrated per
seed from the seed's client speeds (:func:`plan`); a run that ends short of H is extended (``--resume ... steps=``).

    OMP_NUM_THREADS=1 nice -n 5 python experiments/c16_federated/run.py            # train what is missing, results.md
    python experiments/c16_federated/run.py --table                                # only rewrite results.md
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import (EXPERIMENTS, REPO, Arm, Run, fmt, has_summary, median_range, run_dir, shell_command,  # noqa: E402
                    table, train)
from trainlab.federated.clock import step_times  # noqa: E402

SEEDS = [1, 2, 3]  # seed 0 was the pilot seed (local lr, server lr, cost): never a final seed
SEED_KEYS = ("seed",)  # initialisation, partition, client speeds and sampling; the data stay MNIST-1D's published ones
H = 300.0  # the common horizon in simulated seconds (set by the compute budget; README "Budget")
TARGET = 0.40  # fixed from FedAvg's seed-0 pilot alone (README "Target")
LADDER = [0.25, 0.30, 0.35, 0.40, 0.45]
MIN_EVALS = 5  # stability within H needs this many evaluations (FedAvg has 2-4 there: "—")
GRID = 10.0  # stability is read on a common grid of simulated time (the latest evaluation at or before each point)
CLIENTS, Q, K, SPREAD = 100, 10, 10, 1.0
FEDAVG_ROUNDS = 30
MARGIN = 1.1  # steps planned = MARGIN x the expected updates within H; shortfalls are extended
ASYNC_LR = 0.01  # async_fedavg's server lr (pilot, seed 0: 0.1 / 0.03 / 0.01; README "Pilots")
COMPASS_RATE = 180 / 389.0 / 136.3  # FedCompass updates per simulated second per unit of sum_i 1/t_i (seed-0 pilot)

# name -> (label, strategy overrides); the order is the training order within a seed
SPECS = {
    "fedavg": ("FedAvg (sync, all 100 per round)", ["fed.strategy=fedavg", "fed.participation=1"]),
    "async_fedavg": (f"async FedAvg (server lr {ASYNC_LR})", ["fed.strategy=async_fedavg", f"optimizer.lr={ASYNC_LR}"]),
    "fedbuff": (f"FedBuff (K={K}, 100 in flight)", ["fed.strategy=fedbuff", "fed.participation=1", f"fed.buffer={K}"]),
    "fedfix": ("FedFix (window = median client time)", ["fed.strategy=fedfix"]),
    "fedcompass": ("FedCompass (Q 2-10)", ["fed.strategy=fedcompass", "fed.q_min=2", f"fed.q_max={Q}"]),
    "fedprox": ("FedAvg + FedProx clients (mu 0.1)", ["fed.strategy=fedavg", "fed.participation=1",
                                                      "fed.client=fedprox", "fed.prox_mu=0.1"]),
    "fedspeed": ("FedAvg + FedSpeed clients", ["fed.strategy=fedavg", "fed.participation=1", "fed.client=fedspeed"]),
}
MAIN = ["fedavg", "async_fedavg", "fedbuff", "fedfix", "fedcompass", "fedprox", "fedspeed"]
SYNC = {"fedavg", "fedprox", "fedspeed"}


def speeds(seed: int) -> list[float]:
    return step_times("lognormal", CLIENTS, spread=SPREAD, seed=seed).tolist()


def plan(name: str, seed: int) -> tuple[int, int]:
    """(steps, eval_every) of an arm in a seed. The expected server updates per simulated second follow from the
    seed's speeds t_i (simulated s per local step): with all 100 clients always training, arrivals come at
    R / Q per second, R = sum_i 1/t_i; async FedAvg updates at each, FedBuff at every K-th; FedFix once per window
    (Q x the median t_i; a window with no arrival is no update); FedCompass at the seed-0 pilot's rate per unit R.
    eval_every makes an evaluation every ~1-2 simulated seconds where updates are that frequent."""
    t = speeds(seed)
    rate = sum(1.0 / x for x in t)
    if name in SYNC:
        return FEDAVG_ROUNDS, 1
    if name == "async_fedavg":
        return math.ceil(MARGIN * H * rate / Q), 25
    if name == "fedbuff":
        return math.ceil(MARGIN * H * rate / (Q * K)), 2
    if name == "fedfix":
        window = sorted(x * Q for x in t)[len(t) // 2]
        return math.ceil(MARGIN * H / window), 1
    if name == "fedcompass":
        return math.ceil(MARGIN * H * COMPASS_RATE * rate), 1
    raise KeyError(name)


def arm(name: str, seed: int) -> Arm:
    label, overrides = SPECS[name]
    steps, every = plan(name, seed)
    return Arm(name, "fed.yaml", [*overrides, f"steps={steps}", f"eval_every={every}",
                                  f"checkpoint_every={max(1, steps // 4)}"], label=label)


def extend(name: str, seed: int) -> None:
    """Resume a finished asynchronous run with more steps until its simulated time reaches H (the final checkpoint
    holds the clock, the event queue and the in-flight deltas, so the run continues where it stopped)."""
    path = run_dir(HERE, arm(name, seed), seed)
    for _ in range(5):
        run = Run(path)
        sim = run.summary["federation"]["sim_time"]
        if name in SYNC or sim >= H:
            return
        steps = math.ceil(run.steps * max(1.05, 1.05 * H / max(sim, 1e-9)))
        print(f"  extend {path.relative_to(EXPERIMENTS)}: {sim:.1f} simulated s < {H:g}; steps {run.steps} -> {steps}",
              flush=True)
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "trainlab", "run", "--resume", str(path), f"steps={steps}",
                               "--quiet", "--no-report"], cwd=REPO, env=env, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"trainlab exited with {proc.returncode} extending {path}")
        record = path / "driver.json"
        info = json.loads(record.read_text()) if record.is_file() else {}
        info.setdefault("extensions", []).append({"steps": steps, "process_wall_s": round(time.perf_counter() - t0, 2)})
        record.write_text(json.dumps(info, indent=1))


# ------------------------------------------------------------------------------------------- reading the runs


class Fed:
    """A run's evaluation rows as (sim_time, row), and the readings the tables need."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.rows = [r for r in run.rows if isinstance(r.get("val_acc"), (int, float)) and "sim_time" in r]

    def within(self, horizon: float = H) -> list[dict]:
        return [r for r in self.rows if r["sim_time"] <= horizon + 1e-9]

    def at(self, horizon: float = H) -> dict | None:
        rows = self.within(horizon)
        return rows[-1] if rows else None

    def covered(self) -> bool:
        return self.run.summary["federation"]["sim_time"] >= H

    def first(self, target: float, horizon: float | None = H) -> dict | None:
        rows = self.rows if horizon is None else self.within(horizon)
        return next((r for r in rows if r["val_acc"] >= target), None)

    def best(self, horizon: float | None = H) -> float | None:
        rows = self.rows if horizon is None else self.within(horizon)
        return max(r["val_acc"] for r in rows) if rows else None

    def grid(self, start: float, stop: float) -> list[float]:
        """val acc at start, start + GRID, ..., stop (the latest evaluation at or before each time)."""
        out, t = [], start
        while t <= stop + 1e-9:
            rows = self.within(t)
            if rows:
                out.append(rows[-1]["val_acc"])
            t += GRID
        return out

    def evals_in(self, start: float, stop: float) -> int:
        return sum(1 for r in self.rows if start - 1e-9 <= r["sim_time"] <= stop + 1e-9)

    def grid_std(self, start: float = 2 * H / 3, stop: float = H) -> float | None:
        """Std of val acc on the 10-s grid over [start, stop]; None with fewer than 3 evaluations there (FedAvg)."""
        if self.evals_in(start, stop) < 3:
            return None
        vals = self.grid(start, stop)
        return statistics.pstdev(vals) if len(vals) > 1 else None

    def largest_drop(self, horizon: float | None = H) -> float | None:
        """Largest fall of val acc below its running best, over every evaluation within the horizon (None with
        fewer than 3 evaluations: FedAvg within H)."""
        rows = self.rows if horizon is None else self.within(horizon)
        return drop_of([r["val_acc"] for r in rows]) if len(rows) >= MIN_EVALS else None

    def grid_drop(self) -> float | None:
        """The largest fall below the running best on the common 10-s grid over [0, H]: every strategy sampled
        alike (dense evaluations would otherwise see more dips)."""
        if self.evals_in(0.0, H) < MIN_EVALS:
            return None
        return drop_of(self.grid(0.0, H))

    def detrended_std(self, start: float = 2 * H / 3, stop: float = H) -> float | None:
        """Std of the grid values over [start, stop] about their least-squares line (the rise taken out)."""
        if self.evals_in(start, stop) < 3:
            return None
        ys = self.grid(start, stop)
        n = len(ys)
        if n < 3:
            return None
        xs = list(range(n))
        mx, my = statistics.mean(xs), statistics.mean(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        res = [y - (my + slope * (x - mx)) for x, y in zip(xs, ys)]
        return math.sqrt(sum(r * r for r in res) / (n - 2))

    def last_third_std(self) -> float | None:
        """Std of val acc over the last third of the run's own evaluations (FedAvg family: its 30 rounds)."""
        vals = [r["val_acc"] for r in self.rows]
        tail = vals[len(vals) - len(vals) // 3:]
        return statistics.pstdev(tail) if len(tail) > 1 else None


def drop_of(vals: list[float]) -> float:
    best, drop = -1.0, 0.0
    for v in vals:
        best = max(best, v)
        drop = max(drop, best - v)
    return drop


def mb(row: dict | None) -> float | None:
    return None if row is None else (row["bytes_up"] + row["bytes_down"]) / 1e6


def feds(name: str, seeds=SEEDS) -> list[tuple[int, Fed]]:
    out = []
    for s in seeds:
        path = run_dir(HERE, arm(name, s), s)
        if has_summary(path):
            out.append((s, Fed(Run(path))))
    return out


def cell(values, spec=".3g") -> str:
    return median_range(values, spec)


def reach_cell(fs: list[Fed], key, target: float, horizon: float | None, spec: str) -> str:
    """median [min, max] of key(first row >= target) over the runs that reached it, and k/n."""
    got = [key(f.first(target, horizon)) for f in fs if f.first(target, horizon) is not None]
    if not got:
        return f"not reached (0/{len(fs)})"
    text = fmt(statistics.median(got), spec)
    if len(got) > 1:
        text += f" [{fmt(min(got), spec)}, {fmt(max(got), spec)}]"
    return text + f" ({len(got)}/{len(fs)})"


# ------------------------------------------------------------------------------------------- tables


NOTES = f"""
Setting (README.md has the claims, the papers' statements, the verdicts and the pilots): MNIST-1D (4000 train /
1000 validation), 100 clients, per-class Dirichlet α = 0.3, client speeds exp(N(0,1)) s per local step; MLP
40-64-64-10 (7,434 parameters, 29.7 kB per transfer); clients: 10 local SGD steps, batch 32, lr 0.5; every client
always training (participation 1; FedAvg waits for all 100 each round). Server: plain averaging (sgd lr 1) for
FedAvg, FedBuff (mean of K = 10 staleness-scaled deltas, (1+s)^-0.5), FedFix and FedCompass (Σ (1/N)(1+s)^-0.5 Δ_i,
Q ∈ [2, 10]); async FedAvg: sgd lr {ASYNC_LR} on Fraboni's unbiased weight p_i/π_i. Seeds {SEEDS} (partition, speeds,
init). **Horizon H = {H:g} simulated s for every strategy**; the FedAvg family runs {FEDAVG_ROUNDS} rounds
(its own longer horizon), of which only the part up to H enters the equal-time columns. **Target {TARGET:.2f}** (fixed from
FedAvg's seed-0 pilot before the final runs). Values: median [min, max] over seeds; "(k/3)" = seeds that reached it.
Stability: std of val acc read every {GRID:g} simulated s over [{2 * H / 3:g}, {H:g}] s (the latest evaluation at or
before each point; "detrended": about the least-squares line through those points, so the rise is not counted);
the largest fall below the running best over [0, {H:g}] s on the same {GRID:g}-s grid (every strategy sampled alike) and
over every evaluation (async FedAvg and FedBuff are evaluated every ~1-2 s, FedFix once per window, ~8-9 s, so this
one favours the sparsely evaluated). "—": too few evaluations (FedAvg has 2-4 within H). Steps were planned from each
seed's client speeds (run.py `plan`); FedCompass's plan was 1.3-6x short and the driver extended those runs
("extended"). MB = uploads + downloads (float32 parameters).
"""


def results_markdown(names: list[str]) -> str:
    out = ["# Claim 16: federated strategies at equal simulated time (FedFix, FedCompass, FedBuff, async FedAvg, FedAvg)",
           "", NOTES.strip(), ""]
    present = [(n, [f for _, f in feds(n)]) for n in names]
    present = [(n, fs) for n, fs in present if fs]

    out += [f"## Time to val acc {TARGET:.2f} (the target)", "",
            "Within H for the asynchronous arms; within the FedAvg family's 30 rounds for those (FedAvg at "
            f"≤ {H:g} s in the next table).", ""]
    rows = []
    for n, fs in present:
        horizon = None if n in SYNC else H
        rows.append([SPECS[n][0], str(len(fs)),
                     reach_cell(fs, lambda r: r["sim_time"], TARGET, horizon, ".0f"),
                     reach_cell(fs, lambda r: float(r["step"]), TARGET, horizon, ".0f"),
                     reach_cell(fs, lambda r: float(r["client_updates"]), TARGET, horizon, ".0f"),
                     reach_cell(fs, mb, TARGET, horizon, ".1f")])
    out += [table(["strategy", "seeds", "simulated s", "server updates", "client updates", "MB up+down"], rows), ""]

    out += [f"## At equal simulated time: H = {H:g} s", ""]
    rows = []
    for n, fs in present:
        rows.append([SPECS[n][0],
                     cell([f.at()["val_acc"] if f.at() else None for f in fs], ".3f"),
                     cell([f.best() for f in fs], ".3f"),
                     cell([float(f.at()["step"]) if f.at() else None for f in fs], ".0f"),
                     cell([float(f.at()["client_updates"]) if f.at() else None for f in fs], ".0f"),
                     cell([mb(f.at()) for f in fs], ".1f"),
                     cell([f.grid_std() for f in fs], ".4f"),
                     cell([f.detrended_std() for f in fs], ".4f"),
                     cell([f.grid_drop() for f in fs], ".3f"),
                     cell([f.largest_drop() for f in fs], ".3f"),
                     cell([f.at()["staleness_mean"] if f.at() else None for f in fs], ".2f"),
                     f"{sum(f.covered() for f in fs)}/{len(fs)}"])
    out += [table(["strategy", f"val acc at {H:g} s", "best ≤ H", "server updates", "client updates", "MB up+down",
                   f"std [{2 * H / 3:g}, {H:g}] s", "detrended std", "largest drop (grid)",
                   "largest drop (every eval)", "mean staleness", "covered H"], rows), ""]

    out += ["## Time-to-accuracy ladder (simulated s; asynchronous arms within H, FedAvg family within 30 rounds)", ""]
    rows = []
    for n, fs in present:
        horizon = None if n in SYNC else H
        rows.append([SPECS[n][0], *(reach_cell(fs, lambda r: r["sim_time"], t, horizon, ".0f") for t in LADDER)])
    out += [table(["strategy", *(f"{t:.2f}" for t in LADDER)], rows), ""]

    ref = dict(feds("fedavg"))
    rows = []
    for n, _ in present:
        if n == "fedavg":
            continue
        ratios = []
        for s, f in feds(n):
            if s in ref and f.first(TARGET, None if n in SYNC else H) and ref[s].first(TARGET, None):
                ratios.append(ref[s].first(TARGET, None)["sim_time"] / f.first(TARGET, None if n in SYNC else H)["sim_time"])
        diffs = [f.at()["val_acc"] - ref[s].at()["val_acc"] for s, f in feds(n) if s in ref and f.at() and ref[s].at()]
        rows.append([SPECS[n][0], cell(ratios, ".1f"), cell(diffs, "+.3f")])
    if rows:
        out += ["## Paired with FedAvg (same seed)", "",
                table(["strategy", f"FedAvg's time to {TARGET:.2f} / this one's", f"val acc at {H:g} s − FedAvg's"],
                      rows), ""]

    fix = dict(feds("fedfix"))
    pairs = [(f, fix[s]) for s, f in feds("async_fedavg") if s in fix]
    if pairs:
        def row(label, key, spec):
            d = [key(a) - key(b) for a, b in pairs if key(a) is not None and key(b) is not None]
            return [label, cell(d, spec), f"{sum(x > 0 for x in d)}/{len(d)}"]
        rows = [row(f"time to {TARGET:.2f} (s)", lambda f: f.first(TARGET)["sim_time"] if f.first(TARGET) else None, "+.0f"),
                row(f"val acc at {H:g} s", lambda f: f.at()["val_acc"], "+.3f"),
                row("best ≤ H", lambda f: f.best(), "+.3f"),
                row("largest drop (every eval)", lambda f: f.largest_drop(), "+.3f"),
                row("largest drop (10-s grid)", lambda f: f.grid_drop(), "+.3f"),
                row(f"std [{2 * H / 3:g}, {H:g}] s (grid)", lambda f: f.grid_std(), "+.4f"),
                row("detrended std (grid)", lambda f: f.detrended_std(), "+.4f")]
        out += ["## Async FedAvg − FedFix (same seed)", "", table(["quantity", "Δ", "seeds > 0"], rows), ""]

    comp = dict(feds("fedcompass"))
    rows = []
    for n in ("async_fedavg", "fedbuff", "fedfix"):
        pairs = [(comp[s], f) for s, f in feds(n) if s in comp]
        if not pairs:
            continue
        d_at = [c.at()["val_acc"] - f.at()["val_acc"] for c, f in pairs]
        d_best = [c.best() - f.best() for c, f in pairs]
        d_drop = [c.grid_drop() - f.grid_drop() for c, f in pairs]
        rows.append([SPECS[n][0], cell(d_at, "+.3f"), f"{sum(d > 0 for d in d_at)}/{len(d_at)}", cell(d_best, "+.3f"),
                     f"{sum(d > 0 for d in d_best)}/{len(d_best)}", cell(d_drop, "+.3f")])
    if rows:
        out += ["## FedCompass − the others (same seed)", "",
                table(["vs", f"Δ val acc at {H:g} s", "seeds > 0", "Δ best ≤ H", "seeds > 0", "Δ largest drop (grid)"],
                      rows), ""]

    rows = []
    for n, fs in present:
        if n not in SYNC:
            continue
        rows.append([SPECS[n][0], cell([f.run.summary["federation"]["sim_time"] for f in fs], ".0f"),
                     cell([f.rows[-1]["val_acc"] for f in fs], ".3f"), cell([f.best(None) for f in fs], ".3f"),
                     cell([f.last_third_std() for f in fs], ".4f"), cell([f.largest_drop(None) for f in fs], ".3f"),
                     cell([mb(f.rows[-1]) for f in fs], ".0f"),
                     ", ".join(f"{f.run.status} at {f.run.steps}" for f in fs)])
    if rows:
        out += [f"## FedAvg family over its own {FEDAVG_ROUNDS} rounds", "",
                table(["strategy", "simulated s", "final val acc", "best", "std, last third of rounds",
                       "largest drop", "MB up+down", "status per seed"], rows), ""]

    rows = []
    total_wall = 0.0
    for n, _ in present:
        for s, f in feds(n):
            r = f.run
            at = f.at()
            hit = f.first(TARGET, None if n in SYNC else H)
            wall = (r.driver.get("process_wall_s") or 0) + sum(e["process_wall_s"] for e in r.driver.get("extensions", []))
            total_wall += wall
            rows.append([SPECS[n][0], str(s), r.status, str(r.steps), fmt(r.summary["federation"]["sim_time"], ".0f"),
                         fmt(at["val_acc"] if at else None, ".3f"), fmt(f.best(), ".3f"),
                         fmt(hit["sim_time"] if hit else None, ".0f"), fmt(f.grid_std(), ".4f"),
                         fmt(f.detrended_std(), ".4f"), fmt(f.grid_drop(), ".3f"), fmt(f.largest_drop(), ".3f"), fmt(r.summary["train_time"], ".1f"), fmt(wall, ".1f"),
                         str(len(r.driver.get("extensions", [])))])
    out += ["## Per run", "",
            table(["strategy", "seed", "status", "steps", "simulated s", f"val acc at {H:g} s", "best ≤ H",
                   f"time to {TARGET:.2f}", "std (grid)", "detrended std", "drop (grid)", "drop (every eval)", "train s", "process s", "extended"], rows),
            "", f"Process time of these runs together: {total_wall:.0f} s ({total_wall / 60:.1f} min) on one thread "
            "of the shared 2-core machine.", ""]

    out += ["## Commands (seed 1; the driver runs seeds 1-3, steps calibrated per seed)", ""]
    for n, _ in present:
        out.append(f"- {SPECS[n][0]}: `{shell_command(HERE, arm(n, SEEDS[0]), SEEDS[0], SEED_KEYS)}`")
    out += ["", f"All of it: `OMP_NUM_THREADS=1 nice -n 5 python {HERE.relative_to(REPO)}/run.py` (skips finished runs, resumes interrupted ones, extends a run that ended short of H; `--table` "
            "only rewrites this file).", ""]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description="Claim 16 (federated strategies): train what is missing, then write "
                                                 "results.md")
    parser.add_argument("--table", action="store_true", help="only (re)write results.md from the run directories")
    parser.add_argument("--arms", nargs="*", help="only these arms (names: " + ", ".join(SPECS) + ")")
    parser.add_argument("--seeds", nargs="*", type=int, help="only these seeds")
    args = parser.parse_args()
    names = MAIN
    if not args.table:
        t0 = time.perf_counter()
        for s in args.seeds or SEEDS:  # seed-major: a partial pass already compares the arms
            for name in names:
                if not args.arms or name in args.arms:
                    train(HERE, arm(name, s), s, SEED_KEYS)
                    extend(name, s)
        print(f"driver wall time {time.perf_counter() - t0:.1f} s", flush=True)
    text = results_markdown(MAIN)
    (HERE / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
