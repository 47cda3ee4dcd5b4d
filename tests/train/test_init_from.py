"""Fine-tuning from another run (``init_from=RUN_DIR``): the weights of the source's newest checkpoint, loaded
before the first step, with a fresh optimizer, schedule and step count; one-line refusals; resume; and the
adversarial fine-tuning command of Jeddi et al. (PGD with the slow-start, fast-decay schedule)."""

from __future__ import annotations

import json
import shutil
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import trainlab
from resume_testing import _interrupted, assert_resume_exact, run_quietly  # type: ignore[import-not-found]  # tests/ is on pytest's path
from trainlab.config import ConfigError
from trainlab.train import loop

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
MODEL = ["workload=mnist1d", "model=mlp", "model.width=32", "eval_every=10", "batch_size=64"]
SOURCE_STEPS = 30


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained source run (30 steps of AdamW) whose final weights the fine-tuning runs start from."""
    out = tmp_path_factory.mktemp("init-from") / "source"
    return trainlab.run(overrides=[*MODEL, f"steps={SOURCE_STEPS}", "optimizer.lr=1e-2"], out=out, quiet=True,
                        report=False)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trainlab", *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd, timeout=300)


def rows(run_dir: Path, name: str = "metrics.jsonl") -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines()]


def test_starts_from_the_source_s_final_weights_with_a_fresh_optimizer(source: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    real_step = loop.train_step

    def first_step(t: Any, s: Any) -> torch.Tensor:
        if not seen:  # the state the first optimizer step starts from
            seen.update(step=s.step, weights={k: v.clone() for k, v in t.model.state_dict().items()},
                        optimizer_state=len(t.optimizer.state), lr=t.optimizer.param_groups[0]["lr"])
        return real_step(t, s)

    monkeypatch.setattr(loop, "train_step", first_step)
    tuned = trainlab.run(overrides=[*MODEL, "steps=5", "optimizer.lr=3e-3", f"init_from={source}"],
                         out=tmp_path / "tuned", quiet=True, report=False)

    final = trainlab.load_run(source)
    assert final.step == SOURCE_STEPS
    expected = final.model.state_dict()
    assert seen["weights"].keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(seen["weights"][key], value), key
    # the optimizer starts empty at step 0 (the source's checkpoint holds 30 steps of AdamW moments) at its own lr
    assert seen["step"] == 0 and seen["optimizer_state"] == 0 and seen["lr"] == 3e-3
    from trainlab.rundir.checkpoints import load

    assert load(source / "checkpoints")["step"] == SOURCE_STEPS
    # the run counts its own steps, and its step-0 evaluation measures the source's final model
    tuned_rows = rows(tuned)
    assert [r["step"] for r in tuned_rows] == [0, 5]
    assert tuned_rows[0]["val_loss"] == pytest.approx(rows(source)[-1]["val_loss"], rel=1e-9)
    assert json.loads((tuned / "summary.json").read_text())["steps"] == 5

    # the check can fail: without init_from the same config starts elsewhere
    seen.clear()
    trainlab.run(overrides=[*MODEL, "steps=1", "optimizer.lr=3e-3"], out=tmp_path / "fresh", quiet=True,
                 report=False)
    assert not all(torch.equal(seen["weights"][k], v) for k, v in expected.items())


def test_other_shapes_are_a_config_error_naming_the_parameter(source: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        trainlab.run(overrides=[*MODEL, "model.width=48", "steps=2", f"init_from={source}"], out=tmp_path / "x",
                     quiet=True, report=False)
    assert err.value.key == "init_from"
    assert "body.fc0.weight" in err.value.message and "\n" not in str(err.value)
    assert not (tmp_path / "x").exists()  # the refused run leaves no directory


@pytest.mark.parametrize("what", ["missing", "no_checkpoint", "other_shapes"])
def test_cli_refusals_are_one_line_exit_2(what: str, source: Path, tmp_path: Path) -> None:
    import shutil

    extra: list[str] = []
    if what == "missing":
        src, words = tmp_path / "nowhere", "init_from: not a trainlab run directory"
    elif what == "no_checkpoint":  # a run directory whose checkpoints are gone
        src = tmp_path / "bare"
        shutil.copytree(source, src, ignore=shutil.ignore_patterns("checkpoints"))
        words = "init_from: no checkpoint in"
    else:
        src, words, extra = source, "init_from: the weights of", ["model.depth=3"]
    out = cli("run", *MODEL, *extra, "steps=2", f"init_from={src}", "--out", "run", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and f"trainlab: config error: {words}" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "run").exists()


def test_a_fine_tuning_run_resumes_exactly(source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed mid-run and resumed (the resumed run loads its own checkpoint, not the source's weights again): the
    same rows and weights as the run never interrupted."""
    overrides = [*MODEL, "steps=16", "eval_every=4", "checkpoint_every=5", "optimizer.lr=3e-3",
                 f"init_from={source}"]
    assert_resume_exact(tmp_path, overrides, monkeypatch, kills=(8,))


def test_resume_does_not_read_the_source_again(source: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The resumed run's weights come from its own checkpoint: its source may be gone by then."""
    copy = tmp_path / "source-copy"
    shutil.copytree(source, copy)
    out = tmp_path / "fine-tune"
    _interrupted(out, [*MODEL, "steps=10", "eval_every=5", "checkpoint_every=5", f"init_from={copy}"], 6, "kill",
                 monkeypatch)
    shutil.rmtree(copy)
    run_quietly(None, [], resume=out)
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_adversarial_fine_tuning_command(source: Path, tmp_path: Path) -> None:
    """`trainlab run ... init_from=SRC loss.adversarial=pgd schedule=slow_start_fast_decay` trains to the end; the
    trace's lr is the schedule's from its own step 0 (warm-up W = round(0.1 T) = 2, then 0.01^((t - W)/(T - W)))."""
    steps, lr = 20, 2e-3
    out = cli("run", *MODEL, f"steps={steps}", f"optimizer.lr={lr}", f"init_from={source}",
              "loss.adversarial=pgd", "loss.adversarial_eps=0.1", "loss.adversarial_steps=3",
              "schedule=slow_start_fast_decay", "probes=robustness", "probes.robust_eps=0.1", "--out", "ft",
              "--quiet", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    run_dir = tmp_path / "ft"
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    trace = rows(run_dir, "trace.jsonl")
    assert [r["step"] for r in trace] == list(range(steps))
    warmup = 2
    expected = [lr * ((t + 1) / warmup if t < warmup else 0.01 ** ((t - warmup) / (steps - warmup)))
                for t in range(steps)]
    for r, want in zip(trace, expected):
        assert math.isclose(r["lr"], want, rel_tol=1e-12), r
    metrics = rows(run_dir)
    assert metrics[0]["val_loss"] == pytest.approx(rows(source)[-1]["val_loss"], rel=1e-9)
    assert all(0.0 <= m["robustness/adv_acc_eps0.1"] <= m["robustness/clean_acc"] for m in metrics
               if "robustness/clean_acc" in m)
