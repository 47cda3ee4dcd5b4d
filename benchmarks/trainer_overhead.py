#!/usr/bin/env python
"""Trainer overhead: ``trainlab.run`` against a hand-written PyTorch loop on the same workload, in one process.

For each workload the script measures, on the same data tensors, the same model (built by the same factory
from the same seed), the same optimizer and hyperparameters and the same batch size:

(a) **trainlab** -- the real ``trainlab.run(...)`` path (quiet, no report, evaluation only at the first and
    last step and limited to a few examples); the per-step time is ``train_time / steps`` read from the run's
    ``summary.json``, which is the number users get and which excludes evaluation and checkpointing;
(b) **plain** -- the loop a competent user writes: one random permutation per epoch, minibatches by
    indexing, ``zero_grad(set_to_none=True)``, forward, mean cross-entropy, backward, ``torch.optim.AdamW``
    step, timed with ``time.perf_counter`` around the whole loop (a fresh model and optimizer per repetition,
    as ``trainlab.run`` builds its own).

Repetitions are interleaved (pairs alternate order AB, BA, AB, ... so a linear drift of the machine cancels)
after a warm-up of each; the overhead is reported as the median and min-max over the pairs of
``t_trainlab / t_plain - 1``. The physical floor is the step's FLOPs (FlopCounterMode on one plain step,
forward and backward) divided by the fp32 matmul rate measured between the pairs. When the median overhead
exceeds ``--target`` (default 3%), or with ``--profile``, cProfile and torch.profiler show where trainlab's
extra time goes.

Nothing here asserts a timing: it measures and prints. Example::

    python benchmarks/trainer_overhead.py                       # mnist1d / cnn1d, batch 100
    python benchmarks/trainer_overhead.py --workload all        # mnist1d, then charlm / transformer, batch 32
    python benchmarks/trainer_overhead.py --workload charlm --steps 40 --repeats 7 --json out.json
    python benchmarks/trainer_overhead.py --threads 1 --ablation 15  # + each addition timed inside real steps
    python benchmarks/trainer_overhead.py --set trace=false          # extra trainlab overrides, both sides
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import trainlab
from trainlab import models, workloads
from trainlab.distributed.env import DistEnv
from trainlab.train.config import RunConfig, parse_overrides, resolve
from trainlab.train.loop import train_step
from trainlab.train.state import TrainState
from trainlab.train.training import Training, build_training, input_kind_for

# Per-workload defaults: (steps per timed run, batch size, pairs). One timed run takes about a second, so a burst
# of load from other processes spoils few pairs; the median over many pairs discards those.
DEFAULTS: dict[str, tuple[int, int, int]] = {"mnist1d": (100, 100, 21), "charlm": (15, 32, 15)}
EVAL_EXAMPLES = 64  # evaluation is excluded from train_time anyway; this only keeps the untimed wall short
EXTRA_OVERRIDES: list[str] = []  # --set KEY=VALUE, appended to every trainlab config (e.g. trace=false)


# ---------------------------------------------------------------------------------------------------------
# Configuration shared by both sides


def overrides_for(workload: str, steps: int, batch: int, seed: int) -> list[str]:
    """The ``key=value`` overrides of the trainlab run (the plain loop reads the same resolved config)."""
    return [f"workload={workload}", f"steps={steps}", f"eval_every={steps}", f"batch_size={batch}",
            f"seed={seed}", "device=cpu", "dtype=float32", "compile=false", f"eval_examples={EVAL_EXAMPLES}",
            *EXTRA_OVERRIDES]


def config_for(workload: str, steps: int, batch: int, seed: int) -> RunConfig:
    cfg = resolve([parse_overrides(overrides_for(workload, steps, batch, seed))])
    if cfg.optimizer.name != "adamw":
        raise SystemExit(f"the plain loop uses torch.optim.AdamW; config resolved to {cfg.optimizer.name}")
    if cfg.schedule.name != "constant" or cfg.schedule.options.warmup != 0:
        raise SystemExit("the plain loop uses a constant learning rate; config resolved to another schedule")
    if cfg.train.grad_clip is not None:
        raise SystemExit("the plain loop does not clip gradients")
    return cfg


def fresh_training(cfg: RunConfig) -> tuple[Training, TrainState]:
    """trainlab's parts for ``cfg`` on this process (built as ``trainlab.run`` builds them) and a state at step 0."""
    t = build_training(cfg, DistEnv())
    return t, TrainState.fresh(t)


# ---------------------------------------------------------------------------------------------------------
# (b) The hand-written loop


@dataclass
class Plain:
    """Data and model factory of the hand-written loop, built as a user would from trainlab's pieces."""

    cfg: RunConfig
    x: torch.Tensor
    y: torch.Tensor
    build_model: Callable[[], torch.nn.Module]


def plain_setup(cfg: RunConfig) -> Plain:
    workload = workloads.build(cfg.workload.name, **cfg.workload.kwargs())
    kind = input_kind_for(workload, cfg.model.name)
    data = workload.data(kind)  # the workload's own tensors (float32, CPU), as trainlab uses them
    spec = workload.spec(kind)

    def build_model() -> torch.nn.Module:
        torch.manual_seed(cfg.train.seed)  # build_training seeds, builds the workload (no torch RNG), then the model
        return models.build(cfg.model.name, spec, **cfg.model.kwargs())

    return Plain(cfg, data.x_train, data.y_train, build_model)


def plain_optimizer(cfg: RunConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    # The same implementation trainlab's registry builds (fused on CPU/CUDA), so the ratio measures the trainer,
    # not a difference between AdamW kernels.
    o = cfg.optimizer.options
    fused = all(p.device.type in ("cpu", "cuda") for p in model.parameters())
    return torch.optim.AdamW(model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                             weight_decay=o.weight_decay, amsgrad=o.amsgrad, fused=fused or None)


def plain_train(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                batch: int, steps: int, seed: int) -> torch.Tensor:
    """The loop a competent user writes. The permutation of epoch ``e`` is seeded like trainlab's sampler
    (``seed * 1_000_003 + e``) so both sides see the same batches; that costs nothing extra."""
    n = len(x)
    per_epoch = n // batch  # drop the last partial batch, as trainlab does
    gen = torch.Generator()
    perm = torch.empty(0, dtype=torch.long)
    loss = torch.zeros(())
    for step in range(steps):
        epoch, pos = divmod(step, per_epoch)
        if pos == 0:
            perm = torch.randperm(n, generator=gen.manual_seed(seed * 1_000_003 + epoch))
        idx = perm[pos * batch:(pos + 1) * batch]
        xb, yb = x[idx], y[idx]
        opt.zero_grad(set_to_none=True)
        logits = model(xb)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.reshape(-1))
        loss.backward()
        opt.step()
    return loss


def time_plain(plain: Plain, steps: int) -> float:
    """Seconds for ``steps`` steps of the plain loop on a fresh model and optimizer."""
    cfg = plain.cfg
    model = plain.build_model()
    opt = plain_optimizer(cfg, model)
    t0 = time.perf_counter()
    plain_train(model, opt, plain.x, plain.y, cfg.train.batch_size, steps, cfg.train.seed)  # type: ignore[arg-type]
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------------------
# (a) The trainlab path


def time_trainlab(workload: str, steps: int, batch: int, seed: int, root: Path, tag: str) -> tuple[float, float, dict]:
    """(train_time seconds from summary.json, wall seconds of the whole run() call, summary)."""
    t0 = time.perf_counter()
    run_dir = trainlab.run(overrides=overrides_for(workload, steps, batch, seed), out=root / tag, quiet=True,
                           report=False, command="benchmarks/trainer_overhead.py")
    wall = time.perf_counter() - t0
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    if summary["status"] != "completed" or summary["steps"] != steps:
        raise RuntimeError(f"trainlab run {run_dir} did not complete {steps} steps: {summary['status']}")
    return float(summary["train_time"]), wall, summary


# ---------------------------------------------------------------------------------------------------------
# Equivalence check: same initial weights, same update


def check_equivalence(cfg: RunConfig, plain: Plain, steps: int = 3) -> dict[str, float]:
    """Build trainlab's parts and the plain model; compare initial weights and weights after ``steps`` steps."""
    t, s = fresh_training(cfg)
    model = plain.build_model()
    init_diff = max((a - b).abs().max().item() for a, b in zip(t.model.parameters(), model.parameters()))
    for _ in range(steps):
        train_step(t, s)
    opt = plain_optimizer(cfg, model)
    plain_train(model, opt, plain.x, plain.y, cfg.train.batch_size, steps, cfg.train.seed)  # type: ignore[arg-type]
    step_diff = max((a - b).abs().max().item() for a, b in zip(t.model.parameters(), model.parameters()))
    if not torch.equal(t.data.x_train, plain.x):
        raise RuntimeError("trainlab and the plain loop see different training data")
    return {"init_max_abs_diff": init_diff, f"after_{steps}_steps_max_abs_diff": step_diff}


# ---------------------------------------------------------------------------------------------------------
# Floor: FLOPs of one step / measured matmul rate


def _sdpa_cpu_mapping() -> dict[Any, Any]:
    """FlopCounterMode has no formula for the CPU flash-attention kernels; count them like the CUDA ones."""
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten
    mapping: dict[Any, Any] = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        def fwd(query, key, value, *args, out_shape=None, **kwargs):
            return sdpa_flop_count(query, key, value)

        def bwd(grad_out, query, key, value, *args, out_shape=None, **kwargs):
            return sdpa_backward_flop_count(grad_out, query, key, value)

        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = fwd
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = bwd
    return mapping


def count_flops(plain: Plain) -> dict[str, Any]:
    from torch.utils.flop_counter import FlopCounterMode

    cfg = plain.cfg
    model = plain.build_model()
    b = cfg.train.batch_size
    xb, yb = plain.x[:b], plain.y[:b]
    mapping = _sdpa_cpu_mapping()
    with FlopCounterMode(display=False, custom_mapping=mapping) as fwd:
        logits = model(xb)
    with FlopCounterMode(display=False, custom_mapping=mapping) as step:
        logits = model(xb)
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.reshape(-1)).backward()
    by_op = {str(k): int(v) for k, v in step.get_flop_counts()["Global"].items()}
    return {"forward": fwd.get_total_flops(), "step": step.get_total_flops(), "by_op": by_op,
            "parameters": sum(p.numel() for p in model.parameters())}


def matmul_rate(n: int = 2048, reps: int = 3) -> float:
    """Best fp32 GFLOP/s of ``reps`` n x n matmuls (the machine's dense rate right now, same threads)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


# ---------------------------------------------------------------------------------------------------------
# Profiling where trainlab's extra time goes


def _top(prof: cProfile.Profile, steps: int, limit: int) -> str:
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("tottime").print_stats(limit)
    calls = stats.total_calls  # type: ignore[attr-defined]
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
    start = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls"))
    return f"    Python-level calls per step: {calls / steps:.0f}\n" + "\n".join("    " + ln for ln in lines[start:])


def _op_table(prof: Any, steps: int) -> dict[str, tuple[float, float]]:
    """aten op name -> (calls per step, self CPU microseconds per step)."""
    return {e.key: (e.count / steps, e.self_cpu_time_total / steps) for e in prof.key_averages()}


def profile(cfg: RunConfig, plain: Plain, steps: int, limit: int = 10) -> str:
    """cProfile and torch.profiler of ``steps`` of trainlab's ``train_step`` and of the plain loop."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    out = []
    tr, ts = fresh_training(cfg)  # (t and p name the profiles' tables below)
    for _ in range(20):  # warm-up
        train_step(tr, ts)
    model = plain.build_model()
    opt = plain_optimizer(cfg, model)
    b, seed = cfg.train.batch_size, cfg.train.seed
    plain_train(model, opt, plain.x, plain.y, b, 20, seed)  # type: ignore[arg-type]

    def run_trainlab() -> None:
        for _ in range(steps):  # train_step takes step ts.step and counts it
            train_step(tr, ts)

    def run_plain() -> None:
        plain_train(model, opt, plain.x, plain.y, b, steps, seed)  # type: ignore[arg-type]

    for name, fn in (("trainlab train_step", run_trainlab), ("plain loop", run_plain)):
        prof = cProfile.Profile()
        prof.enable()
        fn()
        prof.disable()
        out.append(f"  cProfile, {name}, {steps} steps, top {limit} by own time:\n{_top(prof, steps, limit)}")

    tables = {}
    for name, fn in (("trainlab", run_trainlab), ("plain", run_plain)):
        with torch_profile(activities=[ProfilerActivity.CPU]) as tp:
            fn()
        tables[name] = _op_table(tp, steps)
    t, p = tables["trainlab"], tables["plain"]
    rows = []
    for key in sorted(set(t) | set(p)):
        tc, tus = t.get(key, (0.0, 0.0))
        pc, pus = p.get(key, (0.0, 0.0))
        if abs(tc - pc) > 1e-9:
            rows.append((tus - pus, key, tc, pc, tus, pus))
    rows.sort(reverse=True)
    total_t = sum(v[1] for v in t.values())
    total_p = sum(v[1] for v in p.values())
    n_t = sum(v[0] for v in t.values())
    n_p = sum(v[0] for v in p.values())
    lines = [(f"  torch.profiler: ops per step trainlab {n_t:.0f} vs plain {n_p:.0f}; summed self CPU per step "
             f"{total_t / 1e3:.2f} ms vs {total_p / 1e3:.2f} ms (profiler-inflated). Ops whose call count differs:"),
             f"    {'op':<44} {'calls/step tl':>13} {'plain':>6} {'self us/step tl':>16} {'plain':>8}"]
    for _, key, tc, pc, tus, pus in rows[:limit]:
        lines.append(f"    {key:<44} {tc:>13.2f} {pc:>6.2f} {tus:>16.1f} {pus:>8.1f}")
    out.append("\n".join(lines))
    return "\n\n".join(out)


def _per_call_us(fn: Callable[[], Any], calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def _paired(a: Callable[[], Any], b: Callable[[], Any], calls: int, rounds: int = 7) -> tuple[float, float]:
    """Median microseconds per call of ``a`` and ``b``, timed in alternating rounds."""
    ta, tb = [], []
    for i in range(rounds):
        for fn, acc in ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta)):
            acc.append(_per_call_us(fn, calls))
    return statistics.median(ta), statistics.median(tb)


def anatomy(cfg: RunConfig, plain: Plain, plain_step_ms: float, root: Path) -> str:
    """Time, in isolation, each piece of work trainlab's step and loop do that the plain loop does not.

    1. the loss head: the workload's per-example loss, ``batch_loss`` (``sum * (world/global_count)``), its
       backward and ``losses.detach().mean()``, against ``cross_entropy(logits.reshape(-1, V), y.reshape(-1))``
       and its backward, on the same detached logits (a leaf requiring grad), so the model is not in it;
    2. step bookkeeping: ``Training.set_lrs`` (schedule call, per-group lrs, per-group writes),
       ``sampler.indices`` and ``train.loop.global_examples`` (a second draw only with several shares), against
       the plain loop's ``divmod`` and permutation slice;
    3. the loop around the step: ``train_loop`` itself with ``train_step`` replaced by a no-op that only counts
       the step (``s.step += 1``), read from trainlab's own clock (``TrainState.train_time``), against an
       empty ``for`` loop;
    4. with ``trace=true``: the per-step global gradient norm and trace append (with ``Training.logged_lr``),
       against nothing.

    Pieces 1, 2 and 4 mirror the statements of ``trainlab.train.loop.train_step``; update them with it.
    """
    import trainlab.train.loop as loop_mod
    from trainlab.rundir import RunDir
    from trainlab.train.loop import StopFlag, train_loop
    from trainlab.train.progress import Progress
    from trainlab.train.runlog import RunLog

    t, st = fresh_training(cfg)
    b = cfg.train.batch_size
    assert b is not None
    idx = t.sampler.indices(0)
    with torch.no_grad():
        logits0 = t.net(t.data.x_train[idx])
    y = t.data.y_train[idx]
    logits = logits0.clone().requires_grad_(True)
    workload = t.workload
    world = t.env.world_size

    def head_trainlab() -> None:
        losses = workload.loss(logits, y)  # what t.objective computes with no loss.* regulariser configured
        logits.grad = None
        loop_mod.batch_loss(t, losses, 0, len(idx)).backward()
        losses.detach().mean()

    def head_plain() -> None:
        logits.grad = None
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).backward()

    def head_flat_none() -> None:
        """trainlab's reduction (per-example, sum * scale, detached mean), but with flat (N, V) logits."""
        losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
        logits.grad = None
        (losses.sum() * (world / losses.numel())).backward()
        losses.detach().mean()

    perm = torch.randperm(t.data.n_train)
    per_epoch = t.data.n_train // b
    counter = iter(range(10**9))

    def book_trainlab() -> None:
        step = next(counter) % per_epoch  # stays inside the cached epoch: no randperm on either side
        t.set_lrs(step)
        loop_mod.global_examples(t, step, len(t.sampler.indices(step)))
        t.cfg.train.grad_clip is not None  # noqa: B015

    def book_plain() -> None:
        step = next(counter) % per_epoch
        _, pos = divmod(step, per_epoch)
        perm[pos * b:(pos + 1) * b]

    # 4. the per-step trace (trace=true, the default since the trace was added): global gradient norm + append.
    trace_on = bool(getattr(cfg.train, "trace", False)) and hasattr(loop_mod, "global_grad_norm")
    if trace_on:
        train_step(t, st)  # leaves gradients on the model, as the trace sees them
        st.trace.clear()
        zero = torch.zeros(())

        def trace_trainlab() -> None:
            st.trace.append((0, t.logged_lr(0), zero, loop_mod.global_grad_norm(t.parameters())))
            if len(st.trace) > 1000:
                st.trace.clear()

    out = []
    for _ in range(50):
        head_trainlab(), head_plain()
    h_t, h_p = _paired(head_trainlab, head_plain, 300)
    h_f, h_p2 = _paired(head_flat_none, head_plain, 300)
    k_t, k_p = _paired(book_trainlab, book_plain, 3000)
    tr_t, tr_p = _paired(trace_trainlab, lambda: None, 1000) if trace_on else (0.0, 0.0)

    # 3. train_loop with a no-op step: only the loop's own per-iteration work lands in the state's train_time.
    n_loop = 20000
    loop_cfg = config_for(cfg.workload.name, n_loop, b, cfg.train.seed)
    lt, ls = fresh_training(loop_cfg)
    rd = RunDir(root / "anatomy-loop")
    rd.create()  # the evaluations at steps 0 and n_loop append their rows to it
    log = RunLog(rd, Progress(n_loop, quiet=True), main=True)
    zero = torch.zeros(())

    def no_op_step(_t: Training, s: TrainState) -> torch.Tensor:
        s.step += 1  # what train_step does besides the step itself; the loop ends on it
        return zero

    real_step = loop_mod.train_step
    loop_mod.train_step = no_op_step  # type: ignore[assignment]
    try:
        status = train_loop(lt, ls, rd, log, StopFlag())
    finally:
        loop_mod.train_step = real_step  # type: ignore[assignment]
        log.close()
    if status != "completed" or ls.step != n_loop:
        raise RuntimeError(f"the no-op train_loop ended {status} at step {ls.step}, not completed at {n_loop}")
    loop_us = ls.train_time / n_loop * 1e6
    empty_us = _per_call_us(lambda: None, n_loop)  # a Python call per iteration, like the plain loop's body

    step_us = plain_step_ms * 1e3
    items = [("loss head (fwd+bwd+detached mean)", h_t, h_p), ("step bookkeeping (lr, sampler)", k_t, k_p),
             ("loop around the step (no-op step)", loop_us, empty_us)]
    if trace_on:
        items.append(("trace: grad norm + append", tr_t, tr_p))
    out.append(f"  anatomy of the difference (microseconds per step, medians of alternating rounds; plain step "
               f"{step_us:.0f} us):")
    out.append(f"    {'piece':<36} {'trainlab':>9} {'plain':>9} {'extra':>9} {'% of step':>9}")
    total = 0.0
    for name, t, p in items:
        total += t - p
        out.append(f"    {name:<36} {t:>9.1f} {p:>9.1f} {t - p:>9.1f} {(t - p) / step_us:>9.2%}")
    out.append(f"    {'sum of the pieces':<36} {'':>9} {'':>9} {total:>9.1f} {total / step_us:>9.2%}")
    out.append(f"    of the loss head: same reduction on flat (N, V) logits {h_f:.1f} us vs plain {h_p2:.1f} us "
               f"(extra {h_f - h_p2:.1f} us: the per-example reduction); the rest, {(h_t - h_p) - (h_f - h_p2):.1f} "
               f"us, is the workload's logits layout (transpose(1, 2) for 3-D outputs)")
    return "\n".join(out)


def ablation(cfg: RunConfig, plain: Plain, steps: int, rounds: int) -> str:
    """In-context cost of each piece: the plain step with one of trainlab's additions at a time, on fresh parts.

    Every variant but one builds fresh parts with ``build_training`` (so data, model and optimizer are trainlab's
    own) and times ``steps`` steps; the exception is the benchmark's plain loop on its own build, which shows
    whether trainlab's parts themselves (data tensors, model, optimizer objects) cost anything; variants run in alternating order for ``rounds`` rounds and are reported as the
    median ratio to the plain step. Unlike :func:`anatomy`, which times pieces in a hot loop of their own, this
    shows what they cost inside a real step (cold caches, allocator, autograd graph), at the price of noise.
    """
    import trainlab.train.loop as loop_mod

    trace_ok = hasattr(loop_mod, "global_grad_norm") and bool(getattr(cfg.train, "trace", False))

    def variant(loss_tl: bool = False, trace: bool = False, book: bool = False, real: bool = False) -> Callable[[], float]:
        def run() -> float:
            p, st = fresh_training(cfg)
            model, opt, x, y = p.model, p.optimizer, p.data.x_train, p.data.y_train
            b = cfg.train.batch_size
            assert b is not None
            n, gen = len(x), torch.Generator()
            per_epoch, perm = n // b, torch.arange(n)
            t0 = time.perf_counter()
            if real:
                for _ in range(steps):
                    train_step(p, st)
                return time.perf_counter() - t0
            for step in range(steps):
                if book:
                    p.set_lrs(step)
                    idx = p.sampler.indices(step)
                    loop_mod.global_examples(p, step, len(idx))
                else:
                    epoch, pos = divmod(step, per_epoch)
                    if pos == 0:
                        perm = torch.randperm(n, generator=gen.manual_seed(seed_of(cfg, epoch)))
                    idx = perm[pos * b:(pos + 1) * b]
                xb, yb = x[idx], y[idx]
                opt.zero_grad(set_to_none=True)
                logits = model(xb)
                if loss_tl:
                    losses = p.workload.loss(logits, yb)
                    (losses.sum() * (1 / losses.numel())).backward()
                else:
                    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.reshape(-1))
                    loss.backward()
                norm = loop_mod.global_grad_norm(p.parameters()) if trace else None
                opt.step()
                if loss_tl:
                    loss = losses.detach().mean()
                if trace:
                    st.trace.append((step, p.logged_lr(step), loss, norm))
            return time.perf_counter() - t0
        return run

    fns: dict[str, Callable[[], float]] = {"plain step": variant(),
                                           "plain loop on its own build (as timed above)": lambda: time_plain(plain, steps), "+ per-example loss, sum*scale, mean": variant(loss_tl=True)}
    if trace_ok:
        fns["+ trace (grad norm + append)"] = variant(trace=True)
    fns["+ bookkeeping (lr writes, sampler)"] = variant(book=True)
    fns["all of the above (replica)"] = variant(True, trace_ok, True)
    fns["trainlab train_step itself"] = variant(real=True)
    for fn in fns.values():
        fn()
    ratios: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(rounds):
        order = list(fns) if i % 2 == 0 else list(fns)[::-1]
        got = {k: fns[k]() for k in order}
        for k in fns:
            ratios[k].append(got[k] / got["plain step"])
    lines = [(f"  in-context ablation ({steps} steps per variant on a fresh build_training, {rounds} alternating rounds; "
             f"ratio to the plain step, median and bootstrap 95% CI):")]
    for k, r in ratios.items():
        if k == "plain step":
            continue
        lo, hi = bootstrap_median_ci(r)
        lines.append(f"    {k:<46} {statistics.median(r) - 1:+7.2%}  (CI {lo - 1:+.1%} .. {hi - 1:+.1%})")
    return "\n".join(lines)


def seed_of(cfg: RunConfig, epoch: int) -> int:
    return cfg.train.seed * 1_000_003 + epoch


# ---------------------------------------------------------------------------------------------------------
# The benchmark


def bootstrap_median_ci(values: list[float], n: int = 4000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the median of ``values``."""
    import random

    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(n))
    return meds[int(0.025 * n)], meds[int(0.975 * n) - 1]


@dataclass
class Result:
    workload: str
    model: str
    batch: int
    steps: int
    threads: int
    trainlab_ms: list[float] = field(default_factory=list)
    plain_ms: list[float] = field(default_factory=list)
    run_wall_s: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    flops: dict[str, Any] = field(default_factory=dict)
    check: dict[str, float] = field(default_factory=dict)
    load_start: tuple[float, ...] = ()
    load_end: tuple[float, ...] = ()
    profile: str = ""

    def summary(self) -> dict[str, Any]:
        med = statistics.median
        rate_best, rate_med = max(self.rates), med(self.rates)
        step_flops = self.flops["step"]
        d = {
            "workload": self.workload, "model": self.model, "batch": self.batch, "steps_per_run": self.steps,
            "repeats": len(self.ratios), "threads": self.threads,
            "trainlab_ms_per_step": {"median": med(self.trainlab_ms), "min": min(self.trainlab_ms),
                                     "max": max(self.trainlab_ms)},
            "plain_ms_per_step": {"median": med(self.plain_ms), "min": min(self.plain_ms), "max": max(self.plain_ms)},
            "overhead": {"median": med(self.ratios) - 1, "min": min(self.ratios) - 1, "max": max(self.ratios) - 1,
                         "quartiles": [q - 1 for q in (statistics.quantiles(self.ratios, n=4) if len(self.ratios) > 1
                                                     else self.ratios * 3)],
                         "median_95ci_bootstrap": [q - 1 for q in bootstrap_median_ci(self.ratios)],
                         "ratio_of_medians": med(self.trainlab_ms) / med(self.plain_ms) - 1,
                         "ratio_of_minima": min(self.trainlab_ms) / min(self.plain_ms) - 1},
            "run_wall_s_median": med(self.run_wall_s),
            "flops_forward": self.flops["forward"], "flops_step": step_flops,
            "flops_step_over_forward": step_flops / self.flops["forward"], "flops_by_op": self.flops["by_op"],
            "parameters": self.flops["parameters"],
            "matmul_gflops": {"best": rate_best, "median": rate_med, "min": min(self.rates)},
            "floor_ms_at_best_rate": step_flops / (rate_best * 1e9) * 1e3,
            "floor_ms_at_median_rate": step_flops / (rate_med * 1e9) * 1e3,
            "equivalence": self.check, "loadavg_start": self.load_start, "loadavg_end": self.load_end,
            "pairs": [{"trainlab_ms": a, "plain_ms": b, "ratio": r}
                      for a, b, r in zip(self.trainlab_ms, self.plain_ms, self.ratios)],
        }
        d["plain_over_floor"] = d["plain_ms_per_step"]["median"] / d["floor_ms_at_best_rate"]
        d["trainlab_over_floor"] = d["trainlab_ms_per_step"]["median"] / d["floor_ms_at_best_rate"]
        return d


def bench(workload: str, steps: int, batch: int, repeats: int, warmup: int, seed: int, threads: int,
          target: float, force_profile: bool, profile_steps: int, root: Path, log: Callable[[str], None],
          ablation_rounds: int = 0) -> Result:
    cfg = config_for(workload, steps, batch, seed)
    res = Result(workload, cfg.model.name, batch, steps, threads, load_start=os.getloadavg())
    log(f"\n== {workload} / {cfg.model.name} / {cfg.optimizer.name} {cfg.optimizer.kwargs()} / batch {batch} / "
        f"{steps} steps per run / {repeats} pairs / {threads} threads / trace={getattr(cfg.train, 'trace', None)}")
    plain = plain_setup(cfg)
    res.check = check_equivalence(cfg, plain)
    log(f"  equivalence: {res.check}")
    res.flops = count_flops(plain)
    log(f"  FLOPs per step: forward {res.flops['forward']:.4g}, forward+backward {res.flops['step']:.4g} "
        f"({res.flops['step'] / res.flops['forward']:.2f}x forward); {res.flops['parameters']:,} parameters")

    # Warm-up of each side (kernel caches, allocator, lazy imports), untimed.
    time_trainlab(workload, warmup, batch, seed, root, f"{workload}-warmup")
    time_plain(plain, warmup)
    res.rates.append(matmul_rate())

    for i in range(repeats):
        order = ("trainlab", "plain") if i % 2 == 0 else ("plain", "trainlab")
        got: dict[str, float] = {}
        for side in order:
            if side == "trainlab":
                train_time, wall, summary = time_trainlab(workload, steps, batch, seed, root, f"{workload}-{i}")
                if summary["threads"] != threads:
                    raise RuntimeError(f"trainlab ran with {summary['threads']} threads, expected {threads}")
                got[side] = train_time / steps * 1e3
                res.run_wall_s.append(wall)
            else:
                got[side] = time_plain(plain, steps) / steps * 1e3
        res.trainlab_ms.append(got["trainlab"])
        res.plain_ms.append(got["plain"])
        res.ratios.append(got["trainlab"] / got["plain"])
        res.rates.append(matmul_rate())
        log(f"  pair {i + 1}/{repeats} ({order[0][0].upper()}{order[1][0].upper()}): trainlab {got['trainlab']:.3f} "
            f"ms/step, plain {got['plain']:.3f} ms/step, ratio {res.ratios[-1]:.4f}; matmul {res.rates[-1]:.0f} "
            f"GFLOP/s; load {os.getloadavg()[0]:.2f}")
    res.load_end = os.getloadavg()

    overhead = statistics.median(res.ratios) - 1
    if force_profile or overhead > target:
        why = "forced" if force_profile else f"median overhead {overhead:+.1%} > {target:.0%}"
        log(f"  profiling ({why}) ...")
        res.profile = anatomy(cfg, plain, statistics.median(res.plain_ms), root) + "\n\n" + profile(cfg, plain, profile_steps)
    if ablation_rounds:
        log(f"  in-context ablation ({ablation_rounds} rounds) ...")
        text = ablation(cfg, plain, steps, ablation_rounds)
        res.profile = (res.profile + "\n\n" + text) if res.profile else text
    return res


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "trainlab": trainlab.__version__, "platform": platform.platform(), "git": _git()}


def _git() -> str:
    """The measured trainlab source: commit, plus the files under trainlab/ that differ from it."""
    import subprocess

    repo = Path(trainlab.__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "trainlab"], cwd=repo, capture_output=True,
                               text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    changed = [d for d in dirty if d.startswith("trainlab/")]
    return head + (f" (+ uncommitted changes in {', '.join(changed)})" if changed else "")


def report(results: list[Result], info: dict[str, Any], target: float) -> str:
    lines = [f"trainlab {info['trainlab']} at {info['git']}; extra overrides: {info['overrides'] or 'none'}", (f"machine: {info['cpu']}, {info['logical_cpus']} logical CPUs, torch {info['torch']}, "
             f"Python {info['python']}, threads {info['threads']}; load average (1/5/15 min) at start "
             f"{'/'.join(f'{v:.2f}' for v in info['loadavg_start'])}, at end "
             f"{'/'.join(f'{v:.2f}' for v in info['loadavg_end'])}"), ""]
    lines += [("| workload / model | batch | steps x pairs | trainlab ms/step (median, min-max) | plain ms/step "
              "(median, min-max) | overhead: median of pair ratios, 95% CI [quartiles] (min .. max) | ratio of medians / "
              "of minima | FLOPs/step (fwd+bwd) | matmul GFLOP/s best (median) | floor ms/step at best | plain / floor "
              "| trainlab / floor |"),
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        s = r.summary()
        t, p, o, m = s["trainlab_ms_per_step"], s["plain_ms_per_step"], s["overhead"], s["matmul_gflops"]
        lines.append(
            f"| {r.workload} / {r.model} | {r.batch} | {r.steps} x {s['repeats']} | {t['median']:.3f} "
            f"({t['min']:.3f}-{t['max']:.3f}) | {p['median']:.3f} ({p['min']:.3f}-{p['max']:.3f}) | "
            f"{o['median']:+.2%}, CI {o['median_95ci_bootstrap'][0]:+.1%} .. {o['median_95ci_bootstrap'][1]:+.1%} "
            f"[{o['quartiles'][0]:+.1%}, {o['quartiles'][2]:+.1%}] ({o['min']:+.1%} .. "
            f"{o['max']:+.1%}) | {o['ratio_of_medians']:+.2%} / {o['ratio_of_minima']:+.2%} | {s['flops_step'] / 1e6:.1f} M "
            f"({s['flops_step_over_forward']:.2f}x fwd) | {m['best']:.0f} ({m['median']:.0f}) | "
            f"{s['floor_ms_at_best_rate']:.3f} | {s['plain_over_floor']:.1f}x | {s['trainlab_over_floor']:.1f}x |")
    lines.append("")
    for r in results:
        s = r.summary()
        verdict = "within" if s["overhead"]["median"] <= target else "ABOVE"
        lines.append(f"{r.workload}: median overhead {s['overhead']['median']:+.2%} is {verdict} the "
                     f"{target:.0%} target; whole trainlab.run() call (setup, 2 evaluations of "
                     f"{EVAL_EXAMPLES} examples, checkpoint, summary) took {s['run_wall_s_median']:.2f} s median "
                     f"wall for {r.steps} steps; equivalence {r.check}")
        if r.profile:
            lines += [f"\nprofile of {r.workload}:", r.profile]
    return "\n".join(lines)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the None/False/empty ones whose help text already says what happens."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, [], 0) and not isinstance(action.default, float):
            return action.help
        return super()._get_help_string(action)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Per-step time of trainlab.run against a hand-written PyTorch loop on the same workload, "
                    "model, optimizer and batch; interleaved repetitions, median overhead ratio, and the "
                    "FLOP floor (FLOPs per step / measured fp32 matmul rate).",
        formatter_class=_HelpFormatter)
    parser.add_argument("--workload", choices=[*DEFAULTS, "all"], default="mnist1d",
                        help="mnist1d (cnn1d, batch 100), charlm (transformer, batch 32) or all")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps per timed run (default: 100 for mnist1d, 15 for charlm)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the workload's (100 / 32)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="interleaved trainlab/plain pairs (default: 21 for mnist1d, 15 for charlm)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed warm-up steps per side (default: steps/4, at least 5)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", type=float, default=0.03, help="overhead above which the run is profiled")
    parser.add_argument("--profile", action="store_true", help="always profile (cProfile + torch.profiler)")
    parser.add_argument("--no-profile", action="store_true", help="never profile, whatever the overhead")
    parser.add_argument("--profile-steps", type=int, default=50, help="steps per profiled side")
    parser.add_argument("--ablation", type=int, default=0, metavar="ROUNDS",
                        help="also time the plain step with each of trainlab's additions inside real steps "
                             "(ROUNDS alternating rounds of 7 variants; needs a quiet machine)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra trainlab override for both sides' config, e.g. --set trace=false (repeatable)")
    parser.add_argument("--json", type=Path, default=None, help="also write all figures to this JSON file")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    EXTRA_OVERRIDES[:] = args.overrides
    info = machine()
    info.update(threads=torch.get_num_threads(), loadavg_start=os.getloadavg(), argv=sys.argv,
                overrides=list(args.overrides))
    names = list(DEFAULTS) if args.workload == "all" else [args.workload]
    log = lambda text: print(text, flush=True)
    log(f"trainer_overhead: {info['cpu']}, {info['logical_cpus']} CPUs, torch {info['torch']}, "
        f"{info['threads']} threads, load average {info['loadavg_start']}")
    results = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="trainlab-bench-") as tmp:
        for name in names:
            steps = args.steps or DEFAULTS[name][0]
            batch = args.batch_size or DEFAULTS[name][1]
            warmup = args.warmup or max(steps // 4, 5)
            repeats = args.repeats or DEFAULTS[name][2]
            target = float("inf") if args.no_profile else args.target
            results.append(bench(name, steps, batch, repeats, warmup, args.seed, info["threads"], target,
                                 args.profile, args.profile_steps, Path(tmp), log, args.ablation))
    info["loadavg_end"] = os.getloadavg()
    info["benchmark_seconds"] = time.perf_counter() - t0
    log("\n" + report(results, info, args.target))
    log(f"\n(benchmark took {info['benchmark_seconds']:.0f} s)")
    if args.json:
        payload = {"machine": info, "results": [{**r.summary(), "profile": r.profile} for r in results]}
        args.json.write_text(json.dumps(payload, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
