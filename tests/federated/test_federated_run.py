"""Federated runs end to end (``trainlab run fed.*``): the exact equivalences the strategies promise, resume
exactness for every strategy and client rule, the run directory's columns and summary, and one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

from resume_testing import _weights, assert_resume_exact, run_quietly  # type: ignore[import-not-found]

SMALL = ["workload=mnist1d", "workload.num_samples=400", "model=mlp", "model.width=16", "model.depth=1",
         "eval_every=4", "threads=1"]


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_fedavg_with_one_full_batch_local_step_and_every_client_is_full_batch_gradient_descent(tmp_path):
    """FedAvg, one local step on each client's whole share, every client, weights n_k/n, server x <- x - mean delta:
    x - lr sum_k (n_k/n) grad_k = x - lr grad (the full-batch mean gradient) -- plain SGD on the full batch."""
    steps = ["steps=6"]
    plain = run_quietly(tmp_path / "plain", [*SMALL, *steps, "optimizer=sgd", "optimizer.lr=0.3", "batch_size=0"])
    fed = run_quietly(tmp_path / "fed", [*SMALL, *steps, "fed.strategy=fedavg", "fed.clients=5",
                                         "fed.participation=1", "fed.partition=iid", "fed.local_steps=1",
                                         "fed.local_batch=1000", "fed.local_lr=0.3"])
    for key, value in _weights(plain).items():
        torch.testing.assert_close(_weights(fed)[key], value, rtol=1e-5, atol=1e-6)
    for a, b in zip(rows(plain), rows(fed)):
        assert a["step"] == b["step"] and a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)


def test_fedbuff_buffering_every_client_that_arrives_together_is_fedavg_of_everyone(tmp_path):
    common = [*SMALL, "steps=5", "fed.clients=6", "fed.participation=1", "fed.speeds=constant",
              "fed.weighting=uniform", "fed.local_steps=3"]
    avg = run_quietly(tmp_path / "avg", [*common, "fed.strategy=fedavg"])
    buff = run_quietly(tmp_path / "buff", [*common, "fed.strategy=fedbuff", "fed.buffer=6", "fed.staleness=constant"])
    for key, value in _weights(avg).items():
        torch.testing.assert_close(_weights(buff)[key], value, rtol=1e-5, atol=1e-6)
    assert [r["sim_time"] for r in rows(avg)] == [r["sim_time"] for r in rows(buff)]


def test_a_federated_run_records_simulated_time_bytes_and_its_federation(tmp_path):
    run = run_quietly(tmp_path / "run", [*SMALL, "steps=8", "fed=fedavg", "fed.clients=10", "fed.dropout=0.2"])
    table = rows(run)
    assert [r["step"] for r in table] == [0, 4, 8]
    times = [r["sim_time"] for r in table]
    assert times[0] == 0 and times == sorted(times) and times[-1] > 0
    summary = json.loads((run / "summary.json").read_text())["federation"]
    params = sum(v.numel() for v in _weights(run).values())  # mlp: weights and biases only, no buffers
    # every dispatch sent the parameters (float32) down; every client that came back sent a delta up
    dispatched = (summary["client_updates"] + summary["dropped"])
    assert summary["bytes_down"] == dispatched * params * 4
    assert summary["bytes_up"] == summary["client_updates"] * params * 4
    assert summary["server_updates"] == 8 and summary["dropped"] > 0
    assert table[-1]["bytes_up"] == summary["bytes_up"]


FED_MATRIX = {
    "fedavg": ["fed.strategy=fedavg", "fed.dropout=0.1"],
    "async_fedavg": ["fed.strategy=async_fedavg", "fed.participation=0.5"],
    "fedbuff": ["fed.strategy=fedbuff", "fed.buffer=3", "fed.participation=0.5"],
    "fedfix": ["fed.strategy=fedfix", "fed.client=fedprox", "fed.prox_mu=0.1"],
    "fedcompass": ["fed.strategy=fedcompass", "fed.q_min=2", "fed.q_max=6", "fed.client=fedspeed"],
    "fedavg_fedspeed_adam_server": ["fed.strategy=fedavg", "fed.client=fedspeed", "optimizer=adam",
                                    "optimizer.lr=0.01"],
}


@pytest.mark.parametrize("name", sorted(FED_MATRIX))
def test_resume_is_exact_for_every_strategy(tmp_path, monkeypatch, name):
    """Killed mid-run and resumed: the same rows, simulated times, bytes and weights -- the clients in flight
    (their deltas), the queue, FedSpeed's corrections and FedCompass's groups all come back from the checkpoint."""
    assert_resume_exact(tmp_path, [*SMALL, "steps=10", "checkpoint_every=3", "fed.clients=8",
                                   "fed.local_steps=3", *FED_MATRIX[name]], monkeypatch, kills=(7,))


def test_same_config_same_run_and_the_seed_changes_it(tmp_path):
    base = [*SMALL, "steps=4", "fed=fedbuff", "fed.clients=8", "fed.buffer=2"]
    a, b = (run_quietly(tmp_path / n, base) for n in "ab")
    c = run_quietly(tmp_path / "c", [*base, "seed=1"])
    assert all(torch.equal(_weights(a)[k], _weights(b)[k]) for k in _weights(a))
    assert rows(a)[-1]["sim_time"] == rows(b)[-1]["sim_time"] != rows(c)[-1]["sim_time"]


@pytest.mark.parametrize("overrides, key", [
    (["fed.buffer=3"], "buffer"),  # without a strategy
    (["fed=fedavg", "fed.buffer=3"], "buffer"),  # another strategy's option
    (["fed=fedcompass", "fed.participation=0.5"], "participation"),
    (["fed=fedfix", "fed.participation=0.5"], "participation"),  # its weights sum to ~participation, not 1
    (["fed=fedavg", "fed.prox_mu=0.1"], "prox_mu"),
    (["fed=fedcompass", "fed.q_min=9", "fed.q_max=5"], "q_max"),
    (["fed=fedavg", "fed.speeds=trace"], "speed_trace"),
    (["fed=fedavg", "fed.partition=iid", "fed.alpha=0.5"], "alpha"),
    (["fed=fedsgd"], "strategy"),
])
def test_config_mistakes_are_one_line_errors(overrides, key):
    from trainlab.config import ConfigError
    from trainlab.train.config import from_cli

    with pytest.raises(ConfigError) as err:
        from_cli(None, [*SMALL, *overrides])
    assert key in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("overrides, words", [
    (["fed=fedavg", "fed.clients=500"], "exceed"),
    (["workload=teacher_student", "workload.n_train=200", "fed=fedavg"], "class label"),
    (["fed=fedavg", "loss.z_loss=1e-4"], "z_loss"),
    (["fed=fedavg", "data.keep=0.5", "data.select=random"], "partitions"),
])
def test_runs_a_federation_cannot_do_are_one_line_errors(tmp_path, overrides, words):
    from trainlab.errors import UserError

    with pytest.raises(UserError) as err:
        run_quietly(tmp_path / "run", [*(SMALL if "workload=teacher_student" not in overrides else SMALL[2:]),
                                       "steps=2", *overrides])
    assert words in str(err.value) and "\n" not in str(err.value)


def test_the_server_defaults_to_plain_averaging_and_a_named_optimizer_is_the_servers():
    from trainlab.train.config import from_cli

    cfg = from_cli(None, [*SMALL, "fed=fedavg"])
    assert (cfg.optimizer.name, cfg.optimizer.options.lr, cfg.schedule.name) == ("sgd", 1.0, "constant")
    cfg = from_cli(None, [*SMALL, "fed=fedavg", "optimizer=adam", "optimizer.lr=0.01"])
    assert (cfg.optimizer.name, cfg.optimizer.options.lr) == ("adam", 0.01)


def test_the_report_plots_accuracy_against_simulated_time_and_bytes_for_federated_runs_only(tmp_path):
    from trainlab.report import write_compare_report

    avg = run_quietly(tmp_path / "avg", [*SMALL, "steps=4", "fed=fedavg", "fed.clients=6"])
    buff = run_quietly(tmp_path / "buff", [*SMALL, "steps=4", "fed=fedbuff", "fed.clients=6", "fed.buffer=2"])
    plain = run_quietly(tmp_path / "plain", [*SMALL, "steps=4"])
    page = write_compare_report([avg, buff, plain], tmp_path / "compare.html").read_text()
    assert 'alt="fed_time"' in page and 'alt="fed_bytes"' in page and "simulated time" in page
    alone = write_compare_report([plain], tmp_path / "plain.html").read_text()
    assert "fed_time" not in alone


def test_the_ray_backend_without_ray_is_a_one_line_error(tmp_path, monkeypatch):
    import sys

    from trainlab.errors import UserError

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails, as where Ray is not installed
    with pytest.raises(UserError, match=r"pip install 'trainlab\[ray\]'") as err:
        run_quietly(tmp_path / "run", [*SMALL, "steps=2", "fed=fedavg", "fed.clients=4", "fed.backend=ray"])
    assert "\n" not in str(err.value)
