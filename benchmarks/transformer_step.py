#!/usr/bin/env python
"""FLOPs and time of one full-batch step of claim 4's 1-layer transformer (Nanda et al.), float32 or bf16 autocast.

Not a test. Run from the repository root::

    OMP_NUM_THREADS=1 python benchmarks/transformer_step.py off
    OMP_NUM_THREADS=1 python benchmarks/transformer_step.py bf16

Builds the run of ``experiments/c4_nanda_transformer/nanda.yaml`` with the paper's initialisation, counts the
forward and backward FLOPs with ``torch.utils.flop_counter``, then times 8 full-batch steps (forward, mean loss,
backward, AdamW) and prints the median ms/step and the rate. benchmarks/RESULTS.md, "The 1-layer transformer's
full-batch step", has the numbers.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from trainlab.distributed.env import DistEnv
from trainlab.train.config import resolve
from trainlab.train.training import build_training

CONFIG = Path(__file__).resolve().parent.parent / "experiments" / "c4_nanda_transformer" / "nanda.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("autocast", choices=["off", "bf16"])
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    layer = yaml.safe_load(CONFIG.read_text())
    layer.update(param={"init": "nanda"}, autocast=args.autocast)
    t = build_training(resolve([layer]), DistEnv())
    x, y = t.data.x_train, t.data.y_train
    with FlopCounterMode(display=False) as counter:
        t.workload.mean_loss(t.net(x), y).backward()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        with t.autocast():
            loss = t.workload.mean_loss(t.net(x), y)
        t.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t.optimizer.step()
        times.append(time.perf_counter() - start)
    ms = statistics.median(times) * 1e3
    flops = counter.get_total_flops()
    print(f"autocast {args.autocast}, {torch.get_num_threads()} thread(s): {flops / 1e9:.2f} GFLOP per step "
          f"(forward + backward, batch {tuple(x.shape)}), {ms:.0f} ms/step, {flops / ms / 1e6:.0f} GF/s")


if __name__ == "__main__":
    main()
