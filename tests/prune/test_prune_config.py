"""The ``prune`` section: its defaults change nothing, every mistake is a one-line ConfigError naming the key, and
the methods are registered by the names the config accepts."""

from __future__ import annotations

from pathlib import Path
from typing import get_args, get_type_hints

import pytest

from resume_testing import run_quietly  # type: ignore[import-not-found]  # tests/ is on pytest's path
from trainlab.cli import main
from trainlab.config import ConfigError
from trainlab.prune.methods import PRUNE_METHODS
from trainlab.train.config import PruneOptions, RunConfig, from_cli

MODEL = ["workload=mnist1d", "model=mlp", "model.width=32", "eval_every=5", "batch_size=64"]


def refusal(overrides: list[str], tmp_path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        run_quietly(tmp_path / "run", overrides)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()  # refused before anything was written
    return info.value


def test_defaults_prune_nothing() -> None:
    cfg: RunConfig = from_cli(None, [])
    assert cfg.prune == PruneOptions() and cfg.prune.method == "none"
    assert from_cli(None, ["prune=magnitude"]).prune.method == "magnitude"  # the section's bare value


@pytest.mark.parametrize("overrides,key,says", [
    (["prune.sparsity=0.5"], "prune.sparsity", "prune.method=magnitude, neurons or ipr only"),
    (["prune.start=10"], "prune.start", "prune.method=magnitude, neurons or ipr only"),
    (["prune=magnitude", "prune.norm=l1"], "prune.norm", "units of prune.method=neurons"),
    (["prune=magnitude", "prune.reset=rewind"], "prune.reset", "prune.from_run=RUN_DIR"),
    (["prune.rewind_step=5"], "prune.rewind_step", "pruning runs only"),
    (["prune=magnitude", "prune.start=10", "prune.end=5"], "prune.end", "must not come before prune.start=10"),
    (["prune=magnitude", "prune.sparsity=1"], "prune.sparsity", "1"),
    (["prune=random"], "prune.method", "magnitude"),
    (["prune=magnitude", "prune.scope=net"], "prune.scope", "global"),
])
def test_section_mistakes_are_one_line(overrides: list[str], key: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_cli(None, overrides)
    assert info.value.key == key and says in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("overrides,key,says", [
    (["workload=modular", "model=transformer", "steps=5", "prune=neurons", "prune.sparsity=0.5"], "prune.method",
     "model=mlp/cnn1d/cnn2d, not transformer"),
    ([*MODEL, "steps=5", "prune=magnitude", "prune.end=9"], "prune.end", "after the run's last step (5)"),
    ([*MODEL, "steps=5", "prune=magnitude", "prune.start=6"], "prune.start", "after the run's last step (5)"),
    ([*MODEL, "steps=5", "prune=magnitude", "prune.rewind_step=5"], "prune.rewind_step", "prune.reset=finetune"),
    ([*MODEL, "steps=5", "prune=magnitude", "dist=fsdp"], "prune.method", "dist.strategy=ddp only, not fsdp"),
    ([*MODEL, "steps=5", "prune=magnitude", "optimizer=adamw_schedulefree"], "prune.method", "train()/eval()"),
    ([*MODEL, "steps=5", "prune=magnitude", "model.depth=0"], "prune.method", "no Linear or convolution weights"),
])
def test_build_refusals_are_one_line(overrides: list[str], key: str, says: str, tmp_path: Path) -> None:
    err = refusal(overrides, tmp_path)
    assert err.key == key and says in str(err)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_quietly(tmp_path_factory.mktemp("src") / "pruned",
                       [*MODEL, "steps=4", "prune=magnitude", "prune.sparsity=0.5", "prune.start=4"])


def test_from_run_refusals_are_one_line(pruned: Path, tmp_path: Path) -> None:
    dense = run_quietly(tmp_path / "dense", [*MODEL, "steps=2"])
    child = [*MODEL, "steps=4"]
    cases = [
        ([*child, f"prune.from_run={dense}"], "prune.from_run", "is not a pruning run"),
        ([*child, f"prune.from_run={tmp_path / 'nowhere'}"], "prune.from_run", "nowhere"),
        ([*MODEL[:2], "model.width=16", *MODEL[3:], "steps=4", f"prune.from_run={pruned}"], "prune.from_run",
         "does not fit this run's model: "),
        ([*child, f"prune.from_run={pruned}", f"init_from={pruned}"], "prune.from_run", "drop init_from"),
        ([*child, f"prune.from_run={pruned}", "prune.reset=rewind", "prune.rewind_step=2"], "prune.rewind_step",
         "kept its weights after 0 steps"),
        ([*child, f"prune.from_run={pruned}", "prune=magnitude", "prune.sparsity=0.3"], "prune.sparsity",
         "below the 0.5"),
    ]
    for i, (overrides, key, says) in enumerate(cases):
        err = refusal(overrides, tmp_path / str(i))
        assert err.key == key and says in str(err), (overrides, str(err))


def test_the_command_line_says_it_in_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["run", *MODEL, "prune.sparsity=0.5", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "prune.sparsity" in err


def test_the_methods_are_registered_by_the_config_s_names() -> None:
    assert PRUNE_METHODS.names() == list(get_args(get_type_hints(PruneOptions)["method"]))
    assert PRUNE_METHODS.get("magnitude").meta["paper"].startswith("Han et al. 2015")


def test_several_processes_are_refused() -> None:
    import torch

    from trainlab.prune.setup import build_pruner
    from trainlab.train.load import build_model

    cfg = from_cli(None, [*MODEL, "steps=5", "prune=magnitude"])
    with pytest.raises(ConfigError) as info:
        build_pruner(cfg, build_model(cfg, torch.device("cpu")), torch.device("cpu"), 2, resuming=False)
    assert info.value.key == "prune.method" and "one process, not 2" in str(info.value)
