"""Distributed training on torch.distributed (torchrun + gloo on CPU, NCCL on CUDA).

env.py (process group, device), strategy.py (``dist.strategy``: ddp, zero1, fsdp, diloco, streaming_diloco),
comm.py (the byte meter), muon.py (distributed Muon), diloco.py, compression.py (DGC / PowerSGD DDP hooks),
quantize.py.
"""

from trainlab.distributed.env import DistEnv, setup

__all__ = ["DistEnv", "setup"]
