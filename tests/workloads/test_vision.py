"""Tests of ``mnist`` and ``cifar10`` with tiny fake files in torchvision's layouts (nothing is downloaded)."""

from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from trainlab.workloads import build
from trainlab.workloads.vision import DataFormatError, MissingDataError, restricted_load

RNG = np.random.default_rng(0)


def write_idx(path, array: np.ndarray, magic: int, gz: bool) -> None:
    payload = struct.pack(">I", magic) + b"".join(struct.pack(">I", n) for n in array.shape) + array.tobytes()
    if gz:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def fake_mnist(root, n_train: int = 30, n_test: int = 12):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    x_train = RNG.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    y_train = (np.arange(n_train) % 10).astype(np.uint8)
    x_test = RNG.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    y_test = (np.arange(n_test) * 3 % 10).astype(np.uint8)
    write_idx(raw / "train-images-idx3-ubyte", x_train, 2051, gz=True)
    write_idx(raw / "train-labels-idx1-ubyte", y_train, 2049, gz=False)
    write_idx(raw / "t10k-images-idx3-ubyte", x_test, 2051, gz=False)
    write_idx(raw / "t10k-labels-idx1-ubyte", y_test, 2049, gz=True)
    return x_train, y_train, x_test, y_test


def fake_cifar_arrays(n_per_batch: int = 8):
    batches = []
    for i in range(6):
        data = RNG.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in (np.arange(n_per_batch) + i) % 10]
        batches.append((data, labels))
    return batches


def cifar_py(root, batches, protocols=(2, 4, 5)):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, (name, (data, labels)) in enumerate(zip(names, batches)):
        obj = {b"batch_label": b"fake", b"labels": labels, b"data": data, b"filenames": [b"x.png"] * len(labels)}
        (d / name).write_bytes(pickle.dumps(obj, protocol=protocols[k % len(protocols)]))
    return d


def cifar_bin(root, batches):
    d = root / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for name, (data, labels) in zip(names, batches):
        records = np.concatenate([np.array(labels, dtype=np.uint8)[:, None], data], axis=1)
        (d / name).write_bytes(records.tobytes())
    return d


def test_mnist_idx_plain_and_gz(tmp_path) -> None:
    x_train, y_train, x_test, y_test = fake_mnist(tmp_path)
    wl = build("mnist", root=str(tmp_path))
    d = wl.data("image")
    assert d.x_train.shape == (30, 1, 28, 28) and d.x_val.shape == (12, 1, 28, 28)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert d.y_train.tolist() == y_train.tolist() and d.y_val.tolist() == y_test.tolist()
    assert abs(float(d.x_train.mean())) < 1e-4 and abs(float(d.x_train.std(unbiased=False)) - 1) < 1e-3
    scaled = x_train.astype(np.float64) / 255  # the normalisation is (x/255 - mean) / std over the train set
    expected = (scaled - scaled.mean()) / scaled.std()
    assert np.allclose(d.x_train[:, 0].numpy(), expected, atol=1e-5)
    v = wl.data("vector")
    assert v.x_train.shape == (30, 784) and torch.equal(v.x_train, d.x_train.reshape(30, -1))
    assert wl.spec("image").input_shape == (1, 28, 28) and wl.spec("vector").input_shape == (784,)
    assert wl.spec("image").n_outputs == 10


def test_mnist_subset_and_seed(tmp_path) -> None:
    fake_mnist(tmp_path)
    a = build("mnist", root=str(tmp_path), n_train=10, seed=0).data("vector")
    b = build("mnist", root=str(tmp_path), n_train=10, seed=0).data("vector")
    c = build("mnist", root=str(tmp_path), n_train=10, seed=1).data("vector")
    assert a.n_train == 10 and a.n_val == 12
    assert torch.equal(a.x_train, b.x_train) and not torch.equal(a.x_train, c.x_train)
    with pytest.raises(ValueError, match="n_train=31"):
        build("mnist", root=str(tmp_path), n_train=31).data("vector")


def test_mnist_missing_and_bad_magic(tmp_path) -> None:
    with pytest.raises(MissingDataError) as err:
        build("mnist", root=str(tmp_path)).data("image")
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "MNIST" / "raw") in msg and "never downloads" in msg
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        assert name in msg
    assert isinstance(err.value, ValueError) and isinstance(err.value, FileNotFoundError)
    fake_mnist(tmp_path)
    os.remove(tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte")
    with pytest.raises(MissingDataError, match="missing t10k-images-idx3-ubyte"):
        build("mnist", root=str(tmp_path)).data("image")
    write_idx(tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8), 2049, False)
    with pytest.raises(DataFormatError, match="magic number 2049, expected 2051"):
        build("mnist", root=str(tmp_path)).data("image")


def test_cifar10_python_pickles(tmp_path) -> None:
    batches = fake_cifar_arrays()
    cifar_py(tmp_path, batches)
    wl = build("cifar10", root=str(tmp_path))
    d = wl.data("image")
    assert d.x_train.shape == (40, 3, 32, 32) and d.x_val.shape == (8, 3, 32, 32)
    assert d.y_train.tolist() == sum((b[1] for b in batches[:5]), []) and d.y_val.tolist() == batches[5][1]
    train = np.concatenate([b[0] for b in batches[:5]]).reshape(-1, 3, 32, 32) / 255.0
    mean, std = train.mean(axis=(0, 2, 3)), train.std(axis=(0, 2, 3))
    expected = (train - mean[None, :, None, None]) / std[None, :, None, None]
    assert np.allclose(d.x_train.numpy(), expected, atol=1e-5)
    assert wl.data("vector").x_val.shape == (8, 3072)
    assert wl.spec("image").input_shape == (3, 32, 32)


def test_cifar10_binary_matches_python(tmp_path) -> None:
    batches = fake_cifar_arrays()
    cifar_bin(tmp_path / "b", batches)
    cifar_py(tmp_path / "p", batches)
    b = build("cifar10", root=str(tmp_path / "b")).data("image")
    p = build("cifar10", root=str(tmp_path / "p")).data("image")
    assert torch.equal(b.x_train, p.x_train) and torch.equal(b.y_train, p.y_train)
    assert torch.equal(b.x_val, p.x_val) and torch.equal(b.y_val, p.y_val)
    (tmp_path / "b" / "cifar-10-batches-bin" / "test_batch.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(DataFormatError, match="3073"):
        build("cifar10", root=str(tmp_path / "b")).data("image")


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_cifar10_refuses_disallowed_globals(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    batches = fake_cifar_arrays()
    d = cifar_py(tmp_path, batches)
    (d / "data_batch_3").write_bytes(pickle.dumps({b"data": Evil(), b"labels": [1]}, protocol=2))
    with pytest.raises(DataFormatError, match=r"refusing to load global (posix|os|nt)\.system") as err:
        build("cifar10", root=str(tmp_path)).data("image")
    assert "data_batch_3" in str(err.value)
    assert not (tmp_path / "pwned").exists()
    evil_array = np.empty(2, dtype=object)
    evil_array[0] = Evil()  # an object array's elements are unpickled by the same restricted loader
    (d / "data_batch_4").write_bytes(pickle.dumps({b"data": evil_array}, protocol=4))
    with pytest.raises(DataFormatError, match="refusing"):
        restricted_load(d / "data_batch_4")
    (d / "data_batch_5").write_bytes(pickle.dumps(torch.zeros(2)))
    with pytest.raises(DataFormatError, match="refusing"):
        restricted_load(d / "data_batch_5")
    array = restricted_load(d / "test_batch")[b"data"]  # what is allowed still loads
    assert isinstance(array, np.ndarray) and array.dtype == np.uint8


def test_cifar10_missing_files(tmp_path) -> None:
    with pytest.raises(MissingDataError) as err:
        build("cifar10", root=str(tmp_path)).data("image")
    msg = str(err.value)
    assert "\n" not in msg and "never downloads" in msg
    assert str(tmp_path / "cifar-10-batches-py") in msg and str(tmp_path / "cifar-10-batches-bin") in msg
    assert "data_batch_5" in msg and "test_batch.bin" in msg


def test_defaults() -> None:
    m, c = build("mnist"), build("cifar10")
    assert m.options.root == "data" and m.options.n_train == 0 and m.options.seed == 0
    assert m.threshold == 0.98 and m.default_batch_size == 128 and m.default_steps == 2000
    assert m.default_eval_every == 200 and m.default_model == ("mlp", {"depth": 2, "width": 256})
    assert c.threshold == 0.8 and c.default_batch_size == 128 and c.default_steps == 5000
    assert c.default_eval_every == 250 and c.default_model[0] == "cnn2d"
    assert m.input_kinds == c.input_kinds == ("image", "vector")
