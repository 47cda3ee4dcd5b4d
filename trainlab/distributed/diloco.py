"""DiLoCo and Streaming DiLoCo on torch.distributed: infrequent, averaged outer steps over local training.

**DiLoCo** (Douillard et al. 2023, "DiLoCo: Distributed Low-Communication Training of Language Models",
arXiv:2311.08105). Every worker trains its own copy of the model with any inner optimizer on its data shard
(paper: AdamW); every ``H = inner_steps`` inner steps the workers compute the pseudo-gradient
``Δ_m = θ_g − θ_m`` (global minus local parameters), average it across the group (one all-reduce of
the parameters' size), and an outer optimizer -- SGD with Nesterov momentum, paper defaults lr 0.7,
momentum 0.9 -- steps the global parameters ``θ_g`` with gradient ``mean_m Δ_m``; every worker then
continues from ``θ_g``. The inner optimizer's state is kept across outer steps (as in the paper).
Communication: one parameter-sized payload per H steps, H-fold less than data-parallel training.

**Streaming DiLoCo** (Douillard et al. 2025, "Streaming DiLoCo with overlapping communication: Towards a
Distributed Free Lunch", arXiv:2501.18512). The parameters are split into ``P`` fragments, strided over
layers (layer ``i`` goes to fragment ``i mod P``); fragment ``p`` is synchronised every H steps at offset
``t_p = floor(p H / P)``: at steps ``t`` with ``t ≡ t_p (mod H)`` its pseudo-gradient is sent (an
asynchronous collective), and ``τ = overlap`` steps later the worker blocks on it, steps the fragment's
global parameters with the outer optimizer and merges them into its local ones,
``θ_m,p ← α θ_m,p + (1 − α) θ_g,p`` (α = 0 replaces the local fragment). Outer gradients may be quantised
(``quant_bits`` 8 or 4; :mod:`trainlab.distributed.quantize`); quantised codes cannot be summed, so workers
all-gather codes and scales and average the dequantised values in fp32.

Usage (the model is a plain module, *not* DDP-wrapped; each rank feeds it its own shard)::

    diloco = DiLoCo(model, inner_steps=500, meter=meter)   # or StreamingDiLoCo(..., fragments=4, overlap=1)
    for step in range(1, T + 1):
        loss(model(x)).backward(); inner_opt.step(); inner_opt.zero_grad()
        diloco.after_inner_step(step)
    diloco.finish()
    with diloco.global_weights():
        evaluate(model)

Conventions and decisions (documented deviations):

- Bytes: ``meter.add(nbytes, kind)`` with the payload this process hands to the collective -- ``"diloco"``
  for DiLoCo's pseudo-gradient all-reduce (= parameter bytes per sync), ``"streaming_diloco"`` for each
  fragment's all-reduce (fragment bytes) or its quantised all-gather (codes + scales), ``"diloco_buffers"``
  for buffer averaging. Nothing is counted when no process group is initialised (nothing is sent).
- ``θ_g`` lives on the parameters' device, in the parameter dtype, except that fp16/bf16 parameters keep an
  fp32 global copy (and communicate fp32 pseudo-gradients).
- Only parameters with ``requires_grad`` take part; frozen ones never change.
- Buffers (running statistics and the like): floating-point buffers are averaged across workers at every
  full sync (DiLoCo: every H steps; Streaming DiLoCo: every H steps at fragment 0's send), blocking, counted
  as ``"diloco_buffers"``; integer buffers (e.g. ``num_batches_tracked``) stay local. ``sync_buffers=False``
  leaves all buffers local. The papers train transformers without buffers and say nothing here.
- With ``outer_momentum == 0`` Nesterov is switched off (torch's SGD refuses Nesterov without momentum; the
  two coincide then).
- Streaming schedule: fragment p's offset is ``floor(p H / P)`` (fragment 0 at H, 2H, ...; fragment p first at
  ``t_p``, so its first outer gradient covers ``t_p`` steps); torchft uses ``floor((p + 1) H / P)``. We require
  ``τ P < H`` (exchanges of successive fragments do not pile up); the update rule itself only needs τ < H.
- Quantisation: block-wise signed integers with fp32 scales (:mod:`trainlab.distributed.quantize`), not the paper's
  4-bit floats (E3M0); the averaging is in fp32 as in the paper.
- α defaults to 0.5 (a middle mix); α = 0 is plain replacement (torchft's only supported value).
- No broadcast at construction (it would clobber local weights restored from a checkpoint): every rank must
  build the same initial model (same seed), or call :meth:`DiLoCo.broadcast_parameters` once at a fresh start.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from trainlab.distributed import quantize as qz
from trainlab.distributed.comm import CommMeter, tensor_bytes

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized()


def _buckets(tensors: list[Tensor], indices: list[int]) -> list[list[int]]:
    """``indices`` grouped by (dtype, device) of ``tensors[i]``, in order of first appearance."""
    groups: dict[tuple, list[int]] = {}
    for i in indices:
        groups.setdefault((tensors[i].dtype, tensors[i].device), []).append(i)
    return list(groups.values())


def layer_key(name: str) -> str:
    """The "layer" a parameter belongs to, for striding: the name up to its first numeric component
    (``blocks.3.attn.q.weight`` → ``blocks.3``), else its owning module (``head.weight`` → ``head``)."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return ".".join(parts[:-1]) or name


def strided_fragments(names: list[str], fragments: int) -> list[list[int]]:
    """Indices of ``names`` in ``fragments`` strided groups: layer ``i`` (by :func:`layer_key`, in order of
    appearance) goes to fragment ``i mod P``; with fewer layers than fragments, tensors are strided instead."""
    if fragments < 1:
        raise ValueError(f"fragments must be >= 1, got {fragments}")
    if len(names) < fragments:
        raise ValueError(f"fragments={fragments} exceeds the number of trainable parameter tensors ({len(names)})")
    layers: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        layers.setdefault(layer_key(n), []).append(i)
    out: list[list[int]] = [[] for _ in range(fragments)]
    if len(layers) >= fragments:
        for j, idx in enumerate(layers.values()):
            out[j % fragments].extend(idx)
    else:
        for i in range(len(names)):
            out[i % fragments].append(i)
    return [sorted(f) for f in out]


class DiLoCo:
    """DiLoCo (Douillard et al. 2023): H inner steps, averaged pseudo-gradient, outer Nesterov SGD.

    Args:
        model: the plain (not DDP-wrapped) module each worker trains on its shard.
        inner_steps: H, inner optimizer steps between outer steps (>= 1).
        outer_lr: outer SGD learning rate (paper: 0.7).
        outer_momentum: outer SGD momentum in [0, 1) (paper: 0.9).
        nesterov: Nesterov momentum for the outer SGD (paper: True; ignored when momentum is 0).
        meter: byte meter (a fresh :class:`CommMeter` when None), exposed as ``self.meter``.
        group: process group (None: the default group).
        sync_buffers: average floating-point buffers at each sync (default True; see the module docstring).
    """

    KIND = "diloco"

    def __init__(self, model: nn.Module, *, inner_steps: int, outer_lr: float = 0.7, outer_momentum: float = 0.9,
                 nesterov: bool = True, meter: CommMeter | None = None, group: Any = None,
                 sync_buffers: bool = True) -> None:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            raise ValueError("DiLoCo: pass the plain module, not a DistributedDataParallel wrapper")
        if not isinstance(inner_steps, int) or isinstance(inner_steps, bool) or inner_steps < 1:
            raise ValueError(f"DiLoCo: inner_steps must be an int >= 1, got {inner_steps!r}")
        if not outer_lr > 0:
            raise ValueError(f"DiLoCo: outer_lr must be > 0, got {outer_lr!r}")
        if not 0 <= outer_momentum < 1:
            raise ValueError(f"DiLoCo: outer_momentum must be in [0, 1), got {outer_momentum!r}")
        self.model = model
        self.inner_steps = inner_steps
        self.outer_lr = float(outer_lr)
        self.outer_momentum = float(outer_momentum)
        self.nesterov = bool(nesterov) and outer_momentum > 0
        self.meter = meter if meter is not None else CommMeter()
        self.group = group
        self.sync_buffers = bool(sync_buffers)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("DiLoCo: the model has no trainable parameters")
        self._names = [n for n, _ in named]
        self._params = [p for _, p in named]
        self._global = [self._master_copy(p) for p in self._params]
        self.outer_optimizer = torch.optim.SGD(self._global, lr=self.outer_lr, momentum=self.outer_momentum,
                                               nesterov=self.nesterov)
        self.outer_steps = 0

    # -- helpers ---------------------------------------------------------------------------------------

    @staticmethod
    def _master_copy(p: Tensor) -> Tensor:
        dtype = torch.float32 if p.dtype in _LOW_PRECISION else p.dtype
        return p.detach().to(dtype=dtype, copy=True)

    @property
    def world_size(self) -> int:
        return dist.get_world_size(self.group) if _dist_on() else 1

    def _pseudo_gradients(self, indices: list[int]) -> dict[int, Tensor]:
        """``Δ_i = θ_g,i − θ_local,i`` in the global copy's dtype."""
        return {i: self._global[i] - self._params[i].detach().to(self._global[i].dtype) for i in indices}

    def _outer_step(self, avg: dict[int, Tensor]) -> None:
        """One outer SGD step on the global tensors in ``avg`` (the others have no grad and are skipped)."""
        for i, d in avg.items():
            self._global[i].grad = d.to(self._global[i].dtype)
        self.outer_optimizer.step()
        for i in avg:
            self._global[i].grad = None

    @torch.no_grad()
    def _merge(self, indices: list[int], alpha: float) -> None:
        """``θ_local ← α θ_local + (1 − α) θ_g`` for the given tensors (α = 0: plain copy)."""
        for i in indices:
            p, g = self._params[i], self._global[i]
            if alpha == 0.0:
                p.copy_(g)
            else:
                p.copy_(alpha * p.to(g.dtype) + (1.0 - alpha) * g)

    @torch.no_grad()
    def _average_buffers(self) -> None:
        if not (self.sync_buffers and _dist_on()):
            return
        bufs = [b for b in self.model.buffers() if b is not None and b.is_floating_point()]
        if not bufs:
            return
        ws = self.world_size
        for bucket in _buckets(bufs, list(range(len(bufs)))):
            flat = torch.cat([bufs[i].reshape(-1) for i in bucket])
            self.meter.add(tensor_bytes(flat), "diloco_buffers")
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
            flat /= ws
            off = 0
            for i in bucket:
                n = bufs[i].numel()
                bufs[i].copy_(flat[off:off + n].view_as(bufs[i]))
                off += n

    @torch.no_grad()
    def broadcast_parameters(self, src: int = 0) -> None:
        """Copy rank ``src``'s parameters (and θ_g) to every rank -- for a fresh start only, never after a
        resume. Counted as ``"broadcast"`` (parameter bytes, on every rank)."""
        if not _dist_on():
            return
        for p, g in zip(self._params, self._global):
            self.meter.add(tensor_bytes(p), "broadcast")
            dist.broadcast(p.data, src=src, group=self.group)
            g.copy_(p)

    # -- public API ------------------------------------------------------------------------------------

    def after_inner_step(self, step: int) -> None:
        """Call after every inner optimizer step; ``step`` = inner steps taken so far (1-based). Syncs when
        ``step % inner_steps == 0`` (step >= 1)."""
        if step >= 1 and step % self.inner_steps == 0:
            self.sync()

    @torch.no_grad()
    def sync(self) -> None:
        """One outer step now: average Δ = θ_g − θ_local across the group, outer SGD on θ_g, θ_local ← θ_g."""
        idx = list(range(len(self._params)))
        deltas = self._pseudo_gradients(idx)
        ws = self.world_size
        if _dist_on():
            for bucket in _buckets(self._global, idx):
                flat = torch.cat([deltas[i].reshape(-1) for i in bucket])
                self.meter.add(tensor_bytes(flat), self.KIND)
                dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
                flat /= ws
                off = 0
                for i in bucket:
                    n = deltas[i].numel()
                    deltas[i] = flat[off:off + n].view_as(deltas[i])
                    off += n
        self._outer_step(deltas)
        self._merge(idx, 0.0)
        self._average_buffers()
        self.outer_steps += 1

    def finish(self) -> None:
        """Wait for in-flight communication (DiLoCo's all-reduces are blocking: nothing to wait for)."""

    @contextmanager
    def global_weights(self) -> Iterator[nn.Module]:
        """Temporarily load θ_g into the model (e.g. to evaluate the global model); local weights come back
        on exit. Buffers are left as they are."""
        with torch.no_grad():
            saved = [p.detach().clone() for p in self._params]
            for p, g in zip(self._params, self._global):
                p.copy_(g)
        try:
            yield self.model
        finally:
            with torch.no_grad():
                for p, s in zip(self._params, saved):
                    p.copy_(s)

    def global_parameters(self) -> dict[str, Tensor]:
        """θ_g by parameter name (the live tensors; do not modify)."""
        return dict(zip(self._names, self._global))

    def _config(self) -> dict[str, Any]:
        return {"inner_steps": self.inner_steps}

    def state_dict(self) -> dict[str, Any]:
        """θ_g, the outer optimizer state and counters: tensors and plain Python (``weights_only``-loadable).
        The local weights and the inner optimizer are the trainer's to save."""
        return {
            "algorithm": type(self).__name__,
            "config": self._config(),
            "names": list(self._names),
            "global": [g.detach().clone() for g in self._global],
            "outer_optimizer": self.outer_optimizer.state_dict(),
            "outer_steps": self.outer_steps,
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("algorithm") != type(self).__name__:
            raise ValueError(f"{type(self).__name__}: state was saved by {state.get('algorithm')!r}")
        if list(state["names"]) != self._names:
            raise ValueError(f"{type(self).__name__}: saved parameter names differ from the model's")
        if dict(state.get("config", {})) != self._config():
            raise ValueError(f"{type(self).__name__}: saved config {state.get('config')} != {self._config()}")
        for g, s in zip(self._global, state["global"]):
            g.copy_(s)
        self.outer_optimizer.load_state_dict(state["outer_optimizer"])
        self.outer_steps = int(state["outer_steps"])


class _Pending:
    """An in-flight (or completed, not yet applied) fragment exchange."""

    def __init__(self, fragment: int, due: int, works: list[Any],
                 finalize: Callable[[], dict[int, Tensor]] | None) -> None:
        """``finalize`` computes the result once ``works`` are done; None for an exchange restored with its result."""
        self.fragment = fragment
        self.due = due
        self._works = works
        self._finalize = finalize
        self.result: dict[int, Tensor] | None = None

    def wait(self) -> dict[int, Tensor]:
        if self.result is None:
            for w in self._works:
                w.wait()
            assert self._finalize is not None  # only a restored exchange has none, and it has its result
            self.result = self._finalize()
            self._works, self._finalize = [], None
        return self.result


class StreamingDiLoCo(DiLoCo):
    """Streaming DiLoCo (Douillard et al. 2025): P strided fragments, overlapped and optionally quantised.

    Args (besides :class:`DiLoCo`'s):
        fragments: P >= 1 fragments, strided over layers (:func:`strided_fragments`); needs
            ``inner_steps >= P``. Fragment p syncs at steps ``t ≡ floor(p H / P) (mod H)``, t >= 1.
        overlap: τ, inner steps between starting a fragment's collective and blocking on it,
            ``0 <= τ`` and ``τ P < H`` (so a fragment's exchange completes before the next fragment's starts).
        alpha: α in [0, 1], merge ``θ_local ← α θ_local + (1 − α) θ_g`` after a fragment's outer step;
            0 replaces the local fragment by the new global one. Default 0.5.
        quant_bits: None (exchange Δ at full precision by all-reduce), 8 or 4 (block-wise int codes +
            fp32 scales by all-gather, averaged after dequantisation in fp32).
        quant_block_size: elements per quantisation scale (default 256).

    With P = 1, τ = 0, α = 0 and no quantisation this is exactly :class:`DiLoCo`.
    """

    KIND = "streaming_diloco"

    def __init__(self, model: nn.Module, *, inner_steps: int, outer_lr: float = 0.7, outer_momentum: float = 0.9,
                 nesterov: bool = True, meter: CommMeter | None = None, group: Any = None, fragments: int = 2,
                 overlap: int = 0, alpha: float = 0.5, quant_bits: int | None = None,
                 quant_block_size: int = qz.DEFAULT_BLOCK_SIZE, sync_buffers: bool = True) -> None:
        super().__init__(model, inner_steps=inner_steps, outer_lr=outer_lr, outer_momentum=outer_momentum,
                         nesterov=nesterov, meter=meter, group=group, sync_buffers=sync_buffers)
        if not isinstance(fragments, int) or isinstance(fragments, bool) or fragments < 1:
            raise ValueError(f"StreamingDiLoCo: fragments must be an int >= 1, got {fragments!r}")
        if fragments > inner_steps:
            raise ValueError(f"StreamingDiLoCo: fragments={fragments} must not exceed inner_steps={inner_steps}")
        if not isinstance(overlap, int) or isinstance(overlap, bool) or overlap < 0 or overlap * fragments >= inner_steps:
            raise ValueError(f"StreamingDiLoCo: overlap must be an int with 0 <= overlap < inner_steps/fragments "
                             f"= {inner_steps / fragments:g}, got {overlap!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"StreamingDiLoCo: alpha must be in [0, 1], got {alpha!r}")
        if quant_bits is not None and quant_bits not in qz.SUPPORTED_BITS:
            raise ValueError(f"StreamingDiLoCo: quant_bits must be None, 8 or 4, got {quant_bits!r}")
        if not isinstance(quant_block_size, int) or quant_block_size < 1:
            raise ValueError(f"StreamingDiLoCo: quant_block_size must be an int >= 1, got {quant_block_size!r}")
        self.fragments = fragments
        self.overlap = overlap
        self.alpha = float(alpha)
        self.quant_bits = quant_bits
        self.quant_block_size = quant_block_size
        self.fragment_indices = strided_fragments(self._names, fragments)
        self.offsets = [(p * inner_steps) // fragments for p in range(fragments)]
        self.fragment_syncs = [0] * fragments
        self._pending: list[_Pending] = []

    # -- schedule --------------------------------------------------------------------------------------

    def fragment_names(self, p: int) -> list[str]:
        """Parameter names in fragment ``p``."""
        return [self._names[i] for i in self.fragment_indices[p]]

    def sends_at(self, step: int) -> list[int]:
        """Fragments whose exchange starts after inner step ``step``."""
        return [p for p, t in enumerate(self.offsets) if step >= 1 and (step - t) % self.inner_steps == 0]

    @property
    def in_flight(self) -> list[tuple[int, int]]:
        """(fragment, step at which it will be applied) for every started, not yet applied exchange."""
        return [(q.fragment, q.due) for q in self._pending]

    # -- communication ---------------------------------------------------------------------------------

    @torch.no_grad()
    def _start(self, p: int, step: int) -> None:
        idx = self.fragment_indices[p]
        deltas = self._pseudo_gradients(idx)
        ws = self.world_size
        works: list = []
        parts: list = []  # per bucket: (bucket, payload)
        on = _dist_on()
        for bucket in _buckets(self._global, idx):
            flat = torch.cat([deltas[i].reshape(-1) for i in bucket])
            if self.quant_bits is None:
                if on:
                    self.meter.add(tensor_bytes(flat), self.KIND)
                    works.append(dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group, async_op=True))
                parts.append((bucket, flat))
            else:
                qt = qz.quantize(flat, self.quant_bits, self.quant_block_size)
                if on:
                    self.meter.add(qt.nbytes, self.KIND)
                    codes = [torch.empty_like(qt.codes) for _ in range(ws)]
                    scales = [torch.empty_like(qt.scales) for _ in range(ws)]
                    works.append(dist.all_gather(codes, qt.codes, group=self.group, async_op=True))
                    works.append(dist.all_gather(scales, qt.scales, group=self.group, async_op=True))
                else:
                    codes, scales = [qt.codes], [qt.scales]
                parts.append((bucket, (codes, scales, flat.numel())))

        def finalize() -> dict[int, Tensor]:
            out: dict[int, Tensor] = {}
            for bucket, payload in parts:
                if self.quant_bits is None:
                    mean = payload / ws if on else payload
                else:
                    codes, scales, n = payload
                    mean = qz.average_quantized(codes, scales, n, self.quant_bits, self.quant_block_size)
                off = 0
                for i in bucket:
                    k = self._global[i].numel()
                    out[i] = mean[off:off + k].view_as(self._global[i])
                    off += k
            return out

        self._pending.append(_Pending(p, step + self.overlap, works, finalize))

    @torch.no_grad()
    def _apply(self, pend: _Pending) -> None:
        avg = pend.wait()
        self._outer_step(avg)
        self._merge(self.fragment_indices[pend.fragment], self.alpha)
        self.fragment_syncs[pend.fragment] += 1
        self.outer_steps += 1  # fragment outer steps applied, all fragments together

    # -- public API ------------------------------------------------------------------------------------

    def after_inner_step(self, step: int) -> None:
        """Call after every inner optimizer step (``step`` 1-based). Starts the exchanges of the fragments due
        now (asynchronously), then blocks on and applies those started ``overlap`` steps ago."""
        for p in self.sends_at(step):
            self._start(p, step)
            if p == 0:
                self._average_buffers()
        due = [q for q in self._pending if q.due <= step]
        self._pending = [q for q in self._pending if q.due > step]
        for q in due:
            self._apply(q)

    def sync(self) -> None:
        """Not available: Streaming DiLoCo synchronises fragment by fragment on its schedule."""
        raise RuntimeError("StreamingDiLoCo synchronises on its schedule; call after_inner_step(step)")

    def finish(self) -> None:
        """Wait for every in-flight exchange to complete. The results stay pending and are applied at their
        scheduled step, so calling this never changes the algorithm."""
        for q in self._pending:
            q.wait()

    def _config(self) -> dict[str, Any]:
        return {"inner_steps": self.inner_steps, "fragments": self.fragments, "overlap": self.overlap,
                "quant_bits": self.quant_bits, "quant_block_size": self.quant_block_size}

    def state_dict(self) -> dict[str, Any]:
        """As :meth:`DiLoCo.state_dict`, plus per-fragment sync counts and the pending exchanges (waited for;
        their averaged outer gradients are stored, so a resume applies them at the same step)."""
        self.finish()
        sd = super().state_dict()
        sd["fragment_syncs"] = list(self.fragment_syncs)
        sd["pending"] = [{"fragment": q.fragment, "due": q.due,
                          "avg": {int(i): t.detach().clone() for i, t in q.wait().items()}} for q in self._pending]
        return sd

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.fragment_syncs = [int(x) for x in state["fragment_syncs"]]
        self._pending = []
        for item in state["pending"]:
            pend = _Pending(int(item["fragment"]), int(item["due"]), [], None)
            pend.result = {int(i): t.to(self._global[int(i)].device) for i, t in item["avg"].items()}
            self._pending.append(pend)


__all__ = ["DiLoCo", "StreamingDiLoCo", "layer_key", "strided_fragments"]
