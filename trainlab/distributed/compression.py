"""Gradient compression as DDP communication hooks: Deep Gradient Compression and PowerSGD.

Both hooks replace DDP's bucket all-reduce. They keep their state **per parameter** (keyed by the parameter's
name in ``ddp_model.module.named_parameters()``), never per bucket: DDP rebuilds its buckets after the first
iteration (in PyTorch 2.13 iteration 0 runs with one bucket, later iterations with ``bucket_cap_mb``-sized ones in
gradient-ready order), so a bucket index names different tensors before and after the rebuild. Each hook issues
its collectives synchronously in the hook body and returns an already-completed ``torch.futures.Future`` holding
the bucket's new buffer (``torch``'s own PowerSGD hook chains futures and was seen to crash or hang with more than
one bucket on gloo; this form works).

Byte accounting: ``hook.meter`` (:class:`~trainlab.distributed.comm.CommMeter`) counts the payload this process hands to
collectives; ``hook.dense_bytes`` counts what a plain DDP all-reduce of the same buckets would have handed over,
so ``hook.dense_bytes / hook.meter.total`` is the compression ratio (``hook.compression_ratio``).

Deep Gradient Compression (Lin, Han, Mao, Wang, Dally, "Deep Gradient Compression: Reducing the Communication
Bandwidth for Distributed Training", ICLR 2018, arXiv:1712.01887), for each parameter tensor on worker k::

    g    <- g * min(1, (c / sqrt(N)) / (||g||_2 + 1e-6))   local gradient clipping (optional, threshold c)
    u    <- m * u + g                                     momentum correction (u: local momentum)
    v    <- v + u                                         local accumulation (v: local velocity)
    idx  <- top-k(|v|),  k = ceil(density * numel)        sparsification
    send (v[idx], idx) to every worker (all-gather)
    v[idx] <- 0;  u[idx] <- 0                             accumulation reset; momentum factor masking
    grad <- (1 / N) * sum_k scatter(idx_k, v_k[idx_k])    what the optimizer sees

(Nesterov variant: ``v <- v + g + m * u``.) The density follows the warm-up schedule: ``warmup_steps`` split
into equal stages at densities 25%, 6.25%, 1.5625%, 0.390625% (sparsity 75% -> 93.75% -> 98.4% -> 99.6%), then
the final ``density`` (default 0.1%, i.e. 99.9% sparsity). Tensors with ``dim() <= 1`` (biases, norm gains) or
fewer than ``min_sparse_numel`` elements are not sparsified, as in the paper's code: they are all-reduced dense
(after local clipping) and the momentum ``u <- m * u + mean(g)`` is applied to the average (linear, so it equals
averaging the workers' local momenta).

Because the momentum lives inside the hook, the faithful algorithm uses **plain SGD without momentum**
(``torch.optim.SGD(params, lr, momentum=0)``): the optimizer applies ``w <- w - lr * grad``. Any optimizer still
runs (it then sees the momentum-corrected sparse aggregate as its gradient); weight decay in the optimizer acts on
the aggregate, outside the momentum.

PowerSGD (Vogels, Karimireddy, Jaggi, "PowerSGD: Practical Low-Rank Gradient Compression for Distributed
Optimization", NeurIPS 2019, arXiv:1905.13727), for each parameter viewed as a matrix ``n x m``
(``grad.view(shape[0], -1)``) with rank ``r = min(rank, n, m)``, on worker w::

    M    <- G_w + e_w                  error feedback (e_w: local error memory)
    P    <- M Q                        Q (m x r): i.i.d. N(0, 1) the first time, then the previous step's Q
    P    <- all_reduce_mean(P)
    P^   <- orthogonalise(P)           (reduced QR: orthonormal columns spanning P, like Gram-Schmidt)
    Q    <- M^T P^
    Q    <- all_reduce_mean(Q)         (kept for the next step: warm start)
    grad <- P^ Q^T                     what the optimizer sees (identical on all workers)
    e_w  <- M - P^ Q^T                 local error

A matrix is compressed only when ``n m / ((n + m) r) > min_compression_rate`` (default 1: when it saves bytes);
vectors and matrices that would not shrink are all-reduced dense. The first ``start_iter`` steps all-reduce
everything dense (no error memory). With ``r >= min(n, m)`` (and ``min_compression_rate=0`` to force it)
``P^ P^T`` spans the mean gradient's columns and the hook reproduces the exact mean; PowerSGD's momentum is the
optimizer's own, so any optimizer composes (the paper uses SGD with momentum 0.9).

Deviations from the papers, by design:
* DGC selects the exact top-k per tensor (``torch.topk``); the paper estimates the threshold from a 0.1-1% sample
  and may send slightly more or fewer than k. Here k is fixed per tensor per step, so the all-gather needs no size
  exchange and the bytes are exactly ``k * (value bytes + index bytes)``; indices are int32 (int64 for tensors
  with >= 2**31 elements).
* DGC's local clipping is per parameter tensor (as in the authors' code), with threshold ``clip_norm / sqrt(N)``;
  the paper describes it on the worker's whole gradient, which a per-bucket hook cannot see at once.
* The warm-up schedule counts optimizer steps (hook calls), not epochs.
* PowerSGD orthogonalises with reduced QR instead of Gram-Schmidt (same span, robust to rank-deficient P);
  ``start_iter`` dense steps and ``min_compression_rate`` follow torch's PowerSGD hook, not the paper.
* The gradient buffer of a bucket is one dtype; values travel in that dtype.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from trainlab.distributed.comm import CommMeter

__all__ = ["DGCHook", "PowerSGDHook", "dgc_density", "DGC_WARMUP_DENSITIES"]

#: Paper's warm-up ladder: sparsity 75%, 93.75%, 98.4375%, 99.6%, before the final 99.9%.
DGC_WARMUP_DENSITIES: tuple[float, ...] = (0.25, 0.0625, 0.015625, 0.00390625)


def dgc_density(
    step: int, density: float, warmup_steps: int, warmup_densities: Sequence[float] = DGC_WARMUP_DENSITIES
) -> float:
    """Density at 0-based ``step``: ``warmup_steps`` split into ``len(warmup_densities)`` equal stages, then
    ``density``. A stage never goes below the final density (``max(stage_density, density)``)."""
    if step < warmup_steps and warmup_densities:
        stage = min(len(warmup_densities) - 1, step * len(warmup_densities) // warmup_steps)
        return max(float(warmup_densities[stage]), density)
    return density


def _completed(tensor: Tensor) -> torch.futures.Future[Tensor]:
    fut: torch.futures.Future[Tensor] = torch.futures.Future()
    fut.set_result(tensor)
    return fut


class _CompressionHook:
    """Shared plumbing: parameter names, process group, meter, step counter, registration."""

    kind = "compression"

    def __init__(self, process_group: Any = None, meter: CommMeter | None = None) -> None:
        if meter is not None and not isinstance(meter, CommMeter):
            raise ValueError(f"meter must be a trainlab.distributed.comm.CommMeter, got {type(meter).__name__}")
        self.process_group = process_group
        self._owns_meter = meter is None
        self.meter = CommMeter() if meter is None else meter
        self.dense_bytes = 0  # what plain DDP all-reduce would have handed to collectives
        self.step = 0  # completed hook steps (incremented at the last bucket)
        self.last_layout: dict[int, tuple[str, ...]] = {}  # bucket index -> parameter names, latest step
        self._names: dict[int, str] = {}

    def _hook(self, bucket: dist.GradBucket) -> torch.futures.Future[Tensor]:
        """The DDP communication hook: ``register_comm_hook(self, type(self)._hook)`` has DDP call
        ``_hook(self, bucket)`` and wait on the future it returns. Each compressor implements it, without
        annotations: DDP compares them with ``dist.GradBucket`` at run time, and this module's are strings."""
        raise NotImplementedError

    # -- wiring -------------------------------------------------------------------------------------------
    def set_parameter_names(self, named_parameters: Iterable[tuple[str, Tensor]]) -> None:
        """Map parameters to the names that key the state (``register`` does this from ``ddp_model.module``)."""
        self._names = {id(p): name for name, p in named_parameters}

    def register(self, ddp_model: nn.parallel.DistributedDataParallel) -> None:
        """Name the parameters from ``ddp_model.module.named_parameters()`` and install the hook."""
        if not isinstance(ddp_model, nn.parallel.DistributedDataParallel):
            raise ValueError(f"register() wants a DistributedDataParallel model, got {type(ddp_model).__name__}")
        self.set_parameter_names(ddp_model.module.named_parameters())
        if self.process_group is None:
            self.process_group = ddp_model.process_group
        ddp_model.register_comm_hook(self, type(self)._hook)

    @property
    def compression_ratio(self) -> float:
        """``dense_bytes / meter.total`` (bytes plain DDP would have sent over the bytes sent); 0 before any step."""
        return self.dense_bytes / self.meter.total if self.meter.total else 0.0

    def _group(self) -> Any:  # a ProcessGroup: the one given, else the world
        return self.process_group if self.process_group is not None else dist.group.WORLD

    def _bucket_names(self, bucket: dist.GradBucket) -> list[str]:
        names = []
        for p in bucket.parameters():
            name = self._names.get(id(p))
            if name is None:
                raise RuntimeError("a bucket holds a parameter the hook cannot name; call hook.register(ddp_model)")
            names.append(name)
        return names

    def _allreduce_mean(self, flat: Tensor, kind: str = "allreduce") -> Tensor:
        group = self._group()
        self.meter.add(flat.numel() * flat.element_size(), kind)
        dist.all_reduce(flat, group=group)
        return flat.div_(dist.get_world_size(group))

    def _finish_bucket(self, bucket: dist.GradBucket, names: list[str]) -> torch.futures.Future[Tensor]:
        self.last_layout[bucket.index()] = tuple(names)
        buf = bucket.buffer()
        if bucket.is_last():
            self.step += 1
        return _completed(buf)

    # -- state --------------------------------------------------------------------------------------------
    def _base_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"step": self.step, "dense_bytes": self.dense_bytes}
        if self._owns_meter:
            state["meter"] = self.meter.state_dict()
        return state

    def _load_base_state(self, state: dict) -> None:
        self.step = int(state.get("step", 0))
        self.dense_bytes = int(state.get("dense_bytes", 0))
        if self._owns_meter and "meter" in state:
            self.meter.load_state_dict(state["meter"])

    @staticmethod
    def _matched(t: Tensor, like: Tensor) -> Tensor:
        return t if (t.device == like.device and t.dtype == like.dtype) else t.to(like.device, like.dtype)


class DGCHook(_CompressionHook):
    """Deep Gradient Compression as a DDP communication hook (see the module docstring for the equations).

    Args:
        density: final fraction of each sparsified tensor sent per step (paper: 0.001, i.e. 99.9% sparsity).
        momentum: momentum ``m`` of the corrected momentum (paper: 0.9); use the optimizer with momentum=0.
        nesterov: Nesterov form ``v <- v + g + m * u``.
        clip_norm: local clipping threshold ``c`` (per tensor, scaled by ``N**-0.5``); ``None`` disables it.
        momentum_masking: zero ``u`` where values were sent (paper: on).
        warmup_steps: steps of the warm-up ladder (paper: 4 epochs); 0 starts at ``density``.
        warmup_densities: the ladder's stage densities (paper: 25%, 6.25%, 1.5625%, 0.39%).
        min_sparse_numel: tensors with fewer elements, and every tensor with ``dim() <= 1``, go dense.
        process_group: group to communicate in (default: the DDP model's, else WORLD).
        meter: a shared :class:`CommMeter`; a private one is made when omitted.
    """

    kind = "dgc"

    def __init__(
        self,
        density: float = 0.001,
        momentum: float = 0.9,
        *,
        nesterov: bool = False,
        clip_norm: float | None = None,
        momentum_masking: bool = True,
        warmup_steps: int = 1000,
        warmup_densities: Sequence[float] = DGC_WARMUP_DENSITIES,
        min_sparse_numel: int = 1024,
        process_group: Any = None,
        meter: CommMeter | None = None,
    ) -> None:
        if not 0.0 < float(density) <= 1.0:
            raise ValueError(f"DGC density must be in (0, 1], got {density}")
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"DGC momentum must be in [0, 1), got {momentum}")
        if nesterov and momentum == 0:
            raise ValueError("DGC nesterov=True needs momentum > 0")
        if clip_norm is not None and not float(clip_norm) > 0.0:
            raise ValueError(f"DGC clip_norm must be > 0 or None, got {clip_norm}")
        if int(warmup_steps) != warmup_steps or warmup_steps < 0:
            raise ValueError(f"DGC warmup_steps must be an integer >= 0, got {warmup_steps}")
        if any(not 0.0 < float(d) <= 1.0 for d in warmup_densities):
            raise ValueError(f"DGC warmup_densities must lie in (0, 1], got {list(warmup_densities)}")
        if int(min_sparse_numel) != min_sparse_numel or min_sparse_numel < 0:
            raise ValueError(f"DGC min_sparse_numel must be an integer >= 0, got {min_sparse_numel}")
        super().__init__(process_group, meter)
        self.density = float(density)
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.clip_norm = None if clip_norm is None else float(clip_norm)
        self.momentum_masking = bool(momentum_masking)
        self.warmup_steps = int(warmup_steps)
        self.warmup_densities = tuple(float(d) for d in warmup_densities)
        self.min_sparse_numel = int(min_sparse_numel)
        self.u: dict[str, Tensor] = {}  # local momentum, per parameter name
        self.v: dict[str, Tensor] = {}  # local accumulated velocity, per parameter name (sparsified only)

    def current_density(self) -> float:
        return dgc_density(self.step, self.density, self.warmup_steps, self.warmup_densities)

    def is_sparse(self, grad: Tensor) -> bool:
        """Whether a gradient of this shape is sparsified (else all-reduced dense)."""
        return grad.dim() > 1 and grad.numel() >= self.min_sparse_numel

    def num_selected(self, numel: int, density: float | None = None) -> int:
        """``k = ceil(density * numel)`` (at least 1)."""
        d = self.current_density() if density is None else density
        return max(1, min(numel, math.ceil(d * numel - 1e-9)))

    def _state_for(self, table: dict[str, Tensor], name: str, like: Tensor) -> Tensor:
        t = table.get(name)
        if t is None or t.shape != like.shape:
            t = table[name] = torch.zeros_like(like)
        elif t.device != like.device or t.dtype != like.dtype:
            t = table[name] = self._matched(t, like)
        return t

    def _clip_(self, g: Tensor, world: int) -> Tensor:
        if self.clip_norm is not None:
            thr = self.clip_norm / math.sqrt(world)
            coef = thr / (float(torch.linalg.vector_norm(g)) + 1e-6)
            if coef < 1.0:
                g.mul_(coef)
        return g

    @torch.no_grad()
    def local_step(self, name: str, grad: Tensor, k: int, world: int = 1) -> tuple[Tensor, Tensor]:
        """One worker's side of DGC for one flat gradient: clip, momentum-correct, accumulate, pick the top ``k``
        of ``|v|``, reset ``v`` (and mask ``u``) there; returns ``(values, indices)`` to send. Updates the state."""
        g = self._clip_(grad, world)
        v = self._state_for(self.v, name, g)
        m = self.momentum
        if m:
            u = self._state_for(self.u, name, g)
            u.mul_(m).add_(g)
            if self.nesterov:
                v.add_(g).add_(u, alpha=m)
            else:
                v.add_(u)
        else:
            v.add_(g)
        idx = torch.topk(v.abs(), k, sorted=False).indices
        values = v[idx]
        v.index_fill_(0, idx, 0)  # sent: reset the accumulation
        if m and self.momentum_masking:
            self.u[name].index_fill_(0, idx, 0)  # momentum factor masking
        return values, idx

    # Unannotated on purpose: register_comm_hook checks the annotations at run time, and this module's are strings.
    @torch.no_grad()
    def _hook(self, bucket):  # type: ignore[no-untyped-def]
        group = self._group()
        world = dist.get_world_size(group)
        buf = bucket.buffer()
        names = self._bucket_names(bucket)
        grads = bucket.gradients()
        self.dense_bytes += buf.numel() * buf.element_size()
        density = self.current_density()
        m = self.momentum

        dense = [(n, g) for n, g in zip(names, grads) if not self.is_sparse(g)]
        sparse = [(n, g) for n, g in zip(names, grads) if self.is_sparse(g)]

        if dense:
            flat = torch.cat([self._clip_(g.reshape(-1).clone(), world) for _, g in dense])
            self._allreduce_mean(flat, "allreduce")
            offset = 0
            for name, g in dense:
                mean = flat[offset : offset + g.numel()].view_as(g)
                offset += g.numel()
                if m:
                    u = self._state_for(self.u, name, g)
                    u.mul_(m).add_(mean)
                    g.copy_(mean.add(u, alpha=m) if self.nesterov else u)
                else:
                    g.copy_(mean)

        if sparse:
            values, indices, ks = [], [], []
            idx_dtype = torch.int32 if all(g.numel() < 2**31 for _, g in sparse) else torch.int64
            for name, g in sparse:
                k = self.num_selected(g.numel(), density)
                vals, idx = self.local_step(name, g.reshape(-1).clone(), k, world)
                values.append(vals)
                indices.append(idx.to(idx_dtype))
                ks.append(k)
            send_v = torch.cat(values)
            send_i = torch.cat(indices)
            self.meter.add(send_v.numel() * send_v.element_size() + send_i.numel() * send_i.element_size(), "allgather")
            got_v = [torch.empty_like(send_v) for _ in range(world)]
            got_i = [torch.empty_like(send_i) for _ in range(world)]
            dist.all_gather(got_v, send_v, group=group)
            dist.all_gather(got_i, send_i, group=group)
            # Shift each tensor's indices by its offset in a concatenation of the sparse tensors.
            numels = torch.tensor([g.numel() for _, g in sparse])
            starts = torch.cumsum(numels, 0) - numels
            shift = torch.repeat_interleave(starts, torch.tensor(ks)).to(buf.device)
            total = torch.zeros(int(numels.sum()), dtype=buf.dtype, device=buf.device)
            for r in range(world):
                total.index_add_(0, got_i[r].long() + shift, got_v[r])
            total.div_(world)
            offset = 0
            for _, g in sparse:
                g.copy_(total[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
        return self._finish_bucket(bucket, names)

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and numbers keyed by parameter name (loads with ``torch.load(weights_only=True)``)."""
        state = self._base_state()
        state["momentum"] = {k: t.detach().clone() for k, t in self.u.items()}
        state["velocity"] = {k: t.detach().clone() for k, t in self.v.items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        self._load_base_state(state)
        self.u = {str(k): t.detach().clone() for k, t in dict(state.get("momentum", {})).items()}
        self.v = {str(k): t.detach().clone() for k, t in dict(state.get("velocity", {})).items()}


class PowerSGDHook(_CompressionHook):
    """PowerSGD as a DDP communication hook (see the module docstring for the equations).

    Args:
        rank: approximation rank ``r`` (paper's main setting: 2; 1 compresses most).
        start_iter: steps all-reduced dense before compressing (the paper starts at 0).
        error_feedback: keep the local error ``e`` and add it to the next gradient (paper: on).
        warm_start: reuse last step's ``Q`` (paper: on); else draw a fresh Gaussian ``Q`` every step.
        min_compression_rate: compress an ``n x m`` matrix when ``n m / ((n + m) r)`` exceeds it (1: when it saves
            bytes; 0: every matrix).
        seed: seeds the Gaussian ``Q`` (same on every worker, per parameter name).
        process_group, meter: as for :class:`DGCHook`.
    """

    kind = "powersgd"

    def __init__(
        self,
        rank: int = 2,
        *,
        start_iter: int = 0,
        error_feedback: bool = True,
        warm_start: bool = True,
        min_compression_rate: float = 1.0,
        seed: int = 0,
        process_group: Any = None,
        meter: CommMeter | None = None,
    ) -> None:
        if int(rank) != rank or rank < 1:
            raise ValueError(f"PowerSGD rank must be an integer >= 1, got {rank}")
        if int(start_iter) != start_iter or start_iter < 0:
            raise ValueError(f"PowerSGD start_iter must be an integer >= 0, got {start_iter}")
        if not float(min_compression_rate) >= 0.0:
            raise ValueError(f"PowerSGD min_compression_rate must be >= 0, got {min_compression_rate}")
        super().__init__(process_group, meter)
        self.rank = int(rank)
        self.start_iter = int(start_iter)
        self.error_feedback = bool(error_feedback)
        self.warm_start = bool(warm_start)
        self.min_compression_rate = float(min_compression_rate)
        self.seed = int(seed)
        self.error: dict[str, Tensor] = {}  # local error memory, per parameter name (matrix view n x m)
        self.q: dict[str, Tensor] = {}  # warm-start Q (m x r), per parameter name, identical on all workers

    def matrix_rank(self, shape: torch.Size | Sequence[int]) -> int:
        n, m = int(shape[0]), int(math.prod(shape[1:]))
        return min(self.rank, n, m)

    def is_compressed(self, grad: Tensor) -> bool:
        """Whether this gradient is sent as P, Q (a matrix whose low-rank form is small enough)."""
        if grad.dim() < 2:
            return False
        n, m = grad.shape[0], grad.numel() // grad.shape[0]
        if n == 0 or m == 0:
            return False
        r = self.matrix_rank(grad.shape)
        return n * m / ((n + m) * r) > self.min_compression_rate

    def _initial_q(self, name: str, m: int, r: int, like: Tensor) -> Tensor:
        salt = self.step if not self.warm_start else 0
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + zlib.crc32(name.encode()) + salt) % 2**63)
        return torch.randn(m, r, generator=gen, dtype=torch.float64).to(like.device, like.dtype)

    @staticmethod
    def _orthogonalise(p: Tensor) -> Tensor:
        work = p if p.dtype in (torch.float32, torch.float64) else p.float()
        return torch.linalg.qr(work, mode="reduced").Q.to(p.dtype)

    # Unannotated on purpose: register_comm_hook checks the annotations at run time, and this module's are strings.
    @torch.no_grad()
    def _hook(self, bucket):  # type: ignore[no-untyped-def]
        buf = bucket.buffer()
        names = self._bucket_names(bucket)
        self.dense_bytes += buf.numel() * buf.element_size()
        if self.step < self.start_iter:
            self._allreduce_mean(buf, "allreduce")
            return self._finish_bucket(bucket, names)

        grads = bucket.gradients()
        dense = [(n, g) for n, g in zip(names, grads) if not self.is_compressed(g)]
        mats = [(n, g) for n, g in zip(names, grads) if self.is_compressed(g)]

        if dense:
            flat = torch.cat([g.reshape(-1) for _, g in dense])
            self._allreduce_mean(flat, "allreduce")
            offset = 0
            for _, g in dense:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()

        if mats:
            ms, qs, ranks = [], [], []
            for name, g in mats:
                mat = g.reshape(g.shape[0], -1).clone()
                if self.error_feedback and name in self.error:
                    e = self.error[name]
                    if e.shape == mat.shape:
                        mat.add_(self._matched(e, mat))
                r = self.matrix_rank(g.shape)
                q = self.q.get(name) if self.warm_start else None
                if q is None or q.shape != (mat.shape[1], r):
                    q = self._initial_q(name, mat.shape[1], r, mat)
                ms.append(mat)
                qs.append(self._matched(q, mat))
                ranks.append(r)
            ps = torch.cat([(mat @ q).reshape(-1) for mat, q in zip(ms, qs)])
            self._allreduce_mean(ps, "allreduce_p")
            p_hats, offset = [], 0
            for mat, r in zip(ms, ranks):
                n = mat.shape[0]
                p_hats.append(self._orthogonalise(ps[offset : offset + n * r].view(n, r)))
                offset += n * r
            new_qs = torch.cat([(mat.T @ ph).reshape(-1) for mat, ph in zip(ms, p_hats)])
            self._allreduce_mean(new_qs, "allreduce_q")
            offset = 0
            for (name, g), mat, ph, r in zip(mats, ms, p_hats, ranks):
                mcols = mat.shape[1]
                q = new_qs[offset : offset + mcols * r].view(mcols, r)
                offset += mcols * r
                approx = ph @ q.T
                if self.error_feedback:
                    self.error[name] = mat.sub_(approx)
                if self.warm_start:
                    self.q[name] = q.clone()
                g.copy_(approx.view_as(g))
        return self._finish_bucket(bucket, names)

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and numbers keyed by parameter name (loads with ``torch.load(weights_only=True)``)."""
        state = self._base_state()
        state["error"] = {k: t.detach().clone() for k, t in self.error.items()}
        state["q"] = {k: t.detach().clone() for k, t in self.q.items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        self._load_base_state(state)
        self.error = {str(k): t.detach().clone() for k, t in dict(state.get("error", {})).items()}
        self.q = {str(k): t.detach().clone() for k, t in dict(state.get("q", {})).items()}
