"""Distributed strategies in the trainer: each matches single-process training (float64), bytes are the payload.

The reference is trainlab's single-process trainer (no process group); two gloo processes on loopback train the
same configuration through ``build_training``/``train_step`` with ``dist.strategy=X``. One spawn runs every
strategy (a process costs seconds to start).
"""

import pytest
import torch
import torch.distributed as dist

from distributed_testing import Stepper, spawn
from trainlab.config import ConfigError
from trainlab.distributed.env import DistEnv
from trainlab.train.config import from_cli

BASE = ["workload.p=13", "model.width=16", "batch_size=40", "dtype=float64", "steps=50", "trace=false"]
# a language model whose blocks live in a ModuleList and whose head is tied to the token embedding
TRANSFORMER = ["workload=charlm", "workload.block_size=8", "workload.max_chars=3000", "model=transformer",
               "model.d_model=16", "model.n_head=2", "model.tie_embeddings=true", "batch_size=20", "dtype=float64",
               "steps=50", "trace=false"]
STEPS = 4


def _parts(strategy_args, env):
    return Stepper([*BASE, *strategy_args], env)


def _train(parts, steps=STEPS):
    return parts.train(steps)


def _full_state(parts):
    """Full parameters on every caller (collective for fsdp), as plain float64 tensors."""
    state = parts.strategy.model_state(parts.model)
    return {k: v.clone() for k, v in state.items()}


def _ddp_bucket_bytes(net, counter):
    """Count what DDP itself hands to its all-reduce (a comm hook around the default one)."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    def hook(state, bucket):
        counter.append(bucket.buffer().numel() * bucket.buffer().element_size())
        return default_hooks.allreduce_hook(state, bucket)

    net.register_comm_hook(None, hook)


def _run_strategies(rank, world):
    env = DistEnv(rank=rank, world_size=world)
    out = {}
    # ddp, with DDP's own bucket bytes measured beside the strategy's count
    parts = _parts(["dist=ddp"], env)
    buckets = []
    _ddp_bucket_bytes(parts.net, buckets)
    _train(parts)
    out["ddp"] = {"state": _full_state(parts), "bytes": parts.strategy.meter.total, "measured": sum(buckets)}
    # zero1: gradient all-reduce + broadcast of the parameters this rank owns
    parts = _parts(["dist=zero1"], env)
    owned = sum(q.numel() * q.element_size() for g in parts.optimizer.optim.param_groups for q in g["params"])
    _train(parts)
    state = parts.strategy.model_state(parts.model)
    out["zero1"] = {"state": state, "bytes": parts.strategy.meter.total, "owned": owned,
                    "by_kind": dict(parts.strategy.meter.by_kind)}
    # fsdp: FSDP2's own collectives counted through its custom-comm hooks
    parts = _parts(["dist=fsdp"], env)
    _train(parts)
    sd = parts.strategy.model_state(parts.model)  # full tensors on rank 0 (cpu_offload), {} elsewhere
    out["fsdp"] = {"state": sd, "by_kind": dict(parts.strategy.meter.by_kind),
                   "local_loss": parts.strategy.local_loss}
    # fsdp over a transformer: each block of the ModuleList is a unit, the tied weight stays in the root
    parts = _train(Stepper([*TRANSFORMER, "dist=fsdp"], env))
    out["fsdp_transformer"] = {"state": parts.strategy.model_state(parts.model),
                               "by_kind": dict(parts.strategy.meter.by_kind)}
    # diloco with H = 1, outer step = identity (lr 1, momentum 0) and inner SGD == DDP with SGD
    parts = _parts(["dist=diloco", "dist.inner_steps=1", "dist.outer_lr=1", "dist.outer_momentum=0",
                    "optimizer=sgd", "optimizer.lr=0.1"], env)
    _train(parts)
    out["diloco"] = {"state": _full_state(parts), "by_kind": dict(parts.strategy.meter.by_kind)}
    parts = _parts(["dist=ddp", "optimizer=sgd", "optimizer.lr=0.1"], env)
    _train(parts)
    out["ddp_sgd"] = {"state": _full_state(parts)}
    # streaming DiLoCo through the trainer: fragments, overlap, 8-bit outer gradients, global-model evaluation
    parts = _parts(["dist=streaming_diloco", "dist.inner_steps=3", "dist.fragments=2", "dist.overlap=1",
                    "dist.quant_bits=8"], env)
    _train(parts, 6)
    local = _full_state(parts)
    with parts.strategy.eval_weights():
        global_ = _full_state(parts)
    row = parts.evaluate()
    parts.strategy.finish()
    out["streaming"] = {"by_kind": dict(parts.strategy.meter.by_kind), "row": row,
                        "differs": any(not torch.equal(local[k], global_[k]) for k in local),
                        "back": all(torch.equal(local[k], v) for k, v in _full_state(parts).items())}
    return out


def _assert_close(got, want, tol=1e-10):
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=tol, atol=tol, msg=k)


@pytest.mark.slow
def test_ddp_zero1_fsdp_diloco_match_one_process_and_count_the_payload():
    ref_parts = _train(_parts([], DistEnv()))
    reference = {k: v.clone() for k, v in ref_parts.model.state_dict().items()}
    fresh = _parts([], DistEnv()).model.state_dict()
    assert any(not torch.equal(fresh[k], reference[k]) for k in reference)  # it trained
    P = sum(q.numel() * 8 for q in ref_parts.model.parameters())
    results = spawn(_run_strategies, 2)
    r0, r1 = results
    for name in ("ddp", "zero1", "fsdp"):
        _assert_close(r0[name]["state"], reference)
    _assert_close(r1["ddp"]["state"], reference)
    # bytes: DDP hands every gradient to its all-reduce each step (measured by a hook on DDP's buckets)
    assert r0["ddp"]["bytes"] == r0["ddp"]["measured"] == STEPS * P
    # zero1: gradients + this rank's partition; the partitions cover the parameters exactly once
    assert r0["zero1"]["owned"] + r1["zero1"]["owned"] == P and r0["zero1"]["owned"] > 0 and r1["zero1"]["owned"] > 0
    for r in (r0, r1):
        assert r["zero1"]["by_kind"] == {"allreduce": STEPS * P, "param_broadcast": STEPS * r["zero1"]["owned"]}
    # fsdp: FSDP2's collectives (measured) equal the analytic payload of fsdp_step_payload
    from trainlab.distributed.strategy import fsdp_step_payload

    analytic = fsdp_step_payload(_parts([], DistEnv()).model, 2)
    for r in (r0, r1):
        assert r["fsdp"]["by_kind"] == {k: STEPS * v for k, v in analytic.items()}
    assert analytic["reduce_scatter"] >= P  # padded whole gradients: at least DDP's payload
    transformer = _train(Stepper(TRANSFORMER, DistEnv())).model.state_dict()
    _assert_close(r0["fsdp_transformer"]["state"], transformer)
    analytic = fsdp_step_payload(Stepper(TRANSFORMER, DistEnv()).model, 2)
    for r in (r0, r1):
        assert r["fsdp_transformer"]["by_kind"] == {k: STEPS * v for k, v in analytic.items()}
    # DiLoCo with H = 1 and an identity outer step is data-parallel SGD; one all-reduce of P per step
    _assert_close(r0["diloco"]["state"], r0["ddp_sgd"]["state"], tol=1e-12)
    _assert_close(r1["diloco"]["state"], r0["ddp_sgd"]["state"], tol=1e-12)
    assert r0["diloco"]["by_kind"] == {"diloco": STEPS * P}
    # Streaming DiLoCo: 8-bit fragments (about a quarter of float64's bytes, plus scales), each fragment synced
    # twice in 6 steps; evaluation sees the global model and gives the local one back
    for r in (r0, r1):
        st = r["streaming"]
        sent = st["by_kind"]["streaming_diloco"]
        assert 2 * P / 8 < sent < 2 * P / 4, sent
        assert st["differs"] and st["back"]
        assert st["row"]["comm_bytes_total"] == sent and st["row"]["step"] == 6


def _run_sharded(rank, world):
    env = DistEnv(rank=rank, world_size=world)
    out = {}
    for name in ("zero1", "fsdp"):
        parts = _train(_parts([f"dist={name}"], env))
        out[name] = parts.strategy.model_state(parts.model)  # full tensors on rank 0
    return out


@pytest.mark.slow
def test_four_processes_zero1_and_fsdp_match_one_process():
    """4 shards: zero1's partitions and fsdp's row shards (16 rows split evenly; the 13-row output layer padded
    to 4 x 4) still reproduce one process."""
    reference = _train(_parts([], DistEnv())).model.state_dict()
    r0 = spawn(_run_sharded, 4)[0]
    for name in ("zero1", "fsdp"):
        _assert_close(r0[name], reference)


def test_dist_section_validates_with_one_line_errors():
    cases = {
        ("dist=fsdq",): "dist.strategy",
        ("dist.inner_steps=10",): "dist.inner_steps: applies to diloco / streaming_diloco only",
        ("dist=fsdp", "dist.compression=dgc"): "dist.compression",
        ("dist=diloco", "dist.powersgd_rank=4"): "dist.powersgd_rank",
        ("dist=streaming_diloco", "dist.inner_steps=4", "dist.fragments=2", "dist.overlap=2"): "dist.overlap",
        ("dist.bogus=1",): "dist.bogus: unknown key",
        ("dist.outer_lr=0", "dist=diloco"): "dist.outer_lr",
    }
    for args, start in cases.items():
        with pytest.raises(ConfigError) as err:
            from_cli(None, list(args))
        message = str(err.value)
        assert message.startswith(start) and "\n" not in message, (args, message)


def test_dist_section_is_saved_and_one_process_behaviour(tmp_path):
    cfg = from_cli(None, ["dist=diloco", "dist.inner_steps=7"])
    cfg.save(tmp_path / "config.yaml")
    again = from_cli(str(tmp_path / "config.yaml"), [])
    assert again.dist == cfg.dist and again.dist.strategy == "diloco" and again.dist.inner_steps == 7
    # one process: ddp is the plain trainer (no process group, no bytes); compression needs processes
    parts = _parts([], DistEnv())
    assert parts.net is parts.model and not parts.strategy.active and not dist.is_initialized()
    with pytest.raises(ConfigError, match="dist.compression: needs several processes"):
        _parts(["dist.compression=powersgd"], DistEnv())
    # ZeroRedundancyOptimizer would silently drop a schedule-free optimizer's train/eval switch: refused, and the
    # one-process group made for the run is gone again
    with pytest.raises(ConfigError, match=r"optimizer: adamw_schedulefree offers train\(\)/eval\(\)"):
        _parts(["dist=zero1", "optimizer=adamw_schedulefree"], DistEnv())
    assert not dist.is_initialized()


def test_grokalign_with_fsdp_is_refused_in_one_line():
    """GrokAlign differentiates a backward pass; FSDP's post-backward hooks free the gathered parameters that
    second backward reads (a storage-size traceback), on one process too."""
    with pytest.raises(ConfigError) as err:
        from_cli(None, ["loss.grokalign=1e-3", "dist=fsdp"])
    assert str(err.value).startswith("loss.grokalign: needs a double backward") and "\n" not in str(err.value)


def test_one_process_zero1_and_fsdp_equal_the_plain_trainer():
    """Without torchrun, zero1 and fsdp run their own code on a one-process group: the identity."""
    reference = _train(_parts([], DistEnv())).model.state_dict()
    for name in ("zero1", "fsdp"):
        parts = _parts([f"dist={name}"], DistEnv())
        try:
            _train(parts)
            _assert_close(parts.strategy.model_state(parts.model), reference, tol=1e-12)
        finally:
            parts.strategy.finish()
        assert not dist.is_initialized()
