"""Gossip averaging on Poisson clocks (DADAO's decoupled clocks; pairwise averages) and synchronous Metropolis rounds.

- in process: the graphs; the mixing matrices are symmetric and doubly stochastic (exactly, as fractions); repeated
  firings reach consensus on a fixed vector, the complete graph faster than the ring; the Poisson schedule is a
  pure function of (seed, step) with the documented rate; wrong settings are one-line errors;
- four gloo processes: the point-to-point gossip follows the schedule (equal to the product of the firings' matrices
  applied in one process) and counts a model each way per firing; synchronous rounds on the complete graph give
  the exact mean; through the trainer, gossip on the complete graph with synchronous rounds equals DDP for SGD
  (with and without momentum); evaluation sees the workers' average; a resume is exact.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from distributed_testing import Stepper, spawn
from trainlab.config import ConfigError
from trainlab.distributed.comm import CommMeter
from trainlab.distributed.env import DistEnv
from trainlab.distributed.gossip import (Gossip, edge_rate, expected_pairwise_matrix, graph_edges, metropolis_matrix,
                                         metropolis_weights, pairwise_matrix, poisson_firings, schedule_matrix,
                                         second_eigenvalue)
from trainlab.rundir import checkpoints as ckpt
from trainlab.train.config import from_cli

BASE = ["workload.p=13", "model.width=16", "batch_size=40", "dtype=float64", "steps=50", "trace=false"]
STEPS = 4


# -- in process ----------------------------------------------------------------------------------------------

def test_graphs():
    assert graph_edges("ring", 4) == [(0, 1), (0, 3), (1, 2), (2, 3)]
    assert graph_edges("ring", 2) == [(0, 1)] and graph_edges("ring", 1) == []
    assert len(graph_edges("complete", 5)) == 10
    degrees = lambda n, e: sorted(sum(1 for x in e if i in x) for i in range(n))  # noqa: E731
    assert degrees(8, graph_edges("torus", 8)) == [3] * 8  # 2 x 4: the two vertical neighbours coincide
    assert degrees(9, graph_edges("torus", 9)) == [4] * 9  # 3 x 3
    with pytest.raises(ValueError, match="torus"):
        graph_edges("torus", 7)
    a, b = graph_edges("random", 10, p=0.3, seed=1), graph_edges("random", 10, p=0.3, seed=2)
    assert a == graph_edges("random", 10, p=0.3, seed=1) and a != b
    W = metropolis_matrix(10, a)
    assert second_eigenvalue(W) < 1 - 1e-9  # connected: the eigenvalue 1 is simple


@pytest.mark.parametrize("graph,n", [("ring", 5), ("ring", 2), ("torus", 8), ("complete", 4), ("random", 9)])
def test_mixing_matrices_are_symmetric_and_doubly_stochastic(graph, n):
    edges = graph_edges(graph, n, p=0.4, seed=3)
    W = metropolis_weights(n, edges)
    for i in range(n):
        assert sum(W[i]) == 1 and sum(W[j][i] for j in range(n)) == 1  # exact fractions
        assert all(W[i][j] == W[j][i] and W[i][j] >= 0 for j in range(n))
        assert all(W[i][j] == 0 for j in range(n) if j != i and (min(i, j), max(i, j)) not in edges)
    for i, j in edges:
        P = pairwise_matrix(n, i, j)
        assert torch.equal(P, P.T) and torch.equal(P.sum(0), torch.ones(n, dtype=torch.float64))
        assert torch.equal(P.sum(1), torch.ones(n, dtype=torch.float64))


def test_complete_graph_metropolis_is_the_exact_average():
    n = 4
    W = metropolis_weights(n, graph_edges("complete", n))
    assert all(w == Fraction(1, n) for row in W for w in row)
    x = torch.randn(n, 3, dtype=torch.float64)
    torch.testing.assert_close(metropolis_matrix(n, graph_edges("complete", n)) @ x, x.mean(0).expand(n, 3),
                               rtol=0, atol=1e-15)


def test_poisson_gossip_reaches_consensus_and_the_complete_graph_mixes_faster():
    n = 8
    x0 = torch.randn(n, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mean = x0.mean(0)

    def spread(graph: str, steps: int, seed: int = 0) -> float:
        edges = graph_edges(graph, n)
        x = x0.clone()
        for t in range(1, steps + 1):
            x = schedule_matrix(n, poisson_firings(n, edges, 1.0, seed, t)) @ x
            torch.testing.assert_close(x.mean(0), mean, rtol=0, atol=1e-12)  # the mean is kept
        return float((x - mean).norm())

    start = float((x0 - mean).norm())
    assert spread("ring", 400) < 1e-6 * start  # consensus on the ring
    for steps in (5, 10, 20):
        assert spread("complete", steps) < spread("ring", steps)
    # the expected one-firing matrix I - L/(2|E|): ring's second eigenvalue closer to 1 than the complete graph's
    ring, complete = (second_eigenvalue(expected_pairwise_matrix(n, graph_edges(g, n))) for g in ("ring", "complete"))
    assert complete < ring < 1


def test_poisson_schedule_is_pure_seeded_and_has_the_documented_rate():
    n, rate = 8, 1.5
    edges = graph_edges("ring", n)
    a = [poisson_firings(n, edges, rate, 4, t) for t in range(1, 3001)]
    assert a == [poisson_firings(n, edges, rate, 4, t) for t in range(1, 3001)]
    assert a != [poisson_firings(n, edges, rate, 5, t) for t in range(1, 3001)]
    assert all(e in edges for f in a for e in f)
    per_worker = [sum(i in e for f in a for e in f) / len(a) for i in range(n)]
    assert all(abs(v - rate) < 0.1 * rate for v in per_worker), per_worker  # each worker: `rate` firings per step
    per_edge = sum(len(f) for f in a) / len(a) / len(edges)
    assert abs(per_edge - edge_rate(rate, n, len(edges))) < 0.05 * per_edge
    assert poisson_firings(1, [], rate, 0, 1) == []


def test_wrong_settings_are_one_line_errors():
    cases = {
        ("dist.graph=torus",): "dist.graph: applies to gossip only",
        ("dist=diloco", "dist.gossip_rate=2"): "dist.gossip_rate: applies to gossip only",
        ("dist=gossip", "dist.graph_p=0.3"): "dist.graph_p: applies to dist.graph=random only",
        ("dist=gossip", "dist.gossip_clock=synchronous", "dist.gossip_rate=2"): "dist.gossip_rate: applies to "
                                                                                "dist.gossip_clock=poisson",
        ("dist=gossip", "dist.gossip_clock=synchronous", "dist.gossip_seed=3"): "dist.gossip_seed",
        ("dist=gossip", "dist.stragglers=2"): "dist.stragglers: applies to gradient_coding only",
        ("dist=gossip", "dist.compression=powersgd"): "dist.compression",
        ("dist=gossip", "dist.inner_steps=5"): "dist.inner_steps",
        ("dist=gossip", "dist.graph=star"): "dist.graph",
        ("dist=gossip", "dist.gossip_rate=0"): "dist.gossip_rate",
    }
    for args, start in cases.items():
        with pytest.raises(ConfigError) as err:
            from_cli(None, list(args))
        message = str(err.value)
        assert message.startswith(start) and "\n" not in message, (args, message)
    with pytest.raises(ConfigError) as err:  # a graph the processes cannot form: refused when they are known
        Stepper([*BASE, "dist=gossip", "dist.graph=torus"], DistEnv())
    assert str(err.value).startswith("dist.graph: torus over 1 processes") and "\n" not in str(err.value)
    assert not dist.is_initialized()


def test_one_process_gossip_is_the_plain_trainer():
    reference = Stepper(BASE, DistEnv()).train(STEPS).model.state_dict()
    parts = Stepper([*BASE, "dist=gossip"], DistEnv())
    try:
        parts.train(STEPS)
        for k, v in reference.items():
            torch.testing.assert_close(parts.model.state_dict()[k], v, rtol=1e-12, atol=1e-12)
        assert parts.strategy.meter.total == 0
    finally:
        parts.strategy.finish()


# -- four processes ------------------------------------------------------------------------------------------

class Vector(nn.Module):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.x = nn.Parameter(value.clone())


def _x0(world: int) -> torch.Tensor:
    return torch.randn(world, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _low_level(rank: int, world: int):
    out = {}
    x0 = _x0(world)
    for graph in ("ring", "complete"):
        m = Vector(x0[rank])
        g = Gossip(m, graph=graph, clock="poisson", rate=1.0, seed=3, meter=CommMeter())
        for t in range(1, 13):
            g.after_step(t)
        out[graph] = (m.x.detach().clone(), g.firings, dict(g.meter.by_kind))
        with g.averaged_weights():
            out[f"{graph}_avg"] = m.x.detach().clone()
        out[f"{graph}_back"] = torch.equal(m.x.detach(), out[graph][0])
        out[f"{graph}_consensus"] = g.consensus_distance()
    m = Vector(x0[rank])
    g = Gossip(m, graph="complete", clock="synchronous", meter=CommMeter())
    g.after_step(1)
    out["sync"] = (m.x.detach().clone(), dict(g.meter.by_kind))
    return out


def _trainer(rank: int, world: int, root: str):
    env, out = DistEnv(rank=rank, world_size=world), {}

    def run(args, steps=STEPS):
        parts = Stepper([*BASE, *args], env).train(steps)
        return {k: v.clone() for k, v in parts.model.state_dict().items()}, parts

    for opt in (["optimizer=sgd", "optimizer.lr=0.1"],
                ["optimizer=sgd", "optimizer.lr=0.05", "optimizer.momentum=0.9", "optimizer.weight_decay=0.01"]):
        key = "momentum" if len(opt) > 2 else "sgd"
        out[f"ddp_{key}"], parts = run(["dist=ddp", *opt])
        out[f"gossip_{key}"], parts = run(["dist=gossip", "dist.graph=complete", "dist.gossip_clock=synchronous",
                                           *opt])
        out[f"gossip_{key}_bytes"] = dict(parts.strategy.meter.by_kind)
    out["P"] = sum(q.numel() * q.element_size() for q in parts.model.parameters() if q.requires_grad)
    # ring with Poisson clocks: the workers differ; evaluation sees their average
    local, parts = run(["dist=gossip", "dist.gossip_rate=0.5"])
    with parts.strategy.eval_weights():
        averaged = {k: v.clone() for k, v in parts.model.state_dict().items()}
    out["ring"] = {"local": local, "averaged": averaged, "row": parts.evaluate(),
                   "back": all(torch.equal(v, parts.model.state_dict()[k]) for k, v in local.items())}
    # resume: checkpoint at step 3 (every worker's state, gathered to rank 0), continue to 7
    args = [*BASE, "dist=gossip", "dist.graph=ring", "dist.gossip_rate=2", "dist.gossip_seed=7"]
    parts = Stepper(args, env).train(3)
    payload = parts.checkpoint_payload()
    if rank == 0:
        ckpt.save(Path(root), parts.step, payload)
        out["ckpt"] = {"models": [w["model"] for w in payload["ranks"]],
                       "average": payload["ranks"][0]["strategy"]["average_model"],
                       "others": [set(w["strategy"]) for w in payload["ranks"][1:]]}
    dist.barrier()
    parts.train(4)
    again = Stepper(args, env)
    again.restore(ckpt.load(Path(root)))
    assert again.step == 3
    again.train(4)
    out["resume"] = [dict(parts.model.state_dict()), dict(again.model.state_dict())]
    out["resume_state"] = [parts.strategy.state_dict(), again.strategy.state_dict()]
    return out


def _all(rank: int, world: int, root: str):
    return {"low": _low_level(rank, world), "trainer": _trainer(rank, world, root)}


@pytest.mark.slow
def test_four_processes_follow_the_schedule_and_equal_ddp_on_the_complete_graph(tmp_path):
    world = 4
    results = spawn(_all, world, (str(tmp_path),))
    x0 = _x0(world)
    nbytes = 6 * 8
    for graph in ("ring", "complete"):
        edges = graph_edges(graph, world)
        firings = [poisson_firings(world, edges, 1.0, 3, t) for t in range(1, 13)]
        want = schedule_matrix(world, [e for f in firings for e in f]) @ x0  # one process, the same schedule
        assert sum(len(f) for f in firings) > 12  # it gossiped
        for rank, r in enumerate(results):
            x, count, by_kind = r["low"][graph]
            torch.testing.assert_close(x, want[rank], rtol=0, atol=1e-14)
            mine = sum(rank in e for f in firings for e in f)
            assert count == mine
            assert by_kind.get("gossip", 0) == mine * nbytes  # the model, once per firing (each way)
            torch.testing.assert_close(r["low"][f"{graph}_avg"], x0.mean(0), rtol=0, atol=1e-14)  # mean kept
            assert r["low"][f"{graph}_back"]
            spread = float(((want - want.mean(0)) ** 2).sum(1).mean().sqrt())
            assert abs(r["low"][f"{graph}_consensus"] - spread) < 1e-12
    for r in results:  # a synchronous round on the complete graph: the exact mean, bit-identical on every worker
        x, by_kind = r["low"]["sync"]
        assert torch.equal(x, results[0]["low"]["sync"][0])
        torch.testing.assert_close(x, x0.mean(0), rtol=0, atol=1e-15)
        assert by_kind == {"gossip": (world - 1) * nbytes}
    P = results[0]["trainer"]["P"]
    for r in results:
        t = r["trainer"]
        for key in ("sgd", "momentum"):  # local SGD averaged every step == DDP (update linear in the gradient)
            for k, v in t[f"ddp_{key}"].items():
                torch.testing.assert_close(t[f"gossip_{key}"][k], v, rtol=1e-12, atol=1e-12, msg=f"{key} {k}")
            assert t[f"gossip_{key}_bytes"] == {"gossip": STEPS * (world - 1) * P}
        ring = t["ring"]
        assert ring["back"]
        row = ring["row"]
        assert row["comm_bytes_total"] > 0 and row["step"] == STEPS
        first, resumed = t["resume"]
        for k in first:
            assert torch.equal(first[k], resumed[k]), k
        saved, again = t["resume_state"]
        assert saved.keys() == again.keys() and saved["meter"] == again["meter"] and saved["gossip"] == again["gossip"]
    # the checkpoint keeps every worker's model, and on worker 0 their average
    saved = results[0]["trainer"]["ckpt"]
    assert len(saved["models"]) == world and all("average_model" not in keys for keys in saved["others"])
    for k, v in saved["average"].items():
        torch.testing.assert_close(v, sum(m[k] for m in saved["models"]) / world, rtol=0, atol=1e-14)
    assert any(not torch.equal(saved["models"][0][k], saved["models"][1][k]) for k in saved["average"])
    # ring: the workers hold different models, and evaluation sees their exact average on every worker
    locals_ = [r["trainer"]["ring"]["local"] for r in results]
    for k in locals_[0]:
        mean = sum(loc[k] for loc in locals_) / world
        for r in results:
            torch.testing.assert_close(r["trainer"]["ring"]["averaged"][k], mean, rtol=0, atol=1e-14)
    assert any(not torch.equal(locals_[0][k], locals_[1][k]) for k in locals_[0])
    # the resumed workers differ from one another too (a real per-worker resume)
    assert any(not torch.equal(results[0]["trainer"]["resume"][0][k], results[2]["trainer"]["resume"][0][k])
               for k in results[0]["trainer"]["resume"][0])
