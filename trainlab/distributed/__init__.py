"""Distributed training on torch.distributed (torchrun + gloo on CPU, NCCL on CUDA).

env.py (process group, device), strategy.py (``dist.strategy``: ddp, zero1, fsdp, diloco, streaming_diloco;
gradient_coding and gossip register from their own modules), comm.py (the byte meter), muon.py (distributed
Muon), diloco.py, gradient_coding.py (Tandon et al.'s fractional repetition code against stragglers), gossip.py
(gossip averaging over a graph on Poisson clocks), compression.py (DGC / PowerSGD DDP hooks), quantize.py.
"""

from trainlab.distributed.env import DistEnv, setup

__all__ = ["DistEnv", "setup"]
