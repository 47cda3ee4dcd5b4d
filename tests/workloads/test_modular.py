"""Tests of the ``modular`` workload (binary operations mod p)."""

from __future__ import annotations

import pytest
import torch

from trainlab.config import ConfigError
from trainlab.workloads import build
from trainlab.workloads.modular import OPS, is_prime


def brute_force(op: str, a: int, b: int, p: int) -> int:
    if op == "add":
        return (a + b) % p
    if op == "sub":
        return (a - b) % p
    if op == "mul":
        return (a * b) % p
    if op == "div":  # the c with c*b = a mod p, found by search
        return next(c for c in range(p) if (c * b) % p == a)
    if op == "x2_xy":
        return (a * a + a * b) % p
    if op == "x2_xy_y2":
        return (a * a + a * b + b * b) % p
    raise AssertionError(op)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("p", [2, 7, 11])
def test_labels_match_brute_force(op: str, p: int) -> None:
    wl = build("modular", p=p, op=op, train_frac=0.5)
    s = wl.pairs()
    a = torch.cat([s["a_train"], s["a_val"]]).tolist()
    b = torch.cat([s["b_train"], s["b_val"]]).tolist()
    y = torch.cat([s["y_train"], s["y_val"]]).tolist()
    expected_pairs = {(i, j) for i in range(p) for j in range(1 if op == "div" else 0, p)}
    assert set(zip(a, b)) == expected_pairs and len(a) == len(expected_pairs)  # every pair exactly once
    for ai, bi, yi in zip(a, b, y):
        assert yi == brute_force(op, ai, bi, p), (op, ai, bi)


def test_split_sizes_and_disjoint() -> None:
    wl = build("modular", p=13, train_frac=0.3)
    d = wl.data("vector")
    assert d.n_train == int(0.3 * 169) and d.n_train + d.n_val == 169
    train = set(zip(wl.pairs()["a_train"].tolist(), wl.pairs()["b_train"].tolist()))
    val = set(zip(wl.pairs()["a_val"].tolist(), wl.pairs()["b_val"].tolist()))
    assert not train & val
    div = build("modular", p=13, op="div", train_frac=0.5).data("vector")
    assert div.n_train + div.n_val == 13 * 12 and div.n_train == 78


def test_vector_and_token_encoding() -> None:
    p = 7
    wl = build("modular", p=p)
    s = wl.pairs()
    v, t = wl.data("vector"), wl.data("tokens")
    assert v.x_train.shape == (len(s["a_train"]), 2 * p) and v.x_train.dtype == torch.float32
    assert torch.equal(v.x_train[:, :p].argmax(1), s["a_train"])
    assert torch.equal(v.x_train[:, p:].argmax(1), s["b_train"])
    assert torch.equal(v.x_train.sum(1), torch.full((len(v.x_train),), 2.0))
    assert t.x_train.dtype == torch.int64 and t.x_train.shape == (len(s["a_train"]), 3)
    assert torch.equal(t.x_train[:, 0], s["a_train"]) and torch.equal(t.x_train[:, 1], s["b_train"])
    assert (t.x_train[:, 2] == p).all() and (t.x_val[:, 2] == p).all()
    assert torch.equal(v.y_train, t.y_train) and v.y_train.dtype == torch.int64
    spec = wl.spec("tokens")
    assert spec.vocab_size == p + 1 and spec.input_shape == (3,) and spec.n_outputs == p
    assert wl.spec("vector").input_shape == (2 * p,)
    assert wl.data("vector") is v  # cached


def test_determinism_and_seed() -> None:
    a = build("modular", p=11, seed=3).data("tokens")
    b = build("modular", p=11, seed=3).data("tokens")
    c = build("modular", p=11, seed=4).data("tokens")
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_val, b.y_val)
    assert not torch.equal(a.x_train, c.x_train)


def test_corruption_fraction() -> None:
    wl = build("modular", p=23, train_frac=0.5, corrupt_frac=0.25, seed=1)
    s = wl.pairs()
    n_train = len(s["y_train"])
    wrong = s["y_train"] != s["y_train_clean"]
    assert int(wrong.sum()) == round(0.25 * n_train)  # every corrupted label really is wrong
    assert torch.equal(wrong, s["corrupted"])
    clean = build("modular", p=23, train_frac=0.5, seed=1).pairs()
    assert torch.equal(clean["y_val"], s["y_val"])  # validation stays clean
    assert torch.equal(clean["y_train"], s["y_train_clean"])
    assert (s["y_train"] >= 0).all() and (s["y_train"] < 23).all()


def test_errors() -> None:
    assert [n for n in range(20) if is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19]
    with pytest.raises(ConfigError, match="prime"):
        build("modular", p=12, op="div")
    with pytest.raises(ConfigError, match="workload.p"):
        build("modular", p=1)
    with pytest.raises(ConfigError, match="train_frac"):
        build("modular", train_frac=1.0)
    with pytest.raises(ConfigError, match="op"):
        build("modular", op="pow")
    with pytest.raises(ValueError, match="provides vector, tokens"):
        build("modular", p=5).data("image")


def test_defaults() -> None:
    wl = build("modular")
    assert wl.options.p == 97 and wl.options.train_frac == 0.4
    assert wl.default_batch_size == 0 and wl.default_steps == 3000 and wl.default_eval_every == 50
    assert wl.threshold == 0.99 and wl.metric == "acc" and wl.higher_is_better
    assert wl.default_model == ("mlp", {"depth": 2, "width": 128, "activation": "relu"})
    d = wl.data("vector")
    assert d.n_train == int(0.4 * 97 * 97) and d.x_train.shape[1] == 194
