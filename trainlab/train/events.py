"""Training events detected from metrics rows (evaluations and probes).

From evaluations:

- ``memorized``: the first evaluation whose *train* metric reaches the workload's threshold; ``generalized``:
  the first whose *validation* metric does. The grokking delay (Power et al. 2022) is the gap between the two,
  in steps and in training seconds. ``diverged``: the evaluated train loss became NaN or inf (``metric``
  ``train_loss``). The loop records ``diverged`` itself, sooner, when a step's training loss is not finite
  (``metric`` ``loss``, the step of that loss) or a checkpoint it is about to write holds a tensor that is not
  (``metric`` the tensor's path, such as ``model.net.0.weight``): :mod:`trainlab.train.loop`.
- ``loss_spike`` (each time): the train loss rises above ``SPIKE_FACTOR`` times its lowest value so far, and by at
  least ``SPIKE_MIN_RISE`` nats (a loss of 1e-9 doubling is float noise, not a spike) (in a
  task sequence, so far in the current task: the loss of a task not yet learned is no spike); the next spike can
  fire once the loss has come back below that level.

From a task sequence's rows (their ``task`` and ``task{j}_acc`` columns, :mod:`trainlab.continual.controller`):

- ``stability_gap`` (once per switch; De Lange et al. 2023): while a task trains, some earlier task's accuracy
  fell at least ``continual.gap_threshold`` below its value at the switch (the first row of the new task, the
  model after the old one). It fires at the first such row; ``metric`` is the task that fell furthest
  (``task{j}_acc``), ``value`` its accuracy there, and the detail its depth so far and how many old tasks fell
  that far. Once per switch rather than per old task: a sequence of T tasks gives at most T − 1 events, not
  T(T − 1)/2. Each old task's full depth and recovery are in ``summary.json``'s ``continual.stability_gaps``.

From probes (each needs its probe in ``probes=...``; thresholds are constants of this module):

- ``slingshot`` (each time; Thilak et al. 2022): a loss spike while the last layer's weight norm grew by at
  least ``SLINGSHOT_NORM_GROWTH`` since the previous row that measured it (probe ``weights``).
- ``entropy_collapse`` (Zhai et al. 2023): some head's attention entropy fell below ``ENTROPY_COLLAPSE_FRACTION``
  of its first measured value (probe ``attention_entropy``).
- ``edge_of_stability`` (Cohen et al. 2021): sharpness reached ``EOS_RATIO`` of 2/lr, i.e. ``hessian/eos_ratio``
  >= 0.9 (probe ``hessian``; the plain Hessian, so the 2/lr threshold is GD's, not Adam's preconditioned one).
- ``softmax_collapse`` (Prieto et al. 2025): at least ``SOFTMAX_COLLAPSE_FRACTION`` of the probe batch has a
  softmax that rounds to one-hot (probe ``softmax_collapse``).
- ``lazy_to_rich`` (Kumar et al. 2024): the empirical NTK moved ``LAZY_RICH_DISTANCE`` away from the kernel at
  initialisation (``ntk/distance_from_init``; probe ``ntk``).
- ``robust`` (Humayun et al. 2024, delayed robustness: memorized → generalized → robust): the first row with the
  ``robustness`` probe's keys, at or after the row where ``generalized`` fired, whose adversarial accuracy at
  the largest ε in the row (``robustness/adv_acc_eps{ε}``, the event's ``metric``) is at least
  ``ROBUST_FRACTION`` times that row's ``robustness/clean_acc`` (> 0). Probe-only rows between evaluations
  count; the rule reads only the row and the ``generalized`` event, so it needs no state of its own.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from trainlab.continual.metrics import accuracy
from trainlab.continual.options import ContinualOptions
from trainlab.rundir.summary import from_events

SPIKE_FACTOR = 2.0
SPIKE_MIN_RISE = 1e-2  # nats above the lowest loss: below it a near-zero loss's relative wobble is no spike
SLINGSHOT_NORM_GROWTH = 0.05
ENTROPY_COLLAPSE_FRACTION = 0.1
EOS_RATIO = 0.9
SOFTMAX_COLLAPSE_FRACTION = 0.5
LAZY_RICH_DISTANCE = 0.2
ROBUST_FRACTION = 0.9  # robust: adversarial accuracy at the largest eps / clean accuracy
ROBUST_PREFIX = "robustness/adv_acc_eps"  # the robustness probe's keys in a row: <prefix><eps:g>
REPEATING = ("loss_spike", "slingshot", "stability_gap")


@dataclass(frozen=True)
class Event:
    name: str
    step: int
    time: float  # training seconds at the evaluation that detected it
    value: float | None = None
    metric: str | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> Event:
        """The event ``to_dict`` wrote. A checkpoint's events come from a file: anything else is a ValueError
        naming the field, not a TypeError from the constructor."""
        if not isinstance(d, dict):
            raise ValueError(f"is {type(d).__name__}, not a mapping")
        unknown = sorted(str(k) for k in set(d) - set(_EVENT_FIELDS))
        if unknown:
            raise ValueError(f"has an unknown field {unknown[0]!r}")
        for name, kinds in _EVENT_FIELDS.items():
            if name in _REQUIRED_EVENT_FIELDS and name not in d:
                raise ValueError(f"has no {name!r}")
            if name in d and not _is_a(d[name], kinds):
                raise ValueError(f"has {name!r} of type {type(d[name]).__name__}")
        return cls(**d)


# Event's fields and the types a checkpoint may hold for each (None: JSON null)
_EVENT_FIELDS: dict[str, tuple[type | None, ...]] = {"name": (str,), "step": (int,), "time": (int, float),
                                                      "value": (int, float, None), "metric": (str, None),
                                                      "detail": (str,)}
_REQUIRED_EVENT_FIELDS = ("name", "step", "time")
# what the detectors remember, and the types each may hold
_STATE_FIELDS: dict[str, tuple[type | None, ...]] = {"min_loss": (int, float, None), "in_spike": (bool,),
                                                      "last_norm": (int, float, None), "entropy0": (int, float, None),
                                                      "task": (int, None), "switch_acc": (list,), "gap_open": (bool,)}


def _is_a(value: Any, kinds: tuple[type | None, ...]) -> bool:
    """Whether ``value`` is one of ``kinds`` (None stands for None; a bool is no int or float here)."""
    if value is None:
        return None in kinds
    if isinstance(value, bool):
        return bool in kinds
    return any(kind is not None and isinstance(value, kind) for kind in kinds)


class EventTracker:
    """Feeds on metrics rows; remembers which events fired so each fires once."""

    def __init__(self, metric: str, higher_is_better: bool, threshold: float, events: list[dict] | None = None,
                 state: dict[str, Any] | None = None, gap_threshold: float = ContinualOptions.gap_threshold):
        self.metric, self.higher_is_better, self.threshold = metric, higher_is_better, threshold
        self.gap_threshold = gap_threshold  # continual.gap_threshold: the stability_gap event's drop
        self.events: list[Event] = [Event.from_dict(e) for e in (events or [])]
        # what the detectors remember between rows (checkpointed, so a resumed run detects the same events);
        # a sequence's: the task of the last row, the old tasks' accuracies at its switch, whether its
        # stability_gap may still fire
        self.state: dict[str, Any] = {"min_loss": None, "in_spike": False, "last_norm": None, "entropy0": None,
                                      "task": None, "switch_acc": [], "gap_open": False, **check_state(state or {})}

    def _solved(self, value: Any) -> bool:
        if value is None or not math.isfinite(value):
            return False
        return value >= self.threshold if self.higher_is_better else value <= self.threshold

    def fired(self, name: str) -> Event | None:
        return next((e for e in self.events if e.name == name), None)

    def record(self, event: Event) -> Event:
        """Add an event found outside the metrics rows (the loop's divergence checks) and return it."""
        self.events.append(event)
        return event

    def update(self, row: dict[str, Any]) -> list[Event]:
        """Record and return the events that first happen at this evaluation row."""
        new: list[Event] = []
        word = ">=" if self.higher_is_better else "<="
        for name, split in (("memorized", "train"), ("generalized", "val")):
            value = row.get(f"{split}_{self.metric}")
            if not self.fired(name) and self._solved(value):
                new.append(Event(name, row["step"], row["time"], value, self.metric,
                                 f"{split} {self.metric} {value:.4g} {word} {self.threshold:g}"))
        loss = row.get("train_loss")
        if not self.fired("diverged") and loss is not None and not math.isfinite(loss):
            new.append(Event("diverged", row["step"], row["time"], None, "train_loss", f"train loss is {loss}"))
        switched = self._task_switch(row)
        new += self._dynamics(row)
        # generalized may fire in this very row (an evaluation with probes): it is in new, not yet in self.events
        new += self._robust(row, bool(self.fired("generalized")) or any(e.name == "generalized" for e in new))
        if not switched:
            new += self._stability_gap(row)
        self.events.extend(new)
        return new

    def _task_switch(self, row: dict[str, Any]) -> bool:
        """Whether ``row`` is the first of a task (its ``task`` differs from the last row's); if so, remember the
        old tasks' accuracies for ``stability_gap``, and forget the lowest train loss: from here it is measured
        on the new task, and the jump to a task not yet learned is no ``loss_spike``."""
        st, task = self.state, row.get("task")
        if not isinstance(task, int) or isinstance(task, bool) or task == st["task"]:
            return False  # no sequence's evaluation row, or one of the same task
        st["task"], st["switch_acc"], st["gap_open"] = task, [accuracy(row, j) for j in range(task)], task > 0
        st["min_loss"], st["in_spike"] = None, False
        return True

    def _stability_gap(self, row: dict[str, Any]) -> list[Event]:
        """``stability_gap``: once after a switch, when some old task's accuracy fell ``gap_threshold`` below its
        value at the switch."""
        st, task = self.state, row.get("task")
        if not st["gap_open"] or task != st["task"]:  # (a row of probes between evaluations has no task)
            return []
        now = [accuracy(row, j) for j in range(len(st["switch_acc"]))]
        fell = [j for j, (a, b) in enumerate(zip(st["switch_acc"], now))
                if a is not None and b is not None and a - b >= self.gap_threshold]
        if not fell:
            return []
        st["gap_open"] = False
        j = max(fell, key=lambda i: st["switch_acc"][i] - now[i])  # the deepest (the first of equals)
        before, after = st["switch_acc"][j], now[j]
        others = f"; {len(fell)} of {task} old tasks fell that far" if len(fell) > 1 else ""
        return [Event("stability_gap", row["step"], row["time"], after, f"task{j}_acc",
                      f"task {j} acc {after:.4g}, {before - after:.4g} below its {before:.4g} at the switch to "
                      f"task {task}{others}")]

    def _once(self, name: str, row: dict[str, Any], key: str, hit: bool, detail: str) -> list[Event]:
        if hit and not self.fired(name):
            return [Event(name, row["step"], row["time"], row.get(key), key, detail)]
        return []

    def _dynamics(self, row: dict[str, Any]) -> list[Event]:
        st, new = self.state, []
        step, t = row["step"], row["time"]
        loss = row.get("train_loss")
        spike = False
        if loss is not None and math.isfinite(loss):
            if (st["min_loss"] is not None and loss > SPIKE_FACTOR * st["min_loss"]
                    and loss - st["min_loss"] >= SPIKE_MIN_RISE and not st["in_spike"]):
                spike = st["in_spike"] = True
                new.append(Event("loss_spike", step, t, loss, "train_loss",
                                 f"train loss {loss:.4g} > {SPIKE_FACTOR:g} x its minimum {st['min_loss']:.4g}"))
            elif st["min_loss"] is not None and loss <= SPIKE_FACTOR * st["min_loss"]:
                st["in_spike"] = False
            st["min_loss"] = loss if st["min_loss"] is None else min(st["min_loss"], loss)
        norm = row.get("weights/last_layer")
        if norm is not None:
            grew = st["last_norm"] is not None and norm >= (1 + SLINGSHOT_NORM_GROWTH) * st["last_norm"]
            if spike and grew:
                new.append(Event("slingshot", step, t, norm, "weights/last_layer",
                                 f"loss spike while the last layer's norm grew {norm / st['last_norm'] - 1:+.1%}"))
            st["last_norm"] = norm
        entropy = row.get("attention_entropy/min")
        if entropy is not None:
            st["entropy0"] = entropy if st["entropy0"] is None else st["entropy0"]
            new += self._once("entropy_collapse", row, "attention_entropy/min",
                              entropy < ENTROPY_COLLAPSE_FRACTION * st["entropy0"],
                              f"min head entropy {entropy:.3g} < {ENTROPY_COLLAPSE_FRACTION:g} x initial "
                              f"{st['entropy0']:.3g} nats")
        ratio = row.get("hessian/eos_ratio")
        if ratio is not None:
            new += self._once("edge_of_stability", row, "hessian/eos_ratio", ratio >= EOS_RATIO,
                              f"sharpness x lr / 2 = {ratio:.3g} >= {EOS_RATIO:g}")
        fraction = row.get("softmax_collapse/fraction")
        if fraction is not None:
            new += self._once("softmax_collapse", row, "softmax_collapse/fraction",
                              fraction >= SOFTMAX_COLLAPSE_FRACTION,
                              f"{fraction:.1%} of the probe batch has a one-hot softmax")
        distance = row.get("ntk/distance_from_init")
        if distance is not None:
            new += self._once("lazy_to_rich", row, "ntk/distance_from_init", distance >= LAZY_RICH_DISTANCE,
                              f"NTK distance from initialisation {distance:.3g} >= {LAZY_RICH_DISTANCE:g}")
        return new

    def _robust(self, row: dict[str, Any], generalized: bool) -> list[Event]:
        """``robust``: once, at a row at or after ``generalized`` whose adversarial accuracy at the largest ε it
        holds is at least ``ROBUST_FRACTION`` of its clean accuracy."""
        if not generalized or self.fired("robust"):
            return []
        clean = row.get("robustness/clean_acc")
        radii = {}
        for key, value in row.items():
            if key.startswith(ROBUST_PREFIX) and value is not None:
                try:
                    eps = float(key[len(ROBUST_PREFIX):])
                except ValueError:
                    continue  # not a radius: some other key with this prefix
                if math.isfinite(eps):
                    radii[eps] = key
        if clean is None or not math.isfinite(clean) or clean <= 0 or not radii:
            return []
        eps = max(radii)
        key = radii[eps]
        adv = row[key]
        if not (math.isfinite(adv) and adv >= ROBUST_FRACTION * clean):
            return []
        return [Event("robust", row["step"], row["time"], adv, key,
                      f"adv acc {adv:.4g} at eps {eps:g} >= {ROBUST_FRACTION:g} x clean {clean:.4g}")]

    def summary(self) -> dict[str, Any]:
        """The ``events`` entry of ``summary.json`` (:func:`trainlab.rundir.summary.from_events`)."""
        return from_events([e.to_dict() for e in self.events], REPEATING)


def check_state(state: Any) -> dict[str, Any]:
    """The detectors' state as a checkpoint holds it; a ValueError naming the entry when it is not a mapping or
    an entry has the wrong type (a resumed run would fail at its next evaluation otherwise)."""
    if not isinstance(state, dict):
        raise ValueError(f"is {type(state).__name__}, not a mapping")
    for name, kinds in _STATE_FIELDS.items():
        if name in state and not _is_a(state[name], kinds):
            raise ValueError(f"has {name!r} of type {type(state[name]).__name__}")
    bad = next((a for a in state.get("switch_acc", []) if not _is_a(a, (int, float, None))), None)
    if bad is not None:
        raise ValueError(f"has a 'switch_acc' entry of type {type(bad).__name__}")
    return state
