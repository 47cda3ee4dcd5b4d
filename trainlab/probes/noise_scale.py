"""The gradient noise scale (McCandlish et al. 2018, "An Empirical Model of Large-Batch Training").

With per-example gradients ``g_i`` of mean ``G`` (the true gradient) and covariance ``Σ``, the *simple noise
scale* is::

    B_simple = tr(Σ) / |G|²        (units: examples)

the batch size at which the gradient's noise and signal are comparable; the paper's critical batch size, beyond
which larger batches stop paying off, is about ``B_simple``. It grows during training as ``|G|`` shrinks.

:func:`simple_noise_scale` estimates it from the per-example gradients of one batch of ``B`` examples,
computed with ``torch.func.vmap(grad)``, with unbiased estimators of both parts (``ḡ`` the batch mean)::

    tr(Σ) ≈ S  = Σ_i |g_i - ḡ|² / (B - 1)
    |G|²  ≈ G² = |ḡ|² - S / B            (since E|ḡ|² = |G|² + tr(Σ)/B)

:func:`noise_scale_from_batches` is the paper's estimator from gradient norms at two batch sizes (appendix A.1),
for when per-example gradients are too costly, e.g. ``b_small`` per worker and ``b_big`` after all-reduce::

    G² = (b_big |G_big|² - b_small |G_small|²) / (b_big - b_small)
    S  = (|G_small|² - |G_big|²) / (1/b_small - 1/b_big)

Both estimates are noisy; the paper averages ``S`` and ``G²`` separately (exponential moving averages over steps)
before dividing, which is why the result carries them: average ``trace_sigma`` and ``grad_sq`` across probes and
divide. ``noise_scale`` is NaN when ``G² <= 0`` (noise dominates the batch's signal).

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
    """``noise_scale = trace_sigma / grad_sq`` (examples), with its two unbiased parts and the batch size used."""

    noise_scale: float  # B_simple, in examples; NaN when grad_sq <= 0
    trace_sigma: float  # tr(Σ), squared gradient units (per example)
    grad_sq: float  # |G|², squared gradient units
    batch_size: int


def _ratio(trace_sigma: float, grad_sq: float, batch_size: int) -> NoiseScale:
    noise_scale = trace_sigma / grad_sq if grad_sq > 0 else math.nan
    return NoiseScale(noise_scale, trace_sigma, grad_sq, batch_size)


def simple_noise_scale(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor,
                       params: Iterable[Tensor | str] | None = None, *, chunk_size: int | None = None) -> NoiseScale:
    """``B_simple = tr(Σ)/|G|²`` from the per-example gradients of one batch (see the module doc).

    Args:
        model, loss_fn, inputs, targets: ``loss_fn(output, target)`` returns per-example (or per-token) losses;
            each example's gradient is that of its mean loss.
        params: the parameters, tensors or names (default: all with ``requires_grad``).
        chunk_size: examples per vmapped gradient call (default: as many as keep ``chunk · n_params`` under
            2²² numbers, cache-friendly); it changes memory and speed only, not the result.

    Returns:
        :class:`NoiseScale` (noise_scale, trace_sigma, grad_sq, batch_size).

    Cost: per-example gradients, i.e. 1 forward and 1 backward over the batch, vmapped (in chunks), with memory
    ``chunk · n_params``; sums are accumulated in float64. The model runs in eval mode (dropout off); flags are
    restored, no ``.grad`` is written, the caller's RNG is untouched. Needs ``B >= 2``.
    """
    batch = inputs.shape[0]
    if batch < 2:
        raise ValueError(f"the noise scale needs at least 2 examples, got {batch}")
    values, buffers, n_params, chunk = functional_state(model, params, chunk_size)
    names = list(values)

    def example_loss(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return loss_fn(functional_call(model, (p, buffers), (x.unsqueeze(0),)), y.unsqueeze(0)).mean()

    per_example = vmap(grad(example_loss), in_dims=(None, 0, 0))
    device = next(iter(values.values())).device
    total = torch.zeros(n_params, dtype=torch.float64, device=device)  # Σ g_i
    total_sq = torch.zeros((), dtype=torch.float64, device=device)  # Σ |g_i|²
    # no_grad: torch.func's grad ignores it, but it keeps parameters left out of ``params`` from recording a graph.
    with probe_mode(model), torch.no_grad():
        for lo in range(0, batch, chunk):
            grads = per_example(values, inputs[lo:lo + chunk], targets[lo:lo + chunk])
            sums = []
            for name in names:
                g = grads.pop(name)  # (chunk, *shape); sums in float64 without a float64 copy of the chunk
                sums.append(g.sum(0, dtype=torch.float64).reshape(-1))
                total_sq += (g * g).sum(dtype=torch.float64)
                del g
            total += torch.cat(sums)
    mean_sq = float(total @ total) / batch**2  # |ḡ|²
    # Σ|g_i - ḡ|² = Σ|g_i|² - B|ḡ|²: a difference that cancels when the noise is small next to |G|², hence the
    # float64 sums (the squares themselves are in the parameters' dtype, good to a relative 1e-7 in float32).
    trace_sigma = (float(total_sq) - batch * mean_sq) / (batch - 1)
    return _ratio(trace_sigma, mean_sq - trace_sigma / batch, batch)


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
