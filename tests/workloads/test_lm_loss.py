"""The default per-token loss of (batch, time, vocab) outputs (``Workload.loss``): cross-entropy on flat rows,
equal up to rounding to the ``transpose(1, 2)`` formula it replaced, without that formula's strided kernel."""

import pytest
import torch
import torch.nn.functional as F

from trainlab.workloads import build
from trainlab.workloads.base import Workload


def _transposed(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The formula the default loss used before: the class dimension moved to dim 1 (``nll_loss2d``)."""
    return F.cross_entropy(output.float().transpose(1, 2), target, reduction="none")


def _case(dtype: torch.dtype, contiguous: bool = True, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    b, t, v = 6, 17, 41
    logits = scale * torch.randn(b, t, v, generator=gen)
    if not contiguous:  # a view with the vocabulary not innermost in memory
        logits = (scale * torch.randn(b, v, t, generator=gen)).transpose(1, 2)
    target = torch.randint(0, v, (b, t), generator=gen)
    return logits.to(dtype).requires_grad_(True), target


@pytest.mark.parametrize("dtype,contiguous", [(torch.float32, True), (torch.float32, False), (torch.bfloat16, True),
                                              (torch.float64, True)])
def test_flat_rows_equal_the_transposed_formula(dtype, contiguous):
    wl = build("charlm", max_chars=4000, block_size=16)
    assert type(wl).loss is Workload.loss  # the language-model workload trains with the default
    logits, target = _case(dtype, contiguous)
    got = wl.loss(logits, target)
    want = _transposed(logits, target)
    assert got.shape == target.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    (g_got,) = torch.autograd.grad(got.sum(), logits)
    (g_want,) = torch.autograd.grad(want.sum(), logits)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-6  # (a bf16 gradient rounds to 8 bits either way)
    torch.testing.assert_close(g_got, g_want, rtol=tol, atol=tol * 1e-3)


def test_confident_tokens_differ_by_rounding_of_the_log_normaliser_only():
    """A loss near 0 is ``logsumexp - logit`` of two large terms: there both formulas are within an ulp of those
    terms, not of the small difference, so the bound is relative to the log-normaliser."""
    logits, target = _case(torch.float32, scale=8.0)
    logits = logits.detach()
    got, want = Workload(None).loss(logits, target), _transposed(logits, target)
    lse = torch.logsumexp(logits.detach(), dim=-1)
    assert float(want.min()) < 0.1  # some tokens are confident
    assert bool(((got - want).abs() <= 1e-6 * lse.abs().clamp(min=1)).all())


def test_flat_rows_avoid_the_strided_kernel():
    logits, target = _case(torch.float32)

    def kernels(fn) -> set[str]:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            fn(logits, target).sum().backward()
        return {e.key for e in prof.key_averages()}

    assert any("nll_loss2d" in k for k in kernels(_transposed))  # (so the check below can fail)
    used = kernels(Workload(None).loss)
    assert any("nll_loss" in k for k in used) and not any("nll_loss2d" in k for k in used)


def test_class_logits_keep_the_plain_formula():
    gen = torch.Generator().manual_seed(1)
    logits, target = torch.randn(9, 5, generator=gen), torch.randint(0, 5, (9,), generator=gen)
    assert torch.equal(Workload(None).loss(logits, target), F.cross_entropy(logits, target, reduction="none"))


@pytest.mark.parametrize("workload,shape", [("charlm", (6, 17, 41)), ("modular", (9, 113))])
def test_mean_loss_is_the_mean_of_the_per_example_losses_with_its_gradient(workload, shape):
    wl = build(workload, **({"max_chars": 4000, "block_size": 16} if workload == "charlm" else {}))
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(shape, generator=gen, requires_grad=True)
    target = torch.randint(0, shape[-1], shape[:-1], generator=gen)
    got, want = wl.mean_loss(logits, target), wl.loss(logits, target).mean()
    assert got.ndim == 0
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    (g_got,) = torch.autograd.grad(got, logits)
    (g_want,) = torch.autograd.grad(want, logits)
    torch.testing.assert_close(g_got, g_want, rtol=1e-5, atol=1e-9)


def test_a_workload_with_its_own_loss_gets_that_loss_mean():
    wl = build("teacher_student")
    assert type(wl).loss is not Workload.loss
    gen = torch.Generator().manual_seed(2)
    out, target = torch.randn(7, 3, generator=gen), torch.randn(7, 3, generator=gen)
    assert torch.equal(wl.mean_loss(out, target), wl.loss(out, target).mean())
