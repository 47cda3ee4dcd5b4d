"""The state a run changes while it trains, and the one checkpoint format that holds it.

:class:`TrainState` is small: the step, the clocks, the events and what their detectors remember, the byte
meter's position and a buffer of trace rows. A checkpoint is that state plus the model's, the optimizer's and
the strategy's state dicts, the objective's and the probes' state and the RNG -- everything a
:class:`~trainlab.train.training.Training` rebuilt from the same config needs to continue bit for bit.
Nothing configured is read back from a checkpoint (base learning rates, schedule, data): it comes from the config.

A checkpoint also records the resolved config it was written under; resuming under a config that differs in
anything but the keys a resume may change (:data:`~trainlab.train.config.RESUMABLE_KEYS`) is refused with the
key that differs, before any tensor is loaded.

No checkpoint holds a NaN or an inf: :func:`prepare_checkpoint` checks every floating tensor of the model, optimizer
and strategy state first, and the loop ends a run whose state is not finite as ``diverged`` instead of writing it.
A file is checked before it is used, too (:func:`check_payload`): a payload that hashes right but lacks a key or
holds the wrong type is a :class:`~trainlab.errors.CheckpointError` naming the file and the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from trainlab.errors import CheckpointError, one_line
from trainlab.rundir import RunDir
from trainlab.rundir import checkpoints
from trainlab.train.config import RESUMABLE_KEYS, RunConfig
from trainlab.train.events import Event, EventTracker, check_state
from trainlab.train.training import Training


@dataclass
class TrainState:
    """What changes while a run trains (besides parameters and optimizer state)."""

    tracker: EventTracker
    step: int = 0  # optimizer steps taken
    train_time: float = 0.0  # seconds spent in optimizer steps (evaluation, logging, checkpoints excluded)
    cpu_time: float = 0.0  # this process's CPU seconds (all its threads) in those same stretches of the loop
    wall_offset: float = 0.0  # wall seconds of earlier sessions of this run (a resumed clock continues)
    comm_logged: int = 0  # the byte meter's total at the previous metrics row
    grad_norm: Tensor | None = None  # the last step's clipped global gradient norm (with grad_clip)
    last_checkpoint: int | None = None  # the step of the newest checkpoint written or resumed from (all finite)
    # (step, lr, loss, grad norm) of the steps since the last drain, kept on the device; always drained before a
    # checkpoint, so never part of one
    trace: list[tuple[int, float, Tensor, Tensor]] = field(default_factory=list)

    @classmethod
    def fresh(cls, t: Training) -> TrainState:
        return cls(tracker=EventTracker(t.workload.metric, t.workload.higher_is_better,
                                        t.cfg.train.threshold,  # type: ignore[arg-type]
                                        gap_threshold=t.cfg.continual.gap_threshold))


# ---------------------------------------------------------------------------------------------------------
# Checkpoints


def needs_all_ranks(t: Training) -> bool:
    """Whether building a checkpoint is collective (sharded or per-process state): every rank must call it."""
    return t.strategy.world_size > 1 and (t.strategy.per_rank_state or t.strategy.consolidated_state)


def checkpoint_payload(t: Training, s: TrainState, wall: float) -> dict[str, Any]:
    """The checkpoint's content. Call it on every rank when :func:`needs_all_ranks` (sharded strategies gather
    the full model and optimizer state to rank 0, a collective); only rank 0's result is written."""
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()  # type: ignore[assignment]
    strategy = t.strategy
    local = {"model": strategy.model_state(t.model), "optimizer": strategy.optimizer_state(t.model, t.optimizer),
             "strategy": strategy.state_dict()}
    payload = {**local, "train_time": s.train_time, "cpu_time": s.cpu_time, "wall_time": wall, "rng": rng,
               "events": [e.to_dict() for e in s.tracker.events], "event_state": dict(s.tracker.state),
               "objective": t.objective.state_dict(), "probe_initial": t.prober.initial,
               "world_size": strategy.world_size, "strategy_name": strategy.name, "config": t.cfg.to_plain(),
               "threads": torch.get_num_threads()}  # an auto-chosen count follows the run across resumes
    if t.continual is not None:  # the method's buffers and Fishers
        payload["continual"] = t.continual.state_dict()
    if t.pruner is not None:  # the masks (and the schedule's start): a resume must prune exactly as before
        payload["prune"] = t.pruner.state_dict()
    if t.federation is not None:  # the simulated clock, the clients in flight with their deltas, the counters
        payload["federation"] = t.federation.state_dict()
    if strategy.per_rank_state and strategy.world_size > 1:
        # DiLoCo's workers hold different weights and inner-optimizer states between outer steps: keep each.
        # (gather_object pickles over the process group between this run's own processes; files never are.)
        gathered: list[Any] | None = [None] * strategy.world_size if strategy.rank == 0 else None
        torch.distributed.gather_object(local, gathered, dst=0)
        payload["ranks"] = gathered
    return payload


def prepare_checkpoint(t: Training, s: TrainState, wall: float) -> tuple[dict[str, Any] | None, str | None]:
    """The checkpoint of step ``s.step`` (on the main process; None elsewhere) and the path of its first tensor
    that is not finite (None when every one is: only then may :func:`write_checkpoint` write it).

    Call it on every rank. The ranks that must help build the payload (:func:`needs_all_ranks`) do; the payload
    then holds every rank's part (sharded strategies gather full tensors to rank 0, DiLoCo keeps each worker's
    state), so the main process checks it all and every rank gets its verdict.
    """
    built = checkpoint_payload(t, s, wall) if t.env.is_main or needs_all_ranks(t) else None
    payload = built if t.env.is_main else None  # the other ranks only helped to build it
    found = nonfinite_tensor(payload) if payload is not None else None
    return payload, t.env.broadcast(found)


def write_checkpoint(s: TrainState, rd: RunDir, payload: dict[str, Any] | None) -> None:
    """Write a payload :func:`prepare_checkpoint` found finite (the main process's; other ranks pass None and
    only note the step)."""
    if payload is not None:
        checkpoints.save(rd.checkpoints, s.step, payload)
    s.last_checkpoint = s.step


def nonfinite_tensor(payload: dict[str, Any]) -> str | None:
    """The path of the first floating tensor in the payload's model, optimizer or strategy state (each worker's,
    when it keeps them apart) that holds a NaN or an inf, such as ``model.net.0.weight`` or
    ``optimizer.state.0.exp_avg_sq``; None when all are finite. Plain numbers (hyperparameters) are not looked at:
    some optimizers keep an infinite one on purpose."""
    workers = payload.get("ranks") or [payload]
    for i, local in enumerate(workers):
        prefix = f"worker {i}: " if len(workers) > 1 else ""
        for part in ("model", "optimizer", "strategy"):
            found = _first_nonfinite(local.get(part), f"{prefix}{part}")
            if found is not None:
                return found
    return None


def _first_nonfinite(tree: Any, path: str) -> str | None:
    if isinstance(tree, Tensor):
        floating = tree.is_floating_point() or tree.is_complex()
        return path if floating and not bool(torch.isfinite(tree).all()) else None
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    for key, value in items:
        found = _first_nonfinite(value, f"{path}.{key}")
        if found is not None:
            return found
    return None


def divergence_summary(s: TrainState) -> dict[str, Any] | None:
    """``summary.json``'s ``divergence`` entry: the step where the run went wrong, what was not finite there
    (``loss``: that step's training loss; ``train_loss``: an evaluation's; else a tensor's path such as
    ``model.net.0.weight``), the event's detail, and the step of the last finite checkpoint, which ``--resume``
    continues from (None when the run wrote none). None for a run that did not diverge."""
    event = s.tracker.fired("diverged")
    if event is None:
        return None
    return {"step": event.step, "nonfinite": event.metric, "detail": event.detail,
            "last_finite_checkpoint": s.last_checkpoint}


def restore(t: Training, payload: dict[str, Any]) -> TrainState:
    """Load a checkpoint's state into ``t``'s objects and return the :class:`TrainState` to continue from.

    The payload is checked first (:func:`check_payload`); state dicts that do not fit the objects built from the
    config are a :class:`CheckpointError` naming the file, like a payload of the wrong shape.
    """
    source = _source(payload)
    check_payload(payload)
    check_config(payload.get("config"), t.cfg)
    strategy = t.strategy
    saved_name = payload.get("strategy_name")
    consolidated = {e.name for e in _strategies() if e.factory.consolidated_state}  # checkpoints of gathered shards
    if saved_name is not None and saved_name != strategy.name and {saved_name, strategy.name} & consolidated:
        raise CheckpointError(f"{source} was written by dist.strategy={saved_name}; cannot resume it "
                              f"with {strategy.name}")
    local = payload
    if "ranks" in payload:
        ranks = payload["ranks"]
        if len(ranks) != strategy.world_size:
            raise CheckpointError(f"{source} holds {len(ranks)} {strategy.name} workers' states; resume it with "
                                  f"torchrun --nproc_per_node={len(ranks)} (workers hold different weights)")
        local = ranks[strategy.rank]
    try:
        strategy.load_model_state(t.model, local["model"])
        strategy.load_optimizer_state(t.model, t.optimizer, local["optimizer"])
        strategy.load_state_dict(local.get("strategy", {}))
        t.objective.load_state_dict(payload.get("objective", {}))
        if t.continual is not None:
            t.continual.load_state_dict(payload.get("continual", {}))
        if t.pruner is not None:
            if "prune" not in payload:
                raise ValueError("the checkpoint holds no pruning masks")
            t.pruner.load_state_dict(payload["prune"])
        if t.federation is not None:
            if "federation" not in payload:
                raise ValueError("the checkpoint holds no federation state")
            t.federation.load_state_dict(payload["federation"])
        torch.set_rng_state(payload["rng"]["torch"])
        if "cuda" in payload["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(payload["rng"]["cuda"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as err:
        # another model's checkpoint (written before configs were kept), or state dicts crafted by hand
        raise CheckpointError(f"{source} does not fit the model and optimizer built from config.yaml: "
                              f"{mismatch(err)}") from None
    t.prober.initial = dict(payload.get("probe_initial", {}))
    tracker = EventTracker(t.workload.metric, t.workload.higher_is_better, t.cfg.train.threshold,  # type: ignore[arg-type]
                           payload["events"], payload.get("event_state"), gap_threshold=t.cfg.continual.gap_threshold)
    step = payload["step"]
    return TrainState(tracker=tracker, step=step, train_time=float(payload["train_time"]),
                      cpu_time=float(payload.get("cpu_time", 0.0)),  # checkpoints before the CPU clock: from 0
                      wall_offset=float(payload["wall_time"]), comm_logged=strategy.meter.total,
                      last_checkpoint=step)


# What checkpoint_payload writes: key -> (kind, required). Keys it does not write are ignored.
_PAYLOAD: dict[str, tuple[str, bool]] = {
    "step": ("int", True), "train_time": ("number", True), "wall_time": ("number", True), "rng": ("mapping", True),
    "events": ("list", True), "model": ("mapping", True), "optimizer": ("mapping", True),
    "event_state": ("mapping", False), "strategy": ("mapping", False), "objective": ("mapping", False),
    "probe_initial": ("mapping", False), "config": ("mapping", False), "strategy_name": ("string", False),
    "world_size": ("int", False), "ranks": ("list", False), "continual": ("mapping", False),
    "prune": ("mapping", False), "threads": ("int", False), "federation": ("mapping", False),
    "cpu_time": ("number", False),  # absent from checkpoints written before the CPU clock
}
# kind -> (the types it allows, how a message names it)
_KINDS: dict[str, tuple[tuple[type, ...], str]] = {
    "int": ((int,), "an integer"), "number": ((int, float), "a number"), "mapping": ((dict,), "a mapping"),
    "list": ((list,), "a list"), "string": ((str,), "a string"), "tensor": ((Tensor,), "a tensor"),
}


def check_payload(payload: dict[str, Any]) -> None:
    """Refuse a checkpoint payload that :func:`restore` or :func:`~trainlab.train.load.load_run` cannot use: a
    required key missing, a value of the wrong type (a bool is no number), a state dict that is not a mapping of
    tensors. The :class:`CheckpointError` names the file and the key; extra keys are ignored."""
    problem = payload_problem(payload)
    if problem is not None:
        raise CheckpointError(f"{_source(payload)} is not a checkpoint trainlab can use: {problem}")


def payload_problem(payload: dict[str, Any]) -> str | None:
    """The first thing that makes ``payload`` unusable (see :func:`check_payload`), or None."""
    for key, (kind, required) in _PAYLOAD.items():
        if key not in payload:
            if required:
                return f"{key!r} is missing"
        elif not _is_kind(payload[key], kind):
            return f"{key!r} is {type(payload[key]).__name__}, not {_KINDS[kind][1]}"
    return (_numbers_problem(payload) or _rng_problem(payload["rng"]) or _events_problem(payload)
            or _states_problem(payload) or _config_problem(payload.get("config")) or _prune_problem(payload))


def _is_kind(value: Any, kind: str) -> bool:
    return isinstance(value, _KINDS[kind][0]) and not isinstance(value, bool)


def _numbers_problem(payload: dict[str, Any]) -> str | None:
    if payload["step"] < 0:
        return f"'step' is {payload['step']}, not a step count"
    bad = next((k for k in ("train_time", "wall_time", "cpu_time") if k in payload and not math.isfinite(payload[k])),
               None)
    return f"{bad!r} is {payload[bad]}, not a finite number of seconds" if bad else None


def _rng_problem(rng: dict[str, Any]) -> str | None:
    cuda = rng.get("cuda", [])
    if not isinstance(cuda, list):
        return f"'rng.cuda' is {type(cuda).__name__}, not a list"
    for key, state in [("rng.torch", rng.get("torch")), *((f"rng.cuda.{i}", x) for i, x in enumerate(cuda))]:
        if not (isinstance(state, Tensor) and state.dtype == torch.uint8):
            return f"{key!r} is {type(state).__name__ if state is not None else 'missing'}, not a byte tensor"
    return None


def _events_problem(payload: dict[str, Any]) -> str | None:
    for i, event in enumerate(payload["events"]):
        try:
            Event.from_dict(event)
        except ValueError as err:
            return f"'events' entry {i + 1} {err}"
    try:
        check_state(payload.get("event_state", {}))
    except ValueError as err:
        return f"'event_state' {err}"
    return None


def _states_problem(payload: dict[str, Any]) -> str | None:
    ranks = payload.get("ranks")
    if ranks is not None and not (ranks and all(isinstance(r, dict) for r in ranks)):
        return "'ranks' is not a list of each worker's state"
    for prefix, local in ([(f"ranks.{i}.", r) for i, r in enumerate(ranks)] if ranks else [("", payload)]):
        problem = (_tensors_problem(f"{prefix}model", local.get("model"))
                   or _optimizer_problem(f"{prefix}optimizer", local.get("optimizer")))
        if problem is not None:
            return problem
        if "strategy" in local and not isinstance(local["strategy"], dict):
            return f"'{prefix}strategy' is {type(local['strategy']).__name__}, not a mapping"
    return _tensors_problem("probe_initial", payload.get("probe_initial", {}))


def _prune_problem(payload: dict[str, Any]) -> str | None:
    """A pruning run's ``prune`` entry: a ``masks`` mapping of names to bool tensors, and s_i as a number."""
    state = payload.get("prune")
    if state is None:
        return None
    problem = _tensors_problem("prune.masks", state.get("masks"))
    if problem is not None:
        return problem
    bad = next((k for k, v in state["masks"].items() if v.dtype != torch.bool), None)
    if bad is not None:
        return f"'prune.masks' holds {bad!r}: {state['masks'][bad].dtype}, not a bool mask"
    initial = state.get("initial", 0.0)
    if not (_is_kind(initial, "number") and 0 <= initial <= 1):
        return f"'prune.initial' is {initial!r}, not a fraction"
    return None


def _tensors_problem(key: str, value: Any) -> str | None:
    """Whether ``value`` is a mapping of names to tensors (a model's state dict)."""
    if not isinstance(value, dict):
        return f"{key!r} is {type(value).__name__ if value is not None else 'missing'}, not a mapping"
    bad = next((k for k, v in value.items() if not (isinstance(k, str) and isinstance(v, Tensor))), None)
    return None if bad is None else f"{key!r} holds {bad!r}: {type(value[bad]).__name__}, not a tensor"


def _optimizer_problem(key: str, state: Any) -> str | None:
    """Whether ``state`` has the shape of an optimizer's state dict: a ``state`` mapping and ``param_groups``, a
    list of mappings that each list their ``params`` (every optimizer of the registry, ZeRO's and FSDP's)."""
    if not isinstance(state, dict):
        return f"{key!r} is {type(state).__name__ if state is not None else 'missing'}, not a mapping"
    if not isinstance(state.get("state"), dict):
        return f"{key!r} has no 'state' mapping"
    groups = state.get("param_groups")
    listed = isinstance(groups, list) and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)
    if not listed:
        return f"{key!r} has no 'param_groups' list of groups with their 'params'"
    return None


def _config_problem(config: dict[str, Any] | None) -> str | None:
    """A config is compared key by key with the run's (:func:`check_config`): its keys, and those of its
    sections, must be names."""
    sections = [config or {}] + [v for v in (config or {}).values() if isinstance(v, dict)]
    bad = next((k for section in sections for k in section if not isinstance(k, str)), None)
    return None if bad is None else f"'config' has a key {bad!r} that is not a name"


def mismatch(err: BaseException) -> str:
    """One line saying why a state dict did not load: for ``load_state_dict``'s "Error(s) in loading state_dict
    for MLP:" the first mismatch it lists (a key or a shape), else the error's first line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        return lines[1]
    return one_line(err)


def _source(payload: dict[str, Any]) -> str:
    """How messages name the checkpoint: its file when it was loaded from one."""
    return f"checkpoint {payload.path}" if isinstance(payload, checkpoints.Checkpoint) else "the checkpoint"


def check_config(saved: dict[str, Any] | None, cfg: RunConfig) -> None:
    """Refuse to resume under a config that differs from the checkpoint's in a key a resume may not change,
    naming every such key (the first with both values)."""
    if saved is None:  # written before checkpoints kept their config; the state dicts' shapes are checked on load
        return
    changed = config_changes(saved, cfg.to_plain())
    if changed:
        key, before, after = changed[0]
        others = f" (also {', '.join(k for k, _, _ in changed[1:])})" if len(changed) > 1 else ""
        raise CheckpointError(f"config.yaml says {key}={_show(after)} but the checkpoint was trained with "
                              f"{key}={_show(before)}{others}; only {', '.join(sorted(RESUMABLE_KEYS))} may differ")


def config_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted key, saved value, current value) for every key outside RESUMABLE_KEYS whose value differs."""
    changes = []
    for key in sorted(set(saved) | set(now)):
        before, after = saved.get(key), now.get(key)
        if key in RESUMABLE_KEYS or before == after or key not in saved:  # (a section added since: its defaults)
            continue
        if isinstance(before, dict) and isinstance(after, dict):
            changes += [(f"{key}.{sub}", before.get(sub), after.get(sub)) for sub in sorted(set(before) | set(after))
                        if sub in before and before.get(sub) != after.get(sub)]  # (a key added since: its default)
        else:
            changes.append((key, before, after))
    return changes


def _show(value: Any) -> str:
    return "(unset)" if value is None else str(value)


def _strategies() -> Any:
    from trainlab.distributed.strategy import STRATEGIES

    return STRATEGIES
