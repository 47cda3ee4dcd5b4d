"""DGC and PowerSGD as DDP communication hooks, on 2 gloo processes in float64.

Each spawned worker function groups several checks (a spawn costs seconds): parity with plain DDP where the
compression is lossless, per-step gradients and local gradients for a single-process reference written from the
papers' equations, byte counts, DDP's bucket rebuild (iteration 0 runs with one bucket, later ones with several),
and a save/resume round trip of the hook state.
"""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from distributed_testing import spawn
from trainlab.distributed.compression import DGC_WARMUP_DENSITIES, DGCHook, PowerSGDHook, dgc_density

STEPS = 6
SNAPSHOT = 3
BUCKET_CAP_MB = 0.002  # ~2 KB: several buckets after DDP's rebuild


class _Net(nn.Module):
    """Registration order differs from use order, so the rebuilt buckets differ from the first ones."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(16, 32)
        self.inp = nn.Linear(8, 16)
        self.out = nn.Linear(32, 4)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(torch.tanh(self.inp(x)))))


SHAPES = {n: tuple(p.shape) for n, p in _Net().named_parameters()}


def _batch(rank: int, step: int, n: int = 24):
    gen = torch.Generator().manual_seed(1000 * step + rank)
    return (
        torch.randn(n, 8, generator=gen, dtype=torch.float64),
        torch.randn(n, 4, generator=gen, dtype=torch.float64),
    )


def _make(hook=None):
    torch.manual_seed(0)
    ddp = DDP(_Net().double(), bucket_cap_mb=BUCKET_CAP_MB)
    if hook is not None:
        hook.register(ddp)
    return ddp, torch.optim.SGD(ddp.parameters(), lr=0.1)


def _step(ddp, opt, rank, step, local=None):
    """One training step; returns (local gradients, gradients after the hook)."""
    x, y = _batch(rank, step)
    local_grads = None
    if local is not None:
        local.load_state_dict(ddp.module.state_dict())
        local.zero_grad()
        F.mse_loss(local(x), y).backward()
        local_grads = {n: p.grad.clone() for n, p in local.named_parameters()}
    opt.zero_grad()
    F.mse_loss(ddp(x), y).backward()
    agg = {n: p.grad.clone() for n, p in ddp.module.named_parameters()}
    opt.step()
    return local_grads, agg


def _params(ddp):
    return {n: p.detach().clone() for n, p in ddp.module.named_parameters()}


def _max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _train_recorded(rank, make_hook):
    """STEPS steps with a hook, recording everything; then resume a fresh model + hook from step SNAPSHOT."""
    hook = make_hook()
    ddp, opt = _make(hook)
    local = _Net().double()
    rec = {"local": [], "agg": [], "bytes": [], "layouts": [], "density": []}
    for step in range(STEPS):
        if step == SNAPSHOT:
            snap_model = _roundtrip(ddp.module.state_dict())
            snap_hook = _roundtrip(hook.state_dict())
        if hasattr(hook, "current_density"):
            rec["density"].append(hook.current_density())
        lg, agg = _step(ddp, opt, rank, step, local)
        rec["local"].append(lg)
        rec["agg"].append(agg)
        rec["bytes"].append(hook.meter.end_step())
        rec["layouts"].append([list(hook.last_layout[i]) for i in sorted(hook.last_layout)])
        hook.last_layout.clear()
    rec["final"] = _params(ddp)
    rec["state"] = hook.state_dict()
    rec["meter_total"], rec["dense_bytes"] = hook.meter.total, hook.dense_bytes

    again = make_hook()
    again.load_state_dict(snap_hook)
    ddp2, opt2 = _make(again)
    ddp2.module.load_state_dict(snap_model)
    for step in range(SNAPSHOT, STEPS):
        _step(ddp2, opt2, rank, step)
    rec["resumed"] = _params(ddp2)
    rec["resumed_meter_total"] = again.meter.total
    return rec


def _parity_with_ddp(rank, hook, steps=4):
    """Max parameter difference between DDP with ``hook`` and plain DDP after ``steps`` steps."""
    a, opt_a = _make(hook)
    b, opt_b = _make()
    for step in range(steps):
        _step(a, opt_a, rank, step)
        _step(b, opt_b, rank, step)
    return _max_diff(_params(a), _params(b))


def _worker(rank, world_size):
    """Everything distributed in one spawn (process start and the first DDP construction cost seconds each)."""
    return {"dgc": _dgc_worker(rank, world_size), "powersgd": _powersgd_worker(rank, world_size)}


@pytest.mark.slow
def test_dgc_and_powersgd_hooks_on_two_gloo_processes():
    # One test, not two sharing a fixture: under pytest -n 2 a shared module fixture would spawn twice.
    spawned = spawn(_worker, 2)
    _check_dgc([r["dgc"] for r in spawned])
    _check_powersgd([r["powersgd"] for r in spawned])


# ---------------------------------------------------------------------------------------------- DGC
DGC_OPTS = dict(density=0.001, momentum=0.9, clip_norm=0.05, warmup_steps=4, min_sparse_numel=64)


def _dgc_worker(rank, world_size):
    lossless = DGCHook(density=1.0, momentum=0.0, warmup_steps=0, min_sparse_numel=64)
    out = {"parity": _parity_with_ddp(rank, lossless), "lossless_ratio": lossless.dense_bytes / lossless.meter.total}
    out.update(_train_recorded(rank, lambda: DGCHook(**DGC_OPTS)))
    return out


def _dgc_reference(local, world, density_of, momentum, clip_norm, min_sparse_numel):
    """DGC from the paper's equations, both workers simulated in one process; returns per-step aggregates."""
    u = [dict() for _ in range(world)]
    v = [dict() for _ in range(world)]
    u_dense = {}
    out, n_clipped = [], 0
    for t in range(len(local[0])):
        agg = {}
        for name, shape in SHAPES.items():
            numel = math.prod(shape)
            clipped = []
            for r in range(world):
                g = local[r][t][name].clone()
                thr = clip_norm / math.sqrt(world)
                norm = float(g.norm())
                if thr / (norm + 1e-6) < 1:
                    g = g * (thr / (norm + 1e-6))
                    n_clipped += 1
                clipped.append(g)
            if len(shape) <= 1 or numel < min_sparse_numel:
                mean = sum(clipped) / world
                u_dense[name] = momentum * u_dense.get(name, torch.zeros_like(mean)) + mean
                agg[name] = u_dense[name]
                continue
            k = math.ceil(density_of(t) * numel)
            total = torch.zeros(numel, dtype=torch.float64)
            for r in range(world):
                g = clipped[r].reshape(-1)
                u[r][name] = momentum * u[r].get(name, torch.zeros_like(g)) + g
                v[r][name] = v[r].get(name, torch.zeros_like(g)) + u[r][name]
                sent = torch.argsort(v[r][name].abs(), descending=True)[:k]
                total[sent] += v[r][name][sent]
                v[r][name][sent] = 0
                u[r][name][sent] = 0
            agg[name] = (total / world).view(shape)
        out.append(agg)
    return out, n_clipped


def _check_dgc(res):
    """Lossless parity with DDP, warm-up ladder, bucket rebuild, paper reference, bytes, resume."""
    r0, r1 = res
    # density 1, no clipping, no momentum: plain DDP
    assert r0["parity"] < 1e-12 and r1["parity"] < 1e-12
    # warm-up ladder as the hook applied it
    assert r0["density"] == [0.25, 0.0625, 0.015625, 0.00390625, 0.001, 0.001]
    # DDP rebuilt its buckets after iteration 0: one bucket first, several later; the state is keyed by name
    assert len(r0["layouts"][0]) == 1 and all(len(lay) >= 2 for lay in r0["layouts"][1:])
    assert set(r0["state"]["velocity"]) == {n for n, s in SHAPES.items() if len(s) > 1}
    assert set(r0["state"]["momentum"]) == set(SHAPES)
    # the aggregate equals the single-process reference of the paper's equations, on both workers
    ref, n_clipped = _dgc_reference([r0["local"], r1["local"]], 2, lambda t: dgc_density(t, 0.001, 4), 0.9, 0.05, 64)
    assert 0 < n_clipped < 2 * STEPS * len(SHAPES)  # local clipping was exercised, and not on every tensor
    for t in range(STEPS):
        for name in SHAPES:
            assert torch.equal(r0["agg"][t][name], r1["agg"][t][name])
            torch.testing.assert_close(r0["agg"][t][name], ref[t][name], rtol=0, atol=1e-13)
    # bytes: k * (8-byte value + 4-byte index) per sparsified tensor, dense tensors at 8 bytes per element
    for t in range(STEPS):
        k_bytes = sum(math.ceil(r0["density"][t] * math.prod(s)) * 12 for s in SHAPES.values() if len(s) > 1)
        dense = sum(math.prod(s) * 8 for s in SHAPES.values() if len(s) == 1)
        assert r0["bytes"][t] == r1["bytes"][t] == k_bytes + dense
    assert r0["dense_bytes"] == STEPS * sum(math.prod(s) * 8 for s in SHAPES.values())
    assert r0["dense_bytes"] / r0["meter_total"] > 5
    assert r0["lossless_ratio"] == pytest.approx(
        sum(math.prod(s) for s in SHAPES.values())
        * 8
        / (
            sum(math.prod(s) * 12 for s in SHAPES.values() if len(s) > 1)
            + sum(math.prod(s) * 8 for s in SHAPES.values() if len(s) == 1)
        )
    )
    # resume from a weights_only round trip of the hook state at step SNAPSHOT continues identically
    for r in res:
        assert _max_diff(r["final"], r["resumed"]) == 0.0
        assert r["resumed_meter_total"] == r["meter_total"]


# ---------------------------------------------------------------------------------------------- PowerSGD
PSGD_OPTS = dict(rank=1, start_iter=1)


def _powersgd_worker(rank, world_size):
    full = PowerSGDHook(rank=64, min_compression_rate=0.0, start_iter=1)
    out = {"parity": _parity_with_ddp(rank, full, steps=4)}
    out.update(_train_recorded(rank, lambda: PowerSGDHook(**PSGD_OPTS)))
    return out


def _check_powersgd(res):
    """Exact mean at full rank, dense start steps, error feedback identity, bytes, resume."""
    r0, r1 = res
    # rank >= min(n, m): the compressed mean is the exact mean (error feedback on, warm start on)
    assert r0["parity"] < 1e-10 and r1["parity"] < 1e-10
    assert len(r0["layouts"][0]) == 1 and all(len(lay) >= 2 for lay in r0["layouts"][1:])
    mats = {n for n, s in SHAPES.items() if len(s) > 1}
    assert set(r0["state"]["error"]) == set(r0["state"]["q"]) == mats
    start = PSGD_OPTS["start_iter"]
    for t in range(STEPS):
        for name in SHAPES:
            assert torch.equal(r0["agg"][t][name], r1["agg"][t][name])
            if t < start or name not in mats:  # dense all-reduce: the exact mean
                mean = (r0["local"][t][name] + r1["local"][t][name]) / 2
                torch.testing.assert_close(r0["agg"][t][name], mean, rtol=0, atol=1e-15)
    # error feedback: sum of what was applied + the final local error == sum of the local gradients, per worker
    for r in res:
        for name in mats:
            applied = sum(r["agg"][t][name] for t in range(start, STEPS))
            true = sum(r["local"][t][name] for t in range(start, STEPS))
            err = r["state"]["error"][name].view(SHAPES[name])
            torch.testing.assert_close(applied + err, true, rtol=0, atol=1e-13)
            assert float(err.abs().max()) > 1e-6  # rank 1 really is lossy here
    # bytes: dense steps first, then (n + m) * r * 8 per matrix plus the dense vectors
    full_bytes = sum(math.prod(s) * 8 for s in SHAPES.values())
    low = sum((s[0] + math.prod(s[1:])) * 8 for s in SHAPES.values() if len(s) > 1) + sum(
        math.prod(s) * 8 for s in SHAPES.values() if len(s) == 1
    )
    assert r0["bytes"] == r1["bytes"] == [full_bytes] * start + [low] * (STEPS - start)
    assert r0["dense_bytes"] == STEPS * full_bytes
    for r in res:
        assert _max_diff(r["final"], r["resumed"]) == 0.0
        assert r["resumed_meter_total"] == r["meter_total"]


# ---------------------------------------------------------------------------------------------- no processes
def test_warmup_schedule_follows_the_paper():
    got = [dgc_density(s, 0.001, 8) for s in range(10)]
    assert got == [0.25, 0.25, 0.0625, 0.0625, 0.015625, 0.015625, 0.00390625, 0.00390625, 0.001, 0.001]
    assert [1 - d for d in DGC_WARMUP_DENSITIES] == [0.75, 0.9375, 0.984375, 0.99609375]
    assert dgc_density(0, 0.001, 0) == 0.001
    assert dgc_density(0, 0.1, 4) == 0.25 and dgc_density(2, 0.1, 4) == 0.1  # never below the final density
    assert dgc_density(3, 1.0, 4) == 1.0
    hook = DGCHook(density=0.001, warmup_steps=0)
    assert hook.num_selected(1000) == 1 and hook.num_selected(1001) == 2 and hook.num_selected(10) == 1


def test_bad_arguments_raise_one_line_value_errors():
    for make in (
        lambda: DGCHook(density=0),
        lambda: DGCHook(density=1.5),
        lambda: DGCHook(momentum=1.0),
        lambda: DGCHook(clip_norm=0),
        lambda: DGCHook(warmup_steps=-1),
        lambda: DGCHook(min_sparse_numel=-2),
        lambda: DGCHook(warmup_densities=(0.5, 0.0)),
        lambda: DGCHook(momentum=0.0, nesterov=True),
        lambda: PowerSGDHook(rank=0),
        lambda: PowerSGDHook(rank=1.5),
        lambda: PowerSGDHook(start_iter=-1),
        lambda: PowerSGDHook(min_compression_rate=-1),
        lambda: DGCHook(meter=object()),
    ):
        with pytest.raises(ValueError) as err:
            make()
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError):
        DGCHook().register(nn.Linear(2, 2))


def test_powersgd_compresses_only_when_it_saves_bytes():
    hook = PowerSGDHook(rank=2)
    assert hook.is_compressed(torch.zeros(64, 64)) and not hook.is_compressed(torch.zeros(64))
    assert not hook.is_compressed(torch.zeros(3, 3))  # (3 + 3) * 2 > 9
    assert hook.is_compressed(torch.zeros(8, 3, 3, 3))  # conv: 8 x 27 -> (8 + 27) * 2 < 216
    assert PowerSGDHook(rank=64, min_compression_rate=0).is_compressed(torch.zeros(3, 3))


def test_state_dicts_are_weights_only_and_round_trip():
    dgc = DGCHook()
    dgc.u, dgc.v, dgc.step, dgc.dense_bytes = {"w": torch.ones(3)}, {"w": torch.arange(3.0)}, 7, 99
    dgc.meter.add(12, "allgather")
    back = DGCHook()
    back.load_state_dict(_roundtrip(dgc.state_dict()))
    assert back.step == 7 and back.dense_bytes == 99 and back.meter.total == 12
    assert torch.equal(back.v["w"], dgc.v["w"]) and torch.equal(back.u["w"], dgc.u["w"])
    psgd = PowerSGDHook()
    psgd.error, psgd.q, psgd.step = {"w": torch.ones(2, 3)}, {"w": torch.ones(3, 2)}, 4
    again = PowerSGDHook()
    again.load_state_dict(_roundtrip(psgd.state_dict()))
    assert again.step == 4 and torch.equal(again.error["w"], psgd.error["w"]) and torch.equal(again.q["w"], psgd.q["w"])


def test_dgc_local_step_nesterov_and_masking_follow_the_equations():
    torch.manual_seed(1)
    grads = [torch.randn(50, dtype=torch.float64) for _ in range(5)]
    for nesterov, masking in ((True, True), (False, False), (True, False)):
        hook = DGCHook(momentum=0.9, nesterov=nesterov, momentum_masking=masking, clip_norm=1.0, warmup_steps=0)
        u = torch.zeros(50, dtype=torch.float64)
        v = torch.zeros(50, dtype=torch.float64)
        for raw in grads:
            values, idx = hook.local_step("w", raw.clone(), 5, 2)
            g = raw * min(1.0, 0.5**0.5 / (float(raw.norm()) + 1e-6))  # world 2: threshold 1 / sqrt(2)
            u = 0.9 * u + g
            v = v + (g + 0.9 * u if nesterov else u)
            top = torch.argsort(v.abs(), descending=True)[:5]
            assert sorted(idx.tolist()) == sorted(top.tolist())
            torch.testing.assert_close(values[torch.argsort(idx)], v[top.sort().values])
            v[top] = 0
            if masking:
                u[top] = 0
            torch.testing.assert_close(hook.v["w"], v)
            torch.testing.assert_close(hook.u["w"], u)
