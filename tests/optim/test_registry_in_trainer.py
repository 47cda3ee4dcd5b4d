"""Every registry name trains the default MLP for a few steps through `trainlab run`, or is refused clearly."""

import json

import pytest

import trainlab
from trainlab.config import ConfigError
from trainlab.optim import OPTIMIZERS

# Refusals are fine when they are one clear config error; each one is listed here with its reason.
REFUSES = {
    "agd": "AGD supports bias-free models only (the default MLP has biases; model.bias=false works)",
    "spectralsphere": "pytorch-optimizer's SpectralSphere takes 2-D parameters only; the MLP has biases",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_optimizer_runs_in_the_trainer(name, tmp_path):
    overrides = ["workload.p=11", "model.width=16", f"optimizer={name}", "steps=3", "eval_every=2"]
    if name in REFUSES:
        with pytest.raises(ConfigError):
            trainlab.run(None, overrides, out=tmp_path / "r", quiet=True, report=False)
        return
    run_dir = trainlab.run(None, overrides, out=tmp_path / "r", quiet=True, report=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed", summary["status"]
