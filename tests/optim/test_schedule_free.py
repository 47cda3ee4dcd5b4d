"""Schedule-free optimizers from the ``schedulefree`` package: registry entries, parity with direct construction,
train/eval modes (evaluation weights are not training weights), and the trainer's mode switching."""

import copy
import inspect
import json

import pytest
import schedulefree
import torch

import trainlab
from trainlab import optim
from trainlab.train import evaluation

NAMES = {"adamw_schedulefree": schedulefree.AdamWScheduleFree, "sgd_schedulefree": schedulefree.SGDScheduleFree,
         "radam_schedulefree": schedulefree.RAdamScheduleFree}
SHAPES = [(7,), (4, 5), (2, 3, 3)]


def tensors(seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=dtype) for s in SHAPES]


def steps(opt, params, grads_per_step):
    for grads in grads_per_step:
        for p, g in zip(params, grads):
            p.grad = g.clone()  # schedulefree divides p.grad in place
        opt.step()


@pytest.mark.parametrize("name", NAMES)
def test_registry_entries_use_the_package_with_its_defaults(name):
    entry = optim.OPTIMIZERS.get(name)
    assert entry.factory is NAMES[name] and entry.meta["own"] is False
    assert entry.meta["source"] == f"schedulefree.{NAMES[name].__name__}"
    assert entry.meta["paper"] == "Defazio et al. 2024, The Road Less Scheduled"
    opts = optim.resolve_options(name, {})
    signature = inspect.signature(NAMES[name].__init__).parameters
    for key, value in vars(opts).items():
        assert value == signature[key].default, key
    params = tensors(0)
    opt = optim.build(name, params)
    opt.train()
    steps(opt, params, [tensors(1)])
    assert all(torch.isfinite(p).all() for p in params)


def test_registry_built_adamw_matches_direct_construction():
    ours, theirs = tensors(0), tensors(0)
    kw = {"lr": 1e-2, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.1, "warmup_steps": 5}
    a = optim.build("adamw_schedulefree", ours, **kw)
    b = schedulefree.AdamWScheduleFree(theirs, **kw)
    a.train()
    b.train()
    grads = [tensors(100 + i) for i in range(30)]
    steps(a, ours, grads)
    steps(b, theirs, grads)
    for x, y in zip(ours, theirs):
        assert torch.equal(x, y)
    a.eval()
    b.eval()
    for x, y in zip(ours, theirs):
        assert torch.equal(x, y)


def test_evaluation_weights_are_not_the_training_weights():
    params = tensors(0, torch.float64)
    opt = optim.build("adamw_schedulefree", params, lr=1e-2)
    with pytest.raises(Exception, match="train mode"):
        params[0].grad = torch.ones_like(params[0])
        opt.step()  # modes matter: stepping outside train mode is refused by the package
    opt.train()
    steps(opt, params, [tensors(100 + i, torch.float64) for i in range(20)])
    y = [p.clone() for p in params]
    opt.eval()
    x = [p.clone() for p in params]
    beta1 = opt.param_groups[0]["betas"][0]
    for xi, yi, p in zip(x, y, params):
        z = opt.state[p]["z"]
        assert (xi - yi).abs().max() > 1e-3  # the switch moves the weights
        torch.testing.assert_close(yi, (1 - beta1) * z + beta1 * xi)  # y interpolates z and the average x
    opt.train()
    for p, yi in zip(params, y):
        torch.testing.assert_close(p, yi)


def test_state_dict_round_trip_continues_identically():
    params = tensors(0)
    grads = [tensors(100 + i) for i in range(10)]
    opt = optim.build("sgd_schedulefree", params, lr=0.1, momentum=0.9)
    opt.train()
    steps(opt, params, grads[:5])
    saved_params, saved_state = [p.clone() for p in params], copy.deepcopy(opt.state_dict())
    steps(opt, params, grads[5:])
    resumed = [p.clone() for p in saved_params]
    opt2 = optim.build("sgd_schedulefree", resumed, lr=0.1, momentum=0.9)
    opt2.train()  # the trainer's order: train() at build time, then the checkpoint is loaded
    opt2.load_state_dict(saved_state)
    steps(opt2, resumed, grads[5:])
    for a, b in zip(params, resumed):
        assert torch.equal(a, b)


def test_trainer_steps_in_train_mode_and_evaluates_in_eval_mode(tmp_path, monkeypatch):
    modes = []
    real = evaluation.evaluate_split

    def recording(t, x, y, chunk=1024):
        modes.append(t.optimizer.param_groups[0]["train_mode"])
        return real(t, x, y, chunk)

    monkeypatch.setattr(evaluation, "evaluate_split", recording)
    run_dir = trainlab.run(None, ["workload.p=23", "steps=40", "eval_every=20", "model.width=32",
                                  "optimizer=adamw_schedulefree", "optimizer.lr=1e-2"],
                           out=tmp_path / "r", quiet=True, report=False)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 20, 40]
    assert rows[-1]["train_loss"] < 0.7 * rows[0]["train_loss"]
    # Train and validation split at each of the 3 evaluations. Before the first step nothing is averaged yet and
    # the trainer leaves the optimizer in train mode; afterwards every evaluation runs in eval mode.
    assert modes == [True, True] + [False] * 4
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
