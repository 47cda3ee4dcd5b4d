"""Every trainlab optimizer trains every bundled model (that it supports) through `trainlab run`."""

import json

import pytest

import trainlab
from trainlab.config import ConfigError
from trainlab.optim import OPTIMIZERS

OWN = [e.name for e in OPTIMIZERS if e.meta.get("own")]
MODELS = {
    "mlp": ["workload.p=11", "model=mlp", "model.bias=false", "model.width=16"],
    "transformer": ["workload.p=11", "model=transformer", "model.n_layer=1", "model.d_model=16", "model.n_head=2"],
    "cnn1d": ["workload=mnist1d", "workload.num_samples=200", "model=cnn1d", "model.channels=4", "batch_size=20"],
}


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("name", OWN)
def test_own_optimizer_trains_bundled_model(name, model, tmp_path):
    overrides = [*MODELS[model], f"optimizer={name}", "steps=3", "eval_every=3"]
    try:
        run_dir = trainlab.run(None, overrides, out=tmp_path / "r", quiet=True, report=False)
    except ConfigError as err:  # refusing a model it does not support is allowed -- with a clear message
        assert name == "agd" and "agd: model has" in str(err)
        return
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 3
    assert all(isinstance(summary["final"][k], float) for k in ("train_loss", "val_loss"))
