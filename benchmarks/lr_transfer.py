#!/usr/bin/env python
"""Learning-rate transfer across width: the best lr at each width, for AdamW, Muon and dualized.

A thin wrapper, kept for the command recorded in ``benchmarks/RESULTS.md``: the study itself is
``trainlab bench transfer`` (:func:`trainlab.bench.studies.run_transfer`: the bench's process pool, resume,
results.jsonl, summary.md and plots). This script runs it with the prototype's settings -- widths 64..512, the
10-point lr grids below (a factor 2 apart), 300 steps of batch 128, an MLP of depth 3 on mnist1d, seed 0 --
from the repository root::

    python benchmarks/lr_transfer.py                       # the recorded study (~120 trials)
    python benchmarks/lr_transfer.py --quick               # 2 widths, 5 lrs, 100 steps: a smoke run

Scores and the best-lr rule are the study's (:func:`~trainlab.bench.studies.tail_train_loss`: mean training
loss over the last 10% of steps; :func:`~trainlab.bench.studies.best_lr`: a parabola through the grid minimum
and its neighbours in log lr).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from trainlab.bench.studies import best_lr, run_transfer, tail_train_loss  # noqa: F401 -- re-exported

final_loss = tail_train_loss  # the prototype's name

GRIDS = {  # the prototype's grids, factor 2 apart; wide enough to bracket each optimum at widths 64..512
    "adamw": [1e-4 * 2**k for k in range(10)],       # 1e-4 .. 5.1e-2
    "muon": [2e-3 * 2**k for k in range(10)],        # 2e-3 .. 1.0
    "dualized": [1e-2 * 2**k for k in range(10)],    # 1e-2 .. 5.1
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--widths", default="64,128,256,512")
    ap.add_argument("--optimizers", default="adamw,muon,dualized")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--depth", type=int, default=3, help="hidden layers of the MLP")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per trial (1: steadiest on a shared machine)")
    ap.add_argument("--workers", type=int, default=1, help="parallel trials (0: in this process)")
    ap.add_argument("--out", default="", help="results directory (default: a temporary one)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--json", default="", help="write the summary here")
    args = ap.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    names = [n for n in args.optimizers.split(",") if n]
    unknown = [n for n in names if n not in GRIDS]
    if unknown:
        sys.exit(f"lr_transfer.py: no grid for {unknown[0]!r}; use `trainlab bench transfer --lrs ...`")
    grids = {n: GRIDS[n][2:7] if args.quick else GRIDS[n] for n in names}
    if args.quick:
        widths, args.steps = widths[:1] + widths[-1:], 100
    with tempfile.TemporaryDirectory() as tmp:
        result = run_transfer(names, widths=widths, lrs=grids, seeds=args.seeds, steps=args.steps, depth=args.depth,
                              batch_size=args.batch_size, workers=args.workers, threads=args.threads,
                              out=args.out or Path(tmp) / "transfer", resume=args.resume)
        print(result.text)
    if args.json:
        Path(args.json).write_text(json.dumps(result.summary, indent=1, default=str))


if __name__ == "__main__":
    main()
