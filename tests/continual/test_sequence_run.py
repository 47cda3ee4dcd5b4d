"""A task sequence through the trainer: per-task columns, dense evaluation after switches, exact resume."""

import json

import pytest

import trainlab
from resume_testing import assert_resume_exact

SPLIT = ["workload=split_mnist1d", "workload.steps_per_task=40", "workload.num_samples=1000", "model.width=128",
         "optimizer.lr=3e-3", "eval_every=10"]


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_sequence_trains_task_after_task_and_evaluates_every_task(tmp_path):
    metrics = rows(trainlab.run(overrides=SPLIT, out=tmp_path / "run", quiet=True, report=False))
    steps = [r["step"] for r in metrics]
    assert steps[-1] == 200 and {0, 40, 80, 120, 160, 200} <= set(steps)
    assert {41, 42, 43, 44, 46, 47, 50, 53, 58, 64} <= set(steps)  # dense after the switch at 40 (8 per decade)
    for r in metrics:
        assert all(0 <= r[f"task{j}_acc"] <= 1 for j in range(5))
        assert r["task"] == min(r["step"] // 40, 4)
        seen = range(r["task"] + 1)
        assert r["val_acc"] == pytest.approx(sum(r[f"task{j}_acc"] for j in seen) / len(seen))
    after_first = next(r for r in metrics if r["step"] == 40)
    assert after_first["task0_acc"] > 0.8  # two classes are easy
    assert metrics[-1]["task0_acc"] < 0.2  # and forgotten by naive class-incremental training


def test_task_incremental_evaluation_masks_to_the_task_s_classes(tmp_path):
    metrics = rows(trainlab.run(overrides=[*SPLIT, "workload.scenario=task"], out=tmp_path / "run", quiet=True,
                                report=False))
    # with the task known, two-way choices: an untrained task is near chance (0.5), not near 0
    assert 0.2 < metrics[0]["task3_acc"] < 0.8
    assert metrics[-1]["task0_acc"] > 0.6  # forgetting within a task's own classes is milder


def test_resume_mid_sequence_is_exact(tmp_path, monkeypatch):
    assert_resume_exact(tmp_path, [*SPLIT, "checkpoint_every=7"], monkeypatch, kills=(44, 121))


def test_sequence_rules_are_one_line_errors():
    from trainlab.config import ConfigError
    from trainlab.train.config import from_cli

    for args, words in [(["continual.method=replay"], "applies to task-sequence workloads only"),
                        (["workload=split_mnist1d", "continual.ewc_lambda=3"], "applies to continual.method=ewc"),
                        (["workload=split_mnist1d", "steps=7"], "change workload.steps_per_task"),
                        (["workload=split_mnist1d", "workload.tasks=3"], "must divide the 10 classes")]:
        with pytest.raises(ConfigError, match=words):
            from_cli(None, args)
