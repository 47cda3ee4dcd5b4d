"""Process-group set-up from torchrun's environment, and the few collectives the trainer needs.

``trainlab run`` launched under ``torchrun --nproc_per_node=N`` sees ``WORLD_SIZE=N`` and trains with
DistributedDataParallel: each process takes its slice of every global batch, gradients are averaged by DDP,
and only rank 0 writes the run directory. Without torchrun everything here is a no-op. Which strategy trains
(DDP, ZeRO, FSDP, DiLoCo) is :mod:`trainlab.distributed.strategy`'s business; :meth:`DistEnv.wrap` is plain DDP.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def pick_device(preference: str) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device that is missing is an error."""
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda asked for, but torch.cuda.is_available() is False; use device=cpu or auto")
    if preference == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("device=mps asked for, but MPS is not available; use device=cpu or auto")
    return torch.device(preference)


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP-wrap ``model`` when running under torchrun; otherwise return it unchanged."""
        if not self.distributed:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's value of a small picklable object (sent over the process group, never read from disk)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self, together: bool = False) -> None:
        """Leave the process group. ``together`` (every process got here normally): wait for all first.

        A process that tears its gloo group down while a peer still uses its connections (rank 0 writing the
        summary and report while the others are done) aborted at exit in about 1 of 12 two-process launches
        ("terminate called without an active exception", SIGABRT), turning a finished run into a failed launch.
        After a failure the peers may be gone, so nobody is waited for then. The barrier did not end it: gloo's
        threads could still abort at interpreter exit under load (4 of 16 launches beside two busy loops), so a
        torchrun worker also leaves through ``os._exit`` (``trainlab/__main__.py``; 0 of 36 since).
        """
        if self.distributed and dist.is_initialized():
            if together:
                dist.barrier()
            dist.destroy_process_group()


def setup(device_preference: str = "auto") -> DistEnv:
    """Read torchrun's variables, join the process group, pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistEnv(device=pick_device(device_preference))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_preference)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        timeout = timedelta(minutes=10)
        restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
        if restart > 0 and "MASTER_ADDR" in os.environ:
            store = _attempt_store(restart, rank, world_size, timeout)
            dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
        else:
            dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timeout)
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def _attempt_store(restart: int, rank: int, world_size: int, timeout: timedelta) -> dist.Store:
    """The rendezvous store of a restarted ``torchrun --max-restarts`` attempt, under a prefix of its own.

    Measured with torch 2.13 (``--standalone``, gloo): after a worker was killed, the restarted workers joined
    the agent's store under the same keys as the first attempt, read the dead processes' gloo addresses and
    failed with "Gloo connectFullMesh ... Connection refused". A prefix per restart keeps the attempts apart.
    """
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    base = dist.TCPStore(host, port, world_size, is_master=(not agent_store and rank == 0), timeout=timeout,
                         **({} if agent_store else {"multi_tenant": True}))
    return dist.PrefixStore(f"trainlab/restart_{restart}", base)
