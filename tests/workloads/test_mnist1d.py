"""Tests of the ``mnist1d`` workload (generated offline with the mnist1d package, cached as .npz)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import trainlab.workloads.mnist1d as m1d
from trainlab.config import ConfigError
from trainlab.workloads import build


@pytest.mark.slow  # generating the default 5000 examples takes about 3 s
def test_defaults_shapes_and_cache_round_trip(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TRAINLAB_CACHE", str(tmp_path))
    wl = build("mnist1d")
    assert wl.options.seed == 42 and wl.options.num_samples == 5000 and wl.options.cache
    d = wl.data("signal")  # generates (about 3 s) and writes the cache
    assert d.x_train.shape == (4000, 1, 40) and d.x_val.shape == (1000, 1, 40)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert set(d.y_train.unique().tolist()) == set(range(10))
    v = wl.data("vector")
    assert v.x_train.shape == (4000, 40) and torch.equal(v.x_train, d.x_train[:, 0])
    files = list((tmp_path / "mnist1d").glob("*.npz"))
    assert len(files) == 1
    with np.load(files[0], allow_pickle=False) as f:  # plain arrays, no pickle needed
        assert f["x"].shape == (4000, 40)

    def fail(args):  # the second build must come from the cache
        raise AssertionError("regenerated despite the cache")

    monkeypatch.setattr(m1d, "generate", fail)
    again = build("mnist1d").data("signal")
    assert torch.equal(again.x_train, d.x_train) and torch.equal(again.y_val, d.y_val)
    assert wl.spec("signal").input_shape == (1, 40) and wl.spec("vector").input_shape == (40,)
    assert wl.spec("signal").n_outputs == 10


def test_without_cache_deterministic_and_rng_untouched(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TRAINLAB_CACHE", str(tmp_path))
    random.seed(123)
    np.random.seed(123)
    py_state, np_state = random.getstate(), np.random.get_state()
    a = build("mnist1d", num_samples=200, cache=False).data("vector")
    b = build("mnist1d", num_samples=200, cache=False).data("vector")
    c = build("mnist1d", num_samples=200, cache=False, seed=7).data("vector")
    assert random.getstate() == py_state
    assert np.array_equal(np.random.get_state()[1], np_state[1])
    assert not any(tmp_path.iterdir())  # nothing written
    assert a.x_train.shape == (160, 40) and a.x_val.shape == (40, 40)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.x_train, c.x_train)
    cached = build("mnist1d", num_samples=200, cache=True).data("vector")  # same arrays through the cache
    assert torch.equal(cached.x_train, a.x_train) and torch.equal(cached.y_val, a.y_val)


def test_unreadable_cache_is_regenerated(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TRAINLAB_CACHE", str(tmp_path))
    first = build("mnist1d", num_samples=100).data("vector")
    (path,) = (tmp_path / "mnist1d").glob("*.npz")
    path.write_bytes(b"not an npz file")
    with pytest.warns(UserWarning, match="unreadable cache"):
        again = build("mnist1d", num_samples=100).data("vector")
    assert torch.equal(first.x_train, again.x_train)
    with np.load(path, allow_pickle=False) as f:  # rewritten
        assert f["x"].shape == (80, 40)


def test_validation_and_defaults() -> None:
    with pytest.raises(ConfigError, match="train_split"):
        build("mnist1d", num_samples=10, train_split=0.05)
    with pytest.raises(ConfigError, match="num_samples"):
        build("mnist1d", num_samples=5)
    wl = build("mnist1d")
    assert wl.threshold == 0.9 and wl.default_batch_size == 100 and wl.default_steps == 4000
    assert wl.default_eval_every == 200 and wl.default_model[0] == "cnn1d"
    assert wl.input_kinds == ("signal", "vector")
