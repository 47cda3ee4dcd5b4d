"""Run a function in N gloo processes on loopback and collect what each rank returns.

    results = spawn(fn, world_size=2, args=(...))   # fn(rank, world_size, *args) -> tensors / numbers / dicts

``fn`` must be a module-level function (it is pickled by multiprocessing's spawn). The process group is set up
through a FileStore in a temporary directory (no rendezvous port) with gloo bound to the loopback interface;
each rank runs with one torch thread. Return values travel back through ``torch.save`` files loaded with
``weights_only=True``, so return tensors, numbers, strings, lists and dicts of those.
"""

from __future__ import annotations

import os
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank: int, fn: Callable, world_size: int, args: Sequence[Any], root: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    store = dist.FileStore(os.path.join(root, "store"), world_size)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size)
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, os.path.join(root, f"result{rank}.pt"))
    except BaseException:
        Path(root, f"error{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def spawn(fn: Callable, world_size: int = 2, args: Sequence[Any] = (), timeout: float = 240.0) -> list[Any]:
    """``[fn(0, N, *args), ..., fn(N-1, N, *args)]``, each computed in its own process of an N-process group."""
    with tempfile.TemporaryDirectory() as root:
        ctx = mp.start_processes(_entry, args=(fn, world_size, tuple(args), root), nprocs=world_size, join=False,
                                 start_method="spawn")
        try:
            import time

            deadline = time.monotonic() + timeout
            while not ctx.join(timeout=max(0.1, min(1.0, deadline - time.monotonic()))):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"distributed test did not finish within {timeout:.0f} s")
        except Exception as err:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            errors = sorted(Path(root).glob("error*.txt"))
            detail = "\n".join(e.read_text() for e in errors)
            raise AssertionError(f"{err}\n{detail}") from None
        return [torch.load(os.path.join(root, f"result{r}.pt"), weights_only=True) for r in range(world_size)]


class Stepper:
    """A :class:`~trainlab.train.training.Training` and its :class:`~trainlab.train.state.TrainState`, stepped
    by the loop's own ``train_step``: the trainer's path without the loop's evaluation and logging around it.
    Attributes other than those below are the Training's (``model``, ``optimizer``, ``strategy``, ``net``, ...)."""

    def __init__(self, overrides: Sequence[str], env: Any) -> None:
        from trainlab.train.config import from_cli
        from trainlab.train.state import TrainState
        from trainlab.train.training import build_training

        self.training = build_training(from_cli(None, list(overrides)), env)
        self.state = TrainState.fresh(self.training)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.training, name)

    @property
    def step(self) -> int:
        return self.state.step

    def train(self, n: int) -> "Stepper":
        from trainlab.train.loop import train_step

        for _ in range(n):
            train_step(self.training, self.state)
        return self

    def checkpoint_payload(self) -> dict[str, Any]:
        from trainlab.train.state import checkpoint_payload

        return checkpoint_payload(self.training, self.state, 0.0)

    def restore(self, payload: dict[str, Any]) -> None:
        from trainlab.train.state import restore

        self.state = restore(self.training, payload)

    def evaluate(self) -> dict[str, Any]:
        from trainlab.train.evaluation import evaluate

        return evaluate(self.training, self.state, 0.0)
