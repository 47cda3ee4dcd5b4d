"""Tests of the ``sparse_parity`` workload (Barak et al. 2022)."""

from __future__ import annotations

import pytest
import torch

from trainlab.config import ConfigError
from trainlab.workloads import build


def test_shapes_values_and_labels() -> None:
    wl = build("sparse_parity", n=12, k=4, n_train=300, n_val=100, seed=5)
    d = wl.data("vector")
    assert d.x_train.shape == (300, 12) and d.x_val.shape == (100, 12)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert set(d.x_train.unique().tolist()) == {-1.0, 1.0}
    rel = wl.relevant
    assert len(rel) == 4 and len(set(rel.tolist())) == 4 and rel.max() < 12
    for x, y in zip(d.x_train.tolist(), d.y_train.tolist()):
        prod = 1.0
        for i in rel.tolist():
            prod *= x[i]
        assert y == (1 if prod < 0 else 0)
    assert 0.35 < d.y_train.float().mean() < 0.65  # parity is balanced
    spec = wl.spec("vector")
    assert spec.input_shape == (12,) and spec.n_outputs == 2 and spec.task == "classification"


def test_irrelevant_bits_do_not_matter() -> None:
    wl = build("sparse_parity", n=10, k=2, n_train=50, n_val=10)
    d = wl.data("vector")
    mask = torch.ones(10, dtype=torch.bool)
    mask[wl.relevant] = False
    flipped = d.x_train.clone()
    flipped[:, mask] *= -1
    from trainlab.workloads.sparse_parity import parity

    assert torch.equal(parity(flipped, wl.relevant), d.y_train)


def test_determinism_and_seed() -> None:
    a = build("sparse_parity", n_train=100, n_val=50, seed=1)
    b = build("sparse_parity", n_train=100, n_val=50, seed=1)
    c = build("sparse_parity", n_train=100, n_val=50, seed=2)
    assert torch.equal(a.data("vector").x_train, b.data("vector").x_train)
    assert torch.equal(a.relevant, b.relevant)
    assert not torch.equal(a.data("vector").x_train, c.data("vector").x_train)


def test_validation_and_defaults() -> None:
    with pytest.raises(ConfigError, match="workload.k"):
        build("sparse_parity", n=3, k=4)
    wl = build("sparse_parity")
    o = wl.options
    assert (o.n, o.k, o.n_train, o.n_val, o.seed) == (30, 3, 2000, 1000, 0)
    assert wl.threshold == 0.99 and wl.default_batch_size == 64 and wl.default_steps == 3000
    assert wl.default_eval_every == 100 and wl.default_model == ("mlp", {"depth": 1, "width": 256})
