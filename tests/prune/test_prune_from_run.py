"""``prune.from_run``: the source's final masks, fixed from step 0, with the starting weights ``prune.reset`` asks
for -- compared with what trainlab.load_run and a fresh build_model give, and with weights recorded while the
source trained."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

import trainlab
from resume_testing import _interrupted, run_quietly  # type: ignore[import-not-found]  # tests/ is on pytest's path
from trainlab.prune.source import read_rewind
from trainlab.rundir import checkpoints
from trainlab.train import loop
from trainlab.train.load import build_model

MODEL = ["workload=mnist1d", "model=mlp", "model.width=32", "eval_every=5", "batch_size=64"]
PRUNED = ["prune=magnitude", "prune.sparsity=0.8", "prune.start=8", "prune.end=12", "prune.every=2", "steps=12"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two pruning runs (rewind points after 0 and 3 steps) and the weights the second had after 3 steps."""
    root = tmp_path_factory.mktemp("sources")
    seen: dict[str, Any] = {}
    real = loop.train_step

    def step(t: Any, s: Any) -> torch.Tensor:
        if s.step == 3:
            seen["theta_3"] = {k: v.clone() for k, v in t.model.state_dict().items()}
        return real(t, s)

    theta0 = run_quietly(root / "theta0", [*MODEL, *PRUNED])
    with pytest.MonkeyPatch.context() as m:
        m.setattr(loop, "train_step", step)
        theta3 = run_quietly(root / "theta3", [*MODEL, *PRUNED, "prune.rewind_step=3"])
    return {"theta0": theta0, "theta3": theta3, "weights_3": seen["theta_3"]}


def masks_of(run: Path) -> dict[str, torch.Tensor]:
    return checkpoints.load(run / "checkpoints")["prune"]["masks"]


def start_of(overrides: list[str], out: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, torch.Tensor], Path]:
    """The weights a run's first optimizer step starts from, and the run."""
    seen: dict[str, Any] = {}
    real = loop.train_step

    def step(t: Any, s: Any) -> torch.Tensor:
        seen.setdefault("weights", {k: v.clone() for k, v in t.model.state_dict().items()})
        return real(t, s)

    monkeypatch.setattr(loop, "train_step", step)
    run = run_quietly(out, overrides)
    monkeypatch.setattr(loop, "train_step", real)
    return seen["weights"], run


def masked(weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.masked_fill(~masks[k], 0.0) if k in masks else v for k, v in weights.items()}


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_finetune_starts_from_the_source_s_final_weights(sources: dict[str, Any], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    src = sources["theta0"]
    start, run = start_of([*MODEL, "steps=6", f"prune.from_run={src}"], tmp_path / "ft", monkeypatch)
    assert_same(start, trainlab.load_run(src).model.state_dict())  # already masked: the source's last state
    assert_same(masks_of(run), masks_of(src))  # fixed: no method of its own
    assert {r["sparsity"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())} == \
        {json.loads((src / "summary.json").read_text())["prune"]["sparsity"]}


def test_rewind_to_step_0_starts_from_the_source_s_initialisation(sources: dict[str, Any], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    src = sources["theta0"]
    # seed 1: a fresh initialisation (scratch) would differ from the source's theta_0 (seed 0)
    start, run = start_of([*MODEL, "steps=6", "seed=1", f"prune.from_run={src}", "prune.reset=rewind"],
                          tmp_path / "lt", monkeypatch)
    theta_0 = build_model(trainlab.load_run(src).config, torch.device("cpu")).state_dict()
    assert_same(start, masked(theta_0, masks_of(src)))
    # the run keeps the same rewind point, so the next round rewinds to the first run's theta_0 too
    assert (run / "prune" / "rewind.safetensors").read_bytes() == (src / "prune" / "rewind.safetensors").read_bytes()


def test_rewind_to_step_k_starts_from_the_source_s_weights_after_k_steps(sources: dict[str, Any], tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    src = sources["theta3"]
    start, _ = start_of([*MODEL, "steps=6", "seed=1", f"prune.from_run={src}", "prune.reset=rewind",
                         "prune.rewind_step=3"], tmp_path / "rw", monkeypatch)
    assert_same(start, masked(sources["weights_3"], masks_of(src)))
    assert read_rewind(src)[1] == 3


def test_scratch_starts_from_a_fresh_initialisation(sources: dict[str, Any], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    src = sources["theta0"]
    start, run = start_of([*MODEL, "steps=6", "seed=1", f"prune.from_run={src}", "prune.reset=scratch"],
                          tmp_path / "scratch", monkeypatch)
    fresh = build_model(trainlab.load_run(run).config, torch.device("cpu")).state_dict()  # seed 1
    assert_same(start, masked(fresh, masks_of(src)))
    assert not torch.equal(fresh["body.fc0.weight"], build_model(trainlab.load_run(src).config,
                                                                 torch.device("cpu")).state_dict()["body.fc0.weight"])


def test_a_chained_run_prunes_further_and_never_revives(sources: dict[str, Any], tmp_path: Path) -> None:
    src = sources["theta0"]
    run = run_quietly(tmp_path / "round2", [*MODEL, f"prune.from_run={src}", "prune=magnitude", "prune.sparsity=0.9",
                                            "prune.start=2", "prune.end=6", "steps=6"])
    before, after = masks_of(src), masks_of(run)
    assert all(bool((after[k] <= before[k]).all()) for k in before)  # pruned weights stay pruned
    summary = json.loads((run / "summary.json").read_text())["prune"]
    assert summary["sparsity"] == pytest.approx(0.9, abs=1e-3)
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert first["sparsity"] == json.loads((src / "summary.json").read_text())["prune"]["sparsity"]  # s_i


def test_a_resume_does_not_read_the_source_again(sources: dict[str, Any], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    shutil.copytree(sources["theta0"], src, ignore=shutil.ignore_patterns(".lock*"))
    overrides = [*MODEL, "steps=10", "checkpoint_every=4", f"prune.from_run={src}", "prune.reset=rewind"]
    whole = run_quietly(tmp_path / "whole", overrides)
    _interrupted(tmp_path / "child", overrides, 6, "kill", monkeypatch)
    shutil.rmtree(src)
    run_quietly(None, [], resume=tmp_path / "child")
    a, b = checkpoints.load(whole / "checkpoints"), checkpoints.load(tmp_path / "child" / "checkpoints")
    assert_same(b["model"], a["model"])
    assert_same(b["prune"]["masks"], a["prune"]["masks"])
