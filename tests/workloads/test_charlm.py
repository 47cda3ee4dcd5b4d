"""Tests of the ``charlm`` workload (character-level language modelling)."""

from __future__ import annotations

import os

import pytest
import torch

from trainlab.config import ConfigError
from trainlab.workloads import build
from trainlab.workloads.base import DataError
from trainlab.workloads.charlm import CORPUS_MODULES, default_corpus, read_text


def test_user_file_examples(tmp_path) -> None:
    text = "".join(chr(ord("a") + (i * 7) % 26) for i in range(1000)) + "é→"  # non-ASCII is fine
    f = tmp_path / "t.txt"
    f.write_text(text, encoding="utf-8")
    wl = build("charlm", path=str(f), block_size=8, val_frac=0.2, seed=0)
    assert wl.vocab == "".join(sorted(set(text))) and wl.vocab_size == 28
    d = wl.data("tokens")
    assert d.x_train.dtype == torch.int64 and d.y_train.dtype == torch.int64
    assert d.x_train.shape[1] == 8 and d.y_train.shape == d.x_train.shape
    assert torch.equal(d.x_train[:, 1:], d.y_train[:, :-1])  # y is x shifted by one
    n_val = round(len(text) * 0.2)
    val_text = text[-n_val:]
    assert d.n_val == n_val // 9
    for i in range(d.n_val):  # validation: consecutive non-overlapping chunks of the text's end
        chunk = val_text[9 * i : 9 * i + 9]
        assert wl.decode(d.x_val[i]) == chunk[:-1] and wl.decode(d.y_val[i]) == chunk[1:]
    train_text = text[:-n_val]
    for i in range(d.n_train):  # every training chunk is a piece of the training text
        assert wl.decode(d.x_train[i]) + wl.decode(d.y_train[i][-1:]) in train_text
    assert len(train_text) - 16 <= d.n_train * 9 <= len(train_text)  # offset and remainder < 9 each
    assert wl.decode(wl.encode("abé")) == "abé"
    with pytest.raises(ValueError, match="not in the vocabulary"):
        wl.encode("Z")
    spec = wl.spec("tokens")
    assert spec.task == "lm" and spec.input_shape == (8,) and spec.n_outputs == 28 and spec.vocab_size == 28


def test_seed_changes_training_chunks_only(tmp_path) -> None:
    f = tmp_path / "t.txt"
    f.write_text("".join(chr(65 + (i * i) % 50) for i in range(3000)), encoding="utf-8")
    a = build("charlm", path=str(f), block_size=16).data("tokens")
    b = build("charlm", path=str(f), block_size=16).data("tokens")
    c = build("charlm", path=str(f), block_size=16, seed=1).data("tokens")
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_val, b.y_val)
    assert not (a.x_train.shape == c.x_train.shape and torch.equal(a.x_train, c.x_train))
    assert torch.equal(a.x_val, c.x_val)


def test_default_corpus_from_stdlib() -> None:
    wl = build("charlm", max_chars=20000, block_size=32)
    assert len(wl.text) == 20000 and wl.text == default_corpus(20000)
    assert "\x00" not in wl.text and len(wl.vocab) > 40
    d = wl.data("tokens")
    assert d.x_train.shape[1] == 32 and d.n_val == 2000 // 33
    assert "textwrap" in CORPUS_MODULES
    assert wl.data("tokens") is d  # cached


def test_a_text_file_is_read_only_as_far_as_max_chars_needs(tmp_path) -> None:
    path = tmp_path / "text.txt"
    text = "aé€𝄞" * 1000  # 1, 2, 3 and 4 bytes a character: every way a cut can fall inside one
    path.write_bytes(text.encode("utf-8") + b"\xff" * 100)  # not UTF-8 past what the cap needs
    for cap in (1, 2, 3, 4, 5, 999, 4000):
        assert read_text(str(path), cap) == text[:cap]
    with pytest.raises(DataError, match="not UTF-8"):
        read_text(str(path))  # no cap: the whole file is read
    with pytest.raises(DataError, match="not UTF-8"):
        read_text(str(path), 4001)  # the bad byte is within the cap


def test_special_files_are_refused_without_reading_them(tmp_path) -> None:
    fifo = tmp_path / "fifo.txt"
    os.mkfifo(fifo)  # reading it would block until a writer came
    with pytest.raises(DataError, match="is a FIFO"):
        build("charlm", path=str(fifo)).data("tokens")
    with pytest.raises(DataError, match="'/dev/zero' is a device"):  # it never ends
        build("charlm", path="/dev/zero").data("tokens")


def test_errors(tmp_path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        build("charlm", path=str(tmp_path / "nope.txt")).data("tokens")
    with pytest.raises(DataError, match="is a directory"):
        build("charlm", path=str(tmp_path)).data("tokens")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 ".encode("latin-1") * 100)
    with pytest.raises(ValueError, match="not UTF-8"):
        build("charlm", path=str(bad)).data("tokens")
    short = tmp_path / "short.txt"
    short.write_text("x" * 100, encoding="utf-8")
    with pytest.raises(ValueError, match="too short") as err:
        build("charlm", path=str(short), block_size=64).data("tokens")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="max_chars"):
        build("charlm", max_chars=50, block_size=64)
    with pytest.raises(ConfigError, match="val_frac"):
        build("charlm", val_frac=0)


def test_defaults() -> None:
    wl = build("charlm")
    o = wl.options
    assert (o.path, o.block_size, o.val_frac, o.max_chars, o.seed) == (None, 64, 0.1, 200_000, 0)
    assert wl.threshold == 0.6 and wl.default_batch_size == 32 and wl.default_steps == 2000
    assert wl.default_eval_every == 100 and wl.input_kinds == ("tokens",)
    assert wl.default_model == ("transformer", {"n_layer": 2, "n_head": 4, "d_model": 128})
