"""Loss against bytes communicated: DDP, DiLoCo (H = 50..500), Streaming DiLoCo, DGC and PowerSGD.

Reproduces, at small scale, the communication claims of the papers (issue 6; ../shared/reference/algorithms.md §7):

- DiLoCo (Douillard et al. 2023): data-parallel quality with ~H-fold less communication (~500x at H = 500).
- Streaming DiLoCo (Douillard et al. 2025): ~400x fewer bits than data-parallel (fragments + 4-bit outer gradients).
- Deep Gradient Compression (Lin et al. 2018): 270-600x smaller gradient exchange, same accuracy.
- PowerSGD (Vogels et al. 2019): rank-r factors instead of the gradient.

Every arm is one ``torchrun --standalone --nproc_per_node=N -m trainlab run ...`` on the character-level
transformer LM (stdlib docstrings, built at run time), with the same seed, data and step budget; only
``dist.*`` (and, for DGC, where the momentum lives) changes. The bytes are what trainlab's byte meter records:
the payload each process hands to collectives (``trainlab.distributed.comm``), from ``summary.json``. The table gives
the final validation loss, total bytes per process, and the reduction against the DDP arm with the same
optimizer.

    python benchmarks/comm.py                      # all arms, 2 processes, 1500 steps  (~15-30 min on 2 cores)
    python benchmarks/comm.py --steps 300 --only ddp,diloco_h50     # a quick look
    python benchmarks/comm.py --table              # rewrite the table from finished runs only

Runs go to ``benchmarks/runs/comm/ARM`` (git-ignored); finished runs are reused. Each process uses one torch
thread (OMP_NUM_THREADS=1): on this 2-core machine DDP proves correctness, not speed (see issue 6's traps).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from trainlab.rundir import RunDir

HERE = Path(__file__).resolve().parent
WORKLOAD = ["workload=charlm", "workload.max_chars=50000", "workload.block_size=32", "model=transformer",
            "model.n_layer=1", "model.d_model=64", "model.n_head=4", "batch_size=32", "dtype=float32"]
ADAMW = ["optimizer=adamw", "optimizer.lr=3e-3", "optimizer.weight_decay=0.1", "optimizer.betas=[0.9,0.95]",
         "schedule=cosine", "schedule.warmup=40"]
# DGC moves the momentum into the hook (momentum correction), so its optimizer is plain SGD and its
# reference arm is DDP with the same momentum in the optimizer.
SGD_MOMENTUM = ["optimizer=sgd", "optimizer.lr=0.1", "optimizer.momentum=0.9", "schedule=cosine", "schedule.warmup=40"]
SGD_PLAIN = ["optimizer=sgd", "optimizer.lr=0.1", "optimizer.momentum=0", "schedule=cosine", "schedule.warmup=40"]

# name -> (reference arm for the reduction factor, overrides, paper's reduction)
ARMS: dict[str, tuple[str, list[str], str]] = {
    "ddp": ("ddp", [*ADAMW, "dist=ddp"], "1x"),
    "diloco_h50": ("ddp", [*ADAMW, "dist=diloco", "dist.inner_steps=50"], "~50x (H-fold)"),
    "diloco_h100": ("ddp", [*ADAMW, "dist=diloco", "dist.inner_steps=100"], "~100x"),
    "diloco_h500": ("ddp", [*ADAMW, "dist=diloco", "dist.inner_steps=500"], "~500x"),
    "streaming_h100_p2_4bit": ("ddp", [*ADAMW, "dist=streaming_diloco", "dist.inner_steps=100", "dist.fragments=2",
                                       "dist.overlap=5", "dist.quant_bits=4"], "~400x fewer bits (1B model, 4-bit)"),
    "powersgd_r2": ("ddp", [*ADAMW, "dist=ddp", "dist.compression=powersgd", "dist.powersgd_rank=2"],
                    "— (ratio set by matrix shapes: nm/((n+m)r))"),
    "ddp_sgd": ("ddp_sgd", [*SGD_MOMENTUM, "dist=ddp"], "1x"),
    "dgc": ("ddp_sgd", [*SGD_PLAIN, "dist=ddp", "dist.compression=dgc", "dist.dgc_density=0.001",
                        "dist.dgc_momentum=0.9", "dist.dgc_warmup_steps=200"], "270-600x"),
}


def run_arm(name: str, out: Path, steps: int, nproc: int, eval_every: int) -> dict:
    """Train one arm (or reuse its finished run) and return its summary.json."""
    run_dir = out / name
    finished = RunDir(run_dir).summary()
    if finished is not None:
        return finished
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    _, overrides, _ = ARMS[name]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "trainlab", "run", *WORKLOAD, *overrides, f"steps={steps}", f"eval_every={eval_every}", "seed=0",
           "trace=false", "--out", str(run_dir), "--quiet", "--no-report"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"comm: arm {name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    print(f"comm: {name} finished in {time.perf_counter() - t0:.0f} s", flush=True)
    summary = RunDir(run_dir).summary()
    assert summary is not None, f"{run_dir} has no summary.json after a completed run"
    return summary


def table(out: Path, names: list[str]) -> str:
    summaries = {n: RunDir(out / n).summary() for n in names}
    rows = {n: s for n, s in summaries.items() if s is not None}
    lines = ["| arm | optimizer | final val loss | best val loss | bytes / process (total) | bytes / step | "
             "reduction vs its DDP arm | paper |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for name, s in rows.items():
        ref, overrides, paper = ARMS[name]
        total = s.get("comm", {}).get("bytes_total")
        ref_total = rows.get(ref, {}).get("comm", {}).get("bytes_total")
        reduction = f"{ref_total / total:,.0f}x" if total and ref_total else "—"
        opt = next(o.split("=", 1)[1] for o in overrides if o.startswith("optimizer="))
        per_step = s.get("comm", {}).get("bytes_per_step")
        best = min(r["val_loss"] for r in RunDir(out / name).metrics() if "val_loss" in r)
        lines.append(f"| {name} | {opt} | {s['final']['val_loss']:.4f} | {best:.4f} | {total:,} | {per_step:,.0f} "
                     f"| {reduction} | {paper} |")
    return "\n".join(lines)


def plot(out: Path, names: list[str], path: Path) -> None:
    """Validation loss against cumulative bytes per process, one line per arm (log x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name in names:
        rows = RunDir(out / name).metrics()
        pts = [(r["comm_bytes_total"], r["val_loss"]) for r in rows if r.get("comm_bytes_total") and "val_loss" in r]
        if pts:
            ax.plot(*zip(*pts), marker=".", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("bytes handed to collectives per process (cumulative)")
    ax.set_ylabel("validation loss")
    ax.set_title("charlm, 2 processes: loss against communication")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1500, help="optimizer steps per arm (default 1500)")
    ap.add_argument("--nproc", type=int, default=2, help="processes per arm (default 2)")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--only", default="", help="comma-separated arms (default: all): " + ", ".join(ARMS))
    ap.add_argument("--out", default=str(HERE / "runs" / "comm"))
    ap.add_argument("--table", action="store_true", help="only print the table of finished runs")
    ap.add_argument("--plot", default=str(HERE / "comm_loss_vs_bytes.png"), help="where the figure goes ('' = none)")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or list(ARMS)
    unknown = [n for n in names if n not in ARMS]
    if unknown:
        raise SystemExit(f"comm: unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.table:
        print(f"comm: {platform.machine()} {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, "
              f"{args.nproc} processes x 1 thread, {args.steps} steps", flush=True)
        for name in names:
            run_arm(name, out, args.steps, args.nproc, args.eval_every)
    print(table(out, names))
    if args.plot:
        plot(out, names, Path(args.plot))
        print(f"figure: {args.plot}")
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
