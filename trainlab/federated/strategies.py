"""Server strategies (``fed.strategy``): whom the server dispatches, and when and how it aggregates.

Every strategy is a case of Fraboni et al.'s general update (2023, "A General Theory for Federated Optimization with
Asynchronous and Heterogeneous Clients Updates"): at server update n,

    g_n = sum_i d_i(n) * delta_i,        delta_i = x_sent_i - x_returned_i   (what client i uploads)

and the run's optimizer takes ``g_n`` as the gradient of the server weights (``optimizer=sgd lr=1``: x <- x - g_n).
A strategy only chooses the arrivals of update n and their weights d_i(n); :meth:`Strategy.next_update` runs the
simulated clock (:class:`~trainlab.federated.simulator.Simulator`) until it has them.

p_i is client i's target weight (``fed.weighting``: its share of the examples, or 1/N); tau_i its expected time for
the local work it was given (simulated seconds); the staleness s of an arrival is the number of server updates
since its weights were sent, and ``fed.staleness`` maps it to a factor (1; (1+s)^-a; hinge, Xie et al. 2019).

- ``fedavg`` (McMahan et al. 2017): rounds; each samples ``participation`` x N clients, waits for all of them, and
  averages the ones that returned with weights p_i / sum p (a client that drops out is known lost at the time it
  would have returned). A round in which every client dropped out is repeated (no server update).
- ``async_fedavg`` (asynchronous FedAvg as in Fraboni et al.): ``participation`` x N clients always training; every
  arrival is one update with d_i = p_i / pi_i x stale(s), pi_i the chance that an arrival is client i: with every
  client training (participation 1) pi_i = (1/tau_i) / sum_j (1/tau_j) (Fraboni's weight (sum_j 1/tau_j) tau_i p_i);
  with fewer, a finished slot draws a client uniformly, so pi_i = 1/N (the unbiased weight for participation << 1;
  in between it is an approximation). A returning client's slot goes to a uniformly drawn idle client.
- ``fedbuff`` (Nguyen et al. 2022, FLSim): the same slots; the server buffers ``fed.buffer`` = K arrivals and
  applies d_i = stale(s_i) / K (staleness polynomial with a = 0.5 by default, as FLSim). A slot freed by an
  arrival restarts once every arrival of that simulated instant is in, after the update if one fills the buffer
  (so K = N clients arriving together is a FedAvg round of everyone).
- ``fedfix`` (Fraboni et al.'s FedFix-dt): updates at the simulated times n x ``fed.window``; those finished in the
  window wait for it and are aggregated with d_i = ceil(tau_i / window) p_i; slower ones keep training on the
  weights they had. A window with no arrival is no update (the clock moves on).
- ``fedcompass`` (Li et al. 2024, "FedCompass", APPFL): a computing-power-aware scheduler. Each client's speed
  (simulated s per local step) is estimated from its arrivals (s <- 0.1 s + 0.9 elapsed/Q); a returning client is
  given the largest Q in [q_min, q_max] that makes it arrive with an open group (Q = floor((T_g - now)/s)); if
  none fits it opens a new group, sized to arrive when the latest open group's fastest member could finish q_max
  more steps (clamped to [q_min, q_max]). A group is aggregated when all its members arrived or at its deadline
  (start + 1.5 x the expected time, ``fed.compass_lambda``), together with the general buffer of late arrivals,
  d_i = stale(s_i) / N. The first dispatch gives every client q_max steps and no group (no speed is known yet);
  those arrivals go to the buffer and start the groups. Our reading of the reference's code; the paper's pseudocode
  may differ in details.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from trainlab.registry import Registry

if TYPE_CHECKING:
    from trainlab.federated.simulator import Arrival, Simulator

Weighted = list[tuple["Arrival", float]]


def stale_factor(kind: str, staleness: int, a: float, b: float) -> float:
    """The staleness factor of an arrival ``staleness`` server updates late (Xie et al. 2019's functions)."""
    if kind == "constant":
        return 1.0
    if kind == "polynomial":  # (1+s)^-a: the negative exponent (APPFL's code writes +a; families.md's pitfall)
        return float((1.0 + staleness) ** -a)
    if kind == "hinge":
        return 1.0 if staleness <= b else 1.0 / (a * (staleness - b) + 1.0)
    raise ValueError(f"unknown staleness function {kind!r} (constant, polynomial, hinge)")


class Strategy:
    """One server strategy; :meth:`next_update` advances the simulation to the next server update."""

    name: ClassVar[str]
    default_participation: ClassVar[float] = 0.1

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.started = False

    def next_update(self) -> Weighted:
        """The arrivals of the next server update and their weights d_i (at least one arrival)."""
        raise NotImplementedError

    def stale(self, arrival: Arrival) -> float:
        o = self.sim.opts
        return stale_factor(o.stale_kind(), arrival.staleness, o.staleness_a, o.staleness_b)

    def refill(self, slots: int) -> None:
        """Give ``slots`` free slots to clients drawn uniformly from the idle ones, with fed.local_steps each."""
        for _ in range(slots):
            self.sim.dispatch(self.sim.idle_client(), self.sim.opts.local_steps)

    def start_slots(self, steps: int) -> None:
        """Dispatch the first ``participation`` x N clients (distinct, drawn uniformly), once per run."""
        if not self.started:
            for client in self.sim.sample(self.sim.slots):
                self.sim.dispatch(client, steps)
            self.started = True

    def state_dict(self) -> dict[str, Any]:
        return {"started": self.started}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.started = bool(state.get("started", False))


STRATEGIES: Registry[type[Strategy]] = Registry("federated strategy")


def _register(name: str, summary: str, paper: str):  # type: ignore[no-untyped-def]
    def wrap(cls: type[Strategy]) -> type[Strategy]:
        cls.name = name
        STRATEGIES.add(name, cls, summary=summary, paper=paper)
        return cls
    return wrap


@_register("fedavg", "synchronous rounds of participation x N clients, averaged by their examples",
           "McMahan et al. 2017, Communication-Efficient Learning of Deep Networks from Decentralized Data")
class FedAvg(Strategy):
    def next_update(self) -> Weighted:
        sim = self.sim
        while True:
            cohort = sim.sample(sim.slots)
            for client in cohort:
                sim.dispatch(client, sim.opts.local_steps)
            arrivals = [sim.next_arrival() for _ in cohort]
            got = [a for a in arrivals if not a.dropped]
            if got:
                total = sum(sim.p[a.client] for a in got)
                return [(a, sim.p[a.client] / total) for a in got]


@_register("async_fedavg", "asynchronous: every arrival updates the server, weighted to stay unbiased",
           "Fraboni et al. 2023, A General Theory for Federated Optimization with Asynchronous and Heterogeneous "
           "Clients Updates")
class AsyncFedAvg(Strategy):
    default_participation = 1.0

    def next_update(self) -> Weighted:
        sim = self.sim
        self.start_slots(sim.opts.local_steps)
        while True:
            arrival = sim.next_arrival()
            if arrival.dropped:  # its slot goes on at once, on the weights there are
                self.refill(1)
                continue
            sim.after_update(lambda: self.refill(1))  # on the new weights
            return [(arrival, sim.p[arrival.client] / self.arrival_chance(arrival.client) * self.stale(arrival))]

    def arrival_chance(self, client: int) -> float:
        sim = self.sim
        if sim.slots < sim.clients:
            return 1.0 / sim.clients
        if not hasattr(self, "_rates"):  # the clients' arrival rates are fixed: computed once, not every update
            self._rates = [1.0 / sim.expected_time(c, sim.opts.local_steps) for c in range(sim.clients)]
            self._rate_sum = math.fsum(self._rates)
        return self._rates[client] / self._rate_sum


@_register("fedbuff", "asynchronous with a buffer: the server applies the mean of K staleness-scaled updates",
           "Nguyen et al. 2022, Federated Learning with Buffered Asynchronous Aggregation")
class FedBuff(Strategy):
    def next_update(self) -> Weighted:
        sim = self.sim
        self.start_slots(sim.opts.local_steps)
        buffer: list[Arrival] = []
        free = 0  # slots freed at this simulated instant: refilled once every arrival of the instant is in
        while True:
            arrival = sim.next_arrival()
            free += 1
            if not arrival.dropped:
                buffer.append(arrival)
            if len(buffer) == sim.opts.buffer:  # these slots restart on the weights this update makes
                sim.after_update(lambda: self.refill(free))
                return [(a, self.stale(a) / len(buffer)) for a in buffer]
            if sim.next_arrival_time() > sim.now:
                self.refill(free)
                free = 0


@_register("fedfix", "semi-asynchronous: aggregate every window of simulated time what finished in it",
           "Fraboni et al. 2023, A General Theory for Federated Optimization with Asynchronous and Heterogeneous "
           "Clients Updates (FedFix)")
class FedFix(Strategy):
    default_participation = 1.0

    def next_update(self) -> Weighted:
        sim = self.sim
        window = sim.window
        self.start_slots(sim.opts.local_steps)
        while True:
            tick = (math.floor(sim.now / window + 1e-9) + 1) * window  # the end of the current window
            finished: list[Arrival] = []
            while sim.next_arrival_time() <= tick + 1e-9 * window:  # due at the tick: n*w + tau may be an ulp past it
                finished.append(sim.next_arrival())
            sim.advance_to(tick)
            weighted = [(a, math.ceil(a.expected / window - 1e-9) * sim.p[a.client]) for a in finished if not a.dropped]
            restart = len(finished)  # the finished clients' slots restart at the tick (on the new weights, if any)
            if weighted:
                sim.after_update(lambda: self.refill(restart))
                return weighted
            self.refill(restart)


@dataclass
class Group:
    """A FedCompass group: clients given local steps so that they arrive together at ``expected``."""

    expected: float
    deadline: float
    members: set[int] = field(default_factory=set)  # dispatched for this group, not yet arrived
    arrived: list[int] = field(default_factory=list)  # members that arrived (dropped out or not), in arrival order
    buffer: list[Arrival] = field(default_factory=list)  # its members' on-time arrivals, applied with it


@_register("fedcompass", "semi-asynchronous: local steps sized by each client's speed so that groups arrive together",
           "Li et al. 2024, FedCompass: Efficient Cross-Silo Federated Learning on Heterogeneous Client Devices Using "
           "a Computing Power-Aware Scheduler")
class FedCompass(Strategy):
    default_participation = 1.0

    def __init__(self, sim: Simulator) -> None:
        super().__init__(sim)
        self.speed: dict[int, float] = {}  # client -> estimated simulated seconds per local step
        self.groups: dict[int, Group] = {}
        self.group_of: dict[int, int] = {}  # client -> its group (clients dispatched without one are absent)
        self.next_group = 0
        self.buffer: list[Arrival] = []  # arrivals waiting for the next aggregation (late ones, and the first ones)

    def next_update(self) -> Weighted:
        sim = self.sim
        self.start_slots(sim.opts.q_max)
        while True:
            due = self._earliest_deadline()
            if due is not None and due[0] < sim.next_arrival_time():
                sim.advance_to(due[0])
                weighted = self._aggregate(due[1])
                if weighted:
                    return weighted
                continue
            arrival = sim.next_arrival()
            elapsed = arrival.time - arrival.sent_time
            rate = elapsed / arrival.steps
            old = self.speed.get(arrival.client)
            self.speed[arrival.client] = rate if old is None else 0.1 * old + 0.9 * rate
            gid = self.group_of.pop(arrival.client, None)
            group = self.groups.get(gid) if gid is not None else None
            if group is not None:
                group.members.discard(arrival.client)
                group.arrived.append(arrival.client)
                if not arrival.dropped:  # waits for its own group (another group may update meanwhile)
                    group.buffer.append(arrival)
                if not group.members:
                    weighted = self._aggregate(gid)  # type: ignore[arg-type]
                    if weighted:
                        return weighted
                continue
            if not arrival.dropped:
                self.buffer.append(arrival)
            self._assign(arrival.client)

    def _earliest_deadline(self) -> tuple[float, int] | None:
        if not self.groups:
            return None
        gid = min(self.groups, key=lambda g: (self.groups[g].deadline, g))
        return self.groups[gid].deadline, gid

    def _aggregate(self, gid: int) -> Weighted:
        """Close group ``gid`` (its late members will join the buffer), take the buffer, reassign its clients."""
        sim = self.sim
        group = self.groups.pop(gid)
        for client in group.members:  # late: they arrive later with no group
            self.group_of.pop(client, None)
        taken, self.buffer = self.buffer + group.buffer, []
        for a in taken:  # a member may have waited while another group updated: its staleness is the update's
            a.staleness = sim.version - a.version
        returned = sorted(group.arrived, key=lambda c: (self.speed[c], c))
        if not taken:  # nothing to apply: the group's clients start again now
            self._assign_all(returned)
            return []
        sim.after_update(lambda: self._assign_all(returned))  # fastest first, on the new weights
        return [(a, self.stale(a) / sim.clients) for a in taken]

    def _assign_all(self, clients: list[int]) -> None:
        for client in clients:
            self._assign(client)

    def _assign(self, client: int) -> None:
        sim, o = self.sim, self.sim.opts
        s = self.speed[client]
        now = sim.now
        best: tuple[int, int] | None = None
        for gid, group in self.groups.items():
            q = math.floor((group.expected - now) / s)
            if o.q_min <= q <= o.q_max and (best is None or q > best[0]):
                best = (q, gid)
        if best is not None:
            q, gid = best
            self.groups[gid].members.add(client)
        else:
            candidates = [math.floor((g.deadline + min(self.speed[m] for m in g.members) * o.q_max - now) / s)
                          for g in self.groups.values() if g.members]
            fits = [q for q in candidates if q <= o.q_max]
            q = max(o.q_min, max(fits)) if fits else o.q_max
            gid = self.next_group
            self.next_group += 1
            expected = now + q * s
            self.groups[gid] = Group(expected, now + q * s * o.compass_lambda, {client})
        self.group_of[client] = gid
        sim.dispatch(client, q)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "speed": {str(k): v for k, v in self.speed.items()},
                "groups": {str(g): {"expected": v.expected, "deadline": v.deadline, "members": sorted(v.members),
                                    "arrived": list(v.arrived), "buffer": [a.state_dict() for a in v.buffer]}
                           for g, v in self.groups.items()},
                "group_of": {str(k): v for k, v in self.group_of.items()}, "next_group": self.next_group,
                "buffer": [a.state_dict() for a in self.buffer]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from trainlab.federated.simulator import Arrival
        super().load_state_dict(state)
        self.speed = {int(k): float(v) for k, v in state.get("speed", {}).items()}
        self.groups = {int(g): Group(float(v["expected"]), float(v["deadline"]), set(v["members"]), list(v["arrived"]),
                                     [Arrival.from_state(a) for a in v.get("buffer", [])])
                       for g, v in state.get("groups", {}).items()}
        self.group_of = {int(k): int(v) for k, v in state.get("group_of", {}).items()}
        self.next_group = int(state.get("next_group", 0))
        self.buffer = [Arrival.from_state(a) for a in state.get("buffer", [])]
