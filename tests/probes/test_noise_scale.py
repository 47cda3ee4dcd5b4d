"""Gradient noise scale against a brute-force covariance of per-example gradients, its jackknife standard error
against population values and a hand-made jackknife, sequential reading, and the two-batch estimator."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainlab.models import build
from trainlab.probes.noise_scale import NoiseScale, noise_scale_from_batches, simple_noise_scale
from trainlab.workloads.base import DataSpec


def cross_entropy(output: Tensor, target: Tensor) -> Tensor:
    if output.dim() == 3:  # per-token losses (batch, time), as trainlab's LM loss
        return F.cross_entropy(output.transpose(1, 2), target, reduction="none")
    return F.cross_entropy(output, target, reduction="none")


def brute_force(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    """(tr Σ, |G|²) from per-example gradients computed one backward at a time; Σ with the 1/(B-1) covariance."""
    params = list(model.parameters())
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(cross_entropy(model(x[i:i + 1]), y[i:i + 1]).mean(),
                                                                   params)]).double() for i in range(len(x))]
    g = torch.stack(rows)
    cov = torch.cov(g.T)  # unbiased
    trace = cov.trace().item()
    return trace, (g.mean(0).pow(2).sum().item() - trace / len(x))


@pytest.mark.parametrize("name,spec,options,make", [
    ("mlp", DataSpec("vector", (5,), 3, "classification"), {"depth": 1, "width": 8},
     lambda g: (torch.randn(12, 5, generator=g), torch.randint(0, 3, (12,), generator=g))),
    ("cnn1d", DataSpec("signal", (1, 10), 3, "classification"), {"channels": 3, "depth": 1},
     lambda g: (torch.randn(12, 1, 10, generator=g), torch.randint(0, 3, (12,), generator=g))),
    ("transformer", DataSpec("tokens", (4,), 5, "lm", vocab_size=5), {"n_layer": 1, "d_model": 8, "n_head": 2},
     lambda g: (torch.randint(0, 5, (12, 4), generator=g), torch.randint(0, 5, (12, 4), generator=g))),
], ids=["mlp", "cnn1d", "transformer-lm"])
def test_simple_noise_scale_matches_brute_force(name, spec, options, make):
    torch.manual_seed(0)
    model = build(name, spec, **options).double()
    x, y = make(torch.Generator().manual_seed(1))
    if x.is_floating_point():
        x = x.double()
    trace, grad_sq = brute_force(model, x, y)
    est = simple_noise_scale(model, cross_entropy, x, y)
    assert isinstance(est, NoiseScale) and est.batch_size == 12
    assert est.trace_sigma == pytest.approx(trace, rel=1e-9)
    assert est.grad_sq == pytest.approx(grad_sq, rel=1e-8)
    expected = trace / grad_sq if grad_sq > 0 else math.nan
    assert est.noise_scale == pytest.approx(expected, rel=1e-8, nan_ok=True)
    # chunking the examples changes memory, not the result
    chunked = simple_noise_scale(model, cross_entropy, x, y, chunk_size=5)
    assert chunked.trace_sigma == pytest.approx(est.trace_sigma, rel=1e-10)
    assert chunked.grad_sq == pytest.approx(est.grad_sq, rel=1e-8)


def test_two_batch_estimator_recovers_known_parts():
    true_g2, true_s = 2.0, 30.0
    small, big = 4, 64
    est = noise_scale_from_batches(true_g2 + true_s / small, true_g2 + true_s / big, small, big)
    assert est.grad_sq == pytest.approx(true_g2) and est.trace_sigma == pytest.approx(true_s)
    assert est.noise_scale == pytest.approx(15.0) and est.batch_size == big
    with pytest.raises(ValueError):
        noise_scale_from_batches(1.0, 0.5, 8, 8)


def test_two_batch_estimator_with_sizes_1_and_b_equals_the_per_example_one():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = torch.randn(10, 4, dtype=torch.float64), torch.randint(0, 3, (10,))
    params = list(model.parameters())
    per_example = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(cross_entropy(model(x[i:i + 1]), y[i:i + 1])
                                                                           .mean(), params)]) for i in range(10)]
    small = torch.stack([g.pow(2).sum() for g in per_example]).mean().item()  # E|G_1|²
    big = torch.stack(per_example).mean(0).pow(2).sum().item()  # |G_10|²
    two = noise_scale_from_batches(small, big, 1, 10)
    one = simple_noise_scale(model, cross_entropy, x, y)
    assert two.trace_sigma == pytest.approx(one.trace_sigma, rel=1e-9)
    assert two.grad_sq == pytest.approx(one.grad_sq, rel=1e-9)


def test_params_restrict_the_gradient():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = torch.randn(10, 4, dtype=torch.float64), torch.randint(0, 3, (10,))
    last = model[2].weight
    g = torch.stack([torch.autograd.grad(cross_entropy(model(x[i:i + 1]), y[i:i + 1]).mean(), last)[0].reshape(-1)
                     for i in range(10)])
    trace = torch.cov(g.T).trace().item()
    for params in ([last], ["2.weight"]):
        est = simple_noise_scale(model, cross_entropy, x, y, params=params)
        assert est.trace_sigma == pytest.approx(trace, rel=1e-9)
        assert est.grad_sq == pytest.approx(g.mean(0).pow(2).sum().item() - trace / 10, rel=1e-8)
    with pytest.raises(ValueError, match="not a parameter"):
        simple_noise_scale(model, cross_entropy, x, y, params=[torch.zeros(3)])


def test_noise_dominated_batch_gives_nan():
    # identical-magnitude opposite gradients: ḡ = 0, so the unbiased |G|² is negative
    model = nn.Linear(1, 1, bias=False).double()
    x = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)

    def squared(output: Tensor, target: Tensor) -> Tensor:
        return 0.5 * (output - target).pow(2).sum(-1)

    with torch.no_grad():
        model.weight.fill_(0.0)
    est = simple_noise_scale(model, squared, x, torch.tensor([[1.0], [1.0]], dtype=torch.float64))
    assert est.grad_sq < 0 and est.trace_sigma > 0 and math.isnan(est.noise_scale)


def test_noise_scale_leaves_training_untouched():
    torch.manual_seed(3)
    model = build("mlp", DataSpec("vector", (4,), 3, "classification"), depth=1, width=8)
    model.body.add_module("drop", nn.Dropout(0.5))
    model.train()
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    cross_entropy(model(x), y).mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    rng = torch.get_rng_state()
    first = simple_noise_scale(model, cross_entropy, x, y)
    assert model.training and model.body.drop.training
    assert torch.equal(torch.get_rng_state(), rng)
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, grads[n]) and torch.equal(p, params[n])
    assert simple_noise_scale(model, cross_entropy, x, y) == first  # eval mode: no dropout noise
    with pytest.raises(ValueError):
        simple_noise_scale(model, cross_entropy, x[:1], y[:1])


# ------------------------------------------------------------------------- standard error and sequential reading


def legacy_simple_noise_scale(model: nn.Module, loss_fn, inputs: Tensor, targets: Tensor) -> tuple[float, float, float]:
    """The estimator as it was before the standard error (commit bb91a8c), kept verbatim as the reference:
    ``(noise_scale, trace_sigma, grad_sq)`` from one pass over all the inputs."""
    from torch.func import functional_call, grad, vmap

    from trainlab.probes.hessian import probe_mode
    from trainlab.probes.noise_scale import functional_state

    batch = inputs.shape[0]
    values, buffers, n_params, chunk = functional_state(model, None, None)
    names = list(values)

    def example_loss(p, x, y):
        return loss_fn(functional_call(model, (p, buffers), (x.unsqueeze(0),)), y.unsqueeze(0)).mean()

    per_example = vmap(grad(example_loss), in_dims=(None, 0, 0))
    total = torch.zeros(n_params, dtype=torch.float64)
    total_sq = torch.zeros((), dtype=torch.float64)
    with probe_mode(model), torch.no_grad():
        for lo in range(0, batch, chunk):
            grads = per_example(values, inputs[lo:lo + chunk], targets[lo:lo + chunk])
            sums = []
            for name in names:
                g = grads.pop(name)
                sums.append(g.sum(0, dtype=torch.float64).reshape(-1))
                total_sq += (g * g).sum(dtype=torch.float64)
                del g
            total += torch.cat(sums)
    mean_sq = float(total @ total) / batch**2
    trace_sigma = (float(total_sq) - batch * mean_sq) / (batch - 1)
    grad_sq = mean_sq - trace_sigma / batch
    return (trace_sigma / grad_sq if grad_sq > 0 else math.nan), trace_sigma, grad_sq


def half_squared_error(output: Tensor, target: Tensor) -> Tensor:
    return 0.5 * (output - target).pow(2).sum(-1)


def least_squares(d: int, rows: int, offset_sq: float, seed: int = 0):
    """A linear model ``x·w`` with squared error on ``rows`` Gaussian rows, ``w`` at squared distance
    ``offset_sq`` from the weights that generated ``y = x·w* + N(0, 1)``. The per-example gradients are explicit,
    ``g_i = (x_i·w - y_i) x_i``; returns the model, the data, those gradients, and the population ``|G|²`` and
    ``tr(Σ)`` of the rows (Σ with divisor ``rows``: the covariance of one row drawn uniformly)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, d, generator=gen, dtype=torch.float64)
    w_star = torch.randn(d, generator=gen, dtype=torch.float64)
    y = x @ w_star + torch.randn(rows, generator=gen, dtype=torch.float64)
    offset = torch.randn(d, generator=gen, dtype=torch.float64)
    w = w_star + offset * math.sqrt(offset_sq) / offset.norm()
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(w[None])
    per_example = (x @ w - y)[:, None] * x
    mean = per_example.mean(0)
    trace = (per_example - mean).pow(2).sum(1).mean().item()
    return model, x, y[:, None], per_example, mean.pow(2).sum().item(), trace


@pytest.mark.parametrize("offset_sq,n", [(1.0, 512), (0.25, 1024)])
def test_estimate_and_stderr_against_the_population(offset_sq, n):
    """200 samples of ``n`` rows drawn with replacement (independent draws from the rows' distribution): the
    parts are unbiased for the population's, and the reported standard error matches the spread of the
    estimates. Measured: rms(stderr)/sd(estimates) 0.92 (B≈12.5, relative spread 11%) and 1.01 (B≈29, 13%);
    the sd of 200 estimates is itself uncertain by about 5%."""
    model, x, y, _, grad_sq, trace = least_squares(6, 20_000, offset_sq)
    draws = [simple_noise_scale(model, half_squared_error, x[idx], y[idx])
             for idx in (torch.randint(0, len(x), (n,), generator=torch.Generator().manual_seed(1000 + s))
                         for s in range(200))]
    b, se, s, g2 = (torch.tensor(v, dtype=torch.float64) for v in zip(*[(e.noise_scale, e.stderr, e.trace_sigma,
                                                                        e.grad_sq) for e in draws]))
    assert abs(s.mean().item() - trace) < 4 * s.std().item() / math.sqrt(200)  # unbiased parts
    assert abs(g2.mean().item() - grad_sq) < 4 * g2.std().item() / math.sqrt(200)
    assert b.mean().item() == pytest.approx(trace / grad_sq, rel=0.03)  # a ratio: biased by ~(relative spread)²
    calibration = se.pow(2).mean().sqrt().item() / b.std().item()
    assert 0.8 < calibration < 1.25, calibration


def test_stderr_is_the_delete_a_group_jackknife():
    """Against the jackknife done by hand from the explicit per-example gradients: each batch cut into 4 runs of
    consecutive examples (example i in group (4i // batch_size) mod 4), the estimate recomputed without each group,
    the ratio linearised at the estimate."""
    model, x, y, per_example, _, _ = least_squares(3, 22, 0.5, seed=3)

    def parts(g: Tensor) -> tuple[float, float]:
        n, mean = len(g), g.mean(0)
        trace = (g - mean).pow(2).sum(1).sum().item() / (n - 1)
        return trace, mean.pow(2).sum().item() - trace / n

    trace, grad_sq = parts(per_example)
    ratio = trace / grad_sq
    for batch_size, sizes in ((None, [6, 5, 6, 5]), (8, [6, 6, 6, 4])):
        group = torch.arange(22) * 4 // (batch_size or 22) % 4
        assert group.bincount().tolist() == sizes
        z = torch.tensor([(lambda t, g: t - ratio * g)(*parts(per_example[group != j])) for j in range(4)],
                         dtype=torch.float64)
        expected = math.sqrt(3 / 4 * (z - z.mean()).pow(2).sum().item()) / grad_sq
        for chunk_size in (None, 3):  # the groups do not depend on the chunks
            est = simple_noise_scale(model, half_squared_error, x, y, chunk_size=chunk_size, groups=4,
                                     batch_size=batch_size)
            assert est.noise_scale == pytest.approx(ratio, rel=1e-10) and est.batch_size == 22
            assert est.stderr == pytest.approx(expected, rel=1e-10)
    assert math.isnan(simple_noise_scale(model, half_squared_error, x[:2], y[:2]).stderr)  # 1 left: no S


@pytest.mark.parametrize("seed", [0, 5])
def test_rel_se_zero_reproduces_the_estimate_before_the_standard_error(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))  # float32, as trained
    x, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    legacy = legacy_simple_noise_scale(model, cross_entropy, x, y)
    est = simple_noise_scale(model, cross_entropy, x, y, rel_se=0.0)
    assert (est.noise_scale, est.trace_sigma, est.grad_sq) == legacy  # bit for bit
    assert est.batch_size == 40 and est.converged and est.stderr > 0
    assert est == simple_noise_scale(model, cross_entropy, x, y)  # the function's default is off
    batched = simple_noise_scale(model, cross_entropy, x, y, rel_se=0.0, batch_size=8)  # all read, groups of 2
    assert (batched.noise_scale, batched.trace_sigma, batched.grad_sq) == legacy and batched.batch_size == 40


def test_reading_stops_once_the_standard_error_is_small():
    model, x, y, _, _, _ = least_squares(6, 4096, 1.0)  # one example's relative spread: about 2.6
    loose = simple_noise_scale(model, half_squared_error, x, y, rel_se=0.2, batch_size=128)
    assert loose.converged and loose.stderr <= 0.2 * loose.noise_scale
    assert 128 <= loose.batch_size < 4096 and loose.batch_size % 128 == 0
    fixed = simple_noise_scale(model, half_squared_error, x[:loose.batch_size], y[:loose.batch_size], batch_size=128)
    # the first n examples: the fixed-count estimate of those examples, stopping only chose n
    assert loose.noise_scale == pytest.approx(fixed.noise_scale, rel=1e-12)
    assert loose.stderr == pytest.approx(fixed.stderr, rel=1e-9)
    if loose.batch_size > 128:  # one batch fewer missed the target
        fewer = simple_noise_scale(model, half_squared_error, x[:loose.batch_size - 128], y[:loose.batch_size - 128],
                                   batch_size=128)
        assert not fewer.stderr <= 0.2 * fewer.noise_scale
    tight = simple_noise_scale(model, half_squared_error, x[:1000], y[:1000], rel_se=0.01, batch_size=128)
    assert tight.batch_size == 1000 and not tight.converged  # 7 batches and the remaining 104 rows
    assert tight.stderr > 0.01 * tight.noise_scale
    all_rows = simple_noise_scale(model, half_squared_error, x[:1000], y[:1000], batch_size=128)
    assert tight.noise_scale == pytest.approx(all_rows.noise_scale, rel=1e-12)
    assert tight.stderr == pytest.approx(all_rows.stderr, rel=1e-9)


def test_reading_stops_only_on_a_finite_estimate():
    model = nn.Linear(1, 1, bias=False).double()  # the noise-dominated batch of test_noise_dominated_batch_gives_nan
    x = torch.tensor([[1.0], [-1.0]] * 4, dtype=torch.float64)
    with torch.no_grad():
        model.weight.fill_(0.0)
    est = simple_noise_scale(model, half_squared_error, x, torch.ones(8, 1, dtype=torch.float64), rel_se=0.5,
                             batch_size=4)
    assert est.batch_size == 8 and not est.converged and math.isnan(est.noise_scale) and math.isnan(est.stderr)


def test_bad_stopping_options_are_refused():
    model, x, y, _, _, _ = least_squares(3, 10, 1.0)
    for rel_se in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="rel_se"):
            simple_noise_scale(model, half_squared_error, x, y, rel_se=rel_se)
    with pytest.raises(ValueError, match="batch_size"):
        simple_noise_scale(model, half_squared_error, x, y, rel_se=0.1, batch_size=1)
    with pytest.raises(ValueError, match="groups"):
        simple_noise_scale(model, half_squared_error, x, y, groups=1)


@pytest.mark.parametrize("arg", ["probes.noise_scale_rel_se=-0.01", "probes.noise_scale_rel_se=nan",
                                 "probes.noise_scale_rel_se=1", "probes.noise_scale_max_examples=1",
                                 "probes.noise_scale_max_examples=2.5"])
def test_noise_scale_options_are_validated(arg):
    from trainlab.config import ConfigError
    from trainlab.train.config import from_cli

    with pytest.raises(ConfigError) as err:
        from_cli(None, ["workload.p=11", arg])
    assert err.value.key == arg.split("=")[0] and "\n" not in str(err.value)


def probe_context(model, x_all, y_all, examples: int, options):
    """A context as the prober builds it: the probe batch is the first ``examples`` rows of the seeded
    permutation of the training set."""
    from trainlab.probes.registry import ProbeContext

    rows = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(options.seed))[:examples]
    return ProbeContext(model, half_squared_error, x_all[rows], y_all[rows], x_all[:4], y_all[:4], step=0, lr=0.1,
                        options=options, x_train_all=x_all, y_train_all=y_all)


def test_noise_scale_probe_reads_further_training_rows():
    from dataclasses import replace

    from trainlab.probes.registry import PROBES
    from trainlab.train.config import from_cli

    probe = PROBES.get("noise_scale").factory
    model, x, y, _, _, _ = least_squares(6, 3000, 1.0)
    options = from_cli(None, ["workload.p=11", "probes.examples=64"]).probes
    assert (options.noise_scale_rel_se, options.noise_scale_max_examples) == (0.2, 2048)
    rng = torch.get_rng_state()
    out = probe(probe_context(model, x, y, 64, options))
    assert torch.equal(torch.get_rng_state(), rng)
    assert out["converged"] == 1.0 and 64 < out["examples"] < 2048 and out["examples"] % 64 == 0
    assert out["stderr"] <= 0.2 * out["b_simple"]
    order = torch.randperm(3000, generator=torch.Generator().manual_seed(options.seed))[:int(out["examples"])]
    fixed = simple_noise_scale(model, half_squared_error, x[order], y[order], batch_size=64)  # the permutation
    assert out["b_simple"] == pytest.approx(fixed.noise_scale, rel=1e-12)
    assert out["stderr"] == pytest.approx(fixed.stderr, rel=1e-9)
    assert out == probe(probe_context(model, x, y, 64, options))  # deterministic: a resumed run logs the same
    tight = probe(probe_context(model, x, y, 64, replace(options, noise_scale_rel_se=0.001,
                                                         noise_scale_max_examples=300)))
    assert tight["examples"] == 300 and tight["converged"] == 0.0
    # more rows than the training set: all of it
    assert probe(probe_context(model, x[:200], y[:200], 64, replace(options, noise_scale_rel_se=0.001)))[
        "examples"] == 200
    # off: the probe batch alone, the value from before the standard error
    ctx = probe_context(model, x, y, 64, replace(options, noise_scale_rel_se=0.0))
    off = probe(ctx)
    assert off["examples"] == 64 and off["converged"] == 1.0
    assert (off["b_simple"], off["trace_sigma"], off["grad_sq"]) == legacy_simple_noise_scale(
        model, half_squared_error, ctx.x_train, ctx.y_train)


def test_noise_scale_probe_without_the_training_set_reads_the_probe_batch():
    from trainlab.probes.registry import PROBES, ProbeContext
    from trainlab.train.config import from_cli

    model, x, y, _, _, _ = least_squares(6, 200, 1.0)
    options = from_cli(None, ["workload.p=11"]).probes
    ctx = ProbeContext(model, half_squared_error, x[:50], y[:50], x[:4], y[:4], step=0, lr=0.1, options=options)
    out = PROBES.get("noise_scale").factory(ctx)
    assert out["examples"] == 50
    est = simple_noise_scale(model, half_squared_error, x[:50], y[:50])
    assert out["b_simple"] == est.noise_scale and out["stderr"] == est.stderr
    assert out["converged"] == float(est.stderr <= 0.2 * est.noise_scale) == 0.0  # 50 rows miss the target
    # a training set whose seeded permutation does not give the probe batch: not read either
    ctx = ProbeContext(model, half_squared_error, x[:50], y[:50], x[:4], y[:4], step=0, lr=0.1, options=options,
                       x_train_all=x, y_train_all=y)
    assert PROBES.get("noise_scale").factory(ctx)["examples"] == 50


def test_noise_scale_probe_values_survive_a_resume(tmp_path):
    """The further rows come from the probe seed alone: a run and its resume log the same values."""
    import json

    import trainlab

    args = ["workload.p=11", "steps=6", "eval_every=2", "probes=noise_scale", "probes.examples=8"]

    def logged(run_dir):
        return [{k: v for k, v in r.items() if k.startswith("noise_scale/")}
                for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]

    full = trainlab.run(None, args, out=tmp_path / "full", quiet=True, report=False)
    trainlab.run(None, [args[0], "steps=2", *args[2:]], out=tmp_path / "part", quiet=True, report=False)
    resumed = trainlab.run(None, ["steps=6"], resume=tmp_path / "part", quiet=True, report=False)
    values = logged(full)
    assert values == logged(resumed)
    assert values[-1]["noise_scale/examples"] > 8  # the target asked for more than the probe batch
