"""Properties every model must have, for every input kind it accepts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainlab.config import ConfigError
from trainlab.models import MODELS, build, input_kinds, names
from trainlab.workloads.base import DataSpec

VECTOR = DataSpec("vector", (194,), 97, "classification")
SIGNAL = DataSpec("signal", (1, 40), 10, "classification")
IMAGE_GRAY = DataSpec("image", (1, 28, 28), 10, "classification")
IMAGE_RGB = DataSpec("image", (3, 32, 32), 10, "classification")
TOKENS_CLS = DataSpec("tokens", (3,), 97, "classification", vocab_size=98)
TOKENS_LM = DataSpec("tokens", (16,), 50, "lm", vocab_size=50)
REGRESSION = DataSpec("vector", (20,), 3, "regression")

# (model, spec, expected output shape for a batch of B)
B = 4
CASES = [
    ("mlp", VECTOR, (B, 97)),
    ("mlp", SIGNAL, (B, 10)),
    ("mlp", IMAGE_GRAY, (B, 10)),
    ("mlp", IMAGE_RGB, (B, 10)),
    ("mlp", REGRESSION, (B, 3)),
    ("cnn1d", SIGNAL, (B, 10)),
    ("cnn1d", DataSpec("signal", (3, 33), 5, "classification"), (B, 5)),
    ("cnn2d", IMAGE_GRAY, (B, 10)),
    ("cnn2d", IMAGE_RGB, (B, 10)),
    ("transformer", TOKENS_CLS, (B, 97)),
    ("transformer", TOKENS_LM, (B, 16, 50)),
]
IDS = [f"{name}-{spec.input_kind}{'x'.join(map(str, spec.input_shape))}-{spec.task}" for name, spec, _ in CASES]
ALL_KINDS = ("vector", "signal", "image", "tokens")


def make_input(spec: DataSpec, batch: int = B, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if spec.input_kind == "tokens":
        return torch.randint(0, spec.vocab_size, (batch, *spec.input_shape), generator=g)
    return torch.randn(batch, *spec.input_shape, generator=g)


def build_seeded(name: str, spec: DataSpec, seed: int = 0, **options):
    torch.manual_seed(seed)
    return build(name, spec, **options)


def test_registry_lists_the_four_models():
    assert names() == ["mlp", "cnn1d", "cnn2d", "transformer"]
    assert input_kinds("mlp") == ("vector", "signal", "image")
    assert input_kinds("cnn1d") == ("signal",)
    assert input_kinds("cnn2d") == ("image",)
    assert input_kinds("transformer") == ("tokens",)
    for entry in MODELS:
        assert entry.summary, entry.name


def test_every_case_kind_is_accepted_and_every_accepted_kind_is_tested():
    tested = {(name, spec.input_kind) for name, spec, _ in CASES}
    for name in names():
        for kind in input_kinds(name):
            assert (name, kind) in tested


@pytest.mark.parametrize("name,spec,shape", CASES, ids=IDS)
def test_output_shape(name, spec, shape):
    model = build_seeded(name, spec)
    out = model(make_input(spec))
    assert out.shape == shape
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name,spec,shape", CASES, ids=IDS)
def test_deterministic_under_seed(name, spec, shape):
    a, b, c = build_seeded(name, spec, 0), build_seeded(name, spec, 0), build_seeded(name, spec, 1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    x = make_input(spec)
    assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("name,spec,shape", CASES, ids=IDS)
def test_float64(name, spec, shape):
    model = build_seeded(name, spec).to(torch.float64)
    x = make_input(spec)
    if spec.input_kind != "tokens":
        x = x.to(torch.float64)
    out = model(x)
    assert out.dtype == torch.float64 and out.shape == shape
    # float64 agrees with float32 up to float32 precision
    ref = build_seeded(name, spec)(make_input(spec))
    torch.testing.assert_close(out.float(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name,spec,shape", CASES, ids=IDS)
def test_backward_reaches_every_parameter(name, spec, shape):
    model = build_seeded(name, spec)
    out = model(make_input(spec))
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name,spec,shape", CASES, ids=IDS)
def test_init_scale_multiplies_every_parameter(name, spec, shape):
    base = build_seeded(name, spec)
    scaled = build_seeded(name, spec, init_scale=3.0)
    sb, ss = dict(base.named_parameters()), dict(scaled.named_parameters())
    assert sb.keys() == ss.keys()
    for k in sb:
        torch.testing.assert_close(ss[k], 3.0 * sb[k], msg=k)


@pytest.mark.parametrize("name,spec,shape", CASES, ids=IDS)
def test_has_a_linear_head_and_features(name, spec, shape):
    model = build_seeded(name, spec)
    assert isinstance(model.head, torch.nn.Linear)
    assert model.head.out_features == spec.n_outputs
    x = make_input(spec)
    feats = model.features(x)
    assert feats.shape[-1] == model.head.in_features
    expected = model.head(feats if feats.dim() == 2 or spec.task == "lm" else feats[:, -1])
    torch.testing.assert_close(model(x), expected)


@pytest.mark.parametrize("name", ["mlp", "cnn1d", "cnn2d", "transformer"])
def test_build_refuses_a_spec_of_the_wrong_kind(name):
    specs = {"vector": VECTOR, "signal": SIGNAL, "image": IMAGE_RGB, "tokens": TOKENS_CLS}
    for kind in ALL_KINDS:
        if kind in input_kinds(name):
            continue
        with pytest.raises(ValueError, match=f"not {kind}"):
            build(name, specs[kind])


@pytest.mark.parametrize("name", ["mlp", "cnn1d", "cnn2d", "transformer"])
def test_unknown_and_out_of_range_options_are_refused(name):
    spec = {"mlp": VECTOR, "cnn1d": SIGNAL, "cnn2d": IMAGE_GRAY, "transformer": TOKENS_CLS}[name]
    with pytest.raises(ConfigError) as err:
        build(name, spec, no_such_option=1)
    assert err.value.key == "model.no_such_option"
    with pytest.raises(ConfigError) as err:
        build(name, spec, init_scale=0)
    assert err.value.key == "model.init_scale"


def test_options_come_from_strings():
    model = build("mlp", VECTOR, depth="1", width="8", activation="TANH", bias="false", init_scale="0.5")
    assert model.head.bias is None and model.head.in_features == 8


# --- the wiring: a tiny model memorises a small random batch ---------------------------------------------

OVERFIT = [
    ("mlp", DataSpec("vector", (16,), 5, "classification"), {"width": 32}, 1e-2),
    ("cnn1d", DataSpec("signal", (1, 24), 5, "classification"), {"channels": 16, "depth": 2}, 1e-2),
    ("cnn2d", DataSpec("image", (1, 8, 8), 5, "classification"), {"channels": 8, "depth": 2}, 1e-2),
    ("transformer", DataSpec("tokens", (4,), 5, "classification", vocab_size=11),
     {"n_layer": 1, "n_head": 2, "d_model": 32}, 3e-3),
    ("transformer", DataSpec("tokens", (8,), 11, "lm", vocab_size=11),
     {"n_layer": 1, "n_head": 2, "d_model": 32}, 3e-3),
]


@pytest.mark.parametrize("name,spec,options,lr", OVERFIT, ids=[f"{c[0]}-{c[1].task}" for c in OVERFIT])
def test_tiny_model_overfits_a_random_batch(name, spec, options, lr):
    torch.manual_seed(0)
    model = build(name, spec, **options)
    x = make_input(spec, batch=16)
    g = torch.Generator().manual_seed(2)
    if spec.task == "lm":
        y = torch.randint(0, spec.n_outputs, (16, spec.input_shape[0]), generator=g)
    else:
        y = torch.randint(0, spec.n_outputs, (16,), generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def loss_fn():
        out = model(x)
        return F.cross_entropy(out.transpose(1, 2) if out.dim() == 3 else out, y)

    first = final = loss_fn().item()
    for _ in range(200):
        opt.zero_grad()
        loss = loss_fn()
        if loss.item() < 0.1 * first:
            break
        loss.backward()
        opt.step()
    final = loss_fn().item()
    assert final < 0.1 * first, (first, final)
