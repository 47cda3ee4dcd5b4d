"""The gradient noise scale (McCandlish et al. 2018, "An Empirical Model of Large-Batch Training").

With per-example gradients ``g_i`` of mean ``G`` (the true gradient) and covariance ``Σ``, the *simple noise
scale* is::

    B_simple = tr(Σ) / |G|²        (units: examples)

the batch size at which the gradient's noise and signal are comparable; the paper's critical batch size, beyond
which larger batches stop paying off, is about ``B_simple``. It grows during training as ``|G|`` shrinks.

:func:`simple_noise_scale` estimates it from the per-example gradients of ``n`` examples, computed with
``torch.func.vmap(grad)``, with unbiased estimators of both parts (``ḡ`` the mean over the ``n`` examples)::

    tr(Σ) ≈ S  = Σ_i |g_i - ḡ|² / (n - 1)
    |G|²  ≈ G² = |ḡ|² - S / n            (since E|ḡ|² = |G|² + tr(Σ)/n)

and ``B_simple ≈ S / G²``. Both parts are U-statistics of all ``n`` examples (``G² = Σ_{i≠j} g_i·g_j /
(n(n-1))``), so the examples are pooled rather than split into batches whose parts are averaged: the
noise-dominated part of the variance of ``G²``, ``2 tr(Σ²)/n²``, becomes ``2 tr(Σ²)/(n m)`` for a mean over
batches of ``m``. On a grokking MLP (``B_simple`` 2300-3500, 2048 examples) the mean of 8 batch ratios of 256
spread 2.5-40 times as much as the pooled estimate, with heavy tails.

Standard error: a delete-a-group jackknife. The examples, read in order, are cut into batches of
``batch_size`` and each batch into ``J`` runs of consecutive examples (example ``i`` joins group
``⌊i·J/batch_size⌋ mod J``: every batch adds to every group), so the inputs should be in random order; each
group keeps its gradient sum (``J × n_params`` float64 numbers) and its sum of squared norms. Leaving group
``j`` out gives ``S_{-j}`` and ``G²_{-j}``; the ratio is linearised at the estimate ``B`` (``z_j = S_{-j} -
B·G²_{-j}``, the delta method for a ratio), so ::

    stderr = sqrt((J-1)/J · Σ_j (z_j - z̄)²) / |G²|        (J nonempty groups; examples)

which stays finite when a left-out ``G²_{-j}`` crosses 0. It is itself an estimate with ``J - 1`` degrees of
freedom (16 groups: uncertain by about 18%), and for a pooled U-statistic the jackknife overstates the
second-order (noise-dominated) part of the variance (Efron & Stein 1981), so it errs on the safe side. Measured
against the spread of repeated estimates (independent draws): rms(stderr) / sd(estimate) = 0.92-1.01 on least
squares (``tests/probes/test_noise_scale.py``) and 1.1-1.3 on a grokking MLP's per-example gradients
(``B_simple`` 2300-3500, 2048 examples, relative spread 21-28%), where ``B ± 1.96 stderr`` covered the truth
in 95% of draws. With far fewer examples than ``B_simple`` (there, under ~1000) the estimate is heavy-tailed,
``G²`` often near 0, and ``stderr`` is only a rough guide.

Sequential reading: with ``rel_se > 0`` the examples are read a batch at a time, the first batch being the
minimum, until ``stderr <= rel_se · |B_simple|`` or the inputs run out (``converged`` says which). The estimate
after ``n`` examples is that of the first ``n`` examples with ``rel_se = 0`` (and the same ``batch_size``).
Stopping on the data is a sequential rule, so the result is not exactly unbiased: the relative standard error
is smallest when ``G²`` happens to come out high, so runs tend to stop early with ``B_simple`` low. Over all
runs the effect is small (median estimate within 1-2% of that of a fixed count, for ``rel_se`` 0.2, on the MLP
above), but where the target is barely reachable the few runs that meet it lean low (there: median 0.7-0.93 ×
the truth among converged runs when 7-42% converged). ``rel_se = 0`` reads a fixed count: unbiased parts.

What the estimate is of: the examples are treated as independent draws, so ``G²`` and ``S`` are unbiased for
the data distribution the training set was drawn from. Drawn without replacement from a training set of ``N``
examples, ``G²`` is on average ``tr(Σ)/N`` below the full-batch training gradient's ``|G_train|²`` (the
training set's own sampling noise), which matters when ``B_simple`` is comparable to ``N``; and when ``n`` is
a sizable fraction of ``N`` the spread across probe seeds is smaller than ``stderr`` (no finite-population
correction).

:func:`noise_scale_from_batches` is the paper's estimator from gradient norms at two batch sizes (appendix A.1),
for when per-example gradients are too costly, e.g. ``b_small`` per worker and ``b_big`` after all-reduce::

    G² = (b_big |G_big|² - b_small |G_small|²) / (b_big - b_small)
    S  = (|G_small|² - |G_big|²) / (1/b_small - 1/b_big)

Both estimates are noisy; the paper averages ``S`` and ``G²`` separately (exponential moving averages over steps)
before dividing, which is why the result carries them: average ``trace_sigma`` and ``grad_sq`` across probes and
divide. ``noise_scale`` is NaN when ``G² <= 0`` (noise dominates the examples' signal).

The "per example" gradient is that of the example's mean loss (mean over tokens for language models).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from trainlab.probes.hessian import LossFn, parameter_names, probe_mode


class NoiseScale(NamedTuple):
    """``noise_scale = trace_sigma / grad_sq`` (examples), with its two unbiased parts, the number of examples
    used, the jackknife standard error of ``noise_scale`` and whether the stopping target was met (True when
    no target was set)."""

    noise_scale: float  # B_simple, in examples; NaN when grad_sq <= 0
    trace_sigma: float  # tr(Σ), squared gradient units (per example)
    grad_sq: float  # |G|², squared gradient units
    batch_size: int  # examples used
    stderr: float = math.nan  # standard error of noise_scale, in examples; NaN when it has none
    converged: bool = True  # stderr <= rel_se * |noise_scale| was met (True without a target)


def _ratio(trace_sigma: float, grad_sq: float, batch_size: int) -> NoiseScale:
    noise_scale = trace_sigma / grad_sq if grad_sq > 0 else math.nan
    return NoiseScale(noise_scale, trace_sigma, grad_sq, batch_size)


def _parts(n: Tensor | float, total_norm_sq: Tensor | float, sum_sq: Tensor | float) -> tuple[Any, Any]:
    """``(S, G²)`` of ``n`` examples from ``|Σ g_i|²`` and ``Σ |g_i|²`` (scalars or tensors alike)."""
    mean_sq = total_norm_sq / n**2  # |ḡ|²
    # Σ|g_i - ḡ|² = Σ|g_i|² - n|ḡ|²: a difference that cancels when the noise is small next to |G|², hence the
    # float64 sums (the squares themselves are in the parameters' dtype, good to a relative 1e-7 in float32).
    trace_sigma = (sum_sq - n * mean_sq) / (n - 1)
    return trace_sigma, mean_sq - trace_sigma / n


def jackknife_stderr(group_sums: Tensor, group_sq: Tensor, group_n: Tensor, noise_scale: float,
                     grad_sq: float) -> float:
    """Delete-a-group jackknife standard error of ``B = S/G²`` (see the module doc), in examples.

    Args:
        group_sums: ``(J, P)`` the sum of each group's gradients (float64).
        group_sq: ``(J,)`` the sum of each group's squared gradient norms.
        group_n: ``(J,)`` the examples in each group (empty groups are ignored).
        noise_scale, grad_sq: the estimate ``B`` from all the examples, and its ``G²``.

    NaN when ``B`` is not finite, fewer than 2 groups are nonempty, or leaving a group out leaves fewer than 2
    examples.
    """
    keep = group_n > 0
    sums, sq, counts = group_sums[keep], group_sq[keep].double(), group_n[keep].double()
    groups = len(counts)
    if groups < 2 or not math.isfinite(noise_scale) or float(counts.sum() - counts.max()) < 2:
        return math.nan
    gram = sums @ sums.T  # t_j·t_k
    out_norm_sq = gram.sum() - 2 * gram.sum(1) + gram.diagonal()  # |T - t_j|²
    trace_out, grad_sq_out = _parts(counts.sum() - counts, out_norm_sq, sq.sum() - sq)
    z = trace_out - noise_scale * grad_sq_out  # the ratio linearised at B
    variance = (groups - 1) / groups * float((z - z.mean()).pow(2).sum())
    return math.sqrt(variance) / abs(grad_sq)


def simple_noise_scale(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor,
                       params: Iterable[Tensor | str] | None = None, *, chunk_size: int | None = None,
                       rel_se: float = 0.0, batch_size: int | None = None, groups: int = 16) -> NoiseScale:
    """``B_simple = tr(Σ)/|G|²`` from per-example gradients, with a jackknife standard error, optionally read
    until accurate (see the module doc).

    Args:
        model, loss_fn, inputs, targets: ``loss_fn(output, target)`` returns per-example (or per-token) losses;
            each example's gradient is that of its mean loss. The examples are read in order.
        params: the parameters, tensors or names (default: all with ``requires_grad``).
        chunk_size: examples per vmapped gradient call (default: as many as keep ``chunk · n_params`` under
            2²² numbers, cache-friendly); it changes memory and speed only, not the result (up to rounding).
        rel_se: target standard error relative to ``|B_simple|`` (0: off, read all the inputs).
        batch_size: examples per batch (default: all the inputs). Each batch is split into ``groups`` runs of
            consecutive examples for the jackknife; with ``rel_se > 0`` the stopping test runs after each
            batch, the first batch being the minimum.
        groups: jackknife groups ``J`` (>= 2; memory ``groups · n_params`` float64 numbers).

    Returns:
        :class:`NoiseScale` (noise_scale, trace_sigma, grad_sq, batch_size: the examples used, stderr,
        converged).

    Cost: per-example gradients, i.e. 1 forward and 1 backward per example read, vmapped (in chunks), with
    memory ``chunk · n_params`` (plus a float64 copy of one parameter's chunk) and the group sums; sums are
    accumulated in float64. The model runs in eval
    mode (dropout off); flags are restored, no ``.grad`` is written, the caller's RNG is untouched. Needs at
    least 2 examples (3 for a standard error).
    """
    available = inputs.shape[0]
    if available < 2:
        raise ValueError(f"the noise scale needs at least 2 examples, got {available}")
    if not (math.isfinite(rel_se) and rel_se >= 0):
        raise ValueError(f"rel_se must be a finite number >= 0, got {rel_se}")
    if batch_size is not None and batch_size < 2:
        raise ValueError(f"batch_size must be >= 2, got {batch_size}")
    if groups < 2:
        raise ValueError(f"groups must be >= 2, got {groups}")
    batch = batch_size or available
    step = batch if rel_se > 0 else available  # examples read between two stopping tests
    values, buffers, n_params, chunk = functional_state(model, params, chunk_size)
    names = list(values)
    offsets = [0]
    for name in names:
        offsets.append(offsets[-1] + values[name].numel())

    def example_loss(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return loss_fn(functional_call(model, (p, buffers), (x.unsqueeze(0),)), y.unsqueeze(0)).mean()

    per_example = vmap(grad(example_loss), in_dims=(None, 0, 0))
    device = next(iter(values.values())).device
    total = torch.zeros(n_params, dtype=torch.float64, device=device)  # Σ g_i
    total_sq = torch.zeros((), dtype=torch.float64, device=device)  # Σ |g_i|²
    group_sums = torch.zeros(groups, n_params, dtype=torch.float64, device=device)  # Σ g_i of each group
    group_sq = torch.zeros(groups, dtype=torch.float64, device=device)
    n, converged = 0, True
    # no_grad: torch.func's grad ignores it, but it keeps parameters left out of ``params`` from recording a graph.
    with probe_mode(model), torch.no_grad():
        while n < available:
            end = min(n + step, available)
            for lo in range(n, end, chunk):
                hi = min(lo + chunk, end)
                grads = per_example(values, inputs[lo:hi], targets[lo:hi])
                group = torch.arange(lo, hi) * groups // batch % groups  # each batch in groups of consecutive rows
                group_at, counts = torch.unique_consecutive(group, return_counts=True)
                ends = counts.cumsum(0).tolist()
                runs = list(zip(group_at.tolist(), [0, *ends[:-1]], ends))
                sums = []
                example_sq = torch.zeros(hi - lo, dtype=torch.float64, device=device)
                for k, name in enumerate(names):
                    # one float64 copy of this parameter's chunk: a sum with dtype=float64 is ~3x slower on CPU
                    g = grads.pop(name).reshape(hi - lo, -1)
                    g64, sq64 = g.to(torch.float64), (g * g).to(torch.float64)  # squares in the parameters' dtype
                    del g
                    sums.append(g64.sum(0))
                    total_sq += sq64.sum()
                    example_sq += sq64.sum(1)
                    for j, start, stop in runs:
                        group_sums[j, offsets[k]:offsets[k + 1]] += g64[start:stop].sum(0)
                    del g64, sq64
                total += torch.cat(sums)
                group_sq.index_add_(0, group.to(device), example_sq)
            n = end
            trace_sigma, grad_sq = _parts(n, float(total @ total), float(total_sq))
            est = _ratio(trace_sigma, grad_sq, n)
            group_n = torch.bincount(torch.arange(n) * groups // batch % groups, minlength=groups).to(device)
            stderr = jackknife_stderr(group_sums, group_sq, group_n, est.noise_scale, grad_sq)
            if rel_se > 0:
                converged = stderr <= rel_se * abs(est.noise_scale)  # False while either is NaN
                if converged:
                    break
    return est._replace(stderr=stderr, converged=converged)


def noise_scale_from_batches(g_small_sq: float, g_big_sq: float, b_small: int, b_big: int) -> NoiseScale:
    """McCandlish et al.'s two-batch-size estimator (appendix A.1) from squared gradient norms.

    ``g_small_sq`` is ``|G_small|²``, the squared norm of a gradient averaged over ``b_small`` examples (better:
    the mean of several such norms), ``g_big_sq`` that over ``b_big > b_small`` examples. Unbiased parts::

        grad_sq     = (b_big·g_big_sq - b_small·g_small_sq) / (b_big - b_small)
        trace_sigma = (g_small_sq - g_big_sq) / (1/b_small - 1/b_big)

    With ``b_small = 1`` (mean of the squared per-example gradient norms) and ``b_big = B`` (the batch
    gradient), it equals :func:`simple_noise_scale` on that batch. ``batch_size`` in the result is ``b_big``.
    No forward or backward pass.
    """
    if not 0 < b_small < b_big:
        raise ValueError(f"need 0 < b_small < b_big, got {b_small} and {b_big}")
    grad_sq = (b_big * float(g_big_sq) - b_small * float(g_small_sq)) / (b_big - b_small)
    trace_sigma = (float(g_small_sq) - float(g_big_sq)) / (1.0 / b_small - 1.0 / b_big)
    return _ratio(trace_sigma, grad_sq, b_big)


def functional_state(model: nn.Module, params: Any, chunk_size: int | None) -> tuple[dict[str, Tensor],
                                                                                    dict[str, Tensor], int, int]:
    """What a ``vmap(grad(functional_call))`` over examples needs: the chosen parameters (``params``, as
    :func:`parameter_names` reads it) and every buffer, detached; their total size ``P``; and the examples per
    vmapped call (``chunk_size``, or as many as keep ``chunk · P`` under 2²² numbers)."""
    named = dict(model.named_parameters())
    values = {n: named[n].detach() for n in parameter_names(model, params)}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    n_params = sum(v.numel() for v in values.values())
    return values, buffers, n_params, chunk_size or max(1, 2**22 // n_params)
