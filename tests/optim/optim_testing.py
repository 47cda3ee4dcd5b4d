"""Helpers shared by the optimizer tests: reproducible tensors and feeding identical gradients."""

import torch


def random_tensors(dtype, seed, shapes, scale=1.0):
    """Standard-normal tensors of ``shapes`` (drawn in float64, then cast), reproducible from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return [(scale * torch.randn(s, generator=g, dtype=torch.float64)).to(dtype) for s in shapes]


def feed_steps(opt, params, grads_per_step):
    """One ``opt.step()`` per list of gradients; each gradient is cloned because some optimizers (schedulefree,
    pytorch-optimizer's coupled weight decay) modify ``p.grad`` in place."""
    for grads in grads_per_step:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
