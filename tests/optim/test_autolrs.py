"""AutoLRS (Jin et al. 2021): the GP, the acquisition, the exponential forecast, the explore/rollback logic
(after a stage's search the parameters are exactly those of training with the chosen lr from the snapshot),
checkpoints, and training a tiny workload through the trainer (registry name and Python-file submission)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import trainlab
from trainlab import optim
from trainlab.optim.autolrs import AutoLRS, GaussianProcess, exp_forecast, forecast_window, lcb_next

# ------------------------------------------------------------------------------------------------ GP


def test_gp_interpolates_and_is_uncertain_away_from_data():
    x = [0.0, 0.25, 0.5, 0.75, 1.0]
    y = [math.sin(3 * v) for v in x]
    gp = GaussianProcess(noise=1e-6).fit(x, y)
    mu, sd = gp.predict(x)
    assert np.allclose(mu, y, atol=1e-3) and (sd < 1e-2).all()
    mu, _ = gp.predict([0.375, 0.625])  # between the points: a smooth function is recovered
    assert np.allclose(mu, [math.sin(3 * 0.375), math.sin(3 * 0.625)], atol=0.05)
    gp2 = GaussianProcess().fit([0.0, 0.1], [1.0, 2.0])
    _, sd2 = gp2.predict([0.05, 1.0])
    assert sd2[1] > 5 * sd2[0]


def test_gp_rejects_bad_input():
    with pytest.raises(ValueError):
        GaussianProcess().fit([0.0, 1.0], [1.0])


def test_lcb_exploits_with_kappa_0_and_explores_with_large_kappa():
    x = [0.2, 0.4, 0.6]
    gp = GaussianProcess().fit(x, [2.0, 1.0, 1.5])
    exploit = lcb_next(gp, x, kappa=0.0)
    assert 0.35 < exploit < 0.6 and all(abs(exploit - t) > 1e-3 for t in x)
    explore = lcb_next(gp, x, kappa=100.0)
    assert explore > 0.9 or explore < 0.05  # the farthest from the data


# -------------------------------------------------------------------------------------------- forecast


def test_exp_forecast_recovers_an_exponential_and_extrapolates():
    t = np.arange(30)
    for a, b, c in ((2.0, 0.1, 0.5), (1.0, 0.02, 1.3)):
        y = a * np.exp(-b * t) + c
        assert exp_forecast(y, at=300) == pytest.approx(a * math.exp(-b * 300) + c, abs=1e-4)
    noisy = 2.0 * np.exp(-0.1 * t) + 0.5 + np.random.default_rng(0).normal(0, 0.01, len(t))
    assert exp_forecast(noisy, at=300) == pytest.approx(0.5, abs=0.05)
    assert exp_forecast([1.0, math.nan, 0.5, 0.4], at=10) == math.inf
    assert exp_forecast([1.0, 0.9], at=10) == math.inf  # too short to fit


def test_forecast_window_guards():
    t = np.arange(20)
    # a near-linear decrease (a small lr): the unguarded fit extrapolates it far beyond the window,
    # the guarded one (b >= 1/20) keeps the forecast within about one more window's drop
    y = 3.0 - 0.01 * t
    assert exp_forecast(y, at=200) < 2.0
    assert 2.6 < forecast_window(y, at=200) < 2.81
    # an unstable window (the loss rises above where it started, then falls): the current loss, no extrapolation
    spike = np.concatenate([np.linspace(3.0, 5.0, 8), np.linspace(5.0, 2.5, 12)])
    assert forecast_window(spike, at=200) == pytest.approx(spike[-2:].mean())
    # a clean exponential with b above the bound is still recovered
    assert forecast_window(2.0 * np.exp(-0.3 * t) + 0.5, at=200) == pytest.approx(0.5, abs=1e-3)
    assert forecast_window([1.0, math.inf, 0.5], at=10) == math.inf


# ---------------------------------------------------------------------------------- explore / rollback


def _problem():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 5, generator=g), torch.randn(64, 1, generator=g)
    w0 = torch.randn(5, 1, generator=g)
    return x, y, w0


def _train(opt, w, x, y, steps, observe=True):
    first_losses = []
    for _ in range(steps):
        loss = ((x @ w - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if observe:
            opt.observe_loss(loss.detach())
        first_losses.append(float(loss.detach()))
    return first_losses


def test_after_the_search_the_params_are_those_of_the_chosen_lr_from_the_snapshot():
    x, y, w0 = _problem()
    k, tau_p, tau = 4, 5, 7
    w = torch.nn.Parameter(w0.clone())
    opt = AutoLRS([w], "adamw", lr=1e-3, lr_min=1e-3, lr_max=1.0, candidates=k, explore_steps=tau_p,
                  stage_steps=tau, max_stage_steps=tau)
    losses = _train(opt, w, x, y, k * tau_p + tau)
    # every tried lr started from the snapshot: the first loss of each window is the initial loss
    assert [losses[i * tau_p] for i in range(k)] == [losses[0]] * k
    assert losses[k * tau_p] == losses[0]  # so did the stage itself
    (stage,) = opt.history
    tried = [lr for lr, _ in stage["tried"]]
    assert len(set(tried)) == k and all(1e-3 <= lr <= 1.0 for lr in tried)
    forecasts = [f for _, f in stage["tried"]]
    assert stage["lr"] == tried[int(np.argmin(forecasts))]  # the lowest forecast wins
    # reference: plain AdamW from the same start, the chosen lr, tau steps
    w_ref = torch.nn.Parameter(w0.clone())
    ref = optim.build("adamw", [w_ref], lr=stage["lr"])  # the same kernel as the wrapper's base
    _train(ref, w_ref, x, y, tau, observe=False)
    assert torch.equal(w.detach(), w_ref.detach())
    # and its state too (the base's moments were rolled back before the stage)
    assert torch.equal(opt.state[w]["exp_avg"], ref.state[w_ref]["exp_avg"])


def test_stages_double_and_the_next_stage_starts_from_the_previous_lr():
    x, y, w0 = _problem()
    w = torch.nn.Parameter(w0.clone())
    opt = AutoLRS([w], lr_min=1e-3, lr_max=1.0, candidates=2, explore_steps=3, stage_steps=4, max_stage_steps=8)
    _train(opt, w, x, y, (2 * 3 + 4) + (2 * 6 + 8) + 1)
    assert [h["stage_steps"] for h in opt.history] == [4, 8]
    assert [h["explore_steps"] for h in opt.history] == [3, 6]
    assert opt.history[1]["tried"][0][0] == opt.history[0]["lr"]


def test_lr_ratios_between_groups_are_kept():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = AutoLRS([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 2e-3}], candidates=2, explore_steps=3)
    (a.sum() + b.sum()).backward()
    opt.step()
    assert opt.param_groups[1]["lr"] == pytest.approx(2 * opt.param_groups[0]["lr"])
    assert opt.param_groups[0]["lr"] == pytest.approx(opt.lr)


def test_state_dict_round_trip_mid_search_continues_exactly():
    x, y, w0 = _problem()
    kw = dict(candidates=3, explore_steps=4, stage_steps=5)
    w = torch.nn.Parameter(w0.clone())
    opt = AutoLRS([w], **kw)
    _train(opt, w, x, y, 6)  # inside the second tried lr's window
    saved_w, saved = w.detach().clone(), opt.state_dict()
    assert saved["autolrs"]["snapshot"] is not None and len(saved["autolrs"]["tried"]) == 1
    _train(opt, w, x, y, 20)
    w2 = torch.nn.Parameter(saved_w.clone())
    opt2 = AutoLRS([w2], **kw)
    opt2.load_state_dict(saved)
    assert "autolrs" not in opt2.optimizer.state_dict()
    _train(opt2, w2, x, y, 20)
    assert torch.equal(w.detach(), w2.detach()) and opt2.history == opt.history


def test_without_loss_feedback_it_steps_the_base_at_the_given_lr():
    x, y, w0 = _problem()
    w = torch.nn.Parameter(w0.clone())
    opt = AutoLRS([w], lr=1e-2, candidates=2, explore_steps=3)
    with pytest.warns(RuntimeWarning, match="observe_loss"):
        _train(opt, w, x, y, 5, observe=False)
    assert opt.blind and opt.param_groups[0]["lr"] == 1e-2


def test_a_schedule_multiplies_the_autolrs_lr():
    w = torch.nn.Parameter(torch.ones(2))
    opt = AutoLRS([w], lr=1e-3, candidates=2, explore_steps=3)
    w.sum().backward()
    opt.step()
    chosen = opt.lr
    opt.param_groups[0]["lr"] = 0.5e-3  # as the trainer writes base_lr * schedule(step) = 1e-3 * 0.5
    opt.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * chosen)


def test_registry_options_and_errors():
    w = torch.nn.Parameter(torch.ones(3))
    opt = optim.build("autolrs", [w], base="sgd", lr=0.1, momentum=0.9, candidates=3)
    assert isinstance(opt.optimizer, torch.optim.SGD) and opt.candidates == 3
    with pytest.raises(ValueError):
        AutoLRS([w], lr_min=1.0, lr_max=0.1)


# ------------------------------------------------------------------------------------------ in a run

TINY = ["workload=teacher_student", "workload.d_in=8", "workload.n_train=256", "workload.n_val=256",
        "workload.teacher_width=16", "model=mlp", "model.depth=1", "model.width=32", "batch_size=32", "eval_every=60",
        "steps=120"]


def _val_losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["val_loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if "val_loss" in json.loads(line)]


def test_trains_a_tiny_workload(tmp_path):
    out = trainlab.run(None, [*TINY, "optimizer=autolrs", "optimizer.candidates=3", "optimizer.explore_steps=5",
                              "optimizer.stage_steps=20"], out=tmp_path / "run", quiet=True, report=False)
    losses = _val_losses(Path(out))
    assert losses[-1] < 0.5 * losses[0]
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if r["step"] > 0]
    # the lr column is AutoLRS's own (within its search range), not the constant schedule's 1e-3 default
    assert all(1e-4 <= lr <= 1e-1 for lr in lrs) and any(abs(lr - rows[0]["lr"]) > 1e-9 for lr in lrs)


def test_the_python_file_submission_trains(tmp_path):
    from trainlab.bench import submission

    path = Path(__file__).parents[2] / "examples" / "autolrs_submission.py"
    sub = submission.from_file(str(path))
    submission.register_file(sub.file)  # the process that trains registers the file (from_file checks it elsewhere)
    assert sub.optimizer.startswith("submission_") and sub.optimizer_options["candidates"] == 5
    out = trainlab.run(None, [*TINY, *sub.overrides({"optimizer.explore_steps": 5, "optimizer.stage_steps": 20}, 120)],
                       out=tmp_path / "run", quiet=True, report=False)
    losses = _val_losses(Path(out))
    assert losses[-1] < 0.5 * losses[0]
