"""benchmarks/gpu_check.py works before it meets a GPU: it compiles, refuses without CUDA, and its plan is sound.

Device time is scarce and lent by chance, so the script must not fail on a typo when it finally runs there:
everything that can be checked without CUDA is checked here -- the refusal, the planned commands (each
``trainlab run`` parses and its configuration resolves; ``pytest -m cuda`` selects tests), and how a step is
judged (a run that fell back to the CPU, or tests that were skipped, do not pass; a hang is killed).
"""

from __future__ import annotations

import importlib.util
import json
import py_compile
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainlab.cli import build_parser
from trainlab.train.config import parse_overrides, resolve

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    yield module
    del sys.modules["gpu_check"]


def script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_compiles_and_has_help(tmp_path):
    py_compile.compile(str(SCRIPT), doraise=True, cfile=str(tmp_path / "gpu_check.pyc"))
    done = script("--help")
    assert done.returncode == 0 and "--out DIR" in done.stdout and "optim_step" in done.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the script runs its steps")
def test_refuses_without_cuda_in_one_line(tmp_path, gpu_check):
    done = script("--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [gpu_check.NO_CUDA] and done.stdout == ""
    assert not (tmp_path / "out").exists()  # nothing written either


def test_dry_run_lists_every_step_and_command(tmp_path, gpu_check):
    done = script("--out", str(tmp_path / "out"), "--dry-run")
    assert done.returncode == 0, done.stderr
    for step in gpu_check.plan(tmp_path):
        assert f"{step.name} (timeout {step.timeout_s} s)" in done.stdout
    assert f"total of the timeouts: {gpu_check.BUDGET_S} s" in done.stdout
    assert not (tmp_path / "out").exists()


def test_only_rejects_an_unknown_step(tmp_path):
    done = script("--out", str(tmp_path), "--only", "bf16,nope", "--dry-run")
    assert done.returncode == 2 and "unknown step(s) nope" in done.stderr


def test_the_steps_fit_in_eight_minutes(gpu_check):
    assert gpu_check.BUDGET_S <= 450  # plus start-up and writing the results: under 480 s


def test_planned_trainlab_runs_parse_and_resolve(tmp_path, gpu_check):
    configs = {}
    for step in gpu_check.plan(tmp_path):
        if step.run_dir is not None:
            ns = build_parser().parse_args(step.command[step.command.index("trainlab") + 1:])
            assert ns.command == "run" and ns.out == str(step.run_dir)
            configs[step.name] = resolve([parse_overrides(ns.args)])
    assert set(configs) == {"bf16", "compile", "torchrun"}
    assert all(cfg.train.device == "cuda" for cfg in configs.values())
    assert configs["bf16"].train.autocast == "bf16" and configs["compile"].train.compile is True


def test_cuda_tests_step_selects_the_cuda_tests(gpu_check, tmp_path):
    (step,) = [s for s in gpu_check.plan(tmp_path) if s.name == "cuda_tests"]
    done = subprocess.run([*step.command, "--collect-only"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "tests/distributed/test_quantize.py::test_quantiser_runs_on_cuda_like_on_cpu" in done.stdout


def test_a_run_that_fell_back_to_the_cpu_does_not_pass(tmp_path, gpu_check):
    (step,) = [s for s in gpu_check.plan(tmp_path) if s.name == "bf16"]
    step.run_dir.mkdir()
    summary = {"status": "completed", "device": "cpu", "world_size": 1, "steps": 300, "train_time": 1.0,
               "final": {"step": 300, "train_loss": 0.5, "val_acc": 0.9}}
    (step.run_dir / "summary.json").write_text(json.dumps(summary))
    assert gpu_check.judge(step, 0, "")[0] is False
    (step.run_dir / "summary.json").write_text(json.dumps({**summary, "device": "cuda:0"}))
    ok, details = gpu_check.judge(step, 0, "")
    assert ok and details["final"] == {"train_loss": 0.5, "val_acc": 0.9}
    assert gpu_check.judge(step, 1, "")[0] is False


def test_skipped_cuda_tests_do_not_pass(tmp_path, gpu_check):
    (step,) = [s for s in gpu_check.plan(tmp_path) if s.name == "cuda_tests"]
    assert gpu_check.judge(step, 0, "...\n1 passed, 2090 deselected in 5.0s\n")[0]
    assert not gpu_check.judge(step, 0, "...\n1 skipped, 2090 deselected in 5.0s\n")[0]
    assert not gpu_check.judge(step, 5, "...\n2090 deselected in 5.0s\n")[0]


def test_a_hanging_step_is_killed_and_recorded(tmp_path, gpu_check):
    hang = gpu_check.Step("hang", "sleeps", [sys.executable, "-c", "import time; print('started', flush=True); "
                                             "time.sleep(600)"], 1, child_json=tmp_path / "none.json")
    result = gpu_check.execute(hang, tmp_path / "hang.log")
    assert result["status"] == "timeout" and result["returncode"] is None and "started" in result["output_tail"]
