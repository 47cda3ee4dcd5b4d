"""Walk every registered workload: options, spec/data agreement, determinism, seeds, and no network."""

from __future__ import annotations

import ast
import dataclasses
import socket
from pathlib import Path

import pytest
import torch

import trainlab.workloads as workloads
from trainlab.config import describe_options, fields_of
from trainlab.workloads import WORKLOADS, Workload, build, names
from trainlab.workloads.vision import MissingDataError

#: Small options for workloads whose defaults are heavy; the rest use their defaults.
SMALL: dict[str, dict] = {
    "modular": {"p": 11},
    "sparse_parity": {"n": 10, "k": 3, "n_train": 200, "n_val": 100},
    "mnist1d": {"num_samples": 100, "cache": False},
    "charlm": {"max_chars": 20000, "block_size": 16},
    "teacher_student": {"n_train": 200, "n_val": 100},
}
NEEDS_FILES = {"mnist", "cifar10"}
INPUT_DTYPE = {"vector": torch.float32, "signal": torch.float32, "image": torch.float32, "tokens": torch.int64}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a workload tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_expected_workloads_registered() -> None:
    assert set(names()) >= {"modular", "sparse_parity", "mnist1d", "charlm", "deep_linear", "teacher_student",
                            "mnist", "cifar10"}  # fmt: skip


@pytest.mark.parametrize("name", names())
def test_class_attributes_and_options(name: str) -> None:
    entry = WORKLOADS.get(name)
    cls = entry.factory
    assert issubclass(cls, Workload) and cls.name == name
    assert cls.metric in ("acc", "mse") and isinstance(cls.higher_is_better, bool)
    assert cls.default_steps > 0 and cls.default_eval_every > 0 and cls.default_batch_size >= 0
    model, model_options = cls.default_model
    assert model in ("mlp", "cnn1d", "cnn2d", "transformer") and isinstance(model_options, dict)
    assert cls.input_kinds and set(cls.input_kinds) <= set(INPUT_DTYPE)
    assert dataclasses.is_dataclass(entry.options)
    assert "seed" in fields_of(entry.options)
    for opt, type_text, default, help_text in describe_options(entry.options):
        assert help_text, f"{name}.{opt} has no help text"
    assert entry.summary


def _tensors(d):
    return (d.x_train, d.y_train, d.x_val, d.y_val)


@pytest.mark.parametrize("name", names())
def test_spec_data_agree_deterministic_and_seeded(name: str) -> None:
    options = dict(SMALL.get(name, {}))
    wl = build(name, **options)
    if name in NEEDS_FILES:
        try:
            wl.data(wl.input_kinds[0])
        except MissingDataError:
            pytest.skip(f"{name}: no data files under {wl.options.root!r}")
    seed = fields_of(type(wl.options))["seed"].default
    twin = build(name, **options)
    other = build(name, **{**options, "seed": seed + 1})
    for kind in wl.input_kinds:
        spec, d = wl.spec(kind), wl.data(kind)
        assert spec.input_kind == kind
        assert d.n_train > 0 and d.n_val > 0
        for x in (d.x_train, d.x_val):
            assert x.device.type == "cpu" and x.dtype == INPUT_DTYPE[kind]
            assert tuple(x.shape[1:]) == spec.input_shape
        if kind == "tokens":
            assert spec.vocab_size is not None
            assert int(d.x_train.min()) >= 0 and int(max(d.x_train.max(), d.x_val.max())) < spec.vocab_size
        for y in (d.y_train, d.y_val):
            if spec.task == "classification":
                assert y.dtype == torch.int64 and y.dim() == 1
                assert int(y.min()) >= 0 and int(y.max()) < spec.n_outputs
            elif spec.task == "lm":
                assert y.dtype == torch.int64 and tuple(y.shape[1:]) == spec.input_shape
                assert int(y.max()) < spec.n_outputs
            else:
                assert y.dtype == torch.float32 and tuple(y.shape[1:]) == (spec.n_outputs,)
        assert wl.data(kind) is d  # cached on the instance
        assert all(torch.equal(a, b) for a, b in zip(_tensors(d), _tensors(twin.data(kind))))
        assert twin.spec(kind) == spec
        o = other.data(kind)
        assert not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(_tensors(d), _tensors(o)))
    with pytest.raises(ValueError):
        wl.data("not-a-kind")  # type: ignore[arg-type]


def test_workloads_do_not_import_models() -> None:
    """``import trainlab.workloads`` must not pull in ``trainlab.models`` (checked statically)."""
    package = Path(workloads.__file__).parent
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            assert not any(m.startswith("trainlab.models") for m in modules), path.name
