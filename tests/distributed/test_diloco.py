"""DiLoCo (Douillard et al. 2023) and Streaming DiLoCo (Douillard et al. 2025) against references.

- H = 1 with an identity outer step equals DDP (PyTorch's DistributedDataParallel, mean of gradients) in float64;
- H > 1 and every Streaming DiLoCo variant equal a single-process simulation of the papers' algorithms over
  both workers (:func:`simulate` below, written from the papers' pseudo-code, not from the implementation);
- the outer step equals ``torch.optim.SGD(nesterov=True)`` applied to the all-gathered mean pseudo-gradient;
- byte counts: parameter bytes per DiLoCo sync (H-fold fewer than DDP), fragment bytes or codes + scales per
  Streaming DiLoCo exchange;
- the overlap defers the wait by τ steps; state_dict round-trips mid-run (also with an exchange in flight).
"""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.distributed as dist
from torch import nn

from distributed_testing import spawn
from trainlab.distributed import quantize as qz
from trainlab.distributed.comm import CommMeter
from trainlab.distributed.diloco import DiLoCo, StreamingDiLoCo, layer_key, strided_fragments

DIN, DOUT, BATCH = 4, 2, 5


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(DIN, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, DOUT)).double()


def batch(rank: int, step: int):
    g = torch.Generator().manual_seed(1000 * rank + step)
    return torch.randn(BATCH, DIN, generator=g, dtype=torch.float64), torch.randn(BATCH, DOUT, generator=g,
                                                                                 dtype=torch.float64)


def make_inner(model: nn.Module, kind: str):
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.1)
    if kind == "sgdm":
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    if kind == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1, betas=(0.9, 0.95))
    raise ValueError(kind)


def inner_step(model: nn.Module, opt, rank: int, step: int) -> None:
    x, y = batch(rank, step)
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()


def param_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def snapshot(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


# -- the papers' algorithms, simulated over all workers in one process ----------------------------------------

def simulate(world: int, steps: int, *, inner: str, H: int, lr: float, mom: float, nesterov: bool = True, P: int = 1,
             tau: int = 0, alpha: float = 0.0, bits: int | None = None, block: int = qz.DEFAULT_BLOCK_SIZE):
    """Streaming DiLoCo's Algorithm (DiLoCo when P = 1, τ = 0, α = 0) for ``world`` workers: returns the final
    global parameters and each worker's local parameters."""
    models = [make_model() for _ in range(world)]
    opts = [make_inner(m, inner) for m in models]
    names = [n for n, _ in models[0].named_parameters()]
    glob = [p.detach().clone() for p in models[0].parameters()]
    outer = torch.optim.SGD(glob, lr=lr, momentum=mom, nesterov=nesterov and mom > 0)
    frags = strided_fragments(names, P)
    offsets = [p * H // P for p in range(P)]
    pending = []  # (due step, fragment, averaged outer gradient)
    for t in range(1, steps + 1):
        for r in range(world):
            inner_step(models[r], opts[r], r, t)
        for p in range(P):
            if (t - offsets[p]) % H == 0:
                deltas = []
                for r in range(world):
                    local = list(models[r].parameters())
                    d = torch.cat([(glob[i] - local[i].detach()).reshape(-1) for i in frags[p]])
                    deltas.append(qz.dequantize(qz.quantize(d, bits, block)) if bits else d)
                # quantised outer gradients are averaged in fp32 after dequantisation (the paper's accumulation)
                pending.append((t + tau, p, (sum(deltas) / world).double()))
        for due, p, avg in [x for x in pending if x[0] == t]:
            off = 0
            for i in frags[p]:
                glob[i].grad = avg[off:off + glob[i].numel()].view_as(glob[i]).clone()
                off += glob[i].numel()
            outer.step()
            for i in frags[p]:
                glob[i].grad = None
            with torch.no_grad():
                for m in models:
                    local = list(m.parameters())
                    for i in frags[p]:
                        local[i].copy_(alpha * local[i] + (1 - alpha) * glob[i])
        pending = [x for x in pending if x[0] != t]
    return [g.detach().clone() for g in glob], [snapshot(m) for m in models]


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert len(a) == len(b)
    return max((x - y).abs().max().item() for x, y in zip(a, b))


# -- single process --------------------------------------------------------------------------------------------

def test_one_process_identity_outer_step_is_the_inner_trajectory():
    """No process group, outer lr 1, momentum 0: θ_g − (θ_g − θ_local) = θ_local, so nothing changes."""
    ref, m = make_model(), make_model()
    ref_opt, opt = make_inner(ref, "sgdm"), make_inner(m, "sgdm")
    d = DiLoCo(m, inner_steps=3, outer_lr=1.0, outer_momentum=0.0)
    for t in range(1, 11):
        inner_step(ref, ref_opt, 0, t)
        inner_step(m, opt, 0, t)
        d.after_inner_step(t)
        assert max_diff(snapshot(ref), snapshot(m)) <= 1e-15
    assert d.outer_steps == 3 and d.meter.total == 0  # nothing is sent without a process group


def test_outer_step_is_torch_nesterov_sgd_one_process():
    m = make_model()
    opt = make_inner(m, "adamw")
    d = DiLoCo(m, inner_steps=2)  # paper defaults: lr 0.7, momentum 0.9, Nesterov
    assert (d.outer_lr, d.outer_momentum, d.nesterov) == (0.7, 0.9, True)
    glob = snapshot(m)
    ref = [g.clone() for g in glob]
    ref_opt = torch.optim.SGD(ref, lr=0.7, momentum=0.9, nesterov=True)
    for t in range(1, 9):
        inner_step(m, opt, 0, t)
        if t % 2 == 0:
            for r, p in zip(ref, m.parameters()):
                r.grad = r.detach() - p.detach()
            ref_opt.step()
        d.after_inner_step(t)
        if t % 2 == 0:
            assert max_diff(list(d.global_parameters().values()), ref) == 0.0
            assert max_diff(snapshot(m), ref) == 0.0


def test_global_weights_context_restores_local_weights():
    m = make_model()
    opt = make_inner(m, "sgd")
    d = DiLoCo(m, inner_steps=4)
    for t in range(1, 7):
        inner_step(m, opt, 0, t)
        d.after_inner_step(t)
    local = snapshot(m)
    with d.global_weights() as mm:
        assert mm is m and max_diff(snapshot(m), list(d.global_parameters().values())) == 0.0
        assert max_diff(snapshot(m), local) > 0
    assert max_diff(snapshot(m), local) == 0.0


def test_low_precision_parameters_keep_an_fp32_global_copy():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(DIN, 6), nn.Tanh(), nn.Linear(6, DOUT)).to(torch.bfloat16)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    d = StreamingDiLoCo(m, inner_steps=2, fragments=2, alpha=0.5)
    assert all(g.dtype == torch.float32 for g in d.global_parameters().values())
    for t in range(1, 5):
        x, y = batch(0, t)
        opt.zero_grad()
        nn.functional.mse_loss(m(x.bfloat16()), y.bfloat16()).backward()
        opt.step()
        d.after_inner_step(t)
    assert all(p.dtype == torch.bfloat16 and torch.isfinite(p).all() for p in m.parameters())
    assert d.fragment_syncs == [2, 2] and d.outer_steps == 4
    d.after_inner_step(0)  # step 0 (before any inner step) never syncs
    assert d.fragment_syncs == [2, 2]


def test_fragments_are_strided_over_layers():
    names = ["emb.weight", "blocks.0.a.weight", "blocks.0.a.bias", "blocks.1.a.weight", "blocks.2.a.weight",
             "blocks.3.a.weight", "ln.weight", "head.weight"]
    assert [layer_key(n) for n in names] == ["emb", "blocks.0", "blocks.0", "blocks.1", "blocks.2", "blocks.3",
                                             "ln", "head"]
    # layers emb, b0, b1, b2, b3, ln, head -> fragments 0, 1, 2, 0, 1, 2, 0
    assert strided_fragments(names, 3) == [[0, 4, 7], [1, 2, 5], [3, 6]]
    assert strided_fragments(["a.weight", "a.bias"], 2) == [[0], [1]]  # fewer layers than fragments: by tensor
    m = make_model()
    s = StreamingDiLoCo(m, inner_steps=6, fragments=2)
    assert s.fragment_names(0) == ["0.weight", "0.bias", "4.weight", "4.bias"]
    assert s.fragment_names(1) == ["2.weight", "2.bias"]
    assert s.offsets == [0, 3]
    assert [s.sends_at(t) for t in range(1, 13)] == [[], [], [1], [], [], [0], [], [], [1], [], [], [0]]


def test_bad_arguments_are_refused():
    m = make_model()
    for kw, msg in [({"inner_steps": 0}, "inner_steps"), ({"inner_steps": 2, "outer_lr": 0.0}, "outer_lr"),
                    ({"inner_steps": 2, "outer_momentum": 1.0}, "outer_momentum")]:
        with pytest.raises(ValueError, match=msg):
            DiLoCo(m, **kw)
    for kw, msg in [({"fragments": 0}, "fragments"), ({"fragments": 7}, "exceed"), ({"overlap": 3}, "overlap"),
                    ({"overlap": -1}, "overlap"), ({"alpha": 1.5}, "alpha"), ({"quant_bits": 2}, "quant_bits")]:
        with pytest.raises(ValueError, match=msg):
            StreamingDiLoCo(m, inner_steps=6, **{"fragments": 2, **kw})
    with pytest.raises(ValueError, match="saved by"):
        DiLoCo(m, inner_steps=2).load_state_dict(StreamingDiLoCo(m, inner_steps=2).state_dict())
    with pytest.raises(ValueError, match="config"):
        DiLoCo(m, inner_steps=2).load_state_dict(DiLoCo(m, inner_steps=3).state_dict())


# -- two processes ---------------------------------------------------------------------------------------------

def _ddp_run(rank: int, inner: str, steps: int):
    model = make_model()
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = make_inner(ddp, inner)
    for t in range(1, steps + 1):
        x, y = batch(rank, t)
        opt.zero_grad()
        nn.functional.mse_loss(ddp(x), y).backward()
        opt.step()
    return snapshot(model)


def _diloco_run(rank: int, inner: str, steps: int, H: int, lr: float, mom: float, save_at: int | None = None):
    model = make_model()
    opt = make_inner(model, inner)
    d = DiLoCo(model, inner_steps=H, outer_lr=lr, outer_momentum=mom, meter=CommMeter())
    for t in range(1, steps + 1):
        inner_step(model, opt, rank, t)
        d.after_inner_step(t)
        if t == save_at:  # checkpoint through bytes + weights_only load, then continue on fresh objects
            buf = io.BytesIO()
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "diloco": d.state_dict()}, buf)
            buf.seek(0)
            state = torch.load(buf, weights_only=True)
            model = make_model()
            model.load_state_dict(state["model"])
            opt = make_inner(model, inner)
            opt.load_state_dict(state["opt"])
            d = DiLoCo(model, inner_steps=H, outer_lr=lr, outer_momentum=mom, meter=d.meter)
            d.load_state_dict(state["diloco"])
    return snapshot(model), list(d.global_parameters().values()), d.meter.summary()


def _diloco_checks(rank: int, world: int):
    out = {}
    steps = 6
    for inner in ("sgd", "sgdm"):
        out[f"ddp_{inner}"] = _ddp_run(rank, inner, steps)
        out[f"h1_{inner}"] = _diloco_run(rank, inner, steps, H=1, lr=1.0, mom=0.0)
    # H = 3 with the paper's outer optimizer; the outer step checked against torch's SGD on the gathered mean
    model = make_model()
    opt = make_inner(model, "sgdm")
    d = DiLoCo(model, inner_steps=3, meter=CommMeter())
    ref = snapshot(model)
    ref_opt = torch.optim.SGD(ref, lr=0.7, momentum=0.9, nesterov=True)
    outer_err = 0.0
    for t in range(1, 10):
        inner_step(model, opt, rank, t)
        if t % 3 == 0:
            mine = torch.cat([(r - p.detach()).reshape(-1) for r, p in zip(ref, model.parameters())])
            gathered = [torch.empty_like(mine) for _ in range(world)]
            dist.all_gather(gathered, mine)
            mean, off = sum(gathered) / world, 0
            for r in ref:
                r.grad = mean[off:off + r.numel()].view_as(r).clone()
                off += r.numel()
            ref_opt.step()
        d.after_inner_step(t)
        if t % 3 == 0:
            outer_err = max(outer_err, max_diff(list(d.global_parameters().values()), ref))
    out["outer_err"] = outer_err
    out["h3"] = (snapshot(model), list(d.global_parameters().values()), d.meter.summary())
    out["param_bytes"] = param_bytes(model)
    # buffers: floating ones averaged at each sync (counted apart), integer ones left local
    torch.manual_seed(0)
    bn = nn.Sequential(nn.Linear(DIN, DOUT), nn.BatchNorm1d(DOUT)).double()
    bn_opt = torch.optim.SGD(bn.parameters(), lr=0.1)
    dbn = DiLoCo(bn, inner_steps=2, meter=CommMeter())
    buf_err = 0.0
    for t in range(1, 5):
        inner_step(bn, bn_opt, rank, t)
        if t % 2 == 0:
            mine = torch.cat([bn[1].running_mean, bn[1].running_var])
            gathered = [torch.empty_like(mine) for _ in range(world)]
            dist.all_gather(gathered, mine)
        dbn.after_inner_step(t)
        if t % 2 == 0:
            buf_err = max(buf_err, (torch.cat([bn[1].running_mean, bn[1].running_var]) - sum(gathered) / world)
                          .abs().max().item())
    out["buffers"] = (buf_err, dbn.meter.summary(), int(bn[1].num_batches_tracked), param_bytes(bn))
    # resume mid-period (step 4 of H = 3: local weights differ from θ_g) gives the same continuation
    out["h3_resumed"] = _diloco_run(rank, "sgdm", 9, H=3, lr=0.7, mom=0.9, save_at=4)
    return out


def _all_checks(rank: int, world: int):
    return {"diloco": _diloco_checks(rank, world), "streaming": _streaming_checks(rank, world)}


@pytest.fixture(scope="module")
def two_processes():
    """One 2-process gloo run for every distributed check (spawning costs seconds on a loaded machine)."""
    return spawn(_all_checks, world_size=2)


@pytest.mark.slow
def test_diloco_two_processes(two_processes):
    results = [r["diloco"] for r in two_processes]
    r0, r1 = results
    # H = 1, identity outer step == DDP (mean of gradients), with and without inner momentum
    for inner in ("sgd", "sgdm"):
        for r in results:
            local, glob, _ = r[f"h1_{inner}"]
            assert max_diff(local, r[f"ddp_{inner}"]) <= 1e-12
            assert max_diff(glob, r[f"ddp_{inner}"]) <= 1e-12
    # H = 3: both ranks hold the same θ_g, equal to the simulated algorithm; local weights = θ_g after a sync
    g_ref, l_ref = simulate(2, 9, inner="sgdm", H=3, lr=0.7, mom=0.9)
    for rank, r in enumerate(results):
        local, glob, summary = r["h3"]
        assert max_diff(glob, g_ref) <= 1e-12 and max_diff(local, l_ref[rank]) <= 1e-12
        assert r["outer_err"] <= 1e-15  # outer step == torch SGD(nesterov) on the all-gathered mean Δ
        # bytes: parameter bytes per sync (3 syncs in 9 steps); DDP sends parameter bytes every step
        pb = r["param_bytes"]
        assert summary["bytes_by_kind"] == {"diloco": 3 * pb}
        assert (9 * pb) / summary["bytes_total"] == 3  # H-fold fewer than DDP over the same steps
        h1 = r["h1_sgd"][2]
        assert h1["bytes_total"] == 6 * pb  # H = 1: as many bytes as DDP's gradients
        # resume mid-period: identical continuation, byte totals carried by the shared meter
        res_local, res_glob, res_summary = r["h3_resumed"]
        assert max_diff(res_local, local) == 0.0 and max_diff(res_glob, glob) == 0.0
        assert res_summary == summary
    assert max_diff(r0["h3"][1], r1["h3"][1]) == 0.0
    for r in results:
        buf_err, summary, tracked, pb = r["buffers"]
        assert buf_err <= 1e-15 and tracked == 4
        assert summary["bytes_by_kind"] == {"diloco": 2 * pb, "diloco_buffers": 2 * 2 * DOUT * 8}


STREAM_CONFIGS = {
    # name: (inner, H, P, tau, alpha, bits, block, steps, lr, mom)
    "p1": ("sgdm", 4, 1, 0, 0.0, None, 256, 12, 0.7, 0.9),
    "p2_tau2": ("sgdm", 6, 2, 2, 0.5, None, 256, 14, 0.7, 0.9),
    "p3_tau1_adamw": ("adamw", 6, 3, 1, 0.0, None, 256, 13, 0.7, 0.9),
    "p2_q8": ("sgdm", 4, 2, 1, 0.5, 8, 16, 12, 0.7, 0.9),
    "p2_q4": ("sgdm", 4, 2, 1, 0.5, 4, 16, 12, 0.7, 0.9),
    "p2_exact_first": ("sgdm", 4, 2, 0, 0.0, None, 16, 3, 1.0, 0.0),
    "p2_q4_first": ("sgdm", 4, 2, 0, 0.0, 4, 16, 3, 1.0, 0.0),
}


def _stream_run(rank: int, name: str, save_at: int | None = None):
    inner, H, P, tau, alpha, bits, block, steps, lr, mom = STREAM_CONFIGS[name]
    kw = dict(inner_steps=H, outer_lr=lr, outer_momentum=mom, fragments=P, overlap=tau, alpha=alpha,
              quant_bits=bits, quant_block_size=block)
    model = make_model()
    opt = make_inner(model, inner)
    s = StreamingDiLoCo(model, meter=CommMeter(), **kw)
    log, sent, unwaited = [], [], []
    for t in range(1, steps + 1):
        inner_step(model, opt, rank, t)
        before = snapshot(model)
        s.after_inner_step(t)
        after = snapshot(model)
        changed = [i for i, (a, b) in enumerate(zip(before, after)) if not torch.equal(a, b)]
        log.append((t, [list(x) for x in s.in_flight], changed, s.meter.end_step()))
        # an exchange started this step is still unwaited when after_inner_step returns (τ > 0)
        unwaited.append([q.result is None for q in s._pending if q.due > t])
        sent.append(s.sends_at(t))
        if t == save_at:
            buf = io.BytesIO()
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "s": s.state_dict()}, buf)
            buf.seek(0)
            state = torch.load(buf, weights_only=True)
            model = make_model()
            model.load_state_dict(state["model"])
            opt = make_inner(model, inner)
            opt.load_state_dict(state["opt"])
            s = StreamingDiLoCo(model, meter=s.meter, **kw)
            s.load_state_dict(state["s"])
    s.finish()
    return {"local": snapshot(model), "global": list(s.global_parameters().values()), "log": log,
            "summary": s.meter.summary(), "unwaited": unwaited, "syncs": s.fragment_syncs,
            "frag_numel": [sum(list(model.parameters())[i].numel() for i in f) for f in s.fragment_indices]}


def _streaming_checks(rank: int, world: int):
    out = {name: _stream_run(rank, name) for name in STREAM_CONFIGS}
    out["p2_tau2_resumed"] = _stream_run(rank, "p2_tau2", save_at=10)  # fragment 1 (sent at 9, due 11) in flight
    out["diloco_h4"] = _diloco_run(rank, "sgdm", 12, H=4, lr=0.7, mom=0.9)
    return out


@pytest.mark.slow
def test_streaming_diloco_two_processes(two_processes):
    results = [r["streaming"] for r in two_processes]
    for rank, r in enumerate(results):
        # P = 1, τ = 0, α = 0, no quantisation is DiLoCo exactly
        local, glob, summary = r["diloco_h4"]
        assert max_diff(r["p1"]["local"], local) == 0.0 and max_diff(r["p1"]["global"], glob) == 0.0
        assert r["p1"]["summary"]["bytes_total"] == summary["bytes_total"]
        for name, (inner, H, P, tau, alpha, bits, block, steps, lr, mom) in STREAM_CONFIGS.items():
            got = r[name]
            g_ref, l_ref = simulate(2, steps, inner=inner, H=H, lr=lr, mom=mom, P=P, tau=tau, alpha=alpha,
                                    bits=bits, block=block)
            assert max_diff(got["global"], g_ref) <= 1e-12, name
            assert max_diff(got["local"], l_ref[rank]) <= 1e-12, name
            frags = strided_fragments([n for n, _ in make_model().named_parameters()], P)
            offsets = [p * H // P for p in range(P)]
            expect_bytes = 0
            for t, in_flight, changed, nbytes in got["log"]:
                starting = [p for p in range(P) if (t - offsets[p]) % H == 0]
                due = [p for p in range(P) if t - tau >= 1 and (t - tau - offsets[p]) % H == 0]
                # every fragment syncs at its own offsets; in flight exactly until τ steps later
                assert sorted(in_flight) == sorted([p, s + tau] for p in range(P) for s in range(t - tau + 1, t + 1)
                                                   if s >= 1 and (s - offsets[p]) % H == 0 and s + tau > t), (name, t)
                # local weights change only for fragments applied now (α < 1), never at the send step (τ > 0)
                assert set(changed) <= {i for p in due for i in frags[p]}, (name, t)
                if due and alpha < 1:
                    assert set(changed) == {i for p in due for i in frags[p]}, (name, t)
                # bytes: the fragment's Δ (fp64 here) or its codes + scales
                step_bytes = sum(got["frag_numel"][p] * 8 if bits is None else
                                 qz.quantized_nbytes(got["frag_numel"][p], bits, block) for p in starting)
                assert nbytes == step_bytes, (name, t)
                expect_bytes += step_bytes
            assert got["summary"]["bytes_total"] == expect_bytes
            if tau > 0:
                assert all(all(u) for u in got["unwaited"])  # started exchanges are not waited before due
                assert any(got["unwaited"])
            assert sum(got["syncs"]) == sum(1 for t in range(1, steps - tau + 1) for p in range(P)
                                            if (t - offsets[p]) % H == 0)
        # quantised exchange: one outer step (lr 1, momentum 0) differs from the exact one by at most the mean
        # of the workers' quantisation bounds
        exact, q4 = r["p2_exact_first"], r["p2_q4_first"]
        names = [n for n, _ in make_model().named_parameters()]
        frag1 = strided_fragments(names, 2)[1]  # synced at step 2 (offset H/P = 2)
        models = [make_model() for _ in range(2)]
        opts = [make_inner(m, "sgdm") for m in models]
        for t in (1, 2):
            for w in range(2):
                inner_step(models[w], opts[w], w, t)
        g0 = snapshot(make_model())
        bound = sum(qz.error_bound(torch.cat([(g0[i] - list(m.parameters())[i].detach()).reshape(-1) for i in frag1]),
                                   4, 16).double() for m in models) / 2
        diff = torch.cat([(q4["global"][i] - exact["global"][i]).reshape(-1) for i in frag1]).abs()
        assert bool((diff <= bound * (1 + 1e-5) + 1e-12).all()) and diff.max() > 0
        assert q4["summary"]["bytes_total"] < exact["summary"]["bytes_total"] / 8  # fp64 -> 4 bits + scales
        # resume with fragment 1 in flight: identical continuation
        a, b = r["p2_tau2"], r["p2_tau2_resumed"]
        assert max_diff(a["local"], b["local"]) == 0.0 and max_diff(a["global"], b["global"]) == 0.0
        assert a["summary"] == b["summary"] and a["syncs"] == b["syncs"]
    for name in STREAM_CONFIGS:
        assert max_diff(results[0][name]["global"], results[1][name]["global"]) == 0.0
    assert not math.isnan(results[0]["p2_q4"]["local"][0].sum().item())
