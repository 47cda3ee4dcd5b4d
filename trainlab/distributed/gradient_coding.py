"""Gradient coding against stragglers: ``dist.strategy=gradient_coding``.

**Gradient coding** (Tandon, Lei, Dimakis & Karampatziakis 2017, "Gradient Coding: Avoiding Stragglers in
Distributed Learning", ICML, arXiv:1612.03301), the *fractional repetition* scheme. ``n`` workers, at most ``s``
stragglers per step, ``(s + 1) | n``. The global batch is cut into ``n`` data parts (part ``j`` = process ``j``'s
share, as the trainer deals them). The workers form ``n / (s + 1)`` groups of ``s + 1`` consecutive ranks; every
member of group ``G`` is assigned the same ``s + 1`` parts (those with indices in ``G``) and sends one *coded*
message, the sum of its parts' gradients ``c_G = Σ_{j ∈ G} g_j``. In matrix form the encoding matrix ``B`` (n × n,
``B[i, j] = 1`` when worker ``i`` holds part ``j``) is block diagonal with all-ones blocks, and worker ``i`` sends
``Σ_j B[i, j] g_j``. A decoder that hears only the workers outside a straggler set ``S`` (``|S| <= s``) needs a
vector ``a`` with ``a_S = 0`` and ``aᵀB = 1ᵀ``: every group keeps at least one member (it has ``s + 1``), so ``a``
takes, per group, its first surviving member with weight 1 (:meth:`FractionalRepetitionCode.decode_vector`).
Then ``Σ_i a_i · message_i = Σ_j g_j``, the full-batch gradient, exactly.

How it is simulated here (documented deviations):

- **Stragglers**: each step ``s`` workers are stragglers, drawn uniformly by a generator seeded with
  ``(dist.straggler_seed, step)`` (:func:`straggler_set`) -- the same draw on every process, and a pure function
  of the step, so a resume draws the same sets. Under i.i.d. worker delays the ``s`` slowest workers are such a
  uniform draw; a delay model with unequal workers is not built. A straggler's message is ignored: it enters
  the decoding all-reduce with weight 0, as do the surviving members the decoder does not need.
- **Redundant computation**: the trainer gives each process the gradient of its own share only (the loop is
  the same for every strategy), so the coded message ``c_G`` is formed by summing the members' own-part
  gradients with an all-reduce inside the group. In the fractional repetition scheme every member of ``G``
  holds the same parts and sends the same ``c_G``, so the message each process decodes with is exactly the one
  it would have computed on its ``s + 1`` parts; what is not reproduced is the ``(s + 1)``-fold compute cost per
  worker (nor any wall-clock gain). That in-group sum is simulation, not the scheme's traffic: it is *not*
  counted on the byte meter, and is reported apart as ``simulated_group_bytes`` in ``summary.json``.
- **Bytes** (:mod:`trainlab.distributed.comm`'s payload convention): every worker sends its coded gradient,
  ``P`` bytes (all trainable parameters) per step, counted as ``"gradient_coding"`` -- the same payload as DDP;
  gradient coding buys straggler tolerance with computation, not with bytes.
- The decoded sum is divided by ``n``: the trainer's loss is ``sum · n / global count`` per process (as under
  DDP), so the result is the global-batch mean gradient, DDP's, up to floating-point summation order.
- The decode runs at the end of backward (an autograd callback, as DDP's reducer does), so gradient clipping,
  the traced gradient norm and the optimizer see the decoded full-batch gradient. Parameters that got no gradient
  on this process take part with zeros and receive the decoded gradient.

**Sequential gradient coding** (Krishnan, Ebrahimi & Khisti, "Sequential Gradient Coding For Straggler
Mitigation", ICLR 2023: gradient ``g(t)`` starts in round ``t`` and is due by round ``t + T``;
GC with selective repetition of unfinished tasks, or GC on some tasks and repetition on the rest, multiplexed
across rounds) is **not built**. Its rounds overlap jobs whose gradients do not depend on one another (the paper
trains several models concurrently); in one SGD run ``g(t + 1)`` needs the update of ``g(t)``, so it would need
either several concurrent runs or stale (``T``-step delayed) gradients, and the lock-step loop has neither.

Options (``dist.*``): ``stragglers`` (s, default 1; ``(s + 1)`` must divide the number of processes),
``straggler_seed`` (default 0).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from trainlab.config import ConfigError
from trainlab.distributed.comm import CommMeter, tensor_bytes
from trainlab.distributed.strategy import STRATEGIES, Strategy


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized()


class FractionalRepetitionCode:
    """Tandon et al.'s fractional repetition code for ``n`` workers and ``s`` stragglers (``(s + 1) | n``).

    Worker ``i`` is in group ``i // (s + 1)``; a group's members all hold the parts numbered like its members.
    """

    def __init__(self, n: int, s: int) -> None:
        if n < 1 or s < 0:
            raise ValueError(f"need n >= 1 workers and s >= 0 stragglers, got n={n}, s={s}")
        if n % (s + 1):
            raise ValueError(f"s + 1 = {s + 1} must divide the number of workers n = {n}")
        self.n, self.s = n, s

    @property
    def group_size(self) -> int:
        return self.s + 1

    @property
    def groups(self) -> list[list[int]]:
        """The workers of each group (consecutive ranks)."""
        k = self.group_size
        return [list(range(g * k, (g + 1) * k)) for g in range(self.n // k)]

    def group_of(self, worker: int) -> int:
        return worker // self.group_size

    def parts_of(self, worker: int) -> list[int]:
        """The data parts worker ``worker`` is assigned (its group's)."""
        return self.groups[self.group_of(worker)]

    def encoding_matrix(self) -> Tensor:
        """``B`` (n × n, int64): ``B[i, j] = 1`` when worker ``i`` holds part ``j``; row ``i`` is what it sends."""
        B = torch.zeros(self.n, self.n, dtype=torch.int64)
        for i in range(self.n):
            B[i, self.parts_of(i)] = 1
        return B

    def decode_vector(self, stragglers: set[int] | frozenset[int] | tuple[int, ...] | list[int]) -> Tensor:
        """``a`` (n, int64) with ``a[i] = 0`` for every straggler and ``aᵀB = 1ᵀ``: per group, its first member
        that is not a straggler gets 1. More than ``s`` stragglers, or a group of stragglers only, is an error."""
        lost = set(stragglers)
        if len(lost) > self.s or not lost <= set(range(self.n)):
            raise ValueError(f"straggler set {sorted(lost)} is not at most s = {self.s} of workers 0..{self.n - 1}")
        a = torch.zeros(self.n, dtype=torch.int64)
        for members in self.groups:
            alive = [i for i in members if i not in lost]
            a[alive[0]] = 1  # |lost| <= s < s + 1 = len(members): never empty
        return a


def straggler_set(n: int, s: int, seed: int, step: int) -> tuple[int, ...]:
    """The ``s`` stragglers (sorted ranks) of optimizer step ``step`` (0-based): a uniform draw without replacement
    by a generator seeded from ``(seed, step)`` -- a pure function, identical on every process and after a resume."""
    if s == 0:
        return ()
    gen = torch.Generator().manual_seed((seed * 0x9E3779B1 + step * 0x85EBCA77 + 0x2545F491) % (2**63 - 1))
    return tuple(sorted(torch.randperm(n, generator=gen)[:s].tolist()))


def _buckets(tensors: list[Tensor]) -> list[list[int]]:
    """Indices of ``tensors`` grouped by (dtype, device), in order of first appearance."""
    groups: dict[tuple[torch.dtype, torch.device], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.dtype, t.device), []).append(i)
    return list(groups.values())


class GradientCoding:
    """The coded reduction over a process group: call :meth:`reduce` after backward, before the optimizer step.

    Args:
        model: the module whose trainable parameters' ``.grad`` are replaced by the decoded global mean.
        stragglers: s >= 0 (``(s + 1)`` must divide the group's size).
        seed: seed of the straggler draw (:func:`straggler_set`).
        meter: byte meter (a fresh :class:`CommMeter` when None).
        group: process group (None: the default group).

    ``steps`` counts reductions (= optimizer steps); the straggler set of a reduction is drawn for ``steps``.
    """

    KIND = "gradient_coding"

    def __init__(self, model: nn.Module, *, stragglers: int, seed: int = 0, meter: CommMeter | None = None,
                 group: Any = None) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("GradientCoding: the model has no trainable parameters")
        self.group = group
        n = dist.get_world_size(group) if _dist_on() else 1
        self.rank = dist.get_rank(group) if _dist_on() else 0
        self.code = FractionalRepetitionCode(n, stragglers)  # ValueError when (s + 1) does not divide n
        self.seed = int(seed)
        self.meter = meter if meter is not None else CommMeter()
        self.steps = 0
        self.straggled = [0] * n  # steps each worker was a straggler
        self.simulated_group_bytes = 0  # the in-group sums standing in for the redundant computation
        self.last_stragglers: tuple[int, ...] = ()
        self._group_pg: Any = None
        if _dist_on() and stragglers > 0:
            # every process creates every group, in the same order (torch.distributed.new_group's rule)
            for members in self.code.groups:
                ranks = members if group is None else [dist.get_global_rank(group, r) for r in members]
                pg = dist.new_group(ranks)
                if self.rank in members:
                    self._group_pg = pg

    def stragglers_at(self, step: int) -> tuple[int, ...]:
        """The straggler set of optimizer step ``step`` (0-based)."""
        return straggler_set(self.code.n, self.code.s, self.seed, step)

    @torch.no_grad()
    def reduce(self) -> None:
        """Replace every trainable parameter's gradient by the decoded full-batch mean (a collective)."""
        lost = self.stragglers_at(self.steps)
        weight = float(self.code.decode_vector(lost)[self.rank])
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        n = self.code.n
        for bucket in _buckets(grads):
            flat = torch.cat([grads[i].reshape(-1) for i in bucket])
            if self._group_pg is not None:  # c_G = Σ_{j∈G} g_j: what each member computes on its s + 1 parts
                self.simulated_group_bytes += tensor_bytes(flat)
                dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self._group_pg)
            self.meter.add(tensor_bytes(flat), self.KIND)  # this worker's coded gradient
            message = flat if weight == 1.0 else torch.zeros_like(flat)  # a_i ∈ {0, 1}
            if _dist_on():
                dist.all_reduce(message, op=dist.ReduceOp.SUM, group=self.group)  # Σ_i a_i c_i = Σ_j g_j
            message /= n
            off = 0
            for i in bucket:
                p = self.params[i]
                k = p.numel()
                if p.grad is None:
                    p.grad = message[off:off + k].view_as(p).clone()
                else:
                    p.grad.copy_(message[off:off + k].view_as(p))
                off += k
        for i in lost:
            self.straggled[i] += 1
        self.last_stragglers = lost
        self.steps += 1

    def _config(self) -> dict[str, Any]:
        return {"n": self.code.n, "stragglers": self.code.s, "seed": self.seed}

    def state_dict(self) -> dict[str, Any]:
        return {"algorithm": "GradientCoding", "config": self._config(), "steps": self.steps,
                "straggled": list(self.straggled), "simulated_group_bytes": self.simulated_group_bytes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("algorithm") != "GradientCoding":
            raise ValueError(f"GradientCoding: state was saved by {state.get('algorithm')!r}")
        if dict(state.get("config", {})) != self._config():
            raise ValueError(f"GradientCoding: saved config {state.get('config')} != {self._config()}")
        self.steps = int(state["steps"])
        self.straggled = [int(x) for x in state["straggled"]]
        self.simulated_group_bytes = int(state["simulated_group_bytes"])


class CodedDataParallel(nn.Module):
    """What the training step calls: the model, with :meth:`GradientCoding.reduce` run at the end of every
    backward that follows a forward through this wrapper (a final autograd callback, as DDP's reducer queues).

    Backward passes that did not start from this wrapper's forward (probes differentiating ``t.model``) and
    ``torch.autograd.grad`` calls (which accumulate no ``.grad``) do not trigger the collective.
    """

    def __init__(self, module: nn.Module, coding: GradientCoding) -> None:
        super().__init__()
        self.module = module
        self.coding = coding
        self._armed = False
        self._queued = False
        self._handles = [p.register_post_accumulate_grad_hook(self._on_grad) for p in coding.params]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled():
            self._armed = True
        return self.module(*args, **kwargs)

    def _on_grad(self, param: Tensor) -> None:
        if self._armed and not self._queued:
            self._queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._finish)

    def _finish(self) -> None:
        self._armed = self._queued = False
        self.coding.reduce()

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


@STRATEGIES.register("gradient_coding",
                     summary="gradient coding, fractional repetition: groups of s+1 send coded gradients, the "
                             "full gradient decoded from any n-s (s simulated stragglers per step; Tandon et al. "
                             "2017)",
                     paper="Tandon, Lei, Dimakis & Karampatziakis 2017, Gradient Coding: Avoiding Stragglers in "
                           "Distributed Learning (ICML)")
class GradientCodingStrategy(Strategy):
    """``dist.strategy=gradient_coding`` (see the module docstring): the replicated model of DDP, its gradient
    decoded from the coded messages of the non-straggling workers. Payload ``P`` per process per step."""

    name = "gradient_coding"

    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> nn.Module:
        self.ensure_group()
        s, n = self.options.stragglers, self.world_size
        if n % (s + 1):
            raise ConfigError("dist.stragglers", f"s + 1 = {s + 1} must divide the number of processes {n} "
                                                 f"(dist.stragglers={s}, {n} processes): launch a multiple of "
                                                 f"{s + 1} or lower dist.stragglers")
        if self.options.compression != "none":  # the config refuses it already; a RunConfig built by hand too
            raise ConfigError("dist.compression", "is a DDP hook; gradient_coding decodes its own all-reduce")
        self.model = model
        self.impl = GradientCoding(model, stragglers=s, seed=self.options.straggler_seed, meter=self.meter)
        self.net = CodedDataParallel(model, self.impl)
        return self.net

    def after_step(self, step: int) -> None:
        self.impl.steps = step  # the next reduction is step `step`'s (one backward per step)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "coding": self.impl.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "coding" in state:
            self.impl.load_state_dict(state["coding"])

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        impl = getattr(self, "impl", None)
        if impl is not None:
            out.update({"stragglers": impl.code.s, "groups": impl.code.groups, "straggled_steps": list(impl.straggled),
                        "simulated_group_bytes": impl.simulated_group_bytes})
        return out

    def finish(self) -> None:
        net = getattr(self, "net", None)
        if net is not None:
            net.remove_hooks()
        super().finish()


__all__ = ["CodedDataParallel", "FractionalRepetitionCode", "GradientCoding", "GradientCodingStrategy",
           "straggler_set"]
