#!/usr/bin/env python
"""Optimizer step time: each trainlab optimizer against the public implementations of the same algorithm.

Not a test. Run from the repository root::

    python benchmarks/optim_step.py                 # ~4-6 min on the 2-core CPU
    python benchmarks/optim_step.py --steps 5 --quick  # smoke run

What it measures (all in one process, so the ratios come from the same run):

* A ~14.7M-parameter float32 set of transformer-like shapes (embedding 10240x256, 12 blocks of qkv 768x256,
  proj 256x256, fc 1024x256, proj2 256x1024 and four 256-vectors, final norm, head 10240x256) with fixed
  random gradients (every implementation gets its own copy of the parameters and gradients).
* For each algorithm, every implementation is built, warmed up (``--warmup`` steps), then timed for
  ``--steps`` rounds, interleaved (A B C, B C A, ...), and the median ms/step is reported, with the ratio to
  the fastest *peer* (non-trainlab implementation) of the same algorithm.
* The floor: bytes each step must read and write (params, grads, state; counted per algorithm in
  ``BYTES_PER_PARAM``) divided by the measured copy bandwidth (``dst.copy_(src)`` on 256 MB tensors,
  bandwidth = 2 x bytes / time, measured before, between and after the groups, median). A second ratio uses the
  in-place bandwidth (``x.mul_(1.0)``, the access pattern of an in-place update; ``copy_`` also pulls its
  destination into cache, so the copy figure understates traffic and its floor is below what fused AdamW reaches).
* torch.compile and heavyball rows run in a child process (``--compiled-only``), each with an eager reference
  re-measured there: eager steps after Inductor kernels in the same process were measured much slower here.
* Muon: the Newton-Schulz orthogonalisation of the 48 hidden matrices alone (flops counted per NS step for an
  m x n matrix, m <= n: X X^T 2m^2 n, A A 2m^3, B X 2m^2 n) against the measured peak matmul rate (2048^2
  fp32 matmul; bf16 too), and the full Muon step against the peers. Peers whose step is far too slow to time
  on the full set (torch.optim.Muon iterates in bf16, which this CPU has no fast kernels for) are compared on
  one block's four matrices instead.

* Subnormals: after the timed rounds, each eager implementation takes one more step under a dispatch mode that
  counts subnormal values in the output of every ATen op (``subnormal outputs`` column). Arithmetic on subnormals
  takes a microcode assist on many Intel cores (tens to hundreds of cycles per operation), so a non-zero count
  would explain a step far above the memory floor there; the parameters and gradients are seeded and identical
  on every CPU, so a zero here is a zero on any IEEE machine that does not flush.

Prints a markdown table and, with ``--markdown FILE``, writes it there (the RESULTS.md section is assembled by
hand from that output).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import trainlab.optim as toptim
from trainlab.optim.hardware import cpu_has_fast_bf16
from trainlab.optim.newton_schulz import orthogonalize

D, VOCAB, LAYERS = 256, 10240, 12


def param_shapes(vocab: int = VOCAB, d: int = D, layers: int = LAYERS) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = [(vocab, d)]
    for _ in range(layers):
        shapes += [(3 * d, d), (d, d), (4 * d, d), (d, 4 * d), (d,), (d,), (d,), (d,)]
    shapes += [(d,), (vocab, d)]
    return shapes


def hidden_shapes(layers: int = LAYERS, d: int = D) -> list[tuple[int, int]]:
    return [s for _ in range(layers) for s in ((3 * d, d), (d, d), (4 * d, d), (d, 4 * d))]


class ParamSet:
    """Parameters with a fixed gradient each; ``restore_grads`` re-attaches them (some optimizers clear .grad)."""

    def __init__(self, shapes: list[tuple[int, ...]], seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.params = [torch.nn.Parameter(torch.randn(s, generator=gen) * 0.02) for s in shapes]
        self.grads = [torch.randn(s, generator=gen) * 1e-3 for s in shapes]
        self.restore_grads()

    def restore_grads(self) -> None:
        for p, g in zip(self.params, self.grads):
            if p.grad is None:
                p.grad = g

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)


@dataclass
class Impl:
    label: str
    build: Callable[[list[torch.Tensor]], torch.optim.Optimizer]
    own: bool = False
    note: str = ""
    times: list[float] = field(default_factory=list)
    error: str = ""
    subnormal_outputs: int | None = None  # over one extra step's ATen op outputs (None: not checked)


# Bytes each step must move per float32 parameter (reads + writes), for a single fused pass where possible.
BYTES_PER_PARAM = {
    # read p, g, m, v; write p, m, v
    "AdamW": 7 * 4,
    # read p, g, m; write p, m
    "Lion": 5 * 4,
    # the trust ratio needs ||u|| before p can be written: pass 1 reads p, g, m, v and writes m, v (norms of p
    # and u on the fly); pass 2 reads p, m, v (recomputes u) and writes p
    "LAMB": 10 * 4,
    # read p, g, m, v, g_prev; write p, m, v, g_prev
    "diffGrad": 9 * 4,
    # pass 1 reads p, g (w.g, w.w, g.g give ||g_perp|| analytically); pass 2 is AdamW on the scaled g plus the
    # write-back of the projected g into p.grad (documented behaviour of trainlab and both references)
    "PerpGrad(AdamW)": 10 * 4,
    # train mode: read y (=p), g, z, v; write y, z, v
    "ScheduleFree AdamW": 7 * 4,
}


def copy_bandwidth(mb: int = 256, reps: int = 7) -> tuple[float, float]:
    """(median GB/s, median s) of ``dst.copy_(src)`` on ``mb`` MB float32 tensors; bandwidth = 2*bytes/time."""
    n = mb * 2**20 // 4
    src, dst = torch.randn(n), torch.empty(n)
    dst.copy_(src)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        dst.copy_(src)
        ts.append(time.perf_counter() - t)
    med = statistics.median(ts)
    return 2 * n * 4 / med / 1e9, med


def inplace_bandwidth(mb: int = 256, reps: int = 7) -> float:
    """Median GB/s of ``x.mul_(1.0)`` on ``mb`` MB: read + write of the same bytes, no write-allocate of a fresh
    destination -- the access pattern of an in-place optimizer update (``copy_`` into a separate buffer also pulls
    the destination into cache, so 2*bytes/time understates the traffic and the floor derived from it is lower)."""
    x = torch.randn(mb * 2**20 // 4)
    x.mul_(1.0)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        x.mul_(1.0)
        ts.append(time.perf_counter() - t)
    return 2 * x.numel() * 4 / statistics.median(ts) / 1e9


def matmul_rate(dtype: torch.dtype, n: int, reps: int) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(ts) / 1e9


def ns_flops(shapes: list[tuple[int, int]], steps: int = 5) -> float:
    total = 0.0
    for r, c in shapes:
        m, n = min(r, c), max(r, c)
        total += steps * (2 * m * m * n + 2 * m**3 + 2 * m * m * n)
    return total


class SubnormalCount(TorchDispatchMode):
    """Counts subnormal values in the floating-point outputs of every ATen op run under it."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (list, tuple)) else [out]:
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel():
                a = t.detach().abs()
                self.count += int(((a > 0) & (a < torch.finfo(t.dtype).tiny)).sum())
        return out


def count_subnormal_outputs(opt: torch.optim.Optimizer, ps: ParamSet) -> int:
    """One more step of ``opt`` on ``ps``, counting subnormal values among the outputs of the ops it runs."""
    ps.restore_grads()
    with SubnormalCount() as counter:
        opt.step()
    return counter.count


def time_rounds(impls: list[Impl], sets: dict[str, ParamSet], steps: int, warmup: int,
                check_subnormals: bool = False) -> None:
    """Build is done by the caller; warm up each, then time ``steps`` interleaved rounds (rotating the order);
    with ``check_subnormals``, one more step of each under :class:`SubnormalCount` (after the timing)."""
    opts: dict[str, torch.optim.Optimizer] = {}
    for impl in impls:
        try:
            ps = sets[impl.label]
            opt = impl.build(ps.params)
            if hasattr(opt, "train"):
                opt.train()
            t = time.perf_counter()
            for _ in range(warmup):
                ps.restore_grads()
                opt.step()
            impl.note = (impl.note + f" warm-up {time.perf_counter() - t:.1f}s").strip() if warmup else impl.note
            opts[impl.label] = opt
        except Exception as err:  # noqa: BLE001 - report, do not abort the benchmark
            impl.error = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
    live = [i for i in impls if i.label in opts]
    for r in range(steps):
        order = live[r % len(live):] + live[:r % len(live)] if live else []
        for impl in order:
            ps = sets[impl.label]
            ps.restore_grads()
            opt = opts[impl.label]
            t = time.perf_counter()
            opt.step()
            impl.times.append(time.perf_counter() - t)
    if check_subnormals:
        for impl in live:
            impl.subnormal_outputs = count_subnormal_outputs(opts[impl.label], sets[impl.label])


def med_ms(impl: Impl) -> float:
    return statistics.median(impl.times) * 1e3 if impl.times else math.nan


def run_elementwise(name: str, impls: list[Impl], shapes, steps: int, warmup: int, bw: float,
                    check_subnormals: bool = True) -> list[dict]:
    sets = {i.label: ParamSet(shapes, seed=0) for i in impls}
    numel = next(iter(sets.values())).numel
    time_rounds(impls, sets, steps, warmup, check_subnormals)
    peers = [med_ms(i) for i in impls if not i.own and i.times]
    best_peer = min(peers) if peers else math.nan
    nbytes = BYTES_PER_PARAM[name] * numel
    floor_ms = nbytes / (bw * 1e9) * 1e3
    rows = []
    for i in impls:
        ms = med_ms(i)
        rows.append({"algorithm": name, "impl": i.label, "own": i.own, "ms": ms, "vs_peer": ms / best_peer,
                     "bytes": nbytes, "floor_ms": floor_ms, "vs_floor": ms / floor_ms, "note": i.note,
                     "error": i.error, "n": len(i.times), "subnormal_outputs": i.subnormal_outputs})
    del sets
    gc.collect()
    return rows


# ----------------------------------------------------------------------------------------------- implementations


def _po():
    import pytorch_optimizer as po
    return po


def adamw_impls(compile_: bool, heavyball: bool, eager: bool = True) -> list[Impl]:
    hp = {"lr": 1e-3, "weight_decay": 0.01}
    impls = [] if not eager else [
        Impl("trainlab build('adamw') (torch AdamW, fused=True)", lambda p: toptim.build("adamw", p, **hp),
             own=True, note="the registry builds torch's AdamW with fused=True on CPU/CUDA float tensors"),
        Impl("torch.optim.AdamW for-loop", lambda p: torch.optim.AdamW(p, foreach=False, **hp)),
        Impl("torch.optim.AdamW foreach", lambda p: torch.optim.AdamW(p, foreach=True, **hp)),
        Impl("torch.optim.AdamW fused", lambda p: torch.optim.AdamW(p, fused=True, **hp)),
    ]
    if compile_:
        def compiled(p):
            opt = torch.optim.AdamW(p, foreach=True, **hp)
            opt.step = torch.compile(opt.step, fullgraph=False)
            return opt
        impls.append(Impl("torch.compile(AdamW foreach .step)", compiled))
    if heavyball:
        impls.append(Impl("heavyball.AdamW (compiled)", lambda p: _heavyball().AdamW(p, lr=1e-3, weight_decay=0.01)))
    return impls


def _heavyball():
    import heavyball
    return heavyball


def _own(name: str, label: str, hp: dict, **kw) -> Impl:
    return Impl(label, lambda p: toptim.build(name, p, **hp, **kw), own=True)


LION_HP = {"lr": 1e-4, "weight_decay": 0.1}
LAMB_HP = {"lr": 1e-3, "weight_decay": 0.01}
DIFFGRAD_HP = {"lr": 1e-3}


def lion_impls(compile_: bool, eager: bool = True) -> list[Impl]:
    impls = [] if not eager else [
        _own("lion", "trainlab lion (default: per tensor on CPU)", LION_HP),
        _own("lion", "trainlab lion foreach=True", LION_HP, foreach=True),
        Impl("pytorch_optimizer.Lion", lambda p: _po().Lion(p, **LION_HP)),
        Impl("lion_pytorch.Lion", lambda p: __import__("lion_pytorch").Lion(p, **LION_HP)),
    ]
    if compile_:
        impls.append(_own("lion", "trainlab lion compile=True", LION_HP, compile=True))
    return impls


def lamb_impls(compile_: bool = False, eager: bool = True) -> list[Impl]:
    impls = [] if not eager else [
        _own("lamb", "trainlab lamb (default: per tensor on CPU)", LAMB_HP),
        _own("lamb", "trainlab lamb foreach=True", LAMB_HP, foreach=True),
        Impl("pytorch_optimizer.Lamb", lambda p: _po().Lamb(p, **LAMB_HP)),
    ]
    if compile_:
        impls.append(_own("lamb", "trainlab lamb compile=True", LAMB_HP, compile=True))
    return impls


def diffgrad_impls(compile_: bool = False, eager: bool = True) -> list[Impl]:
    impls = [] if not eager else [
        _own("diffgrad", "trainlab diffgrad (default: per tensor on CPU)", DIFFGRAD_HP),
        _own("diffgrad", "trainlab diffgrad foreach=True", DIFFGRAD_HP, foreach=True),
        Impl("pytorch_optimizer.DiffGrad", lambda p: _po().DiffGrad(p, **DIFFGRAD_HP)),
    ]
    if compile_:
        impls.append(_own("diffgrad", "trainlab diffgrad compile=True", DIFFGRAD_HP, compile=True))
    return impls


def perpgrad_impls() -> list[Impl]:
    return [
        Impl("trainlab perpgrad base=adamw", lambda p: toptim.build("perpgrad", p, base="adamw", lr=1e-3), own=True,
             note="base = the registry's adamw (torch AdamW fused)"),
        Impl("pytorch_optimizer.OrthoGrad(AdamW)",
             lambda p: _po().OrthoGrad(torch.optim.AdamW, params=p, lr=1e-3)),
        Impl("pytorch_optimizer.OrthoGrad(AdamW foreach)",
             lambda p: _po().OrthoGrad(torch.optim.AdamW, params=p, lr=1e-3, foreach=True)),
        Impl("pytorch_optimizer.OrthoGrad(AdamW fused)",
             lambda p: _po().OrthoGrad(torch.optim.AdamW, params=p, lr=1e-3, fused=True)),
    ]


def schedulefree_impls(heavyball: bool, eager: bool = True) -> list[Impl]:
    impls = [] if not eager else [
        Impl("trainlab adamw_schedulefree (= schedulefree pkg)",
             lambda p: toptim.build("adamw_schedulefree", p, lr=2.5e-3), own=True,
             note="registry entry is schedulefree.AdamWScheduleFree itself"),
        Impl("schedulefree.AdamWScheduleFree", lambda p: __import__("schedulefree").AdamWScheduleFree(p, lr=2.5e-3)),
        Impl("pytorch_optimizer.ScheduleFreeAdamW", lambda p: _po().ScheduleFreeAdamW(p, lr=2.5e-3)),
    ]
    if heavyball:
        impls.append(Impl("heavyball.SFAdamW (compiled)", lambda p: _heavyball().SFAdamW(p, lr=2.5e-3)))
    return impls


def muon_impls(heavyball: bool, include_bf16: bool) -> list[Impl]:
    auto = "bf16" if cpu_has_fast_bf16() else "fp32"
    impls = [Impl(f"trainlab muon (default ns_dtype=auto: {auto} NS here, stacked)", lambda p: toptim.build("muon", p),
                  own=True)]
    if include_bf16 and auto == "fp32":
        impls.append(Impl("trainlab muon ns_dtype=bfloat16", lambda p: toptim.build("muon", p, ns_dtype="bfloat16"),
                          own=True))
    if include_bf16:
        impls.append(Impl("pytorch_optimizer.Muon (bf16 NS)",
                          lambda p: _po().Muon([{"params": p, "use_muon": True}])))
    if heavyball:
        impls.append(Impl("heavyball.Muon (compiled)", lambda p: _heavyball().Muon(p, lr=0.02)))
    if include_bf16:
        impls.append(Impl("torch.optim.Muon (bf16 NS)", lambda p: torch.optim.Muon(p, lr=0.02, weight_decay=0.0)))
    return impls


def muon_overhead_impls() -> list[Impl]:
    """Both bf16 Muons with no Newton–Schulz step: what is left (momentum, casts, normalisation, update) is the
    part of a step that does not depend on the machine's matmul rate."""
    return [Impl("trainlab muon ns_dtype=bfloat16 ns_steps=0",
                 lambda p: toptim.Muon(p, lr=0.02, ns_dtype="bfloat16", ns_steps=0), own=True),
            Impl("torch.optim.Muon ns_steps=0", lambda p: torch.optim.Muon(p, lr=0.02, ns_steps=0, weight_decay=0.0))]


# ------------------------------------------------------------------------------------------------------ reporting


def fmt_rows(rows: list[dict]) -> str:
    out = [("| algorithm | implementation | ms/step (median) | ratio to fastest peer | bytes/step | floor ms "
            "| ratio to floor | ratio to floor (in-place BW) | subnormal outputs |"),
           "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["error"]:
            out.append(f"| {r['algorithm']} | {r['impl']} | failed: {r['error']} | | | | | | |")
            continue
        star = "**" if r["own"] else ""
        out.append(f"| {r['algorithm']} | {star}{r['impl']}{star} | {r['ms']:.1f} | {r['vs_peer']:.2f} "
                   f"| {r['bytes'] / 1e6:.0f} MB | {r['floor_ms']:.1f} | {r['vs_floor']:.2f} "
                   f"| {r.get('vs_floor_inplace', math.nan):.2f} "
                   f"| {'-' if r.get('subnormal_outputs') is None else r['subnormal_outputs']} |")
    return "\n".join(out)


def fmt_muon(rows: list[dict]) -> str:
    out = ["| set | implementation | ms/step (median) | steps timed | ratio to fastest peer |", "|---|---|---:|---:|---:|"]
    for r in rows:
        if r["error"]:
            out.append(f"| {r['set']} | {r['impl']} | failed: {r['error']} | | |")
            continue
        star = "**" if r["own"] else ""
        out.append(f"| {r['set']} | {star}{r['impl']}{star} | {r['ms']:.0f} | {r['n']} | {r['vs_peer']:.2f} |")
    return "\n".join(out)


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=15, help="timed rounds per elementwise algorithm")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--muon-steps", type=int, default=5, help="timed rounds for Muon on the full hidden set")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    ap.add_argument("--no-heavyball", action="store_true", help="skip heavyball (compiles on first step)")
    ap.add_argument("--only", default="", help="comma list of algorithms to run (adamw,lion,lamb,diffgrad,"
                                                "perpgrad,schedulefree,muon)")
    ap.add_argument("--quick", action="store_true", help="smaller model (3 blocks, vocab 2048) for a smoke run")
    ap.add_argument("--compiled-only", action="store_true",
                    help="internal: the torch.compile / heavyball rows (run in a child process)")
    ap.add_argument("--json", default="", help=argparse.SUPPRESS)
    ap.add_argument("--markdown", default="", help="also write the tables to this file")
    args = ap.parse_args()

    try:
        import heavyball  # noqa: F401
        have_hb = not args.no_heavyball
    except ImportError:
        have_hb = False
    compile_ = not args.no_compile
    layers, vocab = (3, 2048) if args.quick else (LAYERS, VOCAB)
    shapes = param_shapes(vocab, D, layers)
    hshapes = hidden_shapes(layers, D)
    only = set(filter(None, args.only.split(",")))
    want = (lambda k: not only or k in only)

    t0 = time.perf_counter()
    head = [(f"CPU: {cpu_model()}, {os.cpu_count()} logical cores; torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads; python {platform.python_version()}"),
            (f"params: {sum(math.prod(s) for s in shapes) / 1e6:.2f}M float32 in {len(shapes)} tensors; "
             f"heavyball: {'yes' if have_hb else 'not used'}; load average at start: {loadavg()}")]
    print("\n".join(head), flush=True)

    bws = [copy_bandwidth()[0]]
    ibws = [inplace_bandwidth()]
    fp32_peak = matmul_rate(torch.float32, 2048, 5) if not args.compiled_only else math.nan
    bf16_peak = matmul_rate(torch.bfloat16, 1024, 2) if not args.compiled_only else math.nan
    print(f"copy bandwidth {bws[0]:.1f} GB/s; matmul fp32 {fp32_peak:.1f} GF/s, bf16 {bf16_peak:.2f} GF/s", flush=True)

    rows: list[dict] = []
    if args.compiled_only:
        # torch.compile / heavyball rows, in their own process: after Inductor's C++ kernels have run in a process,
        # eager optimizer steps in it were measured 10-60x slower on this 2-core CPU (threads of the compiled
        # kernels' OpenMP runtime competing with ATen's), which would poison the eager comparison.
        fused = lambda p: torch.optim.AdamW(p, fused=True, lr=1e-3, weight_decay=0.01)
        groups = [("adamw", "AdamW", lambda: [Impl("torch.optim.AdamW fused (eager, same process)", fused)]
                   + adamw_impls(True, have_hb, eager=False)),
                  ("lion", "Lion", lambda: [_own("lion", "trainlab lion (per tensor; eager, same process)", LION_HP),
                                            Impl("lion_pytorch.Lion (eager, same process)",
                                                 lambda p: __import__("lion_pytorch").Lion(p, **LION_HP))]
                   + lion_impls(True, eager=False)),
                  ("lamb", "LAMB", lambda: [Impl("pytorch_optimizer.Lamb (eager, same process)",
                                                 lambda p: _po().Lamb(p, **LAMB_HP))]
                   + lamb_impls(True, eager=False)),
                  ("diffgrad", "diffGrad", lambda: [Impl("pytorch_optimizer.DiffGrad (eager, same process)",
                                                         lambda p: _po().DiffGrad(p, **DIFFGRAD_HP))]
                   + diffgrad_impls(True, eager=False)),
                  ("perpgrad", "PerpGrad(AdamW)",
                   lambda: [Impl("pytorch_optimizer.OrthoGrad(AdamW fused) (eager, same process)",
                                 lambda p: _po().OrthoGrad(torch.optim.AdamW, params=p, lr=1e-3, fused=True)),
                            Impl("trainlab perpgrad compile_projection=True (base: fused AdamW)",
                                 lambda p: toptim.build("perpgrad", p, base="adamw", lr=1e-3,
                                                        compile_projection=True), own=True)]),
                  ("schedulefree", "ScheduleFree AdamW",
                   lambda: [Impl("schedulefree.AdamWScheduleFree (eager, same process)",
                                 lambda p: __import__("schedulefree").AdamWScheduleFree(p, lr=2.5e-3))]
                   + schedulefree_impls(have_hb, eager=False))]
    else:
        groups = [("adamw", "AdamW", lambda: adamw_impls(False, False)),
                  ("lion", "Lion", lambda: lion_impls(False)),
                  ("lamb", "LAMB", lambda: lamb_impls()),
                  ("diffgrad", "diffGrad", lambda: diffgrad_impls()),
                  ("perpgrad", "PerpGrad(AdamW)", perpgrad_impls),
                  ("schedulefree", "ScheduleFree AdamW", lambda: schedulefree_impls(False))]
    for key, name, make in groups:
        if not want(key):
            continue
        t = time.perf_counter()
        bws.append(copy_bandwidth(reps=3)[0])  # bandwidth between groups too: the floor uses the run's median
        ibws.append(inplace_bandwidth(reps=3))
        # eager only: a dispatch mode around a compiled step would measure (or break) Dynamo, not the kernels
        rows += run_elementwise(name, make(), shapes, args.steps, args.warmup, bws[-1],
                                check_subnormals=not args.compiled_only)
        print(f"{name}: {time.perf_counter() - t:.0f}s", flush=True)
    bws.append(copy_bandwidth()[0])
    ibws.append(inplace_bandwidth())
    bw = statistics.median(bws)
    ibw = statistics.median(ibws)
    for r in rows:  # floor from the median bandwidth over the run
        r["floor_ms"] = r["bytes"] / (bw * 1e9) * 1e3
        r["vs_floor"] = r["ms"] / r["floor_ms"]
        r["vs_floor_inplace"] = r["ms"] / (r["bytes"] / (ibw * 1e9) * 1e3)

    muon_rows: list[dict] = []
    ns_text = ""
    if want("muon"):
        t = time.perf_counter()
        # Orthogonalisation alone, as trainlab's default step runs it here (same shapes stacked; ns_dtype=auto).
        fast_bf16 = cpu_has_fast_bf16()
        ns_dtype = torch.bfloat16 if fast_bf16 else torch.float32
        gen = torch.Generator().manual_seed(1)
        by_shape: dict[tuple[int, int], int] = {}
        for s in hshapes:
            by_shape[s] = by_shape.get(s, 0) + 1
        stacks = [torch.randn(n, *s, generator=gen) for s, n in by_shape.items()][: 0 if args.compiled_only else None]
        for x in stacks:
            orthogonalize(x, dtype=ns_dtype)
        ns_t = []
        for _ in range(3):
            tt = time.perf_counter()
            for x in stacks:
                orthogonalize(x, dtype=ns_dtype)
            ns_t.append(time.perf_counter() - tt)
        flops = ns_flops(hshapes)
        ns_rate = flops / statistics.median(ns_t) / 1e9 if stacks else math.nan
        peak = bf16_peak if fast_bf16 else fp32_peak
        ns_text = (f"Newton-Schulz (5 quintic steps, {str(ns_dtype)[6:]}, same-shape matrices stacked) on the "
                   f"{len(hshapes)} hidden matrices: {flops / 1e9:.1f} GFLOP in {statistics.median(ns_t) * 1e3:.0f} ms "
                   f"= {ns_rate:.1f} GF/s, {ns_rate / peak:.0%} of the measured peak in that dtype; fp32 peak "
                   f"{fp32_peak:.1f} GF/s (2048^2 matmul), "
                   f"bf16 peak {bf16_peak:.2f} GF/s ({'fast' if fast_bf16 else 'no fast'} bf16 units reported by "
                   f"the CPU), so the peak used is {peak:.1f} GF/s; the compute floor of the orthogonalisation is "
                   f"{flops / peak / 1e6:.0f} ms.")
        if not args.compiled_only:
            print(ns_text, flush=True)
        else:
            ns_text = ""

        def muon_set(set_name: str, shp: list[tuple[int, int]], impls: list[Impl], steps: int, warmup: int) -> None:
            sets = {i.label: ParamSet(list(shp), seed=2) for i in impls}
            time_rounds(impls, sets, steps, warmup)
            peers = [med_ms(i) for i in impls if not i.own and i.times]
            best = min(peers) if peers else math.nan
            for i in impls:
                muon_rows.append({"set": set_name, "impl": i.label, "own": i.own, "ms": med_ms(i), "n": len(i.times),
                                  "vs_peer": med_ms(i) / best, "error": i.error})

        full = f"all {len(hshapes)} hidden matrices ({sum(r * c for r, c in hshapes) / 1e6:.1f}M)"
        if args.compiled_only:
            if have_hb:
                # heavyball's Muon iterates in bf16 here (~6 s per step even on 12 matrices): one block only
                muon_set("one block (4 matrices, 0.79M), separate process", hshapes[:4],
                         muon_impls(True, include_bf16=False), 2, 1)
        else:
            # bf16 peers on the full set only where bf16 is fast (elsewhere ~2 s per step for one block's 4 matrices)
            muon_set(full, hshapes, muon_impls(False, include_bf16=fast_bf16), args.muon_steps, 1)
            if not fast_bf16:
                muon_set("one block (4 matrices, 0.79M)", hshapes[:4], muon_impls(False, include_bf16=True), 2, 1)
            muon_set(f"{full}, no Newton-Schulz step", hshapes, muon_overhead_impls(), max(args.muon_steps, 10), 2)
        print(f"Muon: {time.perf_counter() - t:.0f}s", flush=True)

    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": rows, "muon_rows": muon_rows, "bws": bws}, fh)
        return
    child_note = ""
    if (compile_ or have_hb) and not args.compiled_only:
        t = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "child.json")
            cmd = [sys.executable, os.path.abspath(__file__), "--compiled-only", "--json", out,
                   "--steps", str(max(5, args.steps * 2 // 3)), "--warmup", str(args.warmup),
                   "--muon-steps", str(args.muon_steps)] + (["--quick"] if args.quick else []) + \
                  (["--no-heavyball"] if not have_hb else []) + (["--only", args.only] if args.only else [])
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode == 0 and os.path.exists(out):
                with open(out) as fh:
                    child = json.load(fh)
                cbw = statistics.median(child["bws"])
                for r in child["rows"]:
                    r["algorithm"] += " (compiled run)"
                    r["floor_ms"] = r["bytes"] / (bw * 1e9) * 1e3
                    r["vs_floor"] = r["ms"] / r["floor_ms"]
                    r["vs_floor_inplace"] = r["ms"] / (r["bytes"] / (ibw * 1e9) * 1e3)
                rows += child["rows"]
                muon_rows += child["muon_rows"]
                child_note = (f"compiled rows: separate process ({time.perf_counter() - t:.0f}s incl. compilation; its "
                              f"copy bandwidth median {cbw:.1f} GB/s; floors use the main run's bandwidth)")
            else:
                child_note = f"compiled rows: child process failed: {proc.stderr.strip().splitlines()[-1:]}"
        print(child_note, flush=True)

    tail = (f"copy bandwidth (median of {len(bws)} measurements, 256 MB dst.copy_(src), 2*bytes/time): "
            f"{bw:.1f} GB/s (min {min(bws):.1f}, max {max(bws):.1f}); in-place x.mul_(1.0) bandwidth (median of "
            f"{len(ibws)}, 2*bytes/time): {ibw:.1f} GB/s (min {min(ibws):.1f}, max {max(ibws):.1f}); load average at end: {loadavg()}; "
            f"total {time.perf_counter() - t0:.0f}s" + (f"; {child_note}" if child_note else ""))
    text = "\n".join(head) + "\n\n" + fmt_rows(rows) + "\n\n" + (ns_text + "\n\n" + fmt_muon(muon_rows) + "\n\n"
                                                                 if muon_rows else "") + tail + "\n"
    print("\n" + text)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
