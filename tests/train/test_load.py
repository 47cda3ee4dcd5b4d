"""trainlab.load_run: the model rebuilt from a run directory computes what the run's last evaluation measured."""

import json

import pytest
import torch

import trainlab
from trainlab.errors import CheckpointError, RunDirError
from trainlab.train.load import load_run

TINY = ["workload.p=23", "steps=30", "eval_every=10", "model.width=32", "optimizer.lr=1e-2"]


def _val_loss(run) -> float:
    wl = trainlab.workloads.build(run.config.workload.name, **run.config.workload.kwargs())
    data = wl.data("vector")
    with torch.no_grad():
        return wl.loss(run.model(data.x_val), data.y_val).double().mean().item()


@pytest.mark.parametrize("extra", [[], ["param.output_scale=10", "param.sigma_reparam=true"]])
def test_loaded_model_reproduces_the_last_evaluation(tmp_path, extra):
    run_dir = trainlab.run(None, [*TINY, *extra], out=tmp_path / "run", quiet=True, report=False)
    run = load_run(run_dir)
    assert run.step == 30 and run.metrics[-1]["step"] == 30 and run.summary["status"] == "completed"
    assert not run.model.training
    assert _val_loss(run) == pytest.approx(run.metrics[-1]["val_loss"], rel=1e-6)


def test_export_writes_safetensors_with_the_config(tmp_path):
    from safetensors import safe_open

    run = load_run(trainlab.run(None, TINY, out=tmp_path / "run", quiet=True, report=False))
    path = run.export(tmp_path / "model.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["trainlab_config"])["workload"]["p"] == 23
        assert f.metadata()["step"] == "30"
        for key, value in run.model.state_dict().items():
            assert torch.equal(f.get_tensor(key), value)


def test_load_run_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(RunDirError, match="no config.yaml"):
        load_run(tmp_path)  # an empty directory
    run_dir = trainlab.run(None, TINY, out=tmp_path / "run", quiet=True, report=False)
    (run_dir / "checkpoints" / "latest.json").unlink()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_run(run_dir)


def test_load_run_is_exported_at_the_top_level():
    assert trainlab.load_run is load_run


def test_export_command(tmp_path, capsys):
    from trainlab.cli import main

    run_dir = trainlab.run(None, TINY, out=tmp_path / "run", quiet=True, report=False)
    assert main(["export", str(run_dir)]) == 0
    assert (run_dir / "model.safetensors").is_file() and "written to" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "missing")]) == 2
    missing = tmp_path / "missing"
    assert capsys.readouterr().err.strip() == f"trainlab: error: not a trainlab run directory: {missing} (does not exist)"
