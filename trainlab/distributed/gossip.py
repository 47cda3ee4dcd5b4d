"""Decentralised gossip averaging over a graph with Poisson clocks: ``dist.strategy=gossip``.

Every worker keeps its own model and trains it on its own share of each global batch (the loss is its local mean,
as DiLoCo's workers); there is no all-reduce of gradients. Models mix by *gossip* along the edges of a
communication graph (``dist.graph``):

- ``ring``: ``i ~ i ± 1 (mod n)``; ``torus``: a 2-D torus ``r × c = n`` with ``r`` the largest divisor of ``n`` up
  to ``√n`` (needs ``r >= 2``: n = 4, 6, 8, 9, ...); ``complete``: all pairs; ``random``: an Erdős–Rényi graph
  ``G(n, dist.graph_p)`` drawn with ``dist.gossip_seed``, redrawn until connected.

Two clocks (``dist.gossip_clock``):

- ``poisson`` (default) -- the decoupled clocks of DADAO (Nabli & Oyallon 2023, "DADAO: Decoupled Accelerated
  Decentralized Asynchronous Optimization", ICML, arXiv:2208.00779): communications are a Poisson process on the
  edges, independent of the gradient steps. In each unit of time (one trainer step) the number of edge firings is
  ``K ~ Poisson(rate · n / 2)`` and each firing picks an edge uniformly (so each edge's clock has rate
  ``rate · n / (2 |E|)``, and on a regular graph each worker takes part in ``rate`` = ``dist.gossip_rate`` firings
  per step on average); the firings happen in their drawn order, after the step's gradient step. A firing of edge
  ``(i, j)`` is a **pairwise average** ``x_i, x_j ← (x_i + x_j) / 2`` (randomised gossip, Boyd et al. 2006: the
  mixing matrix ``I − (e_i − e_j)(e_i − e_j)ᵀ / 2`` is symmetric and doubly stochastic, so the workers' mean is
  kept). The draw uses a generator seeded with ``(dist.gossip_seed, step)`` (:func:`poisson_firings`): every rank
  knows which edges fire, and a resume replays the same schedule.
- ``synchronous`` -- one synchronous gossip round after every step, ``x ← W x`` with the Metropolis–Hastings
  matrix of the graph, ``W_ij = 1 / (1 + max(d_i, d_j))`` on edges, ``W_ii = 1 − Σ_j W_ij`` (D-PSGD, Lian et al.
  2017). On the complete graph ``W = 11ᵀ / n``: every step ends in the exact average, so with an optimizer whose
  update is linear in the gradient at shared parameters (SGD, with or without momentum, Nesterov or weight decay)
  the run equals DDP on the global batch (when the shares are equal in size; the loss is each worker's local mean);
  with Adam-like optimizers the per-worker moment estimates make it differ.

Documented deviations from DADAO: the gradient steps are *not* a Poisson process -- the trainer is lock-step, so
every worker takes exactly one gradient step per unit of time, and the step's firings follow it; DADAO's
accelerated primal–dual updates (its momentum variables and the L/μ-dependent rates) are not implemented: the
local optimizer is whatever ``optimizer=`` names and a firing is a plain pairwise average.

What mixes: the trainable parameters and the floating-point buffers (running statistics); integer buffers stay
local. Communication is point to point (``isend`` / ``irecv``). **Bytes** (payload convention of
:mod:`trainlab.distributed.comm`): each firing sends the model each way, so each endpoint counts its model's bytes
``M`` (parameters + floating buffers) as ``"gossip"``; a synchronous round counts ``degree · M``. **Evaluation**
(and so every metrics row) sees the average of the workers' models, one all-reduce counted as ``"gossip_average"``;
the local models come back afterwards. Checkpoints keep every worker's model and optimizer state (as DiLoCo's)
and resume exactly on the same number of processes; worker 0's strategy state also holds the workers' average
(``average_model``, a full state dict; one more ``"gossip_average"`` all-reduce per checkpoint). ``trainlab
export`` and ``init_from`` read worker 0's own model, not that average (:mod:`trainlab.train.load` reads
``ranks[0]["model"]``).

Options (``dist.*``): ``graph`` (ring), ``graph_p`` (0.5, random only), ``gossip_clock`` (poisson),
``gossip_rate`` (1.0 firings per worker per step, poisson only), ``gossip_seed`` (0).
"""

from __future__ import annotations

import contextlib
import math
from fractions import Fraction
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn

from trainlab.config import ConfigError
from trainlab.distributed.comm import CommMeter, tensor_bytes
from trainlab.distributed.strategy import STRATEGIES, Strategy

GRAPHS = ("ring", "torus", "complete", "random")
CLOCKS = ("poisson", "synchronous")
_RANDOM_TRIES = 1000


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized()


def _mix(seed: int, step: int, salt: int) -> int:
    """A generator seed from (seed, step, salt), in [0, 2^63 - 1)."""
    return (seed * 0x9E3779B1 + step * 0x85EBCA77 + salt * 0xC2B2AE3D + 0x27D4EB2F) % (2**63 - 1)


# -- graphs ----------------------------------------------------------------------------------------------------

def torus_shape(n: int) -> tuple[int, int]:
    """``(r, c)`` with ``r · c = n`` and ``r`` the largest divisor of ``n`` not above ``√n``."""
    r = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return r, n // r


def _connected(n: int, edges: list[tuple[int, int]]) -> bool:
    seen, todo = {0}, [0]
    nbrs: dict[int, list[int]] = {i: [] for i in range(n)}
    for i, j in edges:
        nbrs[i].append(j)
        nbrs[j].append(i)
    while todo:
        for j in nbrs[todo.pop()]:
            if j not in seen:
                seen.add(j)
                todo.append(j)
    return len(seen) == n


def graph_edges(kind: str, n: int, *, p: float = 0.5, seed: int = 0) -> list[tuple[int, int]]:
    """The undirected edges ``(i, j)``, ``i < j``, sorted, of graph ``kind`` over ``n`` workers. A graph that
    cannot be built (a torus of a prime ``n``, a random graph that stays disconnected) is a ``ValueError``."""
    if n < 1:
        raise ValueError(f"need n >= 1 workers, got {n}")
    edges: set[tuple[int, int]] = set()

    def add(i: int, j: int) -> None:
        if i != j:
            edges.add((min(i, j), max(i, j)))

    if kind == "ring":
        for i in range(n):
            add(i, (i + 1) % n)
    elif kind == "complete":
        for i in range(n):
            for j in range(i + 1, n):
                add(i, j)
    elif kind == "torus":
        r, c = torus_shape(n)
        if r < 2:
            raise ValueError(f"a torus needs n = r x c with r, c >= 2; n = {n} has no such factors "
                             f"(use graph=ring)")
        for a in range(r):
            for b in range(c):
                add(a * c + b, ((a + 1) % r) * c + b)
                add(a * c + b, a * c + (b + 1) % c)
    elif kind == "random":
        if not 0 < p <= 1:
            raise ValueError(f"graph=random needs 0 < p <= 1, got {p}")
        gen = torch.Generator().manual_seed(_mix(seed, 0, 1))
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
        for _ in range(_RANDOM_TRIES):
            keep = torch.rand(len(pairs), generator=gen, dtype=torch.float64) < p
            chosen = [e for e, k in zip(pairs, keep.tolist()) if k]
            if _connected(n, chosen):
                return chosen
        raise ValueError(f"graph=random with p={p} stayed disconnected over {n} workers in {_RANDOM_TRIES} draws; "
                         f"raise dist.graph_p")
    else:
        raise ValueError(f"unknown graph {kind!r}; one of {', '.join(GRAPHS)}")
    return sorted(edges)


def neighbours(n: int, edges: list[tuple[int, int]]) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in range(n)]
    for i, j in edges:
        out[i].append(j)
        out[j].append(i)
    return [sorted(x) for x in out]


def metropolis_weights(n: int, edges: list[tuple[int, int]]) -> list[list[Fraction]]:
    """The Metropolis–Hastings matrix as exact fractions: ``W_ij = 1 / (1 + max(d_i, d_j))`` on edges,
    ``W_ii = 1 − Σ_j W_ij``, 0 elsewhere (symmetric, doubly stochastic)."""
    deg = [len(x) for x in neighbours(n, edges)]
    W = [[Fraction(0)] * n for _ in range(n)]
    for i, j in edges:
        W[i][j] = W[j][i] = Fraction(1, 1 + max(deg[i], deg[j]))
    for i in range(n):
        W[i][i] = Fraction(1) - sum((W[i][j] for j in range(n) if j != i), Fraction(0))
    return W


def metropolis_matrix(n: int, edges: list[tuple[int, int]]) -> Tensor:
    """:func:`metropolis_weights` as a float64 tensor."""
    return torch.tensor([[float(w) for w in row] for row in metropolis_weights(n, edges)], dtype=torch.float64)


def pairwise_matrix(n: int, i: int, j: int) -> Tensor:
    """The mixing matrix of one firing of edge ``(i, j)``: ``I − (e_i − e_j)(e_i − e_j)ᵀ / 2`` (float64)."""
    W = torch.eye(n, dtype=torch.float64)
    W[i, i] = W[j, j] = W[i, j] = W[j, i] = 0.5
    return W


def edge_rate(rate: float, n: int, n_edges: int) -> float:
    """Each edge's Poisson rate (firings per step) for ``rate`` firings per worker per step on average."""
    return rate * n / (2 * n_edges) if n_edges else 0.0


def poisson_firings(n: int, edges: list[tuple[int, int]], rate: float, seed: int, step: int) -> list[tuple[int, int]]:
    """The edges that fire in unit of time ``step`` (1-based: after optimizer step ``step``), in order.

    ``K ~ Poisson(rate · n / 2)`` firings, each on an edge drawn uniformly: the superposition of independent
    Poisson clocks of rate ``rate · n / (2 |E|)`` on every edge, in the order they ring. A pure function of
    ``(seed, step)``: every process draws the same list.
    """
    if not edges or rate <= 0:
        return []
    gen = torch.Generator().manual_seed(_mix(seed, step, 2))
    k = int(torch.poisson(torch.tensor([rate * n / 2], dtype=torch.float64), generator=gen).item())
    if k == 0:
        return []
    picks = torch.randint(len(edges), (k,), generator=gen).tolist()
    return [edges[e] for e in picks]


def schedule_matrix(n: int, firings: list[tuple[int, int]]) -> Tensor:
    """The product of the firings' pairwise matrices (the first firing applied first): ``x ← M x``."""
    M = torch.eye(n, dtype=torch.float64)
    for i, j in firings:
        M = pairwise_matrix(n, i, j) @ M
    return M


def second_eigenvalue(W: Tensor) -> float:
    """The second-largest eigenvalue modulus of a symmetric mixing matrix (1 − spectral gap): the consensus
    distance shrinks by about this factor per application."""
    ev = torch.linalg.eigvalsh(W.double()).abs().sort(descending=True).values
    return float(ev[1]) if len(ev) > 1 else 0.0


def expected_pairwise_matrix(n: int, edges: list[tuple[int, int]]) -> Tensor:
    """``E[W]`` of one firing on a uniformly drawn edge: ``I − L / (2 |E|)`` with ``L`` the graph Laplacian."""
    if not edges:
        return torch.eye(n, dtype=torch.float64)
    return sum((pairwise_matrix(n, i, j) for i, j in edges), torch.zeros(n, n, dtype=torch.float64)) / len(edges)


# -- the gossip over a process group ---------------------------------------------------------------------------

class Gossip:
    """Gossip averaging of each worker's model over a process group (see the module docstring).

    Args:
        model: the plain module this worker trains.
        graph: ``ring``, ``torus``, ``complete`` or ``random``.
        clock: ``poisson`` (pairwise averages on Poisson edge firings) or ``synchronous`` (a Metropolis round).
        rate: poisson: expected firings per worker per step (> 0).
        seed: seed of the edge clocks and of ``graph=random``.
        graph_p: random: the edge probability.
        meter: byte meter (a fresh :class:`CommMeter` when None).
        group: process group (None: the default group).

    Call :meth:`after_step` after every optimizer step (1-based step count); :meth:`averaged_weights` lends the
    model the workers' average.
    """

    KIND = "gossip"

    def __init__(self, model: nn.Module, *, graph: str = "ring", clock: str = "poisson", rate: float = 1.0,
                 seed: int = 0, graph_p: float = 0.5, meter: CommMeter | None = None, group: Any = None) -> None:
        if clock not in CLOCKS:
            raise ValueError(f"Gossip: clock must be one of {', '.join(CLOCKS)}, got {clock!r}")
        if not rate > 0:
            raise ValueError(f"Gossip: rate must be > 0, got {rate!r}")
        self.model, self.group = model, group
        self.meter = meter if meter is not None else CommMeter()
        self.n = dist.get_world_size(group) if _dist_on() else 1
        self.rank = dist.get_rank(group) if _dist_on() else 0
        self.graph, self.clock, self.rate, self.seed, self.graph_p = graph, clock, float(rate), int(seed), graph_p
        self.edges = graph_edges(graph, self.n, p=graph_p, seed=seed)
        self.neighbours = neighbours(self.n, self.edges)[self.rank]
        W = metropolis_weights(self.n, self.edges)
        self.weights = {j: float(W[self.rank][j]) for j in [self.rank, *self.neighbours]}
        self.tensors = [p for p in model.parameters() if p.requires_grad] + \
                       [b for b in model.buffers() if b is not None and b.is_floating_point()]
        if not self.tensors:
            raise ValueError("Gossip: the model has nothing to average")
        self.model_bytes = tensor_bytes(self.tensors)
        self.firings = 0  # firings (or synchronous rounds' exchanges) this worker took part in
        self.rounds = 0  # units of time (steps) gossiped

    def _peer(self, r: int) -> int:
        return r if self.group is None else dist.get_global_rank(self.group, r)

    def _flat(self) -> list[tuple[list[int], Tensor]]:
        groups: dict[tuple[torch.dtype, torch.device], list[int]] = {}
        for i, t in enumerate(self.tensors):
            groups.setdefault((t.dtype, t.device), []).append(i)
        return [(idx, torch.cat([self.tensors[i].detach().reshape(-1) for i in idx])) for idx in groups.values()]

    @torch.no_grad()
    def _write(self, idx: list[int], flat: Tensor) -> None:
        off = 0
        for i in idx:
            t = self.tensors[i]
            t.copy_(flat[off:off + t.numel()].view_as(t))
            off += t.numel()

    def _exchange(self, mine: Tensor, peers: list[int]) -> dict[int, Tensor]:
        """Send ``mine`` to every peer and receive theirs (non-blocking both ways, then wait)."""
        got = {j: torch.empty_like(mine) for j in peers}
        works = [dist.isend(mine, self._peer(j), group=self.group) for j in peers]
        works += [dist.irecv(got[j], self._peer(j), group=self.group) for j in peers]
        for w in works:
            if w is not None:
                w.wait()
        self.meter.add(len(peers) * tensor_bytes(mine), self.KIND)  # my model, once to every peer
        return got

    def schedule(self, step: int) -> list[tuple[int, int]]:
        """The firings after optimizer step ``step`` (1-based) -- every rank's list is the same."""
        return poisson_firings(self.n, self.edges, self.rate, self.seed, step)

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Gossip for unit of time ``step`` (``step`` = optimizer steps taken so far)."""
        if not _dist_on() or not self.edges:
            self.rounds += 1
            return
        if self.clock == "synchronous":
            for idx, mine in self._flat():
                got = self._exchange(mine, self.neighbours)
                got[self.rank] = mine
                # Σ_j W_ij x_j in ascending j: the same sum, in the same order, on every rank of a complete graph
                out = sum((self.weights[j] * got[j] for j in sorted(got)), torch.zeros_like(mine))
                self._write(idx, out)
            self.firings += len(self.neighbours)
        else:
            for i, j in self.schedule(step):
                if self.rank not in (i, j):
                    continue
                peer = j if self.rank == i else i
                for idx, mine in self._flat():
                    theirs = self._exchange(mine, [peer])[peer]
                    self._write(idx, (mine + theirs) / 2)  # a + b = b + a: both ends hold the same average
                self.firings += 1
        self.rounds += 1

    @contextlib.contextmanager
    def averaged_weights(self) -> Iterator[nn.Module]:
        """Lend the model the mean of the workers' models (one all-reduce, counted as ``"gossip_average"``); the
        local model comes back on exit."""
        with torch.no_grad():
            saved = [t.detach().clone() for t in self.tensors]
            if _dist_on() and self.n > 1:
                for idx, flat in self._flat():
                    self.meter.add(tensor_bytes(flat), "gossip_average")
                    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
                    self._write(idx, flat / self.n)
        try:
            yield self.model
        finally:
            with torch.no_grad():
                for t, s in zip(self.tensors, saved):
                    t.copy_(s)

    def average_state(self) -> dict[str, Tensor]:
        """The model's state dict with the workers' average in place of the local tensors (a collective; integer
        buffers are this worker's)."""
        with self.averaged_weights():
            return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    @torch.no_grad()
    def consensus_distance(self) -> float:
        """``sqrt(mean_i ||x_i − x̄||²)`` over the workers (a collective; counted as ``"gossip_average"``)."""
        total = torch.zeros((), dtype=torch.float64)
        for _, flat in self._flat():
            mean = flat.clone()
            if _dist_on() and self.n > 1:
                self.meter.add(tensor_bytes(mean), "gossip_average")
                dist.all_reduce(mean, op=dist.ReduceOp.SUM, group=self.group)
            mean /= self.n
            total += ((flat - mean).double() ** 2).sum()
        if _dist_on() and self.n > 1:
            dist.all_reduce(total, op=dist.ReduceOp.SUM, group=self.group)
        return math.sqrt(float(total) / self.n)

    def _config(self) -> dict[str, Any]:
        return {"n": self.n, "graph": self.graph, "clock": self.clock, "rate": self.rate, "seed": self.seed,
                "graph_p": self.graph_p}

    def state_dict(self) -> dict[str, Any]:
        """Counters and the configuration (the schedule is a pure function of the seed and the step; the local
        model and optimizer are the trainer's to save)."""
        return {"algorithm": "Gossip", "config": self._config(), "firings": self.firings, "rounds": self.rounds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("algorithm") != "Gossip":
            raise ValueError(f"Gossip: state was saved by {state.get('algorithm')!r}")
        if dict(state.get("config", {})) != self._config():
            raise ValueError(f"Gossip: saved config {state.get('config')} != {self._config()}")
        self.firings, self.rounds = int(state["firings"]), int(state["rounds"])


@STRATEGIES.register("gossip",
                     summary="decentralised gossip: each worker its own model, pairwise averages on Poisson edge "
                             "clocks over a ring/torus/complete/random graph, or synchronous Metropolis rounds "
                             "(DADAO's clocks, Nabli & Oyallon 2023)",
                     paper="Nabli & Oyallon 2023, DADAO: Decoupled Accelerated Decentralized Asynchronous "
                           "Optimization (ICML); Boyd et al. 2006, Randomized Gossip Algorithms")
class GossipStrategy(Strategy):
    """``dist.strategy=gossip`` (see the module docstring): local training, gossip after every step, evaluation
    of the workers' average, every worker's state in the checkpoint."""

    name = "gossip"
    local_loss = True
    per_rank_state = True

    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> nn.Module:
        self.ensure_group()
        o = self.options
        if o.compression != "none":  # the config refuses it already; a RunConfig built by hand too
            raise ConfigError("dist.compression", "is a DDP hook; gossip sends models, not gradients")
        try:
            self.impl = Gossip(model, graph=o.graph, clock=o.gossip_clock, rate=o.gossip_rate, seed=o.gossip_seed,
                               graph_p=o.graph_p, meter=self.meter)
        except ValueError as err:
            raise ConfigError("dist.graph", f"{o.graph} over {self.world_size} processes: {err}") from None
        self.model = model
        return model

    def after_step(self, step: int) -> None:
        self.impl.after_step(step)

    @contextlib.contextmanager
    def eval_weights(self) -> Iterator[None]:
        with self.impl.averaged_weights():
            yield

    def state_dict(self) -> dict[str, Any]:
        """The meter, the gossip counters and, on worker 0, the workers' average model (``average_model``).
        Collective: every rank calls it (checkpoints of per-rank strategies are built on every rank)."""
        average = self.impl.average_state()  # first: its bytes are in the meter state saved below
        state = {**super().state_dict(), "gossip": self.impl.state_dict()}
        if self.rank == 0:
            state["average_model"] = average
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "gossip" in state:
            self.impl.load_state_dict(state["gossip"])

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        impl = getattr(self, "impl", None)
        if impl is not None:
            out.update({"graph": impl.graph, "edges": len(impl.edges), "clock": impl.clock,
                        "firings": impl.firings, "rounds": impl.rounds})
            if impl.clock == "poisson":
                out["gossip_rate"] = impl.rate
                out["edge_rate"] = edge_rate(impl.rate, impl.n, len(impl.edges))
        return out


__all__ = ["Gossip", "GossipStrategy", "graph_edges", "metropolis_matrix", "metropolis_weights", "pairwise_matrix",
           "poisson_firings", "schedule_matrix", "second_eigenvalue", "torus_shape"]
