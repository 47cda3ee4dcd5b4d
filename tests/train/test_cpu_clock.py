"""The CPU clock (issue 12): ``cpu_time`` counts this process's CPU seconds in exactly the stretches of the loop
that ``time`` (wall) counts, is in every metrics row and in summary.json, is checkpointed, continues across a
resume, and starts from 0 when resuming a checkpoint written before it existed.

No timing thresholds: where a value must be exact, ``time.process_time`` is replaced by a counter that advances by
one per reading, so every segment of the training clock adds exactly 1 to ``cpu_time``.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

import trainlab
from trainlab.rundir import checkpoints
from trainlab.train.state import payload_problem

SMALL = ["workload=teacher_student", "workload.n_train=64", "workload.n_val=32", "model.width=16", "batch_size=32",
         "steps=6", "eval_every=3"]  # rows (and pauses of the clock) at steps 0, 3 and 6; one checkpoint, at 6


def rows(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())


def run(out: Path | None, overrides: list[str], **kwargs: Any) -> Path:
    return trainlab.run(None, overrides, out=out, quiet=True, report=False, **kwargs)


@pytest.fixture
def counting_cpu(monkeypatch):
    """``time.process_time`` as a counter (0, 1, 2, ...): each segment of the clock (one reading when it starts,
    one when it pauses) then adds exactly 1 to ``cpu_time``."""
    counter = itertools.count()
    monkeypatch.setattr(time, "process_time", lambda: float(next(counter)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return run(tmp_path_factory.mktemp("cpu") / "run", SMALL)


def test_rows_and_summary_carry_a_nondecreasing_cpu_time(trained):
    metrics = rows(trained)
    assert [r["step"] for r in metrics] == [0, 3, 6]
    cpu = [r["cpu_time"] for r in metrics]
    assert all(isinstance(c, float) and math.isfinite(c) and c >= 0 for c in cpu)
    assert cpu == sorted(cpu)
    assert list(metrics[0])[:4] == ["step", "time", "cpu_time", "wall"]  # the head of every row (timing_row)
    done = summary(trained)
    assert done["status"] == "completed" and list(done).index("cpu_time") == list(done).index("train_time") + 1
    assert done["cpu_time"] == pytest.approx(cpu[-1], abs=1e-3)  # no training after the last row's pause
    payload = checkpoints.load(trained / "checkpoints")
    assert payload["step"] == 6 and round(payload["cpu_time"], 6) == cpu[-1]


def test_cpu_time_counts_the_same_segments_as_the_wall_clock(tmp_path, counting_cpu):
    # one segment before each pause (steps 0, 3, 6): the loop's start to step 0, 0 to 3, 3 to 6
    assert [r["cpu_time"] for r in rows(run(tmp_path / "run", SMALL))] == [1.0, 2.0, 3.0]
    # a checkpoint_every checkpoint pauses the clock too (at step 2, 4: no rows there)
    counted = rows(run(tmp_path / "ckpt", [*SMALL, "checkpoint_every=2"]))
    assert [r["cpu_time"] for r in counted] == [1.0, 3.0, 5.0]


def test_a_resumed_run_continues_the_cpu_clock(trained, tmp_path):
    resumed = tmp_path / "run"
    shutil.copytree(trained, resumed)
    at_checkpoint = checkpoints.load(resumed / "checkpoints")["cpu_time"]
    run(None, ["steps=12"], resume=resumed)
    metrics = rows(resumed)
    assert [r["step"] for r in metrics] == [0, 3, 6, 9, 12]
    cpu = [r["cpu_time"] for r in metrics]
    assert cpu == sorted(cpu) and all(c >= round(at_checkpoint, 6) for c in cpu[2:])
    assert summary(resumed)["cpu_time"] >= round(at_checkpoint, 3)


def _edit_checkpoint(trained: Path, run_dir: Path, edit) -> None:
    """A copy of ``trained`` whose checkpoint (step 6) is edited by ``edit``; its checksum stays valid."""
    shutil.copytree(trained, run_dir)
    payload = dict(checkpoints.load(run_dir / "checkpoints"))
    edit(payload)
    checkpoints.save(run_dir / "checkpoints", 6, payload)


def test_the_checkpoint_value_is_where_the_count_continues(trained, tmp_path, counting_cpu):
    _edit_checkpoint(trained, tmp_path / "run", lambda p: p.__setitem__("cpu_time", 100.0))
    run(None, ["steps=12"], resume=tmp_path / "run")
    assert [r["cpu_time"] for r in rows(tmp_path / "run")][3:] == [101.0, 102.0]
    assert summary(tmp_path / "run")["cpu_time"] == 102.0


def test_a_checkpoint_without_cpu_time_resumes_from_zero(trained, tmp_path, counting_cpu):
    _edit_checkpoint(trained, tmp_path / "run", lambda p: p.pop("cpu_time"))  # as runs before the CPU clock wrote
    assert "cpu_time" not in checkpoints.load(tmp_path / "run" / "checkpoints")
    run(None, ["steps=12"], resume=tmp_path / "run")
    done = summary(tmp_path / "run")
    assert done["status"] == "completed" and done["steps"] == 12
    assert [r["cpu_time"] for r in rows(tmp_path / "run")][3:] == [1.0, 2.0]
    assert done["cpu_time"] == 2.0


def test_a_cpu_time_that_is_no_finite_number_is_refused(trained):
    payload = dict(checkpoints.load(trained / "checkpoints"))
    assert payload_problem(payload) is None and payload_problem({**payload, "cpu_time": 0}) is None
    assert payload_problem({**payload, "cpu_time": "1.0"}) == "'cpu_time' is str, not a number"
    assert payload_problem({**payload, "cpu_time": True}) == "'cpu_time' is bool, not a number"
    assert payload_problem({**payload, "cpu_time": math.nan}) == "'cpu_time' is nan, not a finite number of seconds"
