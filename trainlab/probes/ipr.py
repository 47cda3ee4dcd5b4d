"""Inverse participation ratio (IPR) of hidden neurons: how periodic each neuron's input weights are over the residues.

Doshi, Das, He & Gromov 2024, "To grok or not to grok: Disentangling generalization and memorization on corrupted
algorithmic datasets" (arXiv:2310.13061). On modular arithmetic with one-hot inputs, a first-layer neuron that
generalises reads each operand through one (or a few) Fourier frequencies of Z_p, while a neuron that memorises
(corrupted) examples has weights spread over all frequencies. Per neuron and per operand block ``w`` (its ``p``
weights on the one-hot code of ``a``, or of ``b``), with ``w̃_k = Σ_a w_a exp(-2πi k a / p)`` the DFT over the
residues, **all** ``k = 0..p-1``::

    P_k = |w̃_k|²
    IPR_r(w) = Σ_k P_k^r / (Σ_k P_k)^r            (r = 2 by default, the paper's choice)
    IPR(neuron) = mean over the blocks (a, b) of IPR_r(block)

Full (two-sided) spectrum, not ``rfft``'s one-sided one: it is the paper's sum over every residue frequency, and
it weights every frequency alike. For real weights ``P_k = P_{p-k}``, so the full sum counts a frequency
``0 < k < p/2`` twice and DC (and ``k = p/2`` for even ``p``) once; a one-sided sum would count each once and
change the value wherever DC or the Nyquist bin carries power. Closed forms (r = 2) of this definition:

- a pure sinusoid ``cos(2πka/p + φ)`` with ``k ≠ 0``, ``2k ≠ p``: two equal peaks, IPR = 1/2;
- power spread evenly over ``m`` such conjugate pairs: IPR = 1/(2m);
- a constant block (DC only), or ``(-1)^a`` for even ``p``: IPR = 1;
- a delta (one nonzero weight, a one-hot neuron: memorises one residue): flat spectrum, IPR = 1/p (the minimum);
- i.i.d. Gaussian weights (an initialisation): IPR ≈ 2/p in expectation.

So IPR ∈ [1/p^(r-1), 1], dimensionless, invariant to the weights' scale and to the DFT's normalisation (a ratio
homogeneous of degree 0 in P). A block whose weights are all 0 has no spectrum: its IPR is 0/0 = NaN, and so is its
neuron's (a pruned unit; callers skip or rank such neurons). How the paper combines the a- and b-blocks into one
number per neuron is not in the reference notes: the mean is this module's choice (unverified).

The probe ``ipr`` reads the first hidden layer (``body.fc0``) of an MLP whose inputs are the concatenated one-hot
codes of ``a`` and ``b`` (modular's ``vector`` kind): ``p`` is half the layer's fan-in, once every training input
has been checked to hold exactly one 1 in each half and 0 elsewhere (the probe then applies; otherwise, and for
token inputs, it raises NotApplicable). Keys over the neurons with nonzero weights (``neurons``: how many):
``mean``, ``median`` (torch's: the lower middle value for an even count), ``min``, ``max``, and ``frac_high``, the fraction with IPR > ``HIGH_IPR`` = 0.2: between
1/4 (two equal-power frequencies) and 1/6 (three), far above a random initialisation's ≈ 2/p. The threshold is
this module's choice, not the paper's (unverified).

COST per call: no forward or backward pass; one FFT of the ``(width, 2, p)`` first-layer weight (O(width·p log p)),
in float64. The one-hot check reads the training inputs once per run (cached).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from trainlab.probes.registry import NotApplicable, ProbeContext, register

HIGH_IPR = 0.2  # frac_high's threshold: above 1/6 (three equal frequencies), at most 1/4 (two); unverified


def block_ipr(weight: Tensor, p: int, blocks: int, r: float = 2) -> Tensor:
    """IPR_r of each neuron's weights on each block of ``p`` inputs: ``(width, blocks)``, float64 (module doc).

    Args:
        weight: ``(width, blocks·p)``, a Linear's weight whose inputs are ``blocks`` one-hot codes of ``p`` residues,
            concatenated (modular: blocks = 2, the codes of a then b).
        p: residues per block (the modulus).
        blocks: how many one-hot codes the inputs concatenate.
        r: the IPR's order (> 1; the paper's r = 2).

    A block of all-zero weights gives NaN. COST: one FFT of length p per neuron and block.
    """
    if weight.dim() != 2 or weight.shape[1] != blocks * p:
        raise ValueError(f"weight must be (width, blocks*p) = (width, {blocks * p}), got {list(weight.shape)}")
    if r <= 1:
        raise ValueError(f"the IPR's order r must exceed 1, got {r}")
    # float64: P_k^r spans many decades for r = 2 and p ~ 100; single precision would blur small IPRs
    w = weight.detach().to(torch.float64).reshape(weight.shape[0], blocks, p)
    power = torch.fft.fft(w, dim=-1).abs().pow(2)
    return power.pow(r).sum(-1) / power.sum(-1).pow(r)


def neuron_ipr(weight: Tensor, p: int, blocks: int = 2, r: float = 2) -> Tensor:
    """IPR_r of each neuron (row of ``weight``): the mean over its blocks of :func:`block_ipr`; ``(width,)``
    float64, NaN for a neuron with an all-zero block. COST: one FFT of length p per neuron and block."""
    return block_ipr(weight, p, blocks, r).mean(dim=-1)


def first_layer(model: nn.Module) -> nn.Linear | None:
    """An MLP's first hidden Linear, ``body.fc0`` (also under a wrapper: ``model.body.fc0``, ``_orig_mod.body.fc0``),
    or None."""
    for name, module in model.named_modules():
        if (name == "body.fc0" or name.endswith(".body.fc0")) and isinstance(module, nn.Linear):
            return module
    return None


def one_hot_modulus(x: Tensor, blocks: int = 2) -> int | None:
    """``p`` if every row of ``x`` ``(N, blocks·p)`` is ``blocks`` concatenated one-hot codes (exactly one 1 per
    block of ``p`` features, 0 elsewhere), else None."""
    if not x.is_floating_point() or x.dim() != 2 or x.shape[0] == 0 or x.shape[1] % blocks:
        return None
    p = x.shape[1] // blocks
    binary = bool(((x == 0) | (x == 1)).all())
    if not binary or not bool((x.reshape(len(x), blocks, p).sum(-1) == 1).all()):
        return None
    return p


@register("ipr", summary="inverse participation ratio of the Fourier spectrum of each first-layer neuron's weights "
                         "over the residues (one-hot modular inputs): high = periodic (generalising), low = "
                         "memorising; mean, median, min, max, frac_high (> 0.2)",
          cost="no passes; one FFT of the first layer's weight (width x 2p)",
          paper="Doshi et al. 2024, To grok or not to grok: Disentangling generalization and memorization on "
                "corrupted algorithmic datasets")
def _ipr(ctx: ProbeContext) -> dict[str, float]:
    if "p" not in ctx.cache:  # the data never change within a run: check them once
        layer = first_layer(ctx.model)
        if layer is None:
            raise NotApplicable("the IPR reads an MLP's first hidden layer (body.fc0); this model has none")
        if not ctx.float_inputs:
            raise NotApplicable("the IPR needs one-hot vector inputs; this model reads tokens")
        x = ctx.x_train_all if ctx.x_train_all is not None else ctx.x_train
        p = one_hot_modulus(x.reshape(len(x), -1))
        if p is None or layer.in_features != 2 * p:
            raise NotApplicable("the IPR needs inputs that concatenate the one-hot codes of two residues "
                                "(modular's vector kind); these are not")
        ctx.cache["p"] = p
    layer = first_layer(ctx.model)
    assert layer is not None  # found at the first call; the model keeps its modules
    values = neuron_ipr(layer.weight, ctx.cache["p"], blocks=2)
    live = values[~values.isnan()]  # pruned (all-zero) neurons have no spectrum
    if live.numel() == 0:
        return {"neurons": 0.0}
    return {"mean": float(live.mean()), "median": float(live.median()), "min": float(live.min()),
            "max": float(live.max()), "frac_high": float((live > HIGH_IPR).double().mean()),
            "neurons": float(live.numel())}
