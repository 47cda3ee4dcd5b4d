"""The server strategies (trainlab.federated.strategies) against schedules and weights worked by hand.

Each test builds a :class:`Simulator` on ``nn.Linear(2, 2)`` and a few rows, with ``speeds=trace`` fixing every
client's simulated seconds per local step, and drives it as the training loop does: ``next_update()`` gives the
arrivals of one server update and their weights, the aggregate is applied (plain averaging, ``x <- x - g``), then
``updated()``. The expected arrival order, times, staleness and weights below were worked out on paper from the
rules of the papers (strategies.py's module docstring is the spec; families.md section 1 the papers' formulas),
never read back from the code: e.g. ``tau_i = local_steps x step time``, ties in time by push order.

Sizes of ``partition=iid`` (the first ``rows mod N`` clients take one more): 7 rows over 3 clients = 3, 2, 2;
10 rows over 4 clients = 3, 3, 2, 2; 15 rows over 10 clients = 2 x 5, 1 x 5.
"""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainlab.federated.client import flat_params, load_flat_
from trainlab.federated.options import FedOptions
from trainlab.federated.simulator import Arrival, ClientLoss, Simulator


def _ce(out: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(out, y, reduction="none")


def make_sim(tmp_path, times, *, rows: int = 12, seed: int = 3, **fed) -> Simulator:
    """A simulator whose client k takes ``times[k]`` simulated seconds per local step."""
    trace = tmp_path / "speeds.txt"
    trace.write_text("".join(f"{t!r}\n" for t in times))
    fed.setdefault("clients", len(times))
    fed.setdefault("weighting", "uniform")
    opts = FedOptions(partition="iid", speeds="trace", speed_trace=str(trace), local_lr=0.01, local_batch=2, **fed)
    opts.validate()
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(rows, 2, generator=gen)
    y = torch.randint(0, 2, (rows,), generator=gen)
    return Simulator(opts, model, x, y, y, ClientLoss(_ce), seed=seed)


def step(sim: Simulator) -> list[tuple[Arrival, float]]:
    """One server update as the loop makes it with optimizer=sgd lr=1: x <- x - sum_i d_i delta_i."""
    weighted = sim.strategy.next_update()
    assert weighted, "a server update needs at least one arrival"
    grad = torch.zeros_like(weighted[0][0].delta)
    for arrival, weight in weighted:
        grad.add_(arrival.delta, alpha=weight)
    load_flat_(sim.model, flat_params(sim.model) - grad)
    sim.updated()
    return weighted


def rows_of(weighted) -> list[tuple[int, float, int]]:
    """(client, arrival time, staleness) of each arrival, in the order given."""
    return [(a.client, a.time, a.staleness) for a, _ in weighted]


def weights_of(weighted) -> list[float]:
    return [w for _, w in weighted]


def spy_dispatch(sim: Simulator) -> list[dict]:
    """Record every dispatch (client, steps, the clock and server version at dispatch) as it happens."""
    log: list[dict] = []
    original = sim.dispatch

    def dispatch(client: int, steps: int) -> None:
        log.append({"client": client, "steps": steps, "now": sim.now, "version": sim.version})
        original(client, steps)

    sim.dispatch = dispatch  # type: ignore[method-assign]
    return log


def spy_arrivals(sim: Simulator) -> list[Arrival]:
    """Record every arrival the strategy takes off the queue, dropped ones included."""
    log: list[Arrival] = []
    original = sim.next_arrival

    def next_arrival() -> Arrival:
        arrival = original()
        log.append(arrival)
        return arrival

    sim.next_arrival = next_arrival  # type: ignore[method-assign]
    return log


def poly(s: int) -> float:
    """Polynomial staleness factor (1 + s)^-0.5 (Xie et al. 2019 with the negative exponent; FLSim's default)."""
    return (1.0 + s) ** -0.5


# ---------------------------------------------------------------------------------------------------- fedavg


def test_fedavg_full_round_examples_weights_and_clock(tmp_path):
    # 4 clients of 3, 3, 2, 2 rows; tau = 1, 2, 3, 4 s (1 step each). Every round takes everyone, arrives by time,
    # is weighted n_k / 10, staleness 0, and ends when the slowest (4 s) returns.
    sim = make_sim(tmp_path, [1.0, 2.0, 3.0, 4.0], rows=10, strategy="fedavg", participation=1.0, local_steps=1,
                   weighting="examples")
    assert sim.slots == 4
    for r in range(1, 4):
        weighted = step(sim)
        start = 4.0 * (r - 1)
        assert rows_of(weighted) == [(0, start + 1, 0), (1, start + 2, 0), (2, start + 3, 0), (3, start + 4, 0)]
        assert weights_of(weighted) == pytest.approx([0.3, 0.3, 0.2, 0.2])
        assert all(a.steps == 1 and a.expected == a.steps * [1.0, 2.0, 3.0, 4.0][a.client] for a, _ in weighted)
        assert sim.now == 4.0 * r and sim.version == r


def test_fedavg_uniform_weighting(tmp_path):
    sim = make_sim(tmp_path, [1.0, 2.0, 3.0, 4.0], rows=10, strategy="fedavg", participation=1.0, local_steps=1)
    assert weights_of(step(sim)) == pytest.approx([0.25] * 4)


def test_fedavg_partial_cohort(tmp_path):
    # N = 10, participation 0.3 -> cohorts of 3 distinct clients; client k has 2 rows if k < 5 else 1, and takes
    # (k + 1) x 2 steps x 0.5 s = k + 1 s. The weights are n_k over the cohort's rows; a round lasts its slowest.
    sim = make_sim(tmp_path, [0.5 * (k + 1) for k in range(10)], rows=15, strategy="fedavg", participation=0.3,
                   local_steps=2, weighting="examples")
    assert sim.slots == 3
    rows = [2] * 5 + [1] * 5
    now = 0.0
    seen: set[int] = set()
    for r in range(1, 7):
        weighted = step(sim)
        cohort = [a.client for a, _ in weighted]
        assert len(cohort) == len(set(cohort)) == 3
        seen.update(cohort)
        total = sum(rows[c] for c in cohort)
        assert weights_of(weighted) == pytest.approx([rows[c] / total for c in cohort])
        assert [a.time for a, _ in weighted] == [now + c + 1 for c in cohort]  # sent at the round's start
        assert cohort == sorted(cohort)  # arrival order = time order (times differ)
        assert all(a.staleness == 0 and a.version == r - 1 for a, _ in weighted)
        now += max(cohort) + 1
        assert sim.now == now and sim.version == r
    assert len(seen) > 3  # a fresh cohort each round, not the same three


def test_fedavg_dropout_renormalises_and_repeats_empty_rounds(tmp_path):
    # 3 clients of 3, 2, 2 rows, tau = 1, 2, 3 s, everyone each round, half of them drop out: the returned ones are
    # weighted n_k / their sum, a dropped client is known lost at its would-be time (so a round still lasts 3 s),
    # and a round where all drop is repeated within the same server update.
    sim = make_sim(tmp_path, [1.0, 2.0, 3.0], rows=7, strategy="fedavg", participation=1.0, local_steps=1,
                   weighting="examples", dropout=0.6)
    rows = [3, 2, 2]
    taken = spy_arrivals(sim)
    rounds = 0
    repeated = partial = 0
    for update in range(1, 7):
        taken.clear()
        weighted = step(sim)
        assert len(taken) % 3 == 0
        chunks = [taken[i:i + 3] for i in range(0, len(taken), 3)]
        for chunk in chunks[:-1]:  # all dropped: no update
            assert all(a.dropped for a in chunk)
        repeated += len(chunks) - 1
        last = chunks[-1]
        got = [a for a in last if not a.dropped]
        partial += len(got) < 3
        assert [a.client for a, _ in weighted] == [a.client for a in got]
        total = sum(rows[a.client] for a in got)
        assert weights_of(weighted) == pytest.approx([rows[a.client] / total for a in got])
        assert all(a.staleness == 0 for a, _ in weighted)
        rounds += len(chunks)
        assert sim.now == 3.0 * rounds and sim.version == update
    assert repeated >= 1 and partial >= 1, "the seed should produce an all-dropped round and a partial one"


# ---------------------------------------------------------------------------------------------------- async fedavg


# tau = 2 steps x (0.5, 1, 1.5) s = 1, 2, 3 s; each arrival is one update and its client restarts at once on the
# new weights. Worked timeline (ties in time by push order: the earlier dispatch first):
#   t=1 c0 (sent v0); t=2 c1 (v0) then c0 (sent at t=1, v1); t=3 c2 (v0) then c0 (v3); t=4 c1 (sent t=2, v2) then
#   c0 (v5); t=5 c0 (v7); t=6 c2 (sent t=3, v4), c1 (sent t=4, v6), c0 (sent t=5, v8)
ASYNC_TIMELINE = [(0, 1.0, 0), (1, 2.0, 1), (0, 2.0, 1), (2, 3.0, 3), (0, 3.0, 1), (1, 4.0, 3), (0, 4.0, 1),
                  (0, 5.0, 0), (2, 6.0, 4), (1, 6.0, 3), (0, 6.0, 2)]


def hinge_b1(s: int) -> float:
    """Hinge staleness with a = 0.5, b = 1: 1 up to s = 1, then 1 / (0.5 (s - 1) + 1)."""
    return 1.0 if s <= 1 else 1.0 / (0.5 * (s - 1) + 1.0)


@pytest.mark.parametrize("staleness", [None, "polynomial", "hinge"])
def test_async_fedavg_timeline_and_fraboni_weights(tmp_path, staleness):
    sim = make_sim(tmp_path, [0.5, 1.0, 1.5], strategy="async_fedavg", local_steps=2, staleness=staleness,
                   staleness_b=1.0)
    assert sim.slots == 3  # default participation 1
    # d_i = p_i tau_i sum_j 1/tau_j = 1/3 x tau_i x (1 + 1/2 + 1/3) = tau_i x 11/18 (x stale(s))
    tau = [1.0, 2.0, 3.0]
    for n, (client, time, stale) in enumerate(ASYNC_TIMELINE, start=1):
        weighted = step(sim)
        assert rows_of(weighted) == [(client, time, stale)]
        factor = {None: 1.0, "polynomial": poly(stale), "hinge": hinge_b1(stale)}[staleness]  # default: constant
        assert weights_of(weighted) == pytest.approx([tau[client] * 11 / 18 * factor])
        assert weighted[0][0].steps == 2 and weighted[0][0].expected == tau[client]
        assert sim.now == time and sim.version == n


def test_async_fedavg_partial_participation_weights(tmp_path):
    # N = 4 with 3, 3, 2, 2 of 10 rows, 2 slots: d_i = p_i / (1/N) = 4 p_i; staleness = updates since dispatch
    sim = make_sim(tmp_path, [1.0, 1.25, 1.5, 1.75], rows=10, strategy="async_fedavg", participation=0.5,
                   local_steps=1, weighting="examples")
    assert sim.slots == 2
    dispatches = spy_dispatch(sim)
    in_flight: dict[int, int] = {}  # client -> the server version it was sent
    seen = 0
    clients = set()
    for n in range(1, 13):
        weighted = step(sim)
        new, seen = dispatches[seen:], len(dispatches)
        before = [d for d in new if d["version"] == n - 1]  # the first slots, sent before the first arrival
        after = [d for d in new if d["version"] == n]  # the freed slot, sent on the weights of update n
        assert len(before) + len(after) == len(new) and (n == 1 or not before)
        in_flight.update((d["client"], d["version"]) for d in before)
        (arrival, weight), = weighted
        clients.add(arrival.client)
        assert weight == pytest.approx(4 * [0.3, 0.3, 0.2, 0.2][arrival.client])
        assert arrival.staleness == (n - 1) - in_flight.pop(arrival.client)
        assert len(after) == 1
        in_flight.update((d["client"], d["version"]) for d in after)
        assert len(in_flight) == 2 == len(sim.flights)  # two distinct clients always training
    assert len(clients) >= 3


# ---------------------------------------------------------------------------------------------------- fedbuff


# 3 slots, K = 2, tau = 1, 2, 3 s. A slot freed by an arrival restarts once every arrival of that simulated instant
# is in -- after the update if the buffer fills at that instant (on the new version). Worked timeline
# (c: client, sent at version v; "->" its next arrival):
#   u1 t=1 c0 (v0; restarts at once, v0 -> 2), t=2 c1 (v0; fills: restarts after u1, v1 -> 4)
#   u2 t=2 c0 (v0: s=1; v1 -> 3), t=3 c2 (v0: s=1; after: v2 -> 6)
#   u3 t=3 c0 (v1: s=1; v2 -> 4), t=4 c1 (v1: s=1; after: v3 -> 6)
#   u4 t=4 c0 (v2: s=1; v3 -> 5), t=5 c0 (v3: s=0; after: v4 -> 6)
#   u5 t=6 c2 (v2: s=2), t=6 c1 (v3: s=1; fills; both slots restart after u5: v5, c1 -> 8, c2 -> 9)
#      [at t=6 c2 (sent t=3) pops before c1 (sent t=4) and c0 (sent t=5)]
#   u6 t=6 c0 (v4: s=1; v5 -> 7), t=7 c0 (v5: s=0; after: v6 -> 8)
#   u7 t=8 c1 (v5: s=1), t=8 c0 (v6: s=0; both after u7: v7, c0 -> 9, c1 -> 10)
#   u8 t=9 c2 (v5: s=2), t=9 c0 (v7: s=0; both after u8: v8, c0 -> 10, c2 -> 12)
FEDBUFF_TIMELINE = [[(0, 1.0, 0), (1, 2.0, 0)], [(0, 2.0, 1), (2, 3.0, 1)], [(0, 3.0, 1), (1, 4.0, 1)],
                    [(0, 4.0, 1), (0, 5.0, 0)], [(2, 6.0, 2), (1, 6.0, 1)], [(0, 6.0, 1), (0, 7.0, 0)],
                    [(1, 8.0, 1), (0, 8.0, 0)], [(2, 9.0, 2), (0, 9.0, 0)]]
# the dispatches each update makes, (client, time, version), the first slots of u1 aside
FEDBUFF_DISPATCHES = [[(0, 1.0, 0), (1, 2.0, 1)], [(0, 2.0, 1), (2, 3.0, 2)], [(0, 3.0, 2), (1, 4.0, 3)],
                      [(0, 4.0, 3), (0, 5.0, 4)], [(1, 6.0, 5), (2, 6.0, 5)], [(0, 6.0, 5), (0, 7.0, 6)],
                      [(0, 8.0, 7), (1, 8.0, 7)], [(0, 9.0, 8), (2, 9.0, 8)]]


@pytest.mark.parametrize("staleness", [None, "constant"])
def test_fedbuff_timeline_and_weights(tmp_path, staleness):
    sim = make_sim(tmp_path, [0.5, 1.0, 1.5], strategy="fedbuff", participation=1.0, local_steps=2, buffer=2,
                   staleness=staleness)
    dispatches = spy_dispatch(sim)
    for n, (expected, sent) in enumerate(zip(FEDBUFF_TIMELINE, FEDBUFF_DISPATCHES), start=1):
        before = len(dispatches)
        weighted = step(sim)
        assert rows_of(weighted) == expected
        # default polynomial (1 + s)^-0.5 / K; constant: 1 / K
        assert weights_of(weighted) == pytest.approx([(poly(s) if staleness is None else 1.0) / 2
                                                      for _, _, s in expected])
        assert sim.now == expected[-1][1] and sim.version == n
        new = [(d["client"], d["now"], d["version"]) for d in dispatches[before:]]
        if n == 1:
            assert sorted(new[:3]) == [(0, 0.0, 0), (1, 0.0, 0), (2, 0.0, 0)]
            new = new[3:]
        assert sorted(new) == sent


def test_fedbuff_k_equal_n_arriving_together_is_a_fedavg_round(tmp_path):
    # 3 clients of equal speed, K = 3: each instant's three arrivals fill the buffer and all restart after the
    # update, so every update is a round of everyone on the same weights: staleness 0, weights 1/3
    sim = make_sim(tmp_path, [1.0, 1.0, 1.0], strategy="fedbuff", participation=1.0, local_steps=2, buffer=3)
    for n in range(1, 5):
        weighted = step(sim)
        assert sorted(rows_of(weighted)) == [(0, 2.0 * n, 0), (1, 2.0 * n, 0), (2, 2.0 * n, 0)]
        assert weights_of(weighted) == pytest.approx([1 / 3] * 3)
        assert sim.now == 2.0 * n


def test_fedbuff_default_participation_is_a_tenth(tmp_path):
    sim = make_sim(tmp_path, [1.0] * 20, rows=20, strategy="fedbuff", buffer=3, local_steps=1)
    assert sim.slots == 2
    weighted = step(sim)
    assert len(weighted) == 3 and len(sim.flights) == 2


# ---------------------------------------------------------------------------------------------------- fedfix


def test_fedfix_ticks_weights_and_restarts(tmp_path):
    # tau = 1, 2, 2.5 s (1 step); default window = the median client's time = 2 s; rows 3, 2, 2 of 7 -> p = 3/7,
    # 2/7, 2/7; d_i = ceil(tau_i / 2) p_i = 3/7, 2/7, 2 x 2/7. Finished clients wait for the tick, restart at it:
    #   tick 2: c0@1, c1@2 (c2 still training)               -> restart c0 -> 3, c1 -> 4
    #   tick 4: c2@2.5 (sent v0: s=1), c0@3, c1@4              -> restart all at 4: c0 -> 5, c1 -> 6, c2 -> 6.5
    #   tick 6: c0@5, c1@6                                     -> restart c0 -> 7, c1 -> 8
    #   tick 8: c2@6.5 (sent at 4 = v2, now v3: s=1), c0@7, c1@8
    sim = make_sim(tmp_path, [1.0, 2.0, 2.5], rows=7, strategy="fedfix", local_steps=1, weighting="examples")
    assert sim.window == 2.0
    d = {0: 3 / 7, 1: 2 / 7, 2: 4 / 7}
    expected = [[(0, 1.0, 0), (1, 2.0, 0)], [(2, 2.5, 1), (0, 3.0, 0), (1, 4.0, 0)], [(0, 5.0, 0), (1, 6.0, 0)],
                [(2, 6.5, 1), (0, 7.0, 0), (1, 8.0, 0)]]
    for n, rows in enumerate(expected, start=1):
        weighted = step(sim)
        assert rows_of(weighted) == rows
        assert weights_of(weighted) == pytest.approx([d[c] for c, _, _ in rows])
        assert sim.now == 2.0 * n and sim.version == n


def test_fedfix_empty_windows_make_no_update(tmp_path):
    # window 2 s, tau = 5 and 6 s: ticks 2 and 4 see nothing; tick 6 takes both with d = ceil(tau / 2) / 2 = 1.5;
    # they restart at 6 (not at 5 and 6), so the next arrivals are at 11 and 12, aggregated at tick 12
    sim = make_sim(tmp_path, [2.5, 3.0], strategy="fedfix", local_steps=2, window=2.0)
    first = step(sim)
    assert rows_of(first) == [(0, 5.0, 0), (1, 6.0, 0)]
    assert weights_of(first) == pytest.approx([1.5, 1.5])
    assert sim.now == 6.0 and sim.version == 1
    second = step(sim)
    assert rows_of(second) == [(0, 11.0, 0), (1, 12.0, 0)]
    assert weights_of(second) == pytest.approx([1.5, 1.5])
    assert sim.now == 12.0 and sim.version == 2


def test_fedfix_default_window_is_the_median_client_time(tmp_path):
    # tau = 2 steps x (3, 1, 5, 2, 4) = 6, 2, 10, 4, 8 s: median 6
    sim = make_sim(tmp_path, [3.0, 1.0, 5.0, 2.0, 4.0], strategy="fedfix", local_steps=2)
    assert sim.window == 6.0
    first = step(sim)  # tick 6: tau 2, 4, 6 finished, weights ceil(tau / 6) / 5
    assert rows_of(first) == [(1, 2.0, 0), (3, 4.0, 0), (0, 6.0, 0)]
    assert weights_of(first) == pytest.approx([0.2, 0.2, 0.2])
    assert sim.now == 6.0


def test_fedfix_arrival_due_at_a_tick_is_not_deferred(tmp_path):
    # one client, 1 step of 0.1 s: the default window is its own time, 0.1 s, so it finishes at every tick n x 0.1
    # and every tick is an update (in floats, 12 x 0.1 + 0.1 = 1.3000000000000003 > 13 x 0.1 = 1.3)
    sim = make_sim(tmp_path, [0.1], rows=4, strategy="fedfix", local_steps=1)
    assert sim.window == 0.1
    for n in range(1, 21):
        weighted = step(sim)
        assert [(a.client, a.staleness) for a, _ in weighted] == [(0, 0)]
        assert weighted[0][0].time == pytest.approx(0.1 * n, abs=1e-12)
        assert weights_of(weighted) == [1.0]
        assert sim.now == pytest.approx(0.1 * n, abs=1e-12), f"update {n} came a window late"


# ---------------------------------------------------------------------------------------------------- fedcompass


# Step times 1, 2, 4 s; q_min 2, q_max 4; lambda 1.5; N = 3; weights (1 + s)^-0.5 / 3. Worked by hand:
#   t=0   everyone gets q_max = 4: c0 -> 4, c1 -> 8, c2 -> 16 (no group)
#   t=4   c0 (speed 1) -> buffer; no group: new group A, Q = q_max = 4: expected 8, deadline 4 + 1.5 x 4 = 10
#   t=8   c1 (speed 2) -> buffer; A: floor(0 / 2) = 0 < q_min; new group B: floor((10 + 1 x 4 - 8) / 2) = 3 steps:
#         expected 14, deadline 8 + 1.5 x 6 = 17
#   t=8   c0 completes A: u1 = buffer {c0@4, c1@8, c0@8}, all s=0. c0 -> B? floor(6/1) = 6 > 4; new group
#         (B's candidate floor((17 + 2 x 4 - 8) / 1) = 17 > 4): q_max = 4, group C: expected 12, deadline 14
#   t=12  c0 completes C: u2 = {c0@12}. c0 joins B with floor((14 - 12) / 1) = 2 -> 14
#   t=14  c1 (sent t=8, v0: s=2), c0 (v2: s=0) complete B: u3. reassign fastest first: c0 new group D (q_max):
#         expected 18, deadline 20; c1 joins D with floor(4 / 2) = 2 -> 18
#   t=16  c2 (speed 4, s=3) -> buffer; D: floor(2 / 4) = 0; new group E: floor((20 + 1 x 4 - 16) / 4) = 2:
#         expected 24, deadline 16 + 1.5 x 8 = 28
#   t=18  c0, c1 complete D: u4 = {c2@16 (s=3), c0@18, c1@18}. c0: E gives 6 > 4, new group F (q_max): expected 22,
#         deadline 24; c1: E floor(6 / 2) = 3, F floor(4 / 2) = 2 -> the larger: E, 3 steps -> 24
#   t=22  c0 completes F: u5 = {c0@22}; c0 joins E with floor(2 / 1) = 2 -> 24
#   t=24  c2 (sent 16, v3: s=2), c1 (v4: s=1), c0 (v5: s=0) complete E: u6
COMPASS_TIMELINE = [(8.0, [(0, 4.0, 0), (1, 8.0, 0), (0, 8.0, 0)]), (12.0, [(0, 12.0, 0)]),
                    (14.0, [(1, 14.0, 2), (0, 14.0, 0)]), (18.0, [(2, 16.0, 3), (0, 18.0, 0), (1, 18.0, 0)]),
                    (22.0, [(0, 22.0, 0)]), (24.0, [(2, 24.0, 2), (1, 24.0, 1), (0, 24.0, 0)])]
#   and after u6, fastest first at t=24: c0 new group (q_max), expected 28, deadline 30; c1 joins it with
#   floor(4 / 2) = 2; c2: floor(4 / 4) = 1 < q_min, new group of floor((30 + 1 x 4 - 24) / 4) = 2 steps
# every dispatch as (time, client, steps)
COMPASS_STEPS = [(0.0, 0, 4), (0.0, 1, 4), (0.0, 2, 4), (4.0, 0, 4), (8.0, 1, 3), (8.0, 0, 4), (12.0, 0, 2),
                 (14.0, 0, 4), (14.0, 1, 2), (16.0, 2, 2), (18.0, 0, 4), (18.0, 1, 3), (22.0, 0, 2), (24.0, 0, 4),
                 (24.0, 1, 2), (24.0, 2, 2)]


def compass(tmp_path, times=(1.0, 2.0, 4.0), **fed) -> Simulator:
    return make_sim(tmp_path, list(times), strategy="fedcompass", q_min=2, q_max=4, **fed)


def by_time(weighted):
    """FedCompass's aggregate as a set: (time, client) order (the order inside one aggregation is not specified)."""
    return sorted(weighted, key=lambda aw: (aw[0].time, aw[0].client))


def test_fedcompass_timeline(tmp_path):
    sim = compass(tmp_path)
    dispatches = spy_dispatch(sim)
    for n, (now, rows) in enumerate(COMPASS_TIMELINE, start=1):
        weighted = by_time(step(sim))
        assert rows_of(weighted) == sorted(rows, key=lambda r: (r[1], r[0]))
        assert weights_of(weighted) == pytest.approx([poly(a.staleness) / 3 for a, _ in weighted])
        assert sim.now == now and sim.version == n
    # the first dispatch: q_max for everyone (in a random order); then by time, fastest first at one instant
    assert sorted((d["now"], d["client"], d["steps"]) for d in dispatches[:3]) == COMPASS_STEPS[:3]
    assert [(d["now"], d["client"], d["steps"]) for d in dispatches[3:]] == COMPASS_STEPS[3:]


def test_fedcompass_late_member_closes_group_at_deadline(tmp_path):
    # As the timeline above, but c2 slows to 8 s/step after u3: dispatched at t=16 for group E with 2 steps at the
    # estimated 4 s/step, it now arrives at 32, after E's deadline 28. Then:
    #   u4, u5 unchanged; u6 at E's deadline t=28: {c1@24 (sent v4: s=1), c0@24 (s=0)} -- c2 is late.
    #   reassign at 28: c0 new group G (q_max): expected 32, deadline 34; c1 joins G with floor(4 / 2) = 2 -> 32
    #   u7 at t=32: the late c2 (sent v3, now v6: s=3) from the buffer with G's c0@32, c1@32
    sim = compass(tmp_path)
    for _ in range(3):
        step(sim)
    sim.step_time[2] = 8.0
    expected = [(18.0, [(2, 16.0, 3), (0, 18.0, 0), (1, 18.0, 0)]), (22.0, [(0, 22.0, 0)]),
                (28.0, [(0, 24.0, 0), (1, 24.0, 1)]), (32.0, [(2, 32.0, 3), (0, 32.0, 0), (1, 32.0, 0)])]
    for n, (now, rows) in enumerate(expected, start=4):
        weighted = by_time(step(sim))
        assert sorted(rows_of(weighted), key=lambda r: (r[1], r[0])) == sorted(rows, key=lambda r: (r[1], r[0]))
        assert weights_of(weighted) == pytest.approx([poly(a.staleness) / 3 for a, _ in weighted])
        assert sim.now == now and sim.version == n
    late = [a for a, _ in weighted if a.client == 2][0]
    assert late.steps == 2 and late.sent_time == 16.0 and late.version == 3


def test_fedcompass_schedule_invariants(tmp_path):
    # Five speeds, q 2..6, 12 updates: every dispatch within [q_min, q_max]; the first one q_max for everyone; a
    # member of a group arrives within one of its step times before the group's expected time (never after it);
    # the weights are (1 + s)^-0.5 / N
    times = [1.0, 1.5, 2.5, 4.0, 7.0]
    sim = make_sim(tmp_path, times, strategy="fedcompass", q_min=2, q_max=6)
    strategy = sim.strategy
    log = spy_dispatch(sim)
    expected_of: dict[tuple[int, float], float] = {}  # (client, sent at) -> its group's expected arrival
    original = sim.dispatch

    def dispatch(client: int, steps: int) -> None:
        gid = strategy.group_of.get(client)
        if gid is not None:
            expected_of[client, sim.now] = strategy.groups[gid].expected
        original(client, steps)

    sim.dispatch = dispatch  # type: ignore[method-assign]
    checked = 0
    for _ in range(12):
        weighted = step(sim)
        assert weights_of(weighted) == pytest.approx([poly(a.staleness) / 5 for a, _ in weighted])
        for a, _ in weighted:
            if a.sent_time > 0:  # not the first dispatch: it was sent for a group
                target = expected_of[a.client, a.sent_time]
                assert target - times[a.client] - 1e-9 < a.time <= target + 1e-9, (a, target)
                checked += 1
    assert checked >= 20
    assert all(2 <= d["steps"] <= 6 for d in log)
    assert [d["now"] for d in log[:5]] == [0.0] * 5 and all(d["steps"] == 6 for d in log[:5])
    assert sorted(d["client"] for d in log[:5]) == list(range(5))


def test_fedcompass_group_members_wait_for_their_group(tmp_path):
    # Step times 3, 5, 6 s; q 2..4. The spec: a group is aggregated when all its members arrived (or at its
    # deadline) together with the general buffer of *late* (and first) arrivals; APPFL keeps a buffer per group.
    #   t=0  all get 4 steps: c0 -> 12, c1 -> 20, c2 -> 24
    #   t=12 c0 (3 s/step) -> new group A: expected 24, deadline 30
    #   t=20 c1 (5) -> A: floor(4 / 5) = 0; new group B: floor((30 + 3 x 4 - 20) / 5) = 4 steps: expected 40,
    #        deadline 50
    #   t=24 c2 (6) -> A: 0; B: floor(16 / 6) = 2 -> joins B, arrives 36
    #   t=24 c0 completes A: u1 = {c0@12, c1@20, c2@24, c0@24}. c0: B gives floor(16 / 3) = 5 > 4; new group C
    #        (B's candidate floor((50 + 5 x 4 - 24) / 3) = 15 > 4): q_max: expected 36, deadline 42
    #   t=36 c2 arrives on time for B (expected 40): it waits for B. c0 completes C: u2 = {c0@36} alone
    #   t=40 c1 completes B: u3 = {c2@36, c1@40}, both sent at v0: s = 2 at this update
    sim = compass(tmp_path, times=(3.0, 5.0, 6.0), rows=6)
    first = by_time(step(sim))
    assert rows_of(first) == [(0, 12.0, 0), (1, 20.0, 0), (0, 24.0, 0), (2, 24.0, 0)]  # by (time, client)
    second = step(sim)
    assert sim.now == 36.0
    assert rows_of(second) == [(0, 36.0, 0)]
    third = by_time(step(sim))
    assert sim.now == 40.0
    assert rows_of(third) == [(2, 36.0, 2), (1, 40.0, 2)]
    assert weights_of(third) == pytest.approx([poly(2) / 3] * 2)


# ---------------------------------------------------------------------------------------------------- checkpoint


CONFIGS = {
    "fedavg": dict(strategy="fedavg", participation=0.5, local_steps=2, weighting="examples", dropout=0.25),
    "async_fedavg": dict(strategy="async_fedavg", local_steps=2, dropout=0.25, client="fedspeed"),
    "async_fedavg_partial": dict(strategy="async_fedavg", participation=0.5, local_steps=2, dropout=0.25),
    "fedbuff": dict(strategy="fedbuff", participation=0.75, buffer=3, local_steps=2, dropout=0.25),
    "fedfix": dict(strategy="fedfix", local_steps=2, window=1.5, dropout=0.25, weighting="examples"),
    "fedcompass": dict(strategy="fedcompass", q_min=2, q_max=5, dropout=0.25),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_checkpoint_round_trip(tmp_path, name):
    times = [0.5, 1.25, 0.75, 2.0]
    fed = CONFIGS[name]
    sim = make_sim(tmp_path, times, rows=10, **fed)
    snapshots = []
    history = []
    for _ in range(8):
        state = sim.state_dict()  # between updates, as the loop saves it
        buf = io.BytesIO()
        torch.save({"sim": state, "model": sim.model.state_dict()}, buf)
        snapshots.append(buf.getvalue())
        weighted = step(sim)
        history.append(([(a.client, a.time, a.sent_time, a.staleness, a.steps, a.dropped, w)
                         for a, w in weighted], [a.delta.clone() for a, _ in weighted], sim.now, sim.version))
    final = flat_params(sim.model)
    for start in (1, 2, 4):
        saved = torch.load(io.BytesIO(snapshots[start]), weights_only=True)
        resumed = make_sim(tmp_path, times, rows=10, **fed)
        resumed.model.load_state_dict(saved["model"])
        resumed.load_state_dict(saved["sim"])
        assert resumed.version == start
        for rows, deltas, now, version in history[start:]:
            weighted = step(resumed)
            assert [(a.client, a.time, a.sent_time, a.staleness, a.steps, a.dropped, w)
                    for a, w in weighted] == rows
            assert all(torch.equal(a.delta, d) for (a, _), d in zip(weighted, deltas))
            assert (resumed.now, resumed.version) == (now, version)
        assert torch.equal(flat_params(resumed.model), final)
        assert resumed.dispatches == sim.dispatches and resumed.bytes_up == sim.bytes_up

