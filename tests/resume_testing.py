"""The resume-exactness harness: run a configuration whole, and again killed (or stopped) at given steps and
resumed, and require identical metrics rows, trace rows and final weights (every column but the clocks).

A kill is simulated in-process: an exception raised from the progress callback at step ``k`` leaves the run
directory as SIGKILL would (rows written after the last checkpoint, no checkpoint at ``k``); ``--resume`` must cut
those rows and write them again identically. A stop request (SIGTERM / Ctrl-C) checkpoints at ``k`` instead.
Used by tests/train/test_resume_matrix.py and the continual-learning tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import trainlab
from trainlab.train import runlog
from trainlab.train.loop import StopFlag


CLOCKS = ("time", "cpu_time", "wall")  # the columns a resumed run may not repeat exactly


class Killed(Exception):
    """Stands for SIGKILL: nothing after it runs, nothing is checkpointed."""


def _rows(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in CLOCKS}
            for line in path.read_text().splitlines()]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from trainlab.rundir.checkpoints import load

    return load(run / "checkpoints")["model"]


def run_quietly(out: Path | None, overrides: list[str], **kwargs) -> Path:
    return trainlab.run(overrides=overrides, out=out, quiet=True, report=False, **kwargs)


def _interrupted(out: Path, overrides: list[str], at: int, how: str, monkeypatch) -> None:
    """Run ``overrides`` into ``out`` until step ``at``: killed there (``kill``) or asked to stop (``stop``)."""
    real_step = runlog.RunLog.step
    stop_asked = []

    def step(self, step: int, loss) -> None:
        real_step(self, step, loss)
        if step == at:
            if how == "kill":
                raise Killed
            stop_asked.append(step)  # what a signal handler does: the loop reads it before the next step

    with monkeypatch.context() as m:
        m.setattr(runlog.RunLog, "step", step)
        if how == "kill":
            with pytest.raises(Killed):
                run_quietly(out, overrides)
        else:
            m.setattr(StopFlag, "agreed", lambda self, env: bool(stop_asked))
            run_quietly(out, overrides)
            assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"


def assert_resume_exact(tmp_path: Path, overrides: list[str], monkeypatch, kills, how: str = "kill"):
    whole = run_quietly(tmp_path / "whole", overrides)
    for at in kills:
        out = tmp_path / f"{how}-{at}"
        _interrupted(out, overrides, at, how, monkeypatch)
        run_quietly(None, [], resume=out)
        for name in ("metrics.jsonl", "trace.jsonl"):
            expected, got = _rows(whole / name), _rows(out / name)
            assert len(got) == len(expected), f"{name}: {len(got)} rows after a {how} at step {at}, not {len(expected)}"
            for want, row in zip(expected, got):
                assert row == want, f"{name} differs at step {row.get('step')} after a {how} at step {at}"
        for key, value in _weights(whole).items():
            assert torch.equal(_weights(out)[key], value), f"weights {key} differ after a {how} at step {at}"


