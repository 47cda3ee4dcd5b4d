"""Large-batch rules (the ``batch`` section): the lr factor and step budget of each rule, and that a run uses them.

Values are checked against hand computations; the run-level tests read the lr the trainer logged and the number
of steps it took, so they check the wiring, not the formulas again.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import trainlab
from trainlab.config import ConfigError
from trainlab.train.batch_rules import lr_factor, scaled_steps
from trainlab.train.config import RunConfig, from_cli


def test_lr_factors_by_hand() -> None:
    assert lr_factor("none", 512, 128) == 1.0
    assert lr_factor("linear", 512, 128) == 4.0
    assert lr_factor("sqrt", 512, 128) == 2.0
    assert lr_factor("sqrt", 32, 128) == 0.5  # smaller batches scale down
    assert lr_factor("linear", 200, 200) == lr_factor("sqrt", 200, 200) == 1.0


def test_step_budgets_by_hand() -> None:
    assert scaled_steps("iterations", 1000, 512, 128) == 1000  # regime adaptation: as many updates as at B0
    assert scaled_steps("epochs", 1000, 512, 128) == 250  # the same epochs: B0/B of the updates
    assert scaled_steps("epochs", 1000, 300, 128) == 427  # round(426.67)
    assert scaled_steps("epochs", 3, 4096, 1) == 1  # never below one step


@pytest.mark.parametrize("call", [lambda: lr_factor("linear", 0, 128), lambda: scaled_steps("epochs", 10, 64, 0),
                                  lambda: lr_factor("cubic", 64, 32)])  # type: ignore[arg-type]
def test_bad_arguments_are_value_errors(call) -> None:
    with pytest.raises(ValueError):
        call()


MNIST = ["workload=mnist1d", "model=mlp", "model.width=16"]


def cfg(*overrides: str) -> RunConfig:
    return from_cli(None, [*MNIST, *overrides])


def test_defaults_leave_the_config_as_it_was() -> None:
    assert cfg() == cfg("batch.lr_rule=none", "batch.steps_rule=iterations")


def test_the_epochs_rule_scales_the_workload_budget_only() -> None:
    plain = cfg()
    base = plain.train.batch_size
    assert base and plain.train.steps
    scaled = cfg(f"batch_size={4 * base}", "batch.steps_rule=epochs")
    assert scaled.train.steps == round(plain.train.steps / 4)
    explicit = cfg(f"batch_size={4 * base}", "batch.steps_rule=epochs", "steps=77")
    assert explicit.train.steps == 77  # an explicit budget is the run's: a saved config resolves to itself
    assert cfg(f"batch_size={4 * base}", "batch.steps_rule=epochs", f"steps={scaled.train.steps}") == scaled


@pytest.mark.parametrize("overrides, key", [
    (["batch.base=64"], "batch.base"),  # nothing reads it with both rules off
    (["workload=modular", "batch.steps_rule=epochs"], "batch.steps_rule"),  # the modular recipe is full batch
    (["batch.lr_rule=quadratic"], "batch.lr_rule"),
    (["workload=split_mnist1d", "batch.steps_rule=epochs"], "batch.steps_rule"),  # a sequence's length is its tasks'
])
def test_refusals_name_the_key(overrides, key) -> None:
    with pytest.raises(ConfigError) as err:
        cfg(*overrides)
    assert err.value.key == key and "\n" not in str(err.value)


def _lrs(run_dir: Path) -> list[float]:
    return [json.loads(line)["lr"] for line in (run_dir / "trace.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("rule, factor", [("linear", 4.0), ("sqrt", 2.0)])
def test_a_run_trains_with_the_scaled_lr(tmp_path: Path, rule: str, factor: float) -> None:
    common = ["workload=mnist1d", "model=mlp", "model.width=16", "steps=3", "eval_every=3", "optimizer=sgd",
              "optimizer.lr=0.01"]
    plain = trainlab.run(None, [*common, "batch_size=32"], out=tmp_path / "plain", quiet=True, report=False)
    big = trainlab.run(None, [*common, "batch_size=128", "batch.base=32", f"batch.lr_rule={rule}"],
                       out=tmp_path / rule, quiet=True, report=False)
    assert _lrs(plain) == [0.01] * 3 and "batch" not in json.loads((plain / "summary.json").read_text())
    assert all(math.isclose(lr, 0.01 * factor, rel_tol=1e-12) for lr in _lrs(big))
    summary = json.loads((big / "summary.json").read_text())
    assert math.isclose(summary["batch"]["lr_factor"], factor, rel_tol=1e-12)
