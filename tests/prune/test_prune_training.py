"""Pruning inside the trainer: masks hold through optimizer steps, the reported sparsity is a count of the masks,
checkpoints hold the masks and a resume is exact, and a run that prunes nothing trains as a dense run does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from resume_testing import assert_resume_exact, run_quietly  # type: ignore[import-not-found]  # tests/ is on pytest's path
from trainlab.prune.pruner import Pruner
from trainlab.prune.source import read_rewind
from trainlab.rundir import checkpoints
from trainlab.train import loop

MODEL = ["workload=mnist1d", "model=mlp", "model.width=32", "eval_every=5", "batch_size=64"]
GRADUAL = ["prune=magnitude", "prune.sparsity=0.8", "prune.start=2", "prune.end=12", "prune.every=2"]
OPTIMIZERS = {
    "adamw": ["optimizer=adamw", "optimizer.lr=1e-2", "optimizer.weight_decay=0.5"],
    "sgd_momentum": ["optimizer=sgd", "optimizer.lr=0.1", "optimizer.momentum=0.9", "optimizer.weight_decay=0.01"],
}


def rows(run: Path, name: str = "metrics.jsonl") -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / name).read_text().splitlines()]


def watch_steps(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Wrap loop.train_step: after each step, record whether any pruned weight is not 0, whether any mask entry was
    revived, and whether a pruned entry got a gradient."""
    seen: list[dict[str, Any]] = []
    real = loop.train_step

    def step(t: Any, s: Any) -> torch.Tensor:
        before = {name: mask.clone() for name, mask in t.pruner.masks.items()}
        loss = real(t, s)
        params, masks = t.pruner.params, t.pruner.masks
        seen.append({
            "step": s.step, "sparsity": t.pruner.sparsity(),
            "nonzero_pruned": sum(int((params[n].detach()[~m] != 0).sum()) for n, m in masks.items()),
            "revived": sum(int((m & ~before[n]).sum()) for n, m in masks.items()),
            "pruned_grads": sum(int((params[n].grad[~before[n]] != 0).sum()) for n in masks),
        })
        return loss

    monkeypatch.setattr(loop, "train_step", step)
    return seen


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_pruned_weights_are_exactly_zero_after_every_step(optimizer: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    seen = watch_steps(monkeypatch)
    run_quietly(tmp_path / "run", [*MODEL, *OPTIMIZERS[optimizer], *GRADUAL, "steps=16"])
    assert [r["step"] for r in seen] == list(range(1, 17))
    assert all(r["nonzero_pruned"] == 0 and r["revived"] == 0 and r["pruned_grads"] == 0 for r in seen)
    assert seen[0]["sparsity"] == 0 and seen[-1]["sparsity"] == pytest.approx(0.8, abs=1e-3)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_masking_only_when_pruning_lets_the_optimizer_revive_weights(optimizer: str, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The control of the test above: zeroing the weights at the pruning steps only (no gradient masking, no
    masking after each step) lets weight decay and momentum move pruned weights off 0 -- so the check can fail."""

    def prune_only(self: Pruner, step: int) -> None:
        if self.schedule is not None and self.schedule.due(step):
            self.prune_to(self.schedule.target(step))
            self.apply_()

    monkeypatch.setattr(Pruner, "after_step", prune_only)
    monkeypatch.setattr(Pruner, "mask_grads_", lambda self: None)
    seen = watch_steps(monkeypatch)
    run_quietly(tmp_path / "run", [*MODEL, *OPTIMIZERS[optimizer], *GRADUAL, "steps=16"])
    assert seen[-1]["nonzero_pruned"] > 0


def test_reported_sparsity_is_a_count_of_the_masks(tmp_path: Path) -> None:
    run = run_quietly(tmp_path / "run", [*MODEL, "steps=20", "prune=magnitude", "prune.sparsity=0.8",
                                         "prune.start=5", "prune.end=15", "prune.every=5"])
    payload = checkpoints.load(run / "checkpoints")
    masks, weights = payload["prune"]["masks"], payload["model"]
    assert sorted(masks) == ["body.fc0.weight", "body.fc1.weight"]  # the head is not pruned
    sizes = {name: mask.numel() for name, mask in masks.items()}
    pruned = {name: int((~mask).sum()) for name, mask in masks.items()}
    assert pruned == {name: round(0.8 * n) for name, n in sizes.items()}  # scope=layer: each layer to s_f
    for name, mask in masks.items():
        assert bool((weights[name][~mask] == 0).all())
    by_step = {r["step"]: r["sparsity"] for r in rows(run)}
    # rows show the masks of the last pruning at or before them: s_t = 0.8 (1 - (1 - (t - 5)/10)^3) per layer
    for step, pruned_at in ((0, 0.0), (5, 0.0), (10, 0.7), (15, 0.8), (20, 0.8)):
        expected = sum(round(pruned_at * n) for n in sizes.values()) / sum(sizes.values())
        assert by_step[step] == pytest.approx(expected, abs=1e-12), step
    summary = json.loads((run / "summary.json").read_text())["prune"]
    assert summary["sparsity"] == by_step[20] == sum(pruned.values()) / sum(sizes.values())
    assert {name: (layer["pruned"], layer["total"]) for name, layer in summary["layers"].items()} == \
        {name: (pruned[name], sizes[name]) for name in masks}


def test_structured_pruning_removes_whole_units(tmp_path: Path) -> None:
    run = run_quietly(tmp_path / "run", [*MODEL, "steps=10", "model.batchnorm=true", "prune=neurons",
                                         "prune.sparsity=0.25", "prune.start=5", "prune.scope=global"])
    payload = checkpoints.load(run / "checkpoints")
    masks, weights = payload["prune"]["masks"], payload["model"]
    units = {name: masks[name].all(dim=1) for name in ("body.fc0.weight", "body.fc1.weight")}
    assert all(bool((masks[name].any(dim=1) == kept).all()) for name, kept in units.items())  # whole rows
    assert sum(int((~kept).sum()) for kept in units.values()) == round(0.25 * 64)  # global: 16 of the 64 units
    for layer, prefix in (("body.fc0", "body.bn0"), ("body.fc1", "body.bn1")):
        gone = ~units[f"{layer}.weight"]
        for name in (f"{layer}.bias", f"{prefix}.weight", f"{prefix}.bias"):
            assert torch.equal(masks[name], ~gone) and bool((weights[name][gone] == 0).all())
    summary = json.loads((run / "summary.json").read_text())["prune"]
    assert summary["unit_sparsity"] == 0.25
    assert sum(layer["units_pruned"] for layer in summary["layers"].values()) == 16


def test_pruning_nothing_trains_exactly_as_a_dense_run(tmp_path: Path) -> None:
    """With sparsity 0 every mask keeps everything: metrics, trace and weights equal a run without pruning (the
    masking itself changes no number); a run without pruning has no sparsity column and no masks."""
    base = [*MODEL, "steps=12", "optimizer.weight_decay=0.5"]
    dense = run_quietly(tmp_path / "dense", base)
    masked = run_quietly(tmp_path / "masked", [*base, "prune=magnitude", "prune.start=3", "prune.every=3"])
    clocks = ("time", "cpu_time", "wall")
    for name in ("metrics.jsonl", "trace.jsonl"):
        want = [{k: v for k, v in r.items() if k not in clocks} for r in rows(dense, name)]
        got = [{k: v for k, v in r.items() if k not in (*clocks, "sparsity")} for r in rows(masked, name)]
        assert got == want, name
    assert all(r["sparsity"] == 0 for r in rows(masked))
    d, m = checkpoints.load(dense / "checkpoints"), checkpoints.load(masked / "checkpoints")
    assert all(torch.equal(d["model"][k], m["model"][k]) for k in d["model"])
    assert "prune" not in d and "sparsity" not in rows(dense)[0] and not (dense / "prune").exists()
    assert "prune" not in json.loads((dense / "summary.json").read_text())


@pytest.mark.parametrize("extra", [
    ["prune=magnitude", "prune.scope=global", "prune.sparsity=0.9", "prune.start=4", "prune.end=16", "prune.every=3"],
    ["prune=neurons", "prune.sparsity=0.5", "prune.start=4", "prune.end=16", "prune.every=4", "prune.rewind_step=9"],
])
def test_resume_is_exact(extra: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed between pruning steps (and after the rewind point), resumed from the checkpoint: the same rows,
    trace and final weights as the run trained whole; the rewind file too."""
    overrides = [*MODEL, "steps=20", "checkpoint_every=5", "optimizer=sgd", "optimizer.momentum=0.9",
                 "optimizer.lr=0.05", *extra]
    assert_resume_exact(tmp_path, overrides, monkeypatch, kills=[8, 13])
    _, step, whole = read_rewind(tmp_path / "whole")
    assert step == (9 if "prune.rewind_step=9" in extra else 0)
    for at in (8, 13):  # (the bytes may differ: safetensors orders its metadata as a hash map does)
        _, step_again, again = read_rewind(tmp_path / f"kill-{at}")
        assert step_again == step and all(torch.equal(again[k], v) for k, v in whole.items())


def test_a_checkpoint_with_malformed_masks_is_refused(tmp_path: Path) -> None:
    from trainlab.train.state import payload_problem

    run = run_quietly(tmp_path / "run", [*MODEL, "steps=5", *GRADUAL[:2]])
    payload = dict(checkpoints.load(run / "checkpoints"))
    assert payload_problem(payload) is None
    bad = {**payload, "prune": {"masks": {k: v.float() for k, v in payload["prune"]["masks"].items()}}}
    assert "not a bool mask" in str(payload_problem(bad))
    assert "'prune.masks'" in str(payload_problem({**payload, "prune": {"masks": [1]}}))
