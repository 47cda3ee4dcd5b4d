"""Probes, losses and parametrisations selected from config, run by the trainer on the bundled models."""

import json

import pytest
import torch

import trainlab
from trainlab.config import ConfigError
from trainlab.probes.registry import PROBES

TINY = ["workload.p=11", "workload.train_frac=0.5", "steps=6", "eval_every=3", "probes.examples=16",
        "probes.ntk_examples=4", "probes.lanczos_iters=4", "probes.hutchinson_samples=2", "probes.lc_directions=4",
        "probes.hessian_density_iters=4", "probes.nfk_examples=8"]
MODELS = {  # model -> (workload overrides, probes that cannot apply to it)
    "mlp": ([], {"attention_entropy"}),
    "transformer": (["model.d_model=16", "model.n_head=2", "model.n_layer=1"],
                    {"local_complexity", "jacobian", "robustness", "certified",  # token inputs
                     "info_plane",  # no body.act<i> hidden activations
                     "ipr"}),  # no body.fc0 reading one-hot residues
    "cnn1d": (["workload=mnist1d", "workload.num_samples=200", "model.channels=4"],
              {"attention_entropy", "ipr"}),  # ipr: no one-hot modular inputs
}


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def run(tmp_path, name, args):
    return trainlab.run(None, args, out=tmp_path / name, quiet=True, report=False)


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_probe_runs_or_says_why_not(tmp_path, model):
    extra, not_applicable = MODELS[model]
    args = ["workload.p=11", *TINY[1:], f"model={model}", *extra, "probes=" + ",".join(PROBES.names())]
    if model == "cnn1d":
        args = [a for a in args if not a.startswith(("workload.p", "workload.train_frac"))]
    run_dir = run(tmp_path, model, args)
    summary = json.loads((run_dir / "summary.json").read_text())
    skipped = summary["probes"]["skipped"]
    assert set(skipped) == not_applicable, skipped
    assert all(reason and "\n" not in reason for reason in skipped.values())
    last = rows(run_dir)[-1]
    for name in PROBES.names():
        if name in not_applicable:
            assert not any(k.startswith(name + "/") for k in last)
        else:
            assert f"probe_seconds/{name}" in last, name
            # steps 0, 3 and 6; the update's sharpness has no update to measure at step 0
            assert summary["probes"]["cost"][name]["calls"] == (2 if name == "update_sharpness" else 3), name
    assert (run_dir / "data_diet" / "step_6.csv").exists()
    density = json.loads((run_dir / "hessian_density" / "step_6.json").read_text())
    assert density["iters"] == 4 and abs(sum(density["weights"][0]) - 1) < 1e-9
    assert 1 <= last["nfk/effective_rank"] <= 8


def test_probes_do_not_change_training(tmp_path):
    base = ["workload.p=11", "steps=6", "eval_every=3"]
    plain = run(tmp_path, "plain", base)
    probed = run(tmp_path, "probed", base + ["probes=weights,hessian,hessian_trace,update_sharpness,noise_scale,ntk",
                                             "probes.every=2", "probes.examples=16", "probes.ntk_examples=4"])
    keys = ("train_loss", "val_loss", "train_acc", "val_acc")
    a = [{k: r[k] for k in keys} for r in rows(plain)]
    b = [{k: r[k] for k in keys} for r in rows(probed) if "val_loss" in r]
    assert a == b  # bit-identical: probes paused the clock, restored modes and used their own RNG
    trace_a = (plain / "trace.jsonl").read_text()
    trace_b = (probed / "trace.jsonl").read_text()
    assert trace_a == trace_b


def test_probe_cadence_every_n_steps_and_log_spaced(tmp_path):
    run_dir = run(tmp_path, "r", ["workload.p=11", "steps=20", "eval_every=10", "probes=weights", "probes.every=4",
                                  "probes.log_spaced=3"])
    probed = [r["step"] for r in rows(run_dir) if "weights/total" in r]
    # every 4 steps, plus 10^(k/3) rounded: 1, 2, 5, 10 (and the last step)
    assert probed == sorted({0, 4, 8, 12, 16, 20, 1, 2, 5, 10})
    between = [r for r in rows(run_dir) if r["step"] in (1, 2, 4)]
    assert all("val_loss" not in r and "time" in r for r in between)


def test_resume_with_probes_is_identical(tmp_path):
    args = ["workload.p=11", "steps=8", "eval_every=2", "probes=rank,weights"]
    full = run(tmp_path, "full", args)
    run(tmp_path, "part", [*args[:1], "steps=4", *args[2:]])
    resumed = trainlab.run(None, ["steps=8"], resume=tmp_path / "part", quiet=True, report=False)

    def measured(run_dir):  # everything but the clocks
        return [{k: v for k, v in r.items()
                 if k not in ("time", "cpu_time", "wall") and not k.startswith("probe_seconds")} for r in rows(run_dir)]

    assert measured(full) == measured(resumed)  # rank needs W0: it was checkpointed


@pytest.mark.parametrize("args", [
    ["loss=stablemax"], ["loss=spherical_z"], ["loss.z_loss=1e-3"], ["loss.grokalign=1e-3"], ["loss.elr=3"],
    ["loss.grokalign=1e-3", "model=transformer", "model.d_model=16", "model.n_head=2", "model.n_layer=1"],
    ["param=orthogonal"], ["param=spectral"], ["param=data_dependent"], ["param.sigma_reparam=true"],
    ["param.output_scale=10"], ["param.mup_base_width=32", "model.width=64"],
])
def test_losses_and_parametrisations_train(tmp_path, args):
    run_dir = run(tmp_path, "r", ["workload.p=11", "steps=20", "eval_every=20", "optimizer.weight_decay=0", *args])
    first, last = rows(run_dir)[0], rows(run_dir)[-1]
    assert torch.isfinite(torch.tensor(last["train_loss"]))
    assert last["train_loss"] < first["train_loss"]


@pytest.mark.parametrize("args, key", [
    (["workload=teacher_student", "loss=stablemax", "steps=2"], "loss.function"),
    (["loss.grokalign=1e-3", "compile=true"], "loss.grokalign"),
    (["param.mup_base_width=32", "optimizer=muon"], "param.mup_base_width"),
    (["probes=nope"], "probes"),
    (["probes.every=-1"], "probes.every"),
    (["param=xavier"], "param.init"),
])
def test_bad_combinations_are_one_line_config_errors(tmp_path, args, key):
    with pytest.raises(ConfigError) as err:
        run(tmp_path, "r", args if "workload=teacher_student" in args else ["workload.p=11", "steps=2", *args])
    assert err.value.key == key and "\n" not in str(err.value)


def test_mup_gives_hidden_layers_a_smaller_lr(tmp_path):
    from trainlab.distributed.env import DistEnv
    from trainlab.train.config import from_cli
    from trainlab.train.training import build_training

    t = build_training(from_cli(None, ["workload.p=11", "model.width=128", "param.mup_base_width=32",
                                       "optimizer.lr=1e-3"]), DistEnv())
    lrs = sorted({g["lr"] for g in t.optimizer.param_groups})
    assert sorted(set(t.lrs_at(0))) == lrs  # the lr function carries muP's multipliers
    assert lrs == pytest.approx([1e-3 / 4, 1e-3])  # Adam muP: hidden and output matrices at lr * base / width
