"""Refined schedules (Defazio et al. 2023): the closed form, its shapes, trace reading, and a real refined run."""

import json

import numpy as np
import pytest

import trainlab
from trainlab.config import ConfigError
from trainlab.schedules import build
from trainlab.rundir import RunDir
from trainlab.schedules.refined import refine, resample
from trainlab.train.config import parse_overrides, resolve


def reference_closed_form(g, power=2.0):
    """The loop of facebookresearch/adaptive_scheduling's find_closed_form_schedule, then max-normalised."""
    w = np.asarray(g, dtype=float) ** -power
    tail = np.flip(np.cumsum(np.flip(w)))
    s = np.array([0.0 if t == len(g) - 1 else w[t] * tail[t + 1] / tail[-1] for t in range(len(g))])
    return s / s.max()


def test_constant_norms_give_linear_decay():
    n = 50
    s = refine(np.full(n, 3.7))
    # s_t = w² (n - 1 - t): linear decay from 1 at step 0 to 0 at the last step -- the paper's statement that
    # refining constant gradient norms yields linear decay (its worst-case optimal schedule).
    assert np.allclose(s, (n - 1 - np.arange(n)) / (n - 1))
    linear = build("linear", n)  # 1 - t/n: the same line, reaching 0 one step later
    assert max(abs(s[t] - linear(t)) for t in range(n)) <= 1 / n + 1e-12


def test_matches_the_reference_closed_form():
    rng = np.random.default_rng(0)
    g = np.exp(rng.normal(size=80))
    for power in (1.0, 2.0):
        assert np.allclose(refine(g, tau=0.0, power=power), reference_closed_form(g, power))


def test_falling_norms_give_a_warmup():
    t = np.arange(300)
    s = refine(1 + 4 * np.exp(-t / 20))  # large early gradients that settle
    peak = int(np.argmax(s))
    assert s[0] < 0.2 and 20 < peak < 150
    assert np.all(np.diff(s[:peak + 1]) >= -1e-12)  # rises to the peak: an automatic warm-up
    assert np.all(np.diff(s[peak:]) <= 1e-12) and s[-1] == 0.0


def test_rising_norms_anneal_faster_than_linear_and_have_no_warmup():
    n = 200
    s = refine(1 + np.arange(n) / 50)  # steadily rising gradient norms
    assert s[0] == 1.0 and np.all(np.diff(s) <= 0)  # no warm-up: w and its tail sum both fall
    assert np.all(s <= (n - 1 - np.arange(n)) / (n - 1) + 1e-12)
    assert s[n // 2] < 0.5 * 0.5  # well below the linear schedule half-way


def test_median_filter_ignores_a_spike_and_power_matters():
    g = np.ones(100)
    spiked = g.copy()
    spiked[40] = 50.0
    assert np.allclose(refine(spiked, tau=0.1), refine(g, tau=0.1))
    assert not np.allclose(refine(spiked, tau=0.0), refine(g, tau=0.0))
    ramp = 1 + np.arange(100) / 20
    assert not np.allclose(refine(ramp, power=1), refine(ramp, power=2))
    with pytest.raises(ValueError):
        refine(np.ones(1))


def test_resample_keeps_the_endpoints_of_the_normalised_time_axis():
    s = refine(1 + np.arange(60) / 10)
    short, long = resample(s, 40), resample(s, 119)
    assert short[0] == 1.0 and short[-1] == 0.0 and long[0] == 1.0 and long[-1] == 0.0
    assert np.allclose(long[::2], s)  # step 2i of 119 sits at t/(T-1) = i/59, step i of the 60-step trace
    assert np.allclose(long[1::2], (s[:-1] + s[1:]) / 2)  # and in between: linear interpolation
    assert np.allclose(resample(s, 60), s)


def write_trace(path, norms, torn=True):
    path.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"step": i, "lr": 0.1, "loss": 1.0, "grad_norm": g}) for i, g in enumerate(norms)]
    text = "\n".join(lines) + "\n" + ('{"step": 99, "lr": 0.1, "lo' if torn else "")
    (path / "trace.jsonl").write_text(text)


def test_reads_a_trace_with_a_torn_last_line_and_missing_norms(tmp_path):
    write_trace(tmp_path / "run", [2.0] * 30 + [None] + [2.0] * 9)
    rows = RunDir(tmp_path / "run").trace()
    assert [r["step"] for r in rows] == list(range(40))
    f = build("refined", 39, from_run=str(tmp_path / "run"))  # 39 finite norms: no resampling needed
    assert [f(t) for t in (0, 19, 38)] == pytest.approx([1.0, 0.5, 0.0])


def one_line_error(overrides):
    with pytest.raises(ConfigError) as err:
        resolve([parse_overrides(overrides)])
    assert err.value.key == "schedule.from_run" and "\n" not in str(err.value)
    return str(err.value)


def test_config_errors_name_the_file(tmp_path):
    assert "required" in one_line_error(["schedule=refined"])
    missing = tmp_path / "nowhere"
    assert str(missing / "trace.jsonl") in one_line_error(["schedule=refined", f"schedule.from_run={missing}"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "trace.jsonl").write_text("")
    message = one_line_error(["schedule=refined", f"schedule.from_run={tmp_path / 'empty'}"])
    assert str(tmp_path / "empty" / "trace.jsonl") in message and "0 step" in message


TINY = ["workload.p=23", "steps=60", "eval_every=20", "model.width=32"]


def test_refined_run_from_a_previous_run(tmp_path):
    first = trainlab.run(None, TINY, out=tmp_path / "a", quiet=True, report=False)
    overrides = [*TINY[:1], "steps=45", *TINY[2:], "schedule=refined", f"schedule.from_run={first}"]
    second = trainlab.run(None, overrides, out=tmp_path / "b", quiet=True, report=False)
    trace = RunDir(first).trace()
    base = trace[0]["lr"]  # the first run's schedule is constant: its lr is the optimizer's base lr
    expected = base * resample(refine(np.array([r["grad_norm"] for r in trace])), 45)  # 60 trace steps -> 45
    lrs = np.array([r["lr"] for r in RunDir(second).trace()])
    assert len(lrs) == 45 and np.allclose(lrs, expected, rtol=1e-12, atol=0)
    assert lrs[-1] == 0.0 and lrs.max() == pytest.approx(base)
    assert f"from_run: {first}" in (second / "config.yaml").read_text()
