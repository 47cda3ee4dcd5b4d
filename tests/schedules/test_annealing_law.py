"""The LR-annealing scaling law: S1/S2, fitting synthetic curves, predicting another schedule's curve."""

import json

import numpy as np
import pytest

from trainlab.config import ConfigError
from trainlab.errors import RunDirError
from trainlab.schedules import annealing_law as law

TRUE = law.LawParams(L0=2.0, A=1.2, alpha=0.45, C=2e-4, lam=0.999, lr_scale=3e-3)
T, BASE = 2000, 3e-3


def curves():
    cosine = law.schedule_lrs("cosine", T, BASE, warmup=50)
    wsd = law.schedule_lrs("wsd", T, BASE, warmup=50, decay_frac=0.2)
    return cosine, wsd


def test_s2_recursion_equals_the_closed_form():
    rng = np.random.default_rng(1)
    eta = np.sort(rng.uniform(0.1, 1.0, 40))[::-1]  # decaying, peak at step 0
    lam = 0.9
    s1, s2 = law.areas(eta, lam=lam, lr_scale=1.0)
    closed = [sum(lam ** (i - k) * (eta[k - 1] - eta[k]) for i in range(s + 1) for k in range(1, i + 1))
              for s in range(len(eta))]
    assert np.allclose(s2, closed) and np.allclose(s1, np.cumsum(eta))
    assert np.allclose(law.areas(eta, lam=0.0, lr_scale=1.0)[1], eta[0] - eta)  # λ = 0: the drop so far
    assert np.allclose(law.areas(eta, lam=1.0, lr_scale=1.0)[1], np.cumsum(eta[0] - eta))  # λ = 1: area below peak
    assert np.all(law.areas(np.full(50, 0.3), lam=0.999)[1] == 0)  # constant lr: no annealing


def test_warmup_is_left_out_of_s2():
    eta = law.schedule_lrs("wsd", 200, 1.0, warmup=20)
    s2 = law.areas(eta)[1]
    assert np.all(s2[:160] == 0) and np.all(s2[160:] >= 0) and s2[-1] > 0


def test_fit_recovers_exact_parameters_and_predicts_wsd():
    cosine, wsd = curves()
    fitted = law.fit(cosine, law.predict(TRUE, cosine))
    for key in ("L0", "A", "alpha", "C"):
        assert getattr(fitted, key) == pytest.approx(getattr(TRUE, key), rel=1e-6), key
    assert np.max(np.abs(law.predict(fitted, wsd) - law.predict(TRUE, wsd))) < 1e-9
    logfit = law.fit(cosine, law.predict(TRUE, cosine), space="log")
    assert logfit.alpha == pytest.approx(TRUE.alpha, rel=1e-4)


def test_noisy_fit_on_cosine_predicts_wsd():
    cosine, wsd = curves()
    rng = np.random.default_rng(0)
    noisy = law.predict(TRUE, cosine) + 0.01 * rng.standard_normal(T)  # per-batch-like noise
    fitted = law.fit(cosine, noisy, bin=20)
    assert fitted.L0 == pytest.approx(TRUE.L0, rel=0.01) and fitted.C == pytest.approx(TRUE.C, rel=0.05)
    assert fitted.alpha == pytest.approx(TRUE.alpha, rel=0.15) and fitted.A == pytest.approx(TRUE.A, rel=0.15)
    truth, predicted = law.predict(TRUE, wsd)[50:], law.predict(fitted, wsd)[50:]
    assert np.max(np.abs(predicted - truth)) < 0.005  # measured 0.0026 (the wsd curve spans 0.28)
    assert abs(predicted[-1] - truth[-1]) < 0.002


def test_fit_run_reads_a_trace_and_predict_for_schedule(tmp_path):
    cosine, wsd = curves()
    rng = np.random.default_rng(2)
    losses = law.predict(TRUE, cosine) + 0.01 * rng.standard_normal(T)
    rows = [{"step": i, "lr": float(lr), "loss": float(x), "grad_norm": 1.0}
            for i, (lr, x) in enumerate(zip(cosine, losses, strict=True))]
    rows[700]["loss"] = None  # a non-finite loss is written as null
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 2000, "lr": 0.0'  # torn last line
    (tmp_path / "trace.jsonl").write_text(text)
    fitted = law.fit_run(tmp_path)
    assert fitted.lr_scale == pytest.approx(BASE) and fitted.rmse < 0.01
    predicted = law.predict_for_schedule(fitted, "wsd", T, BASE, warmup=50, decay_frac=0.2)
    assert np.allclose(predicted, law.predict(fitted, wsd))
    assert np.max(np.abs(predicted[50:] - law.predict(TRUE, wsd)[50:])) < 0.005


def test_fit_refuses_too_little_data():
    with pytest.raises(ValueError):
        law.fit(np.ones(3), np.ones(3))


def test_run_curve_errors_name_the_trace(tmp_path):
    with pytest.raises(RunDirError, match="trace.jsonl not found"):
        law.run_curve(tmp_path)
    (tmp_path / "trace.jsonl").write_text('{"step": 0, "lr": 0.1}\n{"step": 1, "lr": null}\n')
    with pytest.raises(RunDirError, match=r"trace.jsonl holds 1 step\(s\) with a finite lr; need at least 2"):
        law.run_curve(tmp_path)


def test_hypothetical_lrs_take_steps_and_lr_from_the_fit_run(tmp_path):
    (tmp_path / "config.yaml").write_text("optimizer:\n  name: adamw\n  lr: 0.003\nsteps: 200\n")
    lrs = law.hypothetical_lrs(tmp_path, ["schedule=wsd", "schedule.decay_frac=0.2"])
    assert np.allclose(lrs, law.schedule_lrs("wsd", 200, 0.003, decay_frac=0.2))
    lrs = law.hypothetical_lrs(str(tmp_path), ["schedule=cosine", "steps=50", "lr=1e-2"])
    assert np.allclose(lrs, law.schedule_lrs("cosine", 50, 1e-2))


@pytest.mark.parametrize("spec, message", [
    (["cosine"], "is not KEY=VALUE"),
    (["schedule=cosine", "warmup=3"], "unknown key for law --predict"),
    (["steps=10"], "give the schedule to predict"),
    (["schedule=cosine", "steps=0"], "needs steps >= 1 and lr > 0"),
    (["schedule=cosine", "steps=ten"], "expected"),
])
def test_hypothetical_lrs_errors(tmp_path, spec, message):
    (tmp_path / "config.yaml").write_text("optimizer:\n  lr: 0.003\nsteps: 200\n")
    with pytest.raises(ConfigError, match=message) as info:
        law.hypothetical_lrs(tmp_path, spec)
    assert "\n" not in str(info.value)


def test_hypothetical_lrs_need_the_fit_runs_config(tmp_path):
    with pytest.raises(RunDirError, match="config.yaml not found"):
        law.hypothetical_lrs(tmp_path, ["schedule=cosine"])
    (tmp_path / "config.yaml").write_text("steps: [\n")
    with pytest.raises(RunDirError, match="config.yaml: not valid YAML"):
        law.hypothetical_lrs(tmp_path, ["schedule=cosine"])
