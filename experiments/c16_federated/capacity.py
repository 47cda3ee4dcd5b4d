"""Claim 16, side measurement: how many simulated clients the federated simulator holds in memory.

async_fedavg with participation 1 keeps EVERY client in flight, each holding its uploaded delta (one flat float32
vector of the model's parameters) until it arrives: the worst case for the simulator's memory. We run a few server
updates with N = 100, 1000 and 10000 clients (and N = 1000 with a 10.6x larger model) under ``/usr/bin/time -v`` and
read the peak resident set size; the slope between N's gives the bytes each simulated client costs. Local work does
not change what a client holds, so the runs use 1 local step (fast); the data are 12,500 MNIST-1D examples (10,000
train, so 10,000 clients get one each; partition iid because a Dirichlet split cannot give 10,000 clients an example
each) for every N, so the data's memory is the same in all runs.

    OMP_NUM_THREADS=1 nice -n 5 python experiments/c16_federated/capacity.py     # ~3 min; writes capacity.md
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
GIB = 2**30
BASE = ["workload=mnist1d", "workload.num_samples=12500", "model=mlp", "model.depth=2", "fed.strategy=async_fedavg",
        "fed.partition=iid", "fed.speeds=lognormal", "fed.speed_spread=1", "fed.local_steps=1", "fed.local_lr=0.05",
        "optimizer=sgd", "optimizer.lr=0.01", "steps=5", "eval_every=5", "trace=false", "seed=0"]
CASES = [(100, 64), (1000, 64), (10000, 64), (1000, 256)]  # (clients, width)


def params(width: int) -> int:
    return 40 * width + width + width * width + width + width * 10 + 10


def probe(record: str, argv: list[str]) -> int:
    """Run ``trainlab`` with ``argv``, noting the peak RSS so far when the first checkpoint is about to be written:
    the simulator's training state (every client's delta), before the checkpoint's serialised copy adds to it."""
    import resource

    from trainlab import cli
    from trainlab.rundir import checkpoints

    original = checkpoints.save

    def save(*args, **kwargs):  # type: ignore[no-untyped-def]
        path = Path(record)
        if not path.exists():
            path.write_text(json.dumps({"peak_rss_before_checkpoint_bytes":
                                        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
        return original(*args, **kwargs)

    checkpoints.save = save
    return cli.main(argv)


def measure(clients: int, width: int) -> dict:
    out = HERE / "runs" / f"capacity-n{clients}-w{width}"
    record = out.parent / f"capacity-n{clients}-w{width}.probe.json"
    args = ["/usr/bin/time", "-v", sys.executable, str(Path(__file__).relative_to(REPO)), "--probe", str(record),
            "run", *BASE, f"fed.clients={clients}", f"model.width={width}", "--out", str(out.relative_to(REPO)),
            "--quiet", "--no-report"]
    if (out / "summary.json").is_file():
        cached = out / "capacity.json"
        if cached.is_file():
            return json.loads(cached.read_text())
    if out.exists():
        import shutil
        shutil.rmtree(out)
    record.unlink(missing_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    summary = json.loads((out / "summary.json").read_text())
    ckpt = sum(p.stat().st_size for p in (out / "checkpoints").rglob("*") if p.is_file())
    before = json.loads(record.read_text())["peak_rss_before_checkpoint_bytes"]
    result = {"clients": clients, "width": width, "parameters": params(width), "param_bytes": params(width) * 4,
              "peak_rss_bytes": rss_kb * 1024, "peak_before_checkpoint_bytes": before, "wall_s": round(wall, 1), "checkpoint_bytes": ckpt,
              "slots": summary["federation"]["slots"], "server_updates": summary["federation"]["server_updates"]}
    (out / "capacity.json").write_text(json.dumps(result, indent=1))
    return result


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--probe":
        raise SystemExit(probe(sys.argv[2], sys.argv[3:]))
    results = [measure(n, w) for n, w in CASES]
    by = {(r["clients"], r["width"]): r for r in results}
    small, big, wide = by[(1000, 64)], by[(10000, 64)], by[(1000, 256)]
    lines = ["# Claim 16: simulated clients in memory (async_fedavg, every client in flight)", "",
             "`python experiments/c16_federated/capacity.py`: 5 server updates of `fed.strategy=async_fedavg` "
             "(participation 1: every client in flight, each holding its delta), 1 local step per dispatch, "
             "10,000 MNIST-1D training examples (partition iid) in every run. \"before checkpoint\" = peak RSS "
             "(`getrusage`) when the run's first checkpoint is about to be written, i.e. the training state; "
             "\"peak\" = `/usr/bin/time -v`'s maximum RSS of the whole process, which includes writing the final "
             "checkpoint (serialised in memory first, `trainlab/rundir/checkpoints.py`).", "",
             "| clients | MLP width | parameters | bytes per delta | in flight | before checkpoint (MiB) | peak (MiB) | "
             "checkpoint file (MiB) | process s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['clients']} | {r['width']} | {r['parameters']:,} | {r['param_bytes']:,} | {r['slots']} | "
                     f"{r['peak_before_checkpoint_bytes'] / 2**20:.0f} | {r['peak_rss_bytes'] / 2**20:.0f} | "
                     f"{r['checkpoint_bytes'] / 2**20:.1f} | {r['wall_s']} |")
    lines.append("")
    for key, what in (("peak_before_checkpoint_bytes", "training state (before checkpoint)"),
                      ("peak_rss_bytes", "whole process (with the final checkpoint)")):
        slope = (big[key] - small[key]) / (big["clients"] - small["clients"])
        intercept = small[key] - slope * small["clients"]
        cap = (24 * GIB - intercept) / slope
        per_param = slope / small["param_bytes"]
        wide_slope = (wide[key] - by[(100, 64)][key]) / (wide["clients"] - 100)
        lines.append(f"- {what}: **{slope / 1024:.1f} KiB per client** between 1,000 and 10,000 clients "
                     f"(= {per_param:.2f} × the 29,736-byte delta of the 7,434-parameter MLP; intercept "
                     f"{intercept / 2**20:.0f} MiB); 24 GiB would hold ≈ **{cap:,.0f} clients** at this model size "
                     f"(extrapolated; trainlab caps fed.clients at 100,000). With the 78,858-parameter MLP (width 256) "
                     f"and 1,000 clients: ≈ {wide_slope / 1024:.0f} KiB per client above the 100-client run "
                     f"({wide_slope / wide['param_bytes']:.2f} × its delta), i.e. 24 GiB ≈ "
                     f"{24 * GIB / wide_slope:,.0f} such clients.")
    text = "\n".join(lines) + "\n"
    (HERE / "capacity.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
