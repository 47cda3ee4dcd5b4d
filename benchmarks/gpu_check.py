#!/usr/bin/env python
"""GPU check: trainlab's CUDA paths, run in one go on a CUDA machine, with every result written to files.

This project's development and CI machines have no GPU, so the code paths that only a GPU takes (bf16
autocast on CUDA, Inductor's CUDA kernels, NCCL, the optimizers' CUDA kernels) are checked here, on a borrowed
machine, in one prepared run of under eight minutes. Run from the repository root::

    python benchmarks/gpu_check.py --out benchmarks/gpu/h100-20261206   # all steps
    python benchmarks/gpu_check.py --out DIR --only bf16,compile        # some steps again
    python benchmarks/gpu_check.py --out DIR --dry-run                  # the plan: steps, timeouts, commands

Every step is a child process with its own timeout (the timeouts add up to ``BUDGET_S``), so a hang costs only
its own step; a failed or timed-out step is recorded and the next one runs. A timed-out step's whole process
group is killed (torchrun's workers, Inductor's compile workers), so nothing is left holding the GPU.

Writes ``DIR/gpu_check.json`` (machine, versions, commit; per step: command, timeout, status, seconds, output
tail, details), ``DIR/gpu_check.md`` (the same for people) and ``DIR/logs/STEP.log`` (each step's full output),
all rewritten after every step. Run directories go to a temporary directory, removed at the end: what they
say is copied into the details. Exit status: 0 when every step passed, 1 when one did not, 2 without CUDA.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = "gpu_check: no CUDA device (torch.cuda.is_available() is False); nothing run"
TAIL_CHARS = 3000
# A transformer on modular arithmetic: attention (SDPA) and matmuls, the parts bf16 and Inductor change.
RUN = ["workload=modular", "model=transformer", "device=cuda", "steps=300", "eval_every=100"]


@dataclass
class Step:
    name: str
    what: str
    command: list[str]
    timeout_s: int
    run_dir: Path | None = None  # a trainlab run directory: its summary.json says what ran
    child_json: Path | None = None  # a child of this script writes its findings here


def plan(work: Path) -> list[Step]:
    """The steps, in order; ``work`` holds run directories and the children's JSON files."""
    py = sys.executable
    torchrun = [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]

    def trainlab_run(name: str, what: str, launcher: list[str], extra: list[str], timeout_s: int) -> Step:
        out = work / name
        command = [*launcher, "-m", "trainlab", "run", *RUN, *extra, "--out", str(out), "--quiet", "--no-report"]
        return Step(name, what, command, timeout_s, run_dir=out)

    def child(name: str, what: str, launcher: list[str], timeout_s: int) -> Step:
        out = work / f"{name}.json"
        return Step(name, what, [*launcher, str(Path(__file__).resolve()), "--child", name, str(out)], timeout_s,
                    child_json=out)

    return [
        Step("cuda_tests", "the tests marked `cuda` (pytest -m cuda); a skipped one fails this step",
             [py, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-m", "cuda", "tests"], 70),
        trainlab_run("bf16", "trainlab run with autocast=bf16 on CUDA", [py], ["autocast=bf16"], 60),
        trainlab_run("compile", "trainlab run with compile=true (Inductor's CUDA kernels)", [py],
                     ["compile=true"], 110),
        trainlab_run("torchrun", "trainlab run under torchrun, one process on one GPU. With one process trainlab "
                     "makes no process group (trainlab/distributed/env.py): the launch is checked, not DDP or NCCL",
                     torchrun, [], 60),
        child("nccl_ddp", "a one-rank NCCL process group under torchrun: DistributedDataParallel steps on this GPU "
              "and an all-reduce (the backend trainlab's env.py picks for CUDA)", torchrun, 40),
        child("optim_step", "benchmarks/optim_step.py's implementations and parameter shapes, step times on CUDA "
              "against the peers and the copy-bandwidth floor", [py], 110),
    ]


BUDGET_S = sum(step.timeout_s for step in plan(Path("work")))  # 450 s: under eight minutes with start-up


# ------------------------------------------------------------------------------------------------ running


def execute(step: Step, log: Path) -> dict[str, Any]:
    """Run ``step`` with its timeout, its output to ``log``; then judge it."""
    start = time.perf_counter()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(step.command, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            rc: int | None = proc.wait(timeout=step.timeout_s)
        except subprocess.TimeoutExpired:
            rc = None
        _kill_group(proc)  # also after a clean exit: stray grandchildren must not keep the GPU
    seconds = round(time.perf_counter() - start, 1)
    output = log.read_text(errors="replace")
    ok, details = judge(step, rc, output)
    status = "timeout" if rc is None else "passed" if ok else "failed"
    return {"name": step.name, "what": step.what, "command": shlex.join(step.command), "timeout_s": step.timeout_s,
            "status": status, "returncode": rc, "seconds": seconds, "output_tail": output[-TAIL_CHARS:],
            "details": details}


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def judge(step: Step, rc: int | None, output: str) -> tuple[bool, dict[str, Any]]:
    """Whether ``step`` did what it claims, and what it says: a zero exit status alone is not enough."""
    if step.name == "cuda_tests":
        lines = output.strip().splitlines()
        last = lines[-1] if lines else ""
        return rc == 0 and " passed" in last and "skipped" not in last, {"summary": last}
    if step.run_dir is not None:
        from trainlab.rundir import RunDir

        summary = RunDir(step.run_dir).summary() or {}
        final = summary.get("final", {})
        details = {key: summary.get(key) for key in ("status", "device", "world_size", "steps", "train_time")}
        details["final"] = {k: v for k, v in final.items() if k.startswith(("train_", "val_"))}
        loss = final.get("train_loss")
        ok = (rc == 0 and details["status"] == "completed" and str(details["device"]).startswith("cuda")
              and isinstance(loss, (int, float)) and math.isfinite(loss))
        return ok, details
    assert step.child_json is not None
    details = json.loads(step.child_json.read_text()) if step.child_json.is_file() else {}
    return rc == 0 and details.get("ok") is True, details


# ------------------------------------------------------------------------------------------------ children


def nccl_ddp_child(out: Path) -> None:
    """One rank of a NCCL group: DDP steps and an all-reduce, what trainlab does per GPU with several GPUs."""
    import torch
    import torch.distributed as dist

    device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    torch.cuda.set_device(device)
    dist.init_process_group("nccl")
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(64, 64).to(device), device_ids=[device.index])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(32, 64, device=device)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    world = dist.get_world_size()
    total = torch.full((4,), float(dist.get_rank() + 1), device=device)
    dist.all_reduce(total)
    expected = world * (world + 1) / 2
    result = {"ok": total.tolist() == [expected] * 4 and losses[-1] < losses[0], "backend": dist.get_backend(),
              "world_size": world, "nccl": ".".join(map(str, torch.cuda.nccl.version())), "losses": losses}
    dist.destroy_process_group()
    _write_json(out, result)


def optim_step_child(out: Path, steps: int = 20, warmup: int = 3) -> None:
    """optim_step.py's implementations on its ~15M-parameter shapes (Muon: its hidden matrices), timed on CUDA.

    optim_step.py times the CPU (its clock does not wait for CUDA kernels); here every timed step ends with a
    ``torch.cuda.synchronize()``. Implementation labels are optim_step.py's. The ``compile=True`` rows come last
    and the file is rewritten after every group, so a compile that runs out of the step's time still leaves the
    eager results.
    """
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import optim_step as bench

    bandwidth = cuda_copy_bandwidth()
    shapes, hidden = bench.param_shapes(), bench.hidden_shapes()
    groups = [
        ("AdamW", shapes, lambda: bench.adamw_impls(False, False)),
        ("PerpGrad(AdamW)", shapes, bench.perpgrad_impls),
        ("ScheduleFree AdamW", shapes, lambda: bench.schedulefree_impls(False)),
        ("Muon", hidden, lambda: bench.muon_impls(False, include_bf16=True)),
        ("Lion", shapes, lambda: bench.lion_impls(False)),
        ("LAMB", shapes, lambda: bench.lamb_impls()),
        ("diffGrad", shapes, lambda: bench.diffgrad_impls()),
        # trainlab's compiled kernels last: each compiles for tens of seconds
        ("Lion", shapes, lambda: bench.lion_impls(True, eager=False)),
        ("LAMB", shapes, lambda: bench.lamb_impls(True, eager=False)),
        ("diffGrad", shapes, lambda: bench.diffgrad_impls(True, eager=False)),
    ]
    result: dict[str, Any] = {"ok": False, "device": torch.cuda.get_device_name(), "copy_bandwidth_gbs": bandwidth,
                              "steps": steps, "warmup": warmup, "rows": []}
    best_peer_ms: dict[str, float] = {}  # per algorithm, from its eager group
    for name, shp, make in groups:
        impls = make()
        for impl in impls:
            try:
                impl.times = cuda_step_times(impl.build, shp, steps, warmup)
            except Exception as err:  # noqa: BLE001 - record, go on with the next implementation
                impl.error = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}" if str(err) else type(err).__name__
            torch.cuda.empty_cache()
        peers = [statistics.median(i.times) * 1e3 for i in impls if not i.own and i.times]
        if peers:
            best_peer_ms.setdefault(name, min(peers))
        floor_ms = bench.BYTES_PER_PARAM[name] * sum(math.prod(s) for s in shp) / bandwidth / 1e6 \
            if name in bench.BYTES_PER_PARAM else math.nan
        for impl in impls:
            ms = statistics.median(impl.times) * 1e3 if impl.times else math.nan
            row = {"ms": ms, "vs_peer": ms / best_peer_ms.get(name, math.nan), "vs_floor": ms / floor_ms}
            result["rows"].append({"algorithm": name, "impl": impl.label, "own": impl.own, "error": impl.error,
                                   **{k: v if math.isfinite(v) else None for k, v in row.items()}})  # JSON: no NaN
        _write_json(out, result)
    result["ok"] = not any(row["own"] and row["error"] for row in result["rows"])  # a peer may fail; ours may not
    _write_json(out, result)


def cuda_copy_bandwidth(mb: int = 1024, reps: int = 10) -> float:
    """Median GB/s of ``dst.copy_(src)`` on ``mb`` MB on the GPU (2 x bytes / time, like optim_step.py's)."""
    import torch

    src = torch.randn(mb * 2**20 // 4, device="cuda")
    dst = torch.empty_like(src)
    times = []
    for _ in range(reps + 1):
        torch.cuda.synchronize()
        start = time.perf_counter()
        dst.copy_(src)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 2 * src.numel() * 4 / statistics.median(times[1:]) / 1e9


def cuda_step_times(build, shapes, steps: int, warmup: int) -> list[float]:
    """Seconds of each of ``steps`` optimizer steps on CUDA copies of optim_step.py's parameters and gradients."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import optim_step as bench

    cpu = bench.ParamSet(shapes)
    params = [torch.nn.Parameter(p.detach().cuda()) for p in cpu.params]
    grads = [g.cuda() for g in cpu.grads]

    def restore_grads() -> None:  # some optimizers clear .grad
        for p, g in zip(params, grads):
            if p.grad is None:
                p.grad = g

    restore_grads()
    opt = build(params)
    if hasattr(opt, "train"):
        opt.train()
    for _ in range(warmup):
        restore_grads()
        opt.step()
    times = []
    for _ in range(steps):
        restore_grads()
        torch.cuda.synchronize()
        start = time.perf_counter()
        opt.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


CHILDREN = {"nccl_ddp": nccl_ddp_child, "optim_step": optim_step_child}


# ------------------------------------------------------------------------------------------------ reporting


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    tmp.replace(path)


def machine() -> dict[str, Any]:
    import torch

    props = torch.cuda.get_device_properties(0)
    return {"device": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}", "device_count": torch.cuda.device_count(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "host": platform.node(), "cpu_count": os.cpu_count(), "commit": _git("rev-parse", "HEAD"),
            "dirty": bool(_git("status", "--porcelain")), "command": shlex.join([sys.executable, *sys.argv]),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def markdown(record: dict[str, Any]) -> str:
    m = record["machine"]
    lines = [f"# GPU check: {m['device']}, {m['date']}", "",
             f"torch {m['torch']} (CUDA {m['cuda']}), python {m['python']}, {m['cpu_count']} CPU cores; commit "
             f"{m['commit'][:12] or '?'}{' (uncommitted changes)' if m['dirty'] else ''}; "
             f"{record['total_s']:.0f} s of the {record['budget_s']} s budget", "", f"`{m['command']}`", "",
             "| step | status | seconds | what | details |", "|---|---|---:|---|---|"]
    for s in record["steps"]:
        shown = {k: v for k, v in s["details"].items() if k != "rows"}
        lines.append(f"| {s['name']} | **{s['status']}** | {s['seconds']} | {s['what']} | "
                     f"{json.dumps(shown, default=str)[:400]} |")
    for s in record["steps"]:
        rows = s["details"].get("rows")
        if rows:
            lines += ["", f"## {s['name']}: ms per step on CUDA (median of {s['details']['steps']}; copy bandwidth "
                      f"{s['details']['copy_bandwidth_gbs']:.0f} GB/s)", "",
                      "| algorithm | implementation | ms | ratio to fastest peer | ratio to floor |",
                      "|---|---|---:|---:|---:|"]
            for r in rows:
                label = f"**{r['impl']}**" if r["own"] else r["impl"]
                numbers = " | ".join("" if r[k] is None else f"{r[k]:.3g}" for k in ("ms", "vs_peer", "vs_floor"))
                lines.append(f"| {r['algorithm']} | {label} | " + (f"failed: {r['error']} | | |" if r["error"] else
                                                                    f"{numbers} |"))
    for s in record["steps"]:
        if s["status"] != "passed":
            lines += ["", f"## {s['name']}: {s['status']}", "", f"`{s['command']}`", "", "```",
                      s["output_tail"].strip(), "```"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Steps: " + ", ".join(
        s.name for s in plan(Path("work"))) + f"; their timeouts add up to {BUDGET_S} s.")
    ap.add_argument("--out", type=Path, metavar="DIR", help="where gpu_check.json, gpu_check.md and logs/ go")
    ap.add_argument("--only", default="", metavar="STEP,...", help="run only these steps")
    ap.add_argument("--dry-run", action="store_true", help="print the steps, their timeouts and commands; run nothing")
    ap.add_argument("--child", nargs=2, metavar=("NAME", "JSON"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        CHILDREN[args.child[0]](Path(args.child[1]))
        return 0
    if args.out is None:
        ap.error("--out DIR is required")
    only = set(filter(None, args.only.split(",")))
    unknown = only - {s.name for s in plan(Path("work"))}
    if unknown:
        ap.error(f"unknown step(s) {', '.join(sorted(unknown))}")

    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        steps = [s for s in plan(Path(tmp)) if not only or s.name in only]
        if args.dry_run:
            for s in steps:
                print(f"{s.name} (timeout {s.timeout_s} s): {s.what}\n    {shlex.join(s.command)}")
            print(f"total of the timeouts: {sum(s.timeout_s for s in steps)} s")
            return 0
        import torch

        with warnings.catch_warnings():  # a broken driver warns here: the refusal stays one line
            warnings.simplefilter("ignore")
            cuda = torch.cuda.is_available()
        if not cuda:
            print(NO_CUDA, file=sys.stderr)
            return 2
        logs = args.out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        record: dict[str, Any] = {"machine": machine(), "budget_s": sum(s.timeout_s for s in steps), "steps": []}
        start = time.perf_counter()
        for step in steps:
            print(f"gpu_check: {step.name} (timeout {step.timeout_s} s) ...", flush=True)
            result = execute(step, logs / f"{step.name}.log")
            record["steps"].append(result)
            record["total_s"] = round(time.perf_counter() - start, 1)
            _write_json(args.out / "gpu_check.json", record)
            (args.out / "gpu_check.md").write_text(markdown(record))
            print(f"gpu_check: {step.name} {result['status']} in {result['seconds']} s", flush=True)
    failed = [s["name"] for s in record["steps"] if s["status"] != "passed"]
    print(f"gpu_check: {len(steps) - len(failed)}/{len(steps)} passed" + (f"; not: {', '.join(failed)}" if failed else "")
          + f"; results in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
