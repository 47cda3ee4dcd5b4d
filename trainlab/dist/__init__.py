"""Distributed training on torch.distributed (torchrun + gloo on CPU, NCCL on CUDA)."""

from trainlab.dist.env import DistEnv, setup

__all__ = ["DistEnv", "setup"]
