"""Checkpoints crafted by hand: a file whose SHA-256 matches ``latest.json`` and that loads with
``weights_only``, but does not hold what trainlab writes (a key missing, a value of the wrong type, state dicts
that do not fit). ``trainlab run --resume`` and ``trainlab export`` (``load_run``) refuse it with one line naming
the file and the key -- never a KeyError or TypeError traceback -- and keys trainlab does not know are ignored.

Each file is written through :func:`trainlab.rundir.checkpoints.save`, so its checksum is valid.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

import trainlab
from trainlab.cli import main
from trainlab.errors import CheckpointError
from trainlab.rundir import checkpoints

SMALL = ["workload=teacher_student", "workload.n_train=64", "workload.n_val=32", "model.width=16", "batch_size=32",
         "steps=6", "eval_every=3", "checkpoint_every=3"]
FILE = "step_00000006.pt"


def _first_key(state: dict[str, Any]) -> str:
    return next(iter(state))


def _set(key: str, value: Any) -> Callable[[dict], None]:
    return lambda p: p.__setitem__(key, value)


def _delete(key: str) -> Callable[[dict], None]:
    return lambda p: p.pop(key)


# (what is wrong, how to make it so, what the message names, whether load_run reads that part too)
CRAFTED = [
    ("no-rng", _delete("rng"), "'rng' is missing", True),
    ("no-model", _delete("model"), "'model' is missing", True),
    ("events-not-a-list", _set("events", {"memorized": 3}), "'events' is dict, not a list", True),
    ("step-a-string", _set("step", "6"), "'step' is str, not an integer", True),
    ("train-time-nan", _set("train_time", float("nan")), "'train_time' is nan", True),
    ("event-without-step", _set("events", [{"name": "memorized", "time": 1.0}]), "'events' entry 1 has no 'step'",
     True),
    ("event-unknown-field", _set("events", [{"name": "memorized", "step": 3, "time": 1.0, "x": 1}]),
     "'events' entry 1 has an unknown field 'x'", True),
    ("event-state-wrong-type", _set("event_state", {"min_loss": "low"}), "'event_state' has 'min_loss'", True),
    ("rng-not-bytes", _set("rng", {"torch": torch.zeros(4)}), "'rng.torch'", True),
    ("model-holds-a-number", lambda p: p["model"].__setitem__(_first_key(p["model"]), 1.5), "'model' holds", True),
    ("model-of-wrong-shapes", lambda p: p.__setitem__("model", {k: torch.zeros(3) for k in p["model"]}),
     "size mismatch for", True),
    ("optimizer-not-a-mapping", _set("optimizer", [1, 2]), "'optimizer' is list, not a mapping", True),
    ("optimizer-without-groups", lambda p: p["optimizer"].pop("param_groups"), "has no 'param_groups'", True),
    ("optimizer-state-a-list", lambda p: p["optimizer"].__setitem__("state", []), "has no 'state' mapping", True),
    ("optimizer-of-other-groups", lambda p: p["optimizer"].__setitem__("param_groups", []), "does not fit", False),
    ("ranks-empty", _set("ranks", []), "'ranks' is not a list of each worker's state", True),
    ("config-with-a-number-key", lambda p: p["config"].__setitem__(3, "x"), "'config' has a key 3", True),
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return trainlab.run(None, SMALL, out=tmp_path_factory.mktemp("crafted") / "run", quiet=True, report=False)


def _craft(trained: Path, tmp_path: Path, edit: Callable[[dict], None]) -> Path:
    """A copy of the trained run whose newest checkpoint is the real one edited by ``edit``, checksum valid."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    payload = dict(checkpoints.load(run_dir / "checkpoints"))
    edit(payload)
    assert checkpoints.save(run_dir / "checkpoints", 6, payload).name == FILE
    return run_dir


def _invoke(args: list[str], capsys) -> tuple[int, list[str]]:
    """``trainlab ARGS`` in this process: (exit code, non-blank stderr lines); an escaping exception fails."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.mark.parametrize(("edit", "names", "load_reads_it"), [c[1:] for c in CRAFTED], ids=[c[0] for c in CRAFTED])
def test_a_crafted_checkpoint_is_refused_with_one_line_naming_file_and_key(trained, tmp_path, capsys, edit, names,
                                                                           load_reads_it):
    run_dir = _craft(trained, tmp_path, edit)
    code, lines = _invoke(["run", "--resume", run_dir, "--quiet", "--no-report"], capsys)
    assert code == 2 and len(lines) == 1 and "cannot resume" in lines[0], lines
    assert FILE in lines[0] and names in lines[0], lines[0]
    if load_reads_it:
        with pytest.raises(CheckpointError, match=FILE) as refused:
            trainlab.load_run(run_dir)
        assert names in str(refused.value) and "\n" not in str(refused.value)
        code, lines = _invoke(["export", run_dir, "--out", tmp_path / "m.safetensors"], capsys)
        assert code == 2 and len(lines) == 1 and FILE in lines[0], lines
    else:  # the weights are fine: they load
        assert trainlab.load_run(run_dir).step == 6


def test_keys_trainlab_does_not_write_are_ignored(trained, tmp_path, capsys):
    def add_garbage(p: dict) -> None:
        p.update(garbage={"anything": [1, "two", torch.ones(2)]}, another=None)

    run_dir = _craft(trained, tmp_path, add_garbage)
    assert trainlab.load_run(run_dir).step == 6
    code, lines = _invoke(["run", "--resume", run_dir, "steps=9", "--quiet", "--no-report"], capsys)
    assert code == 0 and not lines
    assert checkpoints.latest_manifest(run_dir / "checkpoints")["step"] == 9
