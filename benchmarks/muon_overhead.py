#!/usr/bin/env python
"""The part of a bf16 Muon step outside the matrix products, one implementation per process.

Not a test. Run from the repository root, once per implementation (a process of its own, so that one
implementation's allocations do not shape the other's heap)::

    OMP_NUM_THREADS=1 python benchmarks/muon_overhead.py trainlab
    OMP_NUM_THREADS=1 python benchmarks/muon_overhead.py torch

With ``--ns-steps 0`` (the default) the step is momentum, casts, normalisation and the update: what does not
depend on the machine's matmul rate. The matrices are the issue-17 set (8 × 512² + 4 × 2048×512). Prints the
median ms/step of ``--steps`` steps after three warm-up steps. benchmarks/RESULTS.md, "Muon's bf16 step", has the
numbers.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import trainlab.optim as toptim

SHAPES = [(512, 512)] * 8 + [(2048, 512)] * 4


def params(seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    out = [torch.nn.Parameter(torch.randn(s, generator=gen) * 0.02) for s in SHAPES]
    for p in out:
        p.grad = torch.randn(p.shape, generator=gen)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("impl", choices=["trainlab", "torch"])
    ap.add_argument("--ns-steps", type=int, default=0, help="Newton-Schulz iterations (0: none)")
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    ps = params()
    opt = (toptim.Muon(ps, lr=0.02, ns_steps=args.ns_steps, ns_dtype="bfloat16") if args.impl == "trainlab"
           else torch.optim.Muon(ps, lr=0.02, ns_steps=args.ns_steps, weight_decay=0.0))
    times = []
    for _ in range(args.steps + 3):
        t = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t)
    print(f"{args.impl}: ns_steps={args.ns_steps}, {torch.get_num_threads()} thread(s): "
          f"{statistics.median(times[3:]) * 1e3:.2f} ms/step (median of {args.steps})")


if __name__ == "__main__":
    main()
