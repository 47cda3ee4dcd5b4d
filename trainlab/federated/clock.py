"""The federated simulator's clock: how fast each client is, and the server's pending events in time order.

Simulated time, not wall time: client ``k`` takes ``step_times(...)[k]`` simulated seconds per local step, so a
run's timeline (who arrives when, how stale each update is) depends only on the configuration and the seed, never
on the machine or its load. The speed models (:data:`SPEEDS`):

- ``constant``: every client 1.0 s/step (no system heterogeneity: asynchrony changes nothing).
- ``uniform``: ``U[1, 1 + spread]`` -- the slowest client at most ``1 + spread`` times the fastest.
- ``lognormal``: ``exp(spread * N(0, 1))``, median 1 -- heavy-tailed device speeds with stragglers, the usual
  stand-in for the measured device traces that FedScale (Lai et al. 2022) replays.
- ``trace``: measured seconds per step read from a file (one number per line, ``#`` comments; or a JSON list),
  cycled over the clients (client ``k`` gets value ``k mod len``).

Random speeds come from a private ``torch.Generator`` seeded with ``seed`` (never the global RNG), and client ``k``'s
speed does not depend on how many clients there are (the first ``N`` of ``N + M`` clients have the speeds of ``N``).

:class:`EventQueue` orders the server's pending events by simulated time; equal times by push order (a sequence
number), never by client id or kind, so a tie is resolved the same way whatever the ids, and a resumed run pops
exactly what the uninterrupted one would (:meth:`EventQueue.state_dict` holds the sequence counter too).
"""

from __future__ import annotations

import heapq
import json
import math
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from trainlab.errors import ConfigError, DataError, quote_path, shorten
from trainlab.registry import Registry

__all__ = ["SPEEDS", "step_times", "read_trace", "Event", "EventQueue"]

SPEEDS: Registry[Callable[..., torch.Tensor]] = Registry("client speed model")


# ---------------------------------------------------------------------------------------------------- speeds


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed % 2**63)  # manual_seed refuses values >= 2**64


@SPEEDS.register("constant", summary="every client 1 s per step (no system heterogeneity)")
def constant(clients: int, *, spread: float = 1.0, trace: str | None = None, seed: int = 0) -> torch.Tensor:
    return torch.ones(clients, dtype=torch.float64)


@SPEEDS.register("uniform", summary="s/step ~ U[1, 1 + spread] (default spread 1: the slowest at most 2x)")
def uniform(clients: int, *, spread: float = 1.0, trace: str | None = None, seed: int = 0) -> torch.Tensor:
    return 1.0 + spread * torch.rand(clients, generator=_generator(seed), dtype=torch.float64)


@SPEEDS.register("lognormal", summary="s/step ~ exp(spread * N(0,1)), median 1: heavy-tailed, with stragglers "
                                      "(default spread 1)",
                 paper="a stand-in for the device traces of Lai et al. 2022, FedScale: Benchmarking Model and "
                       "System Performance of Federated Learning at Scale")
def lognormal(clients: int, *, spread: float = 1.0, trace: str | None = None, seed: int = 0) -> torch.Tensor:
    # Box-Muller from uniform pairs rather than torch.randn: randn's values depend on how many are drawn (it
    # switches algorithm at 16), and client k should keep its speed when the run has more clients
    u = torch.rand(clients, 2, generator=_generator(seed), dtype=torch.float64)
    normal = torch.sqrt(-2.0 * torch.log1p(-u[:, 0])) * torch.cos(2.0 * math.pi * u[:, 1])  # 1 - u in (0, 1]
    return torch.exp(spread * normal)


@SPEEDS.register("trace", summary="s/step read from a file (one per line, # comments, or a JSON list), cycled "
                                  "over the clients",
                 paper="measured device traces, as replayed by Lai et al. 2022, FedScale")
def from_trace(clients: int, *, spread: float = 1.0, trace: str | None = None, seed: int = 0) -> torch.Tensor:
    if trace is None:
        raise ConfigError("", "client speed 'trace' needs a trace file (trace=PATH: one positive number per line, "
                              "or a JSON list)")
    values = torch.tensor(read_trace(trace), dtype=torch.float64)
    return values[torch.arange(clients) % len(values)]


def _bad_trace(path: str | Path, where: str, what: str) -> DataError:
    return DataError(f"client speed trace {quote_path(path)}{where}: {what}; expected positive numbers of seconds "
                     f"per step, one per line ('#' comments allowed) or a JSON list")


def _positive(path: str | Path, where: str, value: object) -> float:
    """``value`` as a finite float > 0, else the file's one-line error naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad_trace(path, where, f"{shorten(value, 40)} is not a number")
    number = float(value)
    if not (math.isfinite(number) and number > 0):
        raise _bad_trace(path, where, f"{shorten(value, 40)} is not a positive finite number")
    return number


def read_trace(path: str | Path) -> list[float]:
    """The seconds per step in a trace file: a JSON list of numbers (the text starts with ``[``), or one number
    per line with ``#`` starting a comment and blank lines skipped. Refused (a one-line
    :class:`~trainlab.errors.DataError`, a ``ValueError``, naming the file and line) when missing, unreadable,
    empty, or a value is not a positive finite number."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _bad_trace(path, "", "no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise _bad_trace(path, "", f"cannot be read as text ({type(err).__name__})") from None
    values: list[float] = []
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise _bad_trace(path, f" line {err.lineno}", f"invalid JSON ({err.msg})") from None
        if not isinstance(items, list):
            raise _bad_trace(path, "", "the JSON is not a list")
        values = [_positive(path, f" item {i}", item) for i, item in enumerate(items)]
    else:
        for lineno, line in enumerate(text.splitlines(), start=1):
            field = line.split("#", 1)[0].strip()
            if not field:
                continue
            try:
                number: object = float(field)
            except ValueError:
                number = field
            values.append(_positive(path, f" line {lineno}", number))
    if not values:
        raise _bad_trace(path, "", "no values")
    return values


def step_times(kind: str, clients: int, *, spread: float = 1.0, trace: str | None = None,
               seed: int = 0) -> torch.Tensor:
    """Simulated seconds per local step of each client: float64 ``(clients,)``, all > 0.

    ``kind`` names a :data:`SPEEDS` model; ``spread`` (>= 0, default 1.0) scales ``uniform`` and ``lognormal``
    (``spread=0`` gives 1.0 everywhere); ``trace`` is the file of ``trace`` (and refused with any other kind);
    ``seed`` (default 0) seeds the random models. Same arguments => identical times.
    """
    if not isinstance(kind, str) or kind.lower() not in SPEEDS:
        raise ConfigError("", f"unknown client speed {shorten(kind)}; allowed: {', '.join(SPEEDS.names())}")
    if isinstance(clients, bool) or not isinstance(clients, int) or clients < 1:
        raise ConfigError("", f"client speed: clients must be an integer >= 1, got {shorten(clients)}")
    if isinstance(spread, bool) or not isinstance(spread, (int, float)) or not (math.isfinite(spread) and spread >= 0):
        raise ConfigError("", f"client speed spread must be a finite number >= 0, got {shorten(spread)}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError("", f"client speed seed must be an integer, got {shorten(seed)}")
    if trace is not None and kind.lower() != "trace":
        raise ConfigError("", f"a speed trace file is read only by client speed 'trace', not {kind!r}; "
                              f"drop the trace or use 'trace'")
    return SPEEDS.get(kind).factory(clients, spread=float(spread), trace=trace, seed=seed)


# ---------------------------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Event:
    """One pending server event: at simulated ``time``, ``kind`` (e.g. an arrival) for ``client`` (any int: a
    server timer may use -1), carrying ``ticket`` (what the caller needs to find the event's payload). ``seq`` is
    the queue's push counter, the tie-break."""

    time: float
    seq: int
    kind: str
    client: int
    ticket: int


_Item = tuple[float, int, str, int, int]  # (time, seq, kind, client, ticket): heap order is time, then seq
_STATE_VERSION = 1


def _time(value: object) -> float:
    """A finite float >= 0 (from an int, float, numpy or 0-d torch number), else ValueError."""
    if isinstance(value, (bool, str, bytes)):
        raise ValueError(f"event time must be a finite number >= 0, got {shorten(value)}")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"event time must be a finite number >= 0, got {shorten(value)}") from None
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"event time must be a finite number >= 0, got {number!r}")
    return number


def _int(name: str, value: object) -> int:
    if isinstance(value, bool):
        raise ValueError(f"event {name} must be an integer, got {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"event {name} must be an integer, got {shorten(value)}") from None


class EventQueue:
    """The server's pending events, earliest simulated time first; equal times in push order.

    A binary heap of ``(time, seq, kind, client, ticket)`` tuples: ``seq`` is unique and increasing, so the
    comparison never reaches ``kind`` or ``client`` -- ties do not depend on ids, and nothing but numbers is
    compared. :meth:`state_dict` / :meth:`load_state_dict` round-trip the heap and the counter exactly (plain
    Python numbers, strings and lists, for ``torch.load(weights_only=True)``).
    """

    def __init__(self) -> None:
        self._heap: list[_Item] = []
        self._next_seq = 0

    def push(self, time: float, kind: str, client: int, ticket: int) -> None:
        """Schedule ``kind`` for ``client`` at simulated ``time`` (finite, >= 0; NaN, inf or negative refused)."""
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"event kind must be a non-empty string, got {shorten(kind)}")
        item = (_time(time), self._next_seq, kind, _int("client", client), _int("ticket", ticket))
        heapq.heappush(self._heap, item)
        self._next_seq += 1

    def pop(self) -> Event:
        """Remove and return the earliest event (IndexError when empty)."""
        if not self._heap:
            raise IndexError("pop from an empty EventQueue")
        return Event(*heapq.heappop(self._heap))

    def peek(self) -> Event | None:
        """The earliest event without removing it, or None when empty."""
        return Event(*self._heap[0]) if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)

    def __repr__(self) -> str:
        return f"EventQueue({len(self._heap)} pending, next seq {self._next_seq})"

    def state_dict(self) -> dict[str, Any]:
        """``{"version": 1, "next_seq": int, "events": [[time, seq, kind, client, ticket], ...]}``, events in pop
        order: plain Python values only."""
        return {"version": _STATE_VERSION, "next_seq": self._next_seq,
                "events": [list(item) for item in sorted(self._heap)]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the queue with ``state`` (from :meth:`state_dict`). Everything is checked before anything
        changes: a malformed state is a one-line ValueError and leaves the queue as it was."""
        heap, next_seq = _parse_state(state)
        heapq.heapify(heap)
        self._heap, self._next_seq = heap, next_seq


def _parse_state(state: object) -> tuple[list[_Item], int]:
    def bad(what: str) -> ValueError:
        return ValueError(f"malformed EventQueue state: {what}; expected the dict of EventQueue.state_dict()")

    if not isinstance(state, dict) or set(state) != {"version", "events", "next_seq"}:
        keys = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
        raise bad(f"got {shorten(keys)}, not the keys ['events', 'next_seq', 'version']")
    if type(state["version"]) is not int or state["version"] != _STATE_VERSION:
        raise bad(f"version {shorten(state['version'])} (this trainlab reads version {_STATE_VERSION})")
    next_seq = state["next_seq"]
    if type(next_seq) is not int or next_seq < 0:
        raise bad(f"next_seq {shorten(next_seq)} is not an integer >= 0")
    events = state["events"]
    if not isinstance(events, (list, tuple)):
        raise bad(f"events is a {type(events).__name__}, not a list")
    heap: list[_Item] = []
    seen: set[int] = set()
    for i, entry in enumerate(events):
        if not isinstance(entry, (list, tuple)) or len(entry) != 5:
            raise bad(f"event {i} is {shorten(entry, 60)}, not [time, seq, kind, client, ticket]")
        time, seq, kind, client, ticket = entry
        # exact types: a checkpoint holds what state_dict wrote (float time, int rest); anything else is damage
        if type(time) is not float or not (math.isfinite(time) and time >= 0):
            raise bad(f"event {i} time {shorten(time)} is not a finite float >= 0")
        if type(seq) is not int or not 0 <= seq < next_seq or seq in seen:
            raise bad(f"event {i} seq {shorten(seq)} is not a unique integer in [0, next_seq={next_seq})")
        if type(kind) is not str or not kind:
            raise bad(f"event {i} kind {shorten(kind)} is not a non-empty string")
        if type(client) is not int or type(ticket) is not int:
            raise bad(f"event {i} client/ticket {shorten(client)}/{shorten(ticket)} are not integers")
        seen.add(seq)
        heap.append((time, seq, kind, client, ticket))
    return heap, next_seq
