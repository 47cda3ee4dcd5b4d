"""Distributed strategies: how the processes of a ``torchrun`` launch train one model together.

``dist.strategy=NAME`` picks one (``trainlab list`` reads :data:`STRATEGIES`). The trainer talks to a
strategy through a handful of calls, in this order (:mod:`trainlab.train.loop`)::

    model = strategy.prepare(model)                      # fsdp: fully_shard (parameters become DTensors)
    optimizer = strategy.build_optimizer(name, params, options)   # zero1: ZeroRedundancyOptimizer(...)
    net = strategy.wrap(model)                           # what the step calls: DDP, or the model itself
    ...each step: loss = sum / (global count) * world    (strategy.local_loss: sum / local count)
                  backward; optimizer.step(); strategy.after_step(step)   # DiLoCo's outer step lives here
    with strategy.eval_weights(): evaluate               # DiLoCo evaluates the global (synchronised) model
    checkpoint: strategy.model_state / optimizer_state   # full (consolidated) tensors, collective calls
                strategy.state_dict()                    # the byte meter, outer optimizer, hook state

Strategies (papers; what is communicated, as *payload* bytes per optimizer step -- see
:mod:`trainlab.distributed.comm` for the convention; ``P`` = bytes of all trainable parameters, ``N`` processes):

- ``ddp`` -- ``DistributedDataParallel``: gradients averaged by all-reduce. Payload ``P`` per step (the
  gradient buckets). With ``dist.compression=dgc|powersgd`` a DDP communication hook
  (:mod:`trainlab.distributed.compression`) replaces the all-reduce and counts what it sends itself.
- ``zero1`` -- ZeRO stage 1 (Rajbhandari et al. 2020, "ZeRO: Memory optimizations toward training trillion
  parameter models"): DDP for the gradients plus ``torch.distributed.optim.ZeroRedundancyOptimizer`` around
  the registry's optimizer, so each process keeps the optimizer state of its own partition of the
  parameters and broadcasts the parameters it updated. Payload ``P`` (gradient all-reduce) plus the bytes of
  the parameters this process owns (its broadcasts; this process's share of the all-gather).
- ``fsdp`` -- ZeRO stage 3 via FSDP2 ``torch.distributed.fsdp.fully_shard`` (Zhao et al. 2023, "PyTorch
  FSDP"; parameters are DTensors, ``torch.distributed.tensor``, sharded on dim 0 over a 1-D DeviceMesh: CPU +
  gloo or CUDA + NCCL). Every child module holding parameters is a unit (a ``ModuleList``'s members, such
  as a transformer's blocks; children sharing a tied parameter stay in the root), then the root. Measured
  (FSDP2's own collectives are counted through ``set_custom_all_gather`` / ``set_custom_reduce_scatter``): per
  step, each unit all-gathers its parameters in forward and again in backward (``reshard_after_forward``;
  the root's own parameters once), payload = this process's padded shard ``ceil(d0/N)·rest`` each time;
  gradients are reduce-scattered, payload = the whole padded gradient ``N·shard``. Evaluation forwards
  all-gather too (counted). gloo runs the reduce-scatter as a full all-reduce, so on CPU FSDP moves more
  bytes than DDP.
- ``diloco`` / ``streaming_diloco`` -- DiLoCo (Douillard et al. 2023) and Streaming DiLoCo (Douillard et al.
  2025), :mod:`trainlab.distributed.diloco`: no gradient all-reduce (each process trains on its own shard, the loss
  is its local mean); every ``H`` inner steps the pseudo-gradients are averaged and an outer Nesterov step
  is taken. They count their own bytes.

World size 1 (no torchrun): ``ddp`` is the plain single-process trainer (nothing wrapped, 0 bytes, no
process group, as before). Every other strategy runs its own code path on a one-process gloo group
(an in-memory ``HashStore``, no port): sharding over one process is the identity, DiLoCo runs its outer loop
with one worker. ZeRO and DiLoCo still issue (and count) their one-process collectives; FSDP2 skips its own, so
fsdp reports 0 bytes there. Compression hooks need several processes and refuse one.

Checkpoints (:mod:`trainlab.train.state`) are *consolidated*: rank 0 writes full, unsharded tensors through
the atomic writer, every rank loads the file with ``weights_only=True`` and keeps its own part, so a sharded
run resumes onto any number of processes. PyTorch's own sharded format (``torch.distributed.checkpoint``'s
``FileSystemReader``) is not used because in torch 2.13 its ``read_metadata`` loads the ``.metadata`` file
with ``pickle.load``, and trainlab never unpickles files.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeGuard

import torch
import torch.distributed as dist
from torch import nn

from trainlab.config import ConfigError
from trainlab.distributed import compression, diloco
from trainlab.distributed.comm import CommMeter, tensor_bytes
from trainlab.distributed.env import DistEnv
from trainlab.optim.protocol import capabilities
from trainlab.registry import Registry

if TYPE_CHECKING:
    from trainlab.optim.muon import Muon

STRATEGIES: Registry[type[Strategy]] = Registry("strategy")  # filled by the class decorators below


def trainable_bytes(model: nn.Module) -> int:
    """Bytes of all parameters that require a gradient (global sizes, also for DTensors)."""
    return sum(q.numel() * q.element_size() for q in model.parameters() if q.requires_grad)


class Strategy:
    """The plain single-process case, and the interface every strategy implements (see the module docstring).

    Attributes: ``local_loss`` -- the loss is each process's local mean (no gradient averaging) instead of the
    global-batch mean; ``active`` -- a process group is in use and bytes are reported; ``meter`` -- the
    :class:`~trainlab.distributed.comm.CommMeter` every byte goes through.
    """

    name = "single"
    local_loss = False
    lockstep_forward = False  # the model's forward is a collective (fsdp): equal call counts on every process
    per_rank_state = False  # checkpoint every rank's model/optimizer (processes hold different weights)
    consolidated_state = False  # model/optimizer state is gathered from shards to rank 0 (a collective)
    swaps_parameters = False  # the modules' parameter objects change during a step: walk them, never keep a list

    def __init__(self, options: Any, env: DistEnv) -> None:
        self.options, self.env = options, env
        self.meter = CommMeter()
        self.owned_group = False  # a one-process group made here (world size 1), destroyed by finish()
        self.model: nn.Module | None = None

    @property
    def active(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    @property
    def world_size(self) -> int:
        return dist.get_world_size() if self.active else 1

    @property
    def rank(self) -> int:
        return dist.get_rank() if self.active else 0

    def ensure_group(self) -> None:
        """A one-process gloo group when none exists (world size 1 without torchrun): no port, no file."""
        if not dist.is_initialized():
            dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
            self.owned_group = True

    # -- building ----------------------------------------------------------------------------------------
    def prepare(self, model: nn.Module) -> nn.Module:
        self.model = model
        return model

    def build_optimizer(self, name: str, params: Any, kwargs: dict[str, Any]) -> torch.optim.Optimizer:
        from trainlab import optim

        return optim.build(name, params, **kwargs)

    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> nn.Module:
        return model

    # -- each step ---------------------------------------------------------------------------------------
    def after_step(self, step: int) -> None:
        """Called after each optimizer step; ``step`` = optimizer steps taken so far."""

    @contextlib.contextmanager
    def eval_weights(self) -> Iterator[None]:
        yield

    # -- checkpoints (collective: every rank calls them) -------------------------------------------------
    def model_state(self, model: nn.Module) -> dict[str, Any]:
        return model.state_dict()

    def optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return optimizer.state_dict()

    def load_model_state(self, model: nn.Module, state: dict[str, Any]) -> None:
        model.load_state_dict(state)

    def load_optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state)

    def state_dict(self) -> dict[str, Any]:
        return {"meter": self.meter.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.meter.load_state_dict(state.get("meter", {}))

    def summary(self) -> dict[str, Any]:
        return {"strategy": self.options.strategy, "world_size": self.world_size, **self.meter.summary()}

    def finish(self) -> None:
        if self.owned_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owned_group = False


def _registry_optimizer(name: str, kwargs: dict[str, Any]) -> Callable[..., torch.optim.Optimizer]:
    from trainlab import optim

    def build(params: Any, **_: Any) -> torch.optim.Optimizer:
        return optim.build(name, params, **kwargs)

    return build


def _muon(optimizer: torch.optim.Optimizer) -> TypeGuard[Muon]:
    from trainlab.optim.muon import Muon

    return isinstance(optimizer, Muon)


@STRATEGIES.register("ddp", summary="DistributedDataParallel: gradients all-reduced every step (+ optional DGC / "
                                    "PowerSGD communication hook)")
class DDPStrategy(Strategy):
    name = "ddp"

    def __init__(self, options: Any, env: DistEnv) -> None:
        super().__init__(options, env)
        self.hook: Any = None
        self.grad_bytes = 0

    @property
    def active(self) -> bool:
        return self.env.distributed

    def build_optimizer(self, name: str, params: Any, kwargs: dict[str, Any]) -> torch.optim.Optimizer:
        optimizer = super().build_optimizer(name, params, kwargs)
        if self.env.distributed and self.options.distributed_muon and _muon(optimizer):
            from trainlab.distributed.muon import DistributedMuon

            optimizer = DistributedMuon.from_muon(optimizer, meter=self.meter)
        return optimizer

    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> nn.Module:
        self.model = model
        self.grad_bytes = trainable_bytes(model)
        return self._ddp(model, several=self.env.distributed)

    def _ddp(self, model: nn.Module, several: bool) -> nn.Module:
        """DDP with the configured communication hook; one process trains the plain model (and refuses a hook)."""
        if not several:
            if self.options.compression != "none":
                raise ConfigError("dist.compression", "needs several processes (a DDP communication hook); "
                                                      "launch with torchrun --nproc_per_node=N")
            return model
        device_ids = [self.env.device.index] if self.env.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        if self.options.compression != "none":
            self.hook = build_compression_hook(self.options, self.meter, model)
            self.hook.register(net)
        return net

    def after_step(self, step: int) -> None:
        if self.env.distributed and self.hook is None:
            self.meter.add(self.grad_bytes, "allreduce")

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.hook is not None:
            state["hook"] = self.hook.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.hook is not None and "hook" in state:
            self.hook.load_state_dict(state["hook"])

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        if self.hook is not None:
            out["compression"] = self.options.compression
            out["dense_bytes"] = int(self.hook.dense_bytes)  # what plain DDP would have all-reduced
            sent = self.meter.total - self.meter.by_kind.get("param_broadcast", 0)  # zero1's broadcasts aside
            out["compression_ratio"] = round(self.hook.dense_bytes / max(sent, 1), 3)
        return out


def build_compression_hook(options: Any, meter: CommMeter, model: nn.Module) -> Any:
    """The DGC or PowerSGD hook object of :mod:`trainlab.distributed.compression`."""
    o = options
    if o.compression == "dgc":
        return compression.DGCHook(o.dgc_density, o.dgc_momentum, nesterov=o.dgc_nesterov, clip_norm=o.dgc_clip,
                                   warmup_steps=o.dgc_warmup_steps, min_sparse_numel=o.dgc_min_sparse_numel,
                                   meter=meter)
    return compression.PowerSGDHook(o.powersgd_rank, start_iter=o.powersgd_start_iter,
                                    min_compression_rate=o.powersgd_min_compression_rate, meter=meter)


@STRATEGIES.register("zero1", summary="ZeRO-1: DDP gradients + ZeroRedundancyOptimizer (optimizer state sharded "
                                      "by parameter; updated parameters broadcast)")
class Zero1Strategy(DDPStrategy):
    name = "zero1"
    consolidated_state = True

    @property
    def active(self) -> bool:
        return True

    def build_optimizer(self, name: str, params: Any, kwargs: dict[str, Any]) -> torch.optim.Optimizer:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        self.ensure_group()
        # The registry builds the optimizer once over everything (so role-aware optimizers such as Muon split
        # their groups); ZeRO then re-builds it per partition from those groups, hyperparameters included.
        probe = Strategy.build_optimizer(self, name, params, kwargs)
        offers = capabilities(probe)
        if offers.modes or offers.observes_loss or offers.task_aware:  # ZeroRedundancyOptimizer would not forward these calls
            raise ConfigError("optimizer", f"{name} offers {' and '.join(offers.names())} (trainlab.optim.protocol), "
                                           "which ZeroRedundancyOptimizer does not pass on; use dist.strategy=ddp "
                                           "or fsdp")
        groups = [dict(g) for g in probe.param_groups]
        del probe
        try:
            factory = _registry_optimizer(name, kwargs)
            # The stub asks for a class; ZeRO only calls optimizer_class(params, **defaults), so a factory works.
            return ZeroRedundancyOptimizer(groups, optimizer_class=factory)  # type: ignore[arg-type]
        except (TypeError, ValueError, RuntimeError) as err:
            raise ConfigError("optimizer", f"{name} cannot be sharded by ZeroRedundancyOptimizer: "
                                           f"{str(err).splitlines()[0]}") from None

    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> nn.Module:
        self.model, self.optimizer = model, optimizer
        self.grad_bytes = trainable_bytes(model)
        self.owned_bytes = tensor_bytes([q for g in optimizer.optim.param_groups for q in g["params"]])  # type: ignore[attr-defined]
        # DDP over one process only copies gradients; the optimizer path is ZeRO's
        return self._ddp(model, several=self.world_size > 1)

    def after_step(self, step: int) -> None:
        if self.hook is None and self.world_size > 1:  # one process: no DDP, nothing all-reduced
            self.meter.add(self.grad_bytes, "allreduce")
        self.meter.add(self.owned_bytes, "param_broadcast")

    def optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The consolidated state (every rank's partition, gathered on rank 0; empty dict elsewhere)."""
        optimizer.consolidate_state_dict(to=0)  # type: ignore[attr-defined]
        return optimizer.state_dict() if self.rank == 0 else {}

    def load_optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        # ZeroRedundancyOptimizer.load_state_dict takes the consolidated state and keeps this rank's
        # partition, whatever the number of processes that wrote it (states are keyed by global index).
        optimizer.load_state_dict(state)


class _CountingAllGather:
    """FSDP2's all-gather, counting this process's input (its shard) on the meter."""

    def __init__(self, meter: CommMeter, kind: str) -> None:
        self.meter, self.kind = meter, kind

    def allocate(self, size: Any, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return torch.empty(*size, dtype=dtype, device=device)

    def __call__(self, output_tensor: torch.Tensor, input_tensor: torch.Tensor, group: Any,
                 async_op: bool = False) -> Any:
        self.meter.add(tensor_bytes(input_tensor), self.kind)
        return dist.all_gather_single(output_tensor, input_tensor, group=group, async_op=async_op)


class _CountingReduceScatter:
    """FSDP2's reduce-scatter, counting its input (the whole padded gradient) on the meter."""

    def __init__(self, meter: CommMeter) -> None:
        self.meter = meter

    def allocate(self, size: Any, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return torch.empty(*size, dtype=dtype, device=device)

    def __call__(self, output_tensor: torch.Tensor, input_tensor: torch.Tensor, group: Any, op: Any,
                 async_op: bool = False) -> Any:
        self.meter.add(tensor_bytes(input_tensor), "reduce_scatter")
        return dist.reduce_scatter_single(output=output_tensor, input=input_tensor, group=group, op=op,
                                          async_op=async_op)


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """The modules ``fully_shard`` is applied to: every direct child holding parameters, then the root.

    A container without a forward of its own (``ModuleList``, ``ModuleDict``: a transformer's blocks) cannot be
    a unit -- FSDP2 hooks a unit's forward -- so its members are units instead. A child sharing a parameter with
    another child (tied embeddings) is left to the root: a parameter belongs to exactly one unit.
    """
    children = _unit_candidates(model)
    owners: dict[int, int] = {}
    for child in children:
        for q in child.parameters():
            owners[id(q)] = owners.get(id(q), 0) + 1
    return [m for m in children if all(owners[id(q)] == 1 for q in m.parameters())] + [model]


def _unit_candidates(module: nn.Module) -> list[nn.Module]:
    """The children of ``module`` holding parameters, with containers replaced by their members."""
    out: list[nn.Module] = []
    for child in module.children():
        if not any(True for _ in child.parameters()):
            continue
        container = type(child).forward is nn.Module.forward  # ModuleList / ModuleDict: no forward to hook
        out += _unit_candidates(child) if container else [child]
    return out


def fsdp_step_payload(model: nn.Module, world_size: int, reshard_after_forward: bool = True) -> dict[str, int]:
    """The analytic per-step payload of :class:`FSDPStrategy` for a model *before* sharding (bytes).

    Each parameter of ``d0`` rows is padded to ``N·ceil(d0/N)`` rows. All-gather payload: this process's shard,
    once in forward and (``reshard_after_forward``, child units only) again in backward; reduce-scatter
    payload: the whole padded gradient.
    """
    def shard(q: torch.Tensor) -> int:
        rows = q.shape[0] if q.ndim else 1
        return math.ceil(rows / world_size) * (q.numel() // max(rows, 1)) * q.element_size()

    in_children = {id(q) for m in fsdp_units(model)[:-1] for q in m.parameters()}
    gather = reduce = 0
    for q in model.parameters():
        if not q.requires_grad:
            continue
        repeats = 2 if (reshard_after_forward and id(q) in in_children) else 1
        gather += repeats * shard(q)
        reduce += world_size * shard(q)
    return {"allgather": gather, "reduce_scatter": reduce}


@STRATEGIES.register("fsdp", summary="FSDP2 fully_shard (ZeRO-3): parameters, gradients and optimizer state "
                                     "sharded as DTensors; all-gather + reduce-scatter")
class FSDPStrategy(Strategy):
    name = "fsdp"
    lockstep_forward = True
    consolidated_state = True
    swaps_parameters = True  # FSDP2 registers the unsharded tensors around forward/backward, the DTensors after

    def prepare(self, model: nn.Module) -> nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        self.ensure_group()
        device_type = self.env.device.type
        if device_type not in ("cpu", "cuda"):
            raise ConfigError("dist.strategy", f"fsdp needs a cpu (gloo) or cuda (nccl) device, not {device_type}")
        self.mesh = init_device_mesh(device_type, (self.world_size,))
        # FSDP2 warns when a unit returns a view (a transformer's head over (batch, time, d)): an in-place op on
        # it would skip the pre-backward all-gather. trainlab's losses and evaluation never modify a model
        # output in place, so the warning would only alarm.
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(\w+\) returned a view tensor",
                                category=UserWarning)
        # FSDP2 shards every parameter: a frozen one (requires_grad=False) is still sharded, never updated
        for unit in fsdp_units(model):
            root = unit is model
            fully_shard(unit, mesh=self.mesh, reshard_after_forward=self.options.reshard_after_forward and not root)
            unit.set_custom_all_gather(_CountingAllGather(self.meter, "allgather"))  # type: ignore[operator]
            unit.set_custom_reduce_scatter(_CountingReduceScatter(self.meter))  # type: ignore[operator]
        self.model = model
        return model

    def build_optimizer(self, name: str, params: Any, kwargs: dict[str, Any]) -> torch.optim.Optimizer:
        optimizer = super().build_optimizer(name, params, kwargs)
        if _muon(optimizer):
            if not self.options.distributed_muon:
                raise ConfigError("dist.distributed_muon", "fsdp shards every matrix; Muon needs whole matrices, "
                                                           "so it must run distributed (set it to true)")
            from trainlab.distributed.muon import DistributedMuon

            optimizer = DistributedMuon.from_muon(optimizer, meter=self.meter)
        return optimizer

    def _options(self, **kw: Any) -> Any:
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, cpu_offload=True, **kw)

    def model_state(self, model: nn.Module) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(model, options=self._options())

    def optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer, options=self._options())

    def load_model_state(self, model: nn.Module, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))

    def load_optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


class _DiLoCoBase(Strategy):
    local_loss = True
    per_rank_state = True

    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> nn.Module:
        self.ensure_group()
        if self.options.compression != "none":  # config refuses it already; a RunConfig built by hand too
            raise ConfigError("dist.compression", f"is a DDP hook; {self.name} sends no gradients")
        self.model = model
        self.impl = self.make(model)
        return model

    def make(self, model: nn.Module) -> Any:
        """The outer-loop object of :mod:`trainlab.distributed.diloco` for ``model``."""
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        self.impl.after_inner_step(step)

    @contextlib.contextmanager
    def eval_weights(self) -> Iterator[None]:
        with self.impl.global_weights():
            yield

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "outer": self.impl.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "outer" in state:
            self.impl.load_state_dict(state["outer"])

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "inner_steps": self.options.inner_steps}

    def finish(self) -> None:
        impl = getattr(self, "impl", None)
        if impl is not None:
            impl.finish()
        super().finish()


@STRATEGIES.register("diloco", summary="DiLoCo: H local inner steps, averaged pseudo-gradient, outer Nesterov SGD "
                                       "(Douillard et al. 2023)")
class DiLoCoStrategy(_DiLoCoBase):
    name = "diloco"

    def make(self, model: nn.Module) -> Any:
        o = self.options
        return diloco.DiLoCo(model, inner_steps=o.inner_steps, outer_lr=o.outer_lr, outer_momentum=o.outer_momentum,
                             nesterov=o.nesterov, meter=self.meter)


@STRATEGIES.register("streaming_diloco", summary="Streaming DiLoCo: P fragments synced in turn, overlapped "
                                                 "all-reduce, mixing alpha, quantised outer gradients "
                                                 "(Douillard et al. 2025)")
class StreamingDiLoCoStrategy(_DiLoCoBase):
    name = "streaming_diloco"

    def make(self, model: nn.Module) -> Any:
        o = self.options
        return diloco.StreamingDiLoCo(model, inner_steps=o.inner_steps, fragments=o.fragments, overlap=o.overlap,
                                      alpha=o.alpha, quant_bits=o.quant_bits or None, outer_lr=o.outer_lr,
                                      outer_momentum=o.outer_momentum, nesterov=o.nesterov, meter=self.meter)

    def summary(self) -> dict[str, Any]:
        o = self.options
        return {**super().summary(), "fragments": o.fragments, "overlap": o.overlap, "quant_bits": o.quant_bits}


def build(options: Any, env: DistEnv) -> Strategy:
    """The strategy named by ``options.strategy`` (a :class:`~trainlab.train.config.DistOptions`)."""
    cls = STRATEGIES.get(options.strategy).factory
    return cls(options, env)


# Strategies defined in their own modules register themselves on import (they import this module first).
from trainlab.distributed import gradient_coding, gossip  # noqa: E402,F401
