"""What a run is built from, once, from its config: :class:`Training` and :func:`build_training`.

Nothing in a :class:`Training` is reassigned while the run trains (the parameters and the optimizer's state
change inside their objects). What does change -- the step, the clocks, the events -- is the small
:class:`~trainlab.train.state.TrainState`, which alone (with the model, optimizer and strategy states) is
checkpointed. Resuming is: build the :class:`Training` again from the saved config, load that state.

The learning rate of step ``t`` is one function of the config, :meth:`Training.lrs_at`::

    lr_g(t) = configured lr x parametrisation multiplier of group g (muP) x schedule(t)

used by the step, the trace and the metrics row; it is never read back from optimizer state (that is how a
resumed run used to continue with an lr already multiplied by the schedule).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import torch
from torch import Tensor, nn

from trainlab import models, optim, schedules, workloads
from trainlab.errors import ConfigError, RunError
from trainlab.distributed import strategy as strategies
from trainlab.distributed.env import DistEnv
from trainlab.losses.objective import Objective, n_classes_of
from trainlab.train.batch_rules import run_lr_factor
from trainlab.models.setup import apply_param_options, optimizer_params
from trainlab.optim.protocol import Capabilities, capabilities
from trainlab.train.config import RunConfig
from trainlab.continual.controller import Continual, MaskedHead
from trainlab.continual.sequence import TaskSampler, TaskSequence
from trainlab.train import diet as diets
from trainlab.train.data import BatchSampler, PacedSampler
from trainlab.train.prober import Prober
from trainlab.workloads.base import Dataset, Workload

if TYPE_CHECKING:
    from trainlab.federated.simulator import Simulator
    from trainlab.prune.pruner import Pruner


@dataclass(frozen=True)
class Training:
    """The parts of one run, built once by :func:`build_training`."""

    cfg: RunConfig
    env: DistEnv
    workload: Workload
    data: Dataset
    model: nn.Module  # the plain module: state_dict, evaluation, probes
    net: nn.Module  # what the step calls: wrapped by the strategy (DDP, FSDP) and/or compiled
    optimizer: torch.optim.Optimizer
    hooks: Capabilities  # what the optimizer offers the loop beyond step() (trainlab.optim.protocol)
    strategy: strategies.Strategy
    sampler: BatchSampler | TaskSampler
    objective: Objective
    prober: Prober
    autocast: Callable[[], contextlib.AbstractContextManager]
    base_lrs: tuple[float, ...]  # per parameter group: configured lr x parametrisation multiplier
    schedule: Callable[[int], float]  # step -> lr multiplier
    continual: Continual | None = None  # a task sequence's tasks, method and per-task evaluation
    eval_steps: frozenset[int] = frozenset()  # evaluations beyond every eval_every (a sequence's task switches)
    diet: diets.Diet | None = None  # the data section's subset and order of the training set (None: all, random)
    pruner: Pruner | None = None  # the prune section's masks and schedule (None: no pruning)
    batch_lr_factor: float = 1.0  # batch.lr_rule's multiplier, already in base_lrs (trainlab.train.batch_rules)
    federation: Simulator | None = None  # fed.*: the clients on a simulated clock; each step is a server update
    param_list: tuple[Tensor, ...] | None = None  # model.parameters(), listed once (None: walked at each use)

    @property
    def steps(self) -> int:
        return self.cfg.train.steps  # type: ignore[return-value]  # resolved from the workload when unset

    def parameters(self) -> Iterable[Tensor]:
        """The model's parameters, in ``model.parameters()`` order, for the per-step gradient norm and clipping.

        The list kept at build time (:attr:`param_list`), because walking the module tree every step costs about
        10 µs, a tenth of a percent of a small CNN's step. The walk happens again where the strategy swaps
        parameter objects in and out of the modules (FSDP2: ``Strategy.swaps_parameters``). Nothing else replaces
        a parameter after :func:`build_training`: loading a checkpoint, pruning, rewinding, continual methods and
        federated updates all write into the existing tensors.
        """
        return self.param_list if self.param_list is not None else self.model.parameters()

    def lrs_at(self, step: int) -> list[float]:
        """Each parameter group's lr for step ``step`` (0-based): base lr x schedule(step)."""
        scale = self.schedule(step)
        return [base * scale for base in self.base_lrs]

    def lr_at(self, step: int) -> float:
        """The first group's lr for step ``step``: the ``lr`` of trace rows and metrics rows."""
        return self.lrs_at(step)[0]

    def logged_lr(self, step: int) -> float:
        """The lr a row reports for step ``step``: :meth:`lr_at`, or, for an optimizer that sets its own lr
        (:class:`~trainlab.optim.protocol.SelfScheduling`), the lr of the last step it took."""
        own = self.hooks.own_lr()
        return own if own is not None else self.lr_at(step)

    def set_lrs(self, step: int) -> None:
        """Put step ``step``'s lrs into the optimizer (a tensor lr is filled in place: no recompilation)."""
        for group, lr in zip(self.optimizer.param_groups, self.lrs_at(step)):
            if isinstance(group["lr"], Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr


def input_kind_for(workload: Workload, model_name: str) -> str:
    """The first input kind the workload offers that the model reads."""
    readable = models.input_kinds(model_name)
    for kind in workload.input_kinds:
        if kind in readable:
            return kind
    raise ConfigError("model", f"{model_name} reads {', '.join(readable)} inputs, but workload {workload.name} "
                               f"provides {', '.join(workload.input_kinds)}")


def autocast_factory(setting: str, device: torch.device, dtype: torch.dtype) -> Callable[[], Any]:
    """bf16 autocast when asked for (``bf16``), or by default on CUDA in float32; else a no-op context."""
    use_bf16 = setting == "bf16" or (setting == "auto" and device.type == "cuda" and dtype == torch.float32)
    if not use_bf16:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def build_training(cfg: RunConfig, env: DistEnv, *, resuming: bool = False) -> Training:
    """Build every part of the run ``cfg`` describes, on ``env``'s device (seeded: the same config builds the
    same initial model). A config too large for this machine's memory is a :class:`RunError` saying so.

    ``resuming``: the weights will come from the run's own checkpoint, so ``init_from``'s source is not read (it
    may have moved or gone since the run started)."""
    t = cfg.train
    dtype = torch.float64 if t.dtype == "float64" else torch.float32
    torch.manual_seed(t.seed)
    workload = workloads.build(cfg.workload.name, **cfg.workload.kwargs())
    kind = input_kind_for(workload, cfg.model.name)
    if isinstance(workload, TaskSequence):
        diets.refuse_for_sequences(cfg.data, workload.name)
    with _memory_errors(f"the data of workload {workload.name}", "workload", cfg.workload.kwargs()):
        data = _to(workload.data(kind), env.device, dtype)  # type: ignore[arg-type]
    spec = workload.spec(kind)  # type: ignore[arg-type]
    # A data diet: the run's training set is the chosen rows, in their order, from here on (sampler, objective,
    # evaluation, probes); the config it saves records which rows (data.selected), so a resume can check them.
    diet = diets.plan(cfg.data, data.n_train)
    if diet is not None:
        data = diet.apply(data)
        cfg = replace(cfg, data=replace(cfg.data, selected=diet.record))
    if t.batch_size and t.batch_size > data.n_train:  # the sampler would silently train full batch
        kept = f" that data.keep={cfg.data.keep:g} keeps" if diet is not None else ""
        raise RunError(f"batch_size={t.batch_size} exceeds the {data.n_train:,} training examples{kept} of workload "
                       f"{workload.name}; batch_size=0 trains on the full batch")
    check_model_fits(cfg, spec, dtype, env.device)
    with _memory_errors(f"model {cfg.model.name}", "model", cfg.model.kwargs()):
        model = models.build(cfg.model.name, spec, **cfg.model.kwargs()).to(env.device, dtype)
    model = apply_param_options(model, cfg.param, data.x_train[:1024])
    if t.init_from is not None and not resuming:  # fine-tuning: the weights of another run
        from trainlab.train.load import load_initial_weights

        load_initial_weights(model, t.init_from)
    pruner = None
    if cfg.prune.method != "none" or cfg.prune.from_run is not None:  # (a run that does not prune imports nothing)
        from trainlab.prune.setup import build_pruner

        pruner = build_pruner(cfg, model, env.device, env.world_size, resuming=resuming)
    strategy = strategies.build(cfg.dist, env)
    if cfg.probes.names and cfg.dist.strategy == "fsdp" and env.distributed:
        raise ConfigError("probes", "probes run on the main process alone, but fsdp shards the parameters over all "
                                    "processes; use dist.strategy=ddp or zero1 to probe")
    try:
        model = strategy.prepare(model)
        needs_model = optim.OPTIMIZERS.get(cfg.optimizer.name).meta.get("needs_model", False)
        params = optimizer_params(model, cfg.param, cfg.optimizer.name, cfg.optimizer.kwargs().get("lr"), needs_model)
        optimizer = strategy.build_optimizer(cfg.optimizer.name, params, cfg.optimizer.kwargs())
        hooks = capabilities(optimizer)
        hooks.train_mode()  # schedule-free optimizers must be in train mode to step
        if pruner is not None:
            from trainlab.prune.setup import check_optimizer

            check_optimizer(pruner, cfg.optimizer.name, hooks)
            pruner.apply_()  # an optimizer that re-initialises the model (agd) must not revive pruned weights
        net = strategy.wrap(model, optimizer)
        if t.compile:
            net = torch.compile(net)  # type: ignore[assignment]
        objective = Objective(cfg.loss, workload, model, n_train=data.n_train, n_classes=n_classes_of(spec),
                              distributed=env.distributed or strategy.world_size > 1, compiled=t.compile)
        assert t.steps is not None and t.batch_size is not None and t.eval_every is not None
        sampler: BatchSampler | TaskSampler = BatchSampler(data.n_train, t.batch_size, t.seed, env.rank,
                                                           env.world_size)
        if cfg.data.order != "random":  # the rows are in curriculum order: batches from a growing prefix
            sampler = PacedSampler(data.n_train, t.batch_size, t.seed, t.steps, cfg.data.start, cfg.data.pace,
                                   env.rank, env.world_size)
        continual = None
        if isinstance(workload, TaskSequence):
            tasks = workload.tasks(kind)  # type: ignore[arg-type]
            sampler = TaskSampler(tasks, t.batch_size, t.seed, env.rank, env.world_size)
            continual = Continual(workload, data, tasks, spec.n_outputs, cfg.continual, loss=objective.primary,
                                  seed=t.seed, device=env.device, total_steps=t.steps)
            continual.attach(sampler)
            if continual.masks_training:
                if cfg.loss.certified != "none":  # the bounds are of the whole head, not of the masked logits
                    raise ConfigError("loss.certified", f"bounds every logit, but {workload.name} trains on logits "
                                                        f"masked to each task's classes")
                net = MaskedHead(net, continual)
        federation = None
        if cfg.fed.on:  # (a run that is not federated imports nothing of it)
            from trainlab.federated.setup import build_federation

            federation = build_federation(cfg, model, data, objective, spec, env)
        lr_factor = run_lr_factor(cfg.batch.lr_rule, cfg.batch.base, t.batch_size, type(workload).default_batch_size,
                                  data.n_train)
        return Training(
            cfg=cfg, env=env, workload=workload, data=data, model=model, net=net, optimizer=optimizer, hooks=hooks,
            strategy=strategy, sampler=sampler, objective=objective,
            prober=Prober(cfg.probes, t.steps, t.eval_every, loss_fn=objective.primary, data=data,
                          train_rows=diet.rows if diet is not None else None),
            autocast=autocast_factory(t.autocast, env.device, dtype),
            base_lrs=tuple(float(g["lr"]) * lr_factor for g in optimizer.param_groups), batch_lr_factor=lr_factor,
            schedule=schedules.build(cfg.schedule.name, t.steps, **cfg.schedule.kwargs()),
            continual=continual, eval_steps=continual.eval_steps if continual is not None else frozenset(),
            diet=diet, pruner=pruner, federation=federation,
            param_list=None if strategy.swaps_parameters else tuple(model.parameters()),
        )
    except BaseException:
        strategy.finish()  # a one-process group made for this run goes with it
        raise


def _to(data: Dataset, device: torch.device, dtype: torch.dtype) -> Dataset:
    def move(t: Tensor) -> Tensor:
        return t.to(device, dtype) if t.is_floating_point() else t.to(device)

    return Dataset(move(data.x_train), move(data.y_train), move(data.x_val), move(data.y_val))


# ---------------------------------------------------------------------------------------------------------
# Configs too large for the machine: say what is too large instead of an allocator's traceback


def check_model_fits(cfg: RunConfig, spec: Any, dtype: torch.dtype, device: torch.device) -> None:
    """Refuse a model whose parameters alone exceed the device's memory, before allocating anything.

    The model is first built on PyTorch's ``meta`` device (shapes, no storage), so ``model.width=10000000``
    is reported as the parameter count it asks for rather than as an allocator failure.
    """
    available = device_memory_bytes(device)
    if available is None:
        return
    try:
        with torch.device("meta"):
            shadow = models.build(cfg.model.name, spec, **cfg.model.kwargs())
    except Exception:  # a model that cannot be built on meta is checked by the real build below
        return
    n = sum(p.numel() for p in shadow.parameters())
    need = n * torch.tensor([], dtype=dtype).element_size()
    if need > available:
        options = ", ".join(f"model.{k}={v}" for k, v in cfg.model.kwargs().items()
                            if isinstance(v, int) and not isinstance(v, bool) and v > 1)
        raise RunError(f"model {cfg.model.name} ({options}) has {n:,} parameters: {_gb(need)} of weights alone, more "
                       f"than the {_gb(available)} of memory on {device.type}; choose a smaller model")


def device_memory_bytes(device: torch.device) -> int | None:
    """Total memory of ``device`` in bytes (RAM for the CPU), or None when it cannot be told."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    if device.type != "cpu":
        return None
    try:
        import os

        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def _gb(n: float) -> str:
    return f"{n / 1e9:,.1f} GB"


@contextlib.contextmanager
def _memory_errors(what: str, component: str, options: dict[str, Any]) -> Iterator[None]:
    """An allocation failure while building ``what`` as a one-line :class:`RunError` naming the size and options."""
    try:
        yield
    except (RuntimeError, MemoryError) as err:
        text = str(err)
        if not (isinstance(err, MemoryError) or "alloc" in text or "out of memory" in text or "overflow" in text):
            raise
        asked = re.search(r"allocate (\d+) bytes", text)
        size = f" asks for {_gb(int(asked.group(1)))} at once, which" if asked else ""
        shown = ", ".join(f"{component}.{k}={v}" for k, v in options.items() if v not in (None, "", False))
        raise RunError(f"building {what} ({shown}){size} needs more memory than is free; choose smaller "
                       f"{component} options") from None
