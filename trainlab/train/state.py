"""The state a run changes while it trains, and the one checkpoint format that holds it.

:class:`TrainState` is small: the step, the two clocks, the events and what their detectors remember, the byte
meter's position and a buffer of trace rows. A checkpoint is that state plus the model's, the optimizer's and
the strategy's state dicts, the objective's and the probes' state and the RNG -- everything a
:class:`~trainlab.train.training.Training` rebuilt from the same config needs to continue bit for bit.
Nothing configured is read back from a checkpoint (base learning rates, schedule, data): it comes from the config.

A checkpoint also records the resolved config it was written under; resuming under a config that differs in
anything but the keys a resume may change (:data:`~trainlab.train.config.RESUMABLE_KEYS`) is refused with the
key that differs, before any tensor is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from trainlab.errors import CheckpointError
from trainlab.rundir import RunDir
from trainlab.rundir import checkpoints
from trainlab.train.config import RESUMABLE_KEYS, RunConfig
from trainlab.train.events import EventTracker
from trainlab.train.training import Training


@dataclass
class TrainState:
    """What changes while a run trains (besides parameters and optimizer state)."""

    tracker: EventTracker
    step: int = 0  # optimizer steps taken
    train_time: float = 0.0  # seconds spent in optimizer steps (evaluation, logging, checkpoints excluded)
    wall_offset: float = 0.0  # wall seconds of earlier sessions of this run (a resumed clock continues)
    comm_logged: int = 0  # the byte meter's total at the previous metrics row
    grad_norm: Tensor | None = None  # the last step's clipped global gradient norm (with grad_clip)
    # (step, lr, loss, grad norm) of the steps since the last drain, kept on the device; always drained before a
    # checkpoint, so never part of one
    trace: list[tuple[int, float, Tensor, Tensor]] = field(default_factory=list)

    @classmethod
    def fresh(cls, t: Training) -> TrainState:
        return cls(tracker=EventTracker(t.workload.metric, t.workload.higher_is_better,
                                        t.cfg.train.threshold))  # type: ignore[arg-type]


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
    payload = {**local, "train_time": s.train_time, "wall_time": wall, "rng": rng,
               "events": [e.to_dict() for e in s.tracker.events], "event_state": dict(s.tracker.state),
               "objective": t.objective.state_dict(), "probe_initial": t.prober.initial,
               "world_size": strategy.world_size, "strategy_name": strategy.name, "config": t.cfg.to_plain()}
    if strategy.per_rank_state and strategy.world_size > 1:
        # DiLoCo's workers hold different weights and inner-optimizer states between outer steps: keep each.
        # (gather_object pickles over the process group between this run's own processes; files never are.)
        gathered: list[Any] | None = [None] * strategy.world_size if strategy.rank == 0 else None
        torch.distributed.gather_object(local, gathered, dst=0)
        payload["ranks"] = gathered
    return payload


def save_checkpoint(t: Training, s: TrainState, rd: RunDir, wall: float) -> None:
    """Write the checkpoint of step ``s.step``. Call it on every rank: the ranks that must take part in
    building it (:func:`needs_all_ranks`) do, and only the main process writes."""
    if t.env.is_main or needs_all_ranks(t):
        payload = checkpoint_payload(t, s, wall)
        if t.env.is_main:
            checkpoints.save(rd.checkpoints, s.step, payload)


def restore(t: Training, payload: dict[str, Any]) -> TrainState:
    """Load a checkpoint's state into ``t``'s objects and return the :class:`TrainState` to continue from."""
    check_config(payload.get("config"), t.cfg)
    strategy = t.strategy
    saved_name = payload.get("strategy_name")
    consolidated = {e.name for e in _strategies() if e.factory.consolidated_state}  # checkpoints of gathered shards
    if saved_name is not None and saved_name != strategy.name and {saved_name, strategy.name} & consolidated:
        raise CheckpointError(f"checkpoint was written by dist.strategy={saved_name}; cannot resume it "
                              f"with {strategy.name}")
    local = payload
    if "ranks" in payload:
        ranks = payload["ranks"]
        if len(ranks) != strategy.world_size:
            raise CheckpointError(f"checkpoint holds {len(ranks)} {strategy.name} workers' states; resume it with "
                                  f"torchrun --nproc_per_node={len(ranks)} (workers hold different weights)")
        local = ranks[strategy.rank]
    try:
        strategy.load_model_state(t.model, local["model"])
        strategy.load_optimizer_state(t.model, t.optimizer, local["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:  # a checkpoint of another model (written before configs
        raise CheckpointError(f"checkpoint does not fit the model and optimizer built from config.yaml: "  # were kept)
                              f"{str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}") from None
    strategy.load_state_dict(local.get("strategy", {}))
    t.objective.load_state_dict(payload.get("objective", {}))
    t.prober.initial = dict(payload.get("probe_initial", {}))
    torch.set_rng_state(payload["rng"]["torch"])
    if "cuda" in payload["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["rng"]["cuda"])
    tracker = EventTracker(t.workload.metric, t.workload.higher_is_better, t.cfg.train.threshold,  # type: ignore[arg-type]
                           payload["events"], payload.get("event_state"))
    return TrainState(tracker=tracker, step=int(payload["step"]), train_time=float(payload["train_time"]),
                      wall_offset=float(payload["wall_time"]), comm_logged=strategy.meter.total)


def check_config(saved: dict[str, Any] | None, cfg: RunConfig) -> None:
    """Refuse to resume under a config that differs from the checkpoint's in a key a resume may not change."""
    if saved is None:  # written before checkpoints kept their config; the state dicts' shapes are checked on load
        return
    now = cfg.to_plain()
    for key in sorted(set(saved) | set(now)):
        if key in RESUMABLE_KEYS:
            continue
        before, after = saved.get(key), now.get(key)
        if before == after:
            continue
        if isinstance(before, dict) and isinstance(after, dict):
            sub = next(k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k))
            key, before, after = f"{key}.{sub}", before.get(sub), after.get(sub)
        raise CheckpointError(f"config.yaml says {key}={_show(after)} but the checkpoint was trained with "
                              f"{key}={_show(before)}; only {', '.join(sorted(RESUMABLE_KEYS))} may differ")


def _show(value: Any) -> str:
    return "(unset)" if value is None else str(value)


def _strategies() -> Any:
    from trainlab.distributed.strategy import STRATEGIES

    return STRATEGIES
