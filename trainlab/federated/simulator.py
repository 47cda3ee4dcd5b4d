"""The federation on a simulated clock: :class:`Simulator`, what the training loop calls once per server update.

A run with ``fed.strategy`` set trains the server's weights: each optimizer step of the run is one *server update*
(``steps`` counts them), whose gradient is the strategy's aggregate of client deltas
(:mod:`~trainlab.federated.strategies`). Between two updates the simulator plays the clients:

- ``dispatch(client, Q)``: the client gets the server's weights now and Q local steps; its local work is computed
  at once (in this process, or as a Ray task: ``fed.backend=ray``) and its *arrival* is put on the event queue at
  ``now + Q x step_time[client]`` simulated seconds (:mod:`~trainlab.federated.clock`). With probability
  ``fed.dropout`` the client drops out: nothing is computed and the server learns it at that time.
- ``next_arrival()``: the clock jumps to the earliest arrival, which the strategy then weighs.

Simulated time, not the machine's, orders everything, so a run's result does not depend on load, on the backend,
or on how many clients there are at once; only the clients in flight hold a delta (one flat vector each), so a
thousand clients fit in memory (the data stay one tensor, indexed by each client's partition).

Each dispatch samples its batches from its own seed (run seed, client, the client's dispatch count): the same
config gives the same run whatever executes the clients. The checkpointed state (:meth:`Simulator.state_dict`) is
the clock, the queue, the flights with their deltas, the clients' counters and rule states, the strategy's state
and the sampling generator's state; a resumed run continues bit for bit.

Bytes: each dispatch sends the parameters down (4 bytes a float32 value), each arrival sends a delta of the same
size up; dropped clients send nothing up. Buffers (BatchNorm statistics) are the server's and are not sent.
"""

from __future__ import annotations

import bisect
import copy
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from trainlab.federated.client import ClientJob, ClientResult, LocalSpec, flat_params, local_update
from trainlab.federated.clock import EventQueue, step_times
from trainlab.federated.partition import partition
from trainlab.federated.strategies import STRATEGIES, Strategy


@dataclass
class Arrival:
    """A client's return to the server (or the news that it dropped out)."""

    client: int
    ticket: int
    time: float  # simulated seconds at arrival
    sent_time: float  # when it was dispatched
    steps: int  # its local steps
    expected: float  # its expected work time, steps x its step time (tau_i)
    version: int  # the server update its weights came from
    staleness: int  # server updates between dispatch and arrival
    dropped: bool
    delta: Tensor | None = None  # x_sent - x_returned, flat float32 (None when dropped)
    loss: float = math.nan  # its mean local training loss

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Arrival:
        return cls(**state)


@dataclass
class Flight:
    """A dispatched client's work, until it arrives."""

    client: int
    steps: int
    sent_time: float
    expected: float
    version: int
    dropped: bool
    result: Any = None  # ClientResult, or a Ray ObjectRef of one (resolved at arrival or at a checkpoint)


def local_spec(opts: Any) -> LocalSpec:
    """The clients' local work as the ``fed`` section configures it."""
    return LocalSpec(rule=opts.client, optimizer=opts.local_optimizer, lr=opts.local_lr, batch_size=opts.local_batch,
                     prox_mu=opts.prox_mu, fedspeed_rho=opts.fedspeed_rho, fedspeed_lambda=opts.fedspeed_lambda,
                     fedspeed_alpha=opts.fedspeed_alpha)


class ClientLoss:
    """The clients' training loss: the mean of the workload's per-example loss (picklable, for Ray tasks)."""

    def __init__(self, primary: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.primary = primary

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return self.primary(model(x), y).float().mean()


class Simulator:
    def __init__(self, opts: Any, model: nn.Module, x: Tensor, y: Tensor, labels: Tensor | None,
                 loss: ClientLoss, *, seed: int, backend: Any = None) -> None:
        self.opts, self.model, self.x, self.y, self.loss, self.seed = opts, model, x, y, loss, seed
        self.clients = opts.clients
        self.parts = partition(opts.partition, len(x), opts.clients, labels, alpha=opts.alpha,
                               shards_per_client=opts.shards_per_client, seed=seed, min_size=1)
        sizes = [len(part) for part in self.parts]
        total = sum(sizes)
        self.p = [n / total for n in sizes] if opts.weighting == "examples" else [1 / self.clients] * self.clients
        self.step_time = step_times(opts.speeds, opts.clients, spread=opts.speed_spread, trace=opts.speed_trace,
                                    seed=seed).tolist()
        self.strategy: Strategy = STRATEGIES.get(opts.strategy).factory(self)
        participation = opts.participation if opts.participation is not None else self.strategy.default_participation
        self.slots = max(1, round(participation * self.clients))
        typical = sorted(t * opts.local_steps for t in self.step_time)[len(self.step_time) // 2]
        self.window = opts.window if opts.window is not None else typical  # FedFix's dt: the median client's time
        self.spec = local_spec(opts)
        self.worker = copy.deepcopy(model)  # the one model every client trains on, in turn
        self.backend = backend
        self.param_bytes = sum(q.numel() for q in model.parameters()) * 4
        # the state that changes (checkpointed)
        self.now = 0.0
        self.version = 0
        self.queue = EventQueue()
        self.flights: dict[int, Flight] = {}
        self.next_ticket = 0
        self.dispatches = [0] * self.clients
        self.bytes_down = [0] * self.clients
        self.bytes_up = [0] * self.clients
        self.rule_state: dict[int, Tensor] = {}
        self.arrived = self.dropped = 0
        self.staleness_sum = 0
        self.rng = torch.Generator().manual_seed(seed + 7919)  # whom to sample, who drops out
        self._idle = list(range(self.clients))  # sorted; kept with the flights (O(log N) to find, not O(N) a draw)
        self._busy: set[int] = set()
        self._after: list[Callable[[], Any]] = []

    # --- what strategies use ------------------------------------------------------------------------------------
    @property
    def busy(self) -> frozenset[int]:
        """The clients in flight."""
        return frozenset(self._busy)

    def expected_time(self, client: int, steps: int) -> float:
        return steps * self.step_time[client]

    def sample(self, k: int) -> list[int]:
        """``k`` distinct clients drawn uniformly."""
        return torch.randperm(self.clients, generator=self.rng)[:k].tolist()

    def idle_client(self) -> int:
        """A client not in flight, drawn uniformly (the one that just arrived is idle again)."""
        return self._idle[int(torch.randint(len(self._idle), (1,), generator=self.rng))]

    def dispatch(self, client: int, steps: int) -> None:
        """Send ``client`` the server's weights and ``steps`` local steps; its arrival goes on the queue."""
        if client in self._busy:
            raise RuntimeError(f"client {client} is already training")  # a strategy's bug, not the user's
        self._busy.add(client)
        del self._idle[bisect.bisect_left(self._idle, client)]
        dropped = bool(torch.rand((), generator=self.rng) < self.opts.dropout)
        expected = self.expected_time(client, steps)
        flight = Flight(client, steps, self.now, expected, self.version, dropped)
        self.bytes_down[client] += self.param_bytes
        if not dropped:
            job = ClientJob(client=client, weights=flat_params(self.model).detach().float().clone(), steps=steps,
                            seed=self._job_seed(client), rule_state=self.rule_state.get(client))
            flight.result = self._run(job)
        self.dispatches[client] += 1
        ticket = self.next_ticket
        self.next_ticket += 1
        self.flights[ticket] = flight
        self.queue.push(self.now + expected, "arrival", client, ticket)

    def next_arrival_time(self) -> float:
        event = self.queue.peek()
        return event.time if event is not None else math.inf

    def next_arrival(self) -> Arrival:
        """Advance the clock to the earliest arrival and take it."""
        event = self.queue.pop()
        self.now = max(self.now, event.time)
        flight = self.flights.pop(event.ticket)
        self._busy.discard(flight.client)
        bisect.insort(self._idle, flight.client)
        arrival = Arrival(flight.client, event.ticket, event.time, flight.sent_time, flight.steps, flight.expected,
                          flight.version, self.version - flight.version, flight.dropped)
        if flight.dropped:
            self.dropped += 1
            return arrival
        result = self._resolve(flight.result)
        arrival.delta, arrival.loss = result.delta, result.loss
        if result.rule_state is not None:
            self.rule_state[flight.client] = result.rule_state
        self.bytes_up[flight.client] += self.param_bytes
        return arrival

    def advance_to(self, time: float) -> None:
        self.now = max(self.now, time)

    def after_update(self, work: Callable[[], Any]) -> None:
        """Run ``work`` (dispatches) once the server update being prepared has been applied."""
        self._after.append(work)

    # --- what the training loop calls ---------------------------------------------------------------------------
    def gradient_(self, model: nn.Module) -> float:
        """Play the clients to the next server update and put its aggregate into the parameters' ``.grad``.
        Returns the mean local training loss of the aggregated arrivals (weighted as aggregated)."""
        weighted = self.strategy.next_update()
        total = torch.zeros_like(weighted[0][0].delta)  # type: ignore[arg-type]
        for arrival, weight in weighted:
            total.add_(arrival.delta, alpha=weight)  # type: ignore[arg-type]
            self.staleness_sum += arrival.staleness
        self.arrived += len(weighted)
        offset = 0
        for q in model.parameters():
            n = q.numel()
            q.grad = total[offset:offset + n].view_as(q).to(q.dtype).clone()
            offset += n
        total_weight = math.fsum(w for _, w in weighted)
        if total_weight > 0:  # the arrivals' local losses, weighted as their deltas were
            return math.fsum(a.loss * w for a, w in weighted) / total_weight
        return math.fsum(a.loss for a, _ in weighted) / len(weighted)

    def updated(self) -> None:
        """The server update was applied: count it and run the dispatches that wait for the new weights."""
        self.version += 1
        work, self._after = self._after, []
        for item in work:
            item()

    def columns(self) -> dict[str, Any]:
        """The federation's columns of a metrics row."""
        return {"sim_time": round(self.now, 6), "bytes_up": sum(self.bytes_up), "bytes_down": sum(self.bytes_down),
                "client_updates": self.arrived, "dropped": self.dropped,
                "staleness_mean": self.staleness_sum / self.arrived if self.arrived else 0.0}

    def describe(self) -> str:
        """The start line of a federated run: what a step is."""
        o = self.opts
        split = f"{o.partition} alpha={o.alpha:g}" if o.partition in ("dirichlet", "quantity") else o.partition
        steps = f"{o.q_min}-{o.q_max}" if o.strategy == "fedcompass" else str(o.local_steps)
        return (f"fed.strategy={o.strategy}: {self.clients} clients ({split}), {self.slots} training at once, "
                f"{steps} local steps of {o.local_optimizer} lr {o.local_lr:g} batch {o.local_batch} "
                f"({o.client}); each step is one server update on the aggregated deltas")

    def summary(self) -> dict[str, Any]:
        """What summary.json says of the federation."""
        up, down = self.bytes_up, self.bytes_down
        return {"strategy": self.opts.strategy, "clients": self.clients, "slots": self.slots,
                "sim_time": self.now, "server_updates": self.version, "client_updates": self.arrived,
                "dropped": self.dropped, "bytes_up": sum(up), "bytes_down": sum(down),
                "bytes_up_per_client_max": max(up), "bytes_down_per_client_max": max(down),
                "window": self.window if self.opts.strategy == "fedfix" else None,
                "staleness_mean": self.staleness_sum / self.arrived if self.arrived else 0.0}

    # --- execution ----------------------------------------------------------------------------------------------
    def _job_seed(self, client: int) -> int:
        return ((self.seed * 1_000_003 + client) * 1_000_033 + self.dispatches[client]) % 2**63

    def _run(self, job: ClientJob) -> Any:
        part = self.parts[job.client]
        if self.backend is not None:
            return self.backend.submit(job, part)
        return local_update(job, self.spec, self.worker, self.loss, self.x[part], self.y[part])

    def _resolve(self, result: Any) -> ClientResult:
        if self.backend is not None and not isinstance(result, ClientResult):
            return self.backend.get(result)
        return result

    # --- checkpoint ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        flights = {}
        for ticket, f in self.flights.items():
            result = self._resolve(f.result) if f.result is not None else None
            f.result = result
            flights[str(ticket)] = {"client": f.client, "steps": f.steps, "sent_time": f.sent_time,
                                    "expected": f.expected, "version": f.version, "dropped": f.dropped,
                                    "result": None if result is None else {
                                        "delta": result.delta, "rule_state": result.rule_state,
                                        "loss": result.loss, "examples": result.examples}}
        return {"now": self.now, "version": self.version, "queue": self.queue.state_dict(), "flights": flights,
                "next_ticket": self.next_ticket, "dispatches": list(self.dispatches),
                "bytes_down": list(self.bytes_down), "bytes_up": list(self.bytes_up),
                "rule_state": {str(k): v for k, v in self.rule_state.items()}, "arrived": self.arrived,
                "dropped": self.dropped, "staleness_sum": self.staleness_sum, "rng": self.rng.get_state(),
                "strategy": self.strategy.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.now, self.version = float(state["now"]), int(state["version"])
        self.queue.load_state_dict(state["queue"])
        self.flights = {}
        for ticket, f in state["flights"].items():
            r = f["result"]
            result = None if r is None else ClientResult(client=int(f["client"]), delta=r["delta"],
                                                         rule_state=r["rule_state"], loss=float(r["loss"]),
                                                         examples=int(r["examples"]))
            self.flights[int(ticket)] = Flight(int(f["client"]), int(f["steps"]), float(f["sent_time"]),
                                               float(f["expected"]), int(f["version"]), bool(f["dropped"]), result)
        self._busy = {f.client for f in self.flights.values()}
        self._idle = [c for c in range(self.clients) if c not in self._busy]
        self.next_ticket = int(state["next_ticket"])
        self.dispatches = [int(v) for v in state["dispatches"]]
        self.bytes_down = [int(v) for v in state["bytes_down"]]
        self.bytes_up = [int(v) for v in state["bytes_up"]]
        self.rule_state = {int(k): v for k, v in state["rule_state"].items()}
        self.arrived, self.dropped = int(state["arrived"]), int(state["dropped"])
        self.staleness_sum = int(state["staleness_sum"])
        self.rng.set_state(state["rng"])
        self.strategy.load_state_dict(state["strategy"])
