"""σReparam: spectrally normalised linear layers with a learned scale (Zhai et al. 2023).

Zhai, Likhomanenko, Littwin, Busbridge, Ramapuram, Zhang, Gu & Susskind, "Stabilizing Transformer Training by
Preventing Attention Entropy Collapse" (ICML 2023) reparametrise every linear layer as::

    Ŵ = γ / σ(W) · W        σ(W): spectral norm (largest singular value) of W, γ: a learned scalar

so the spectral norm of the weight actually used is |γ|, a single number per layer that the optimizer moves
slowly, instead of whatever the matrix's entries add up to. Attention entropy is bounded below by a quantity
that decreases with the spectral norm of the attention logits, so bounding σ(W_q), σ(W_k) prevents the entropy
collapse that precedes instability.

σ(W) is estimated like ``torch.nn.utils.spectral_norm``: vectors ``u`` (length ``out_features``) and ``v``
(``in_features``) are kept as buffers; each *training* forward takes one power-iteration step
``v ← normalise(Wᵀu)``, ``u ← normalise(Wv)`` (no gradient) and uses ``σ = uᵀWv``, through which the gradient
does flow. In eval mode the buffers are not updated, so evaluation is deterministic and does not change state.
``u`` and ``v`` are persistent buffers, so a checkpoint resumes the estimate where it was.

Initialisation (the choice of γ): ``u``, ``v`` start at the exact top singular vectors (one SVD of the initial
W, as in the authors' PyTorch reference, apple/ml-sigma-reparam ``vision/layers.py``), and **γ starts at σ(W)**,
also as in that reference (its learned scalar is initialised to the SVD's top singular value). Hence Ŵ = W at
the start: replacing the layers of an already initialised model does not change its function, so the model's
own initialisation (GPT-2's 0.02, Omnigrok's ``init_scale``, or :mod:`trainlab.models.init`) keeps its meaning.
Pass ``gamma=1.0`` for a unit spectral norm at the start instead.

Costs: per training forward of a layer, two matrix-vector products with W (and one more for σ); memory, one
extra vector per side. The SVD at construction costs O(out·in·min(out, in)).

Known interactions: weight decay applies to γ too if the trainer decays every parameter; an all-zero W (e.g. a
zero-initialised μP head) has no direction to normalise and is refused; apply other initialisations *before*
σReparam (or call :meth:`SigmaReparamLinear.reset_sigma_` afterwards).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SigmaReparamLinear(nn.Linear):
    """``y = x Ŵᵀ + b`` with ``Ŵ = γ/σ(W)·W`` (Zhai et al. 2023); a drop-in ``nn.Linear`` subclass.

    ``weight`` and ``bias`` keep their meaning (the raw W and b), so code that looks for ``nn.Linear`` modules
    still finds this one, and a checkpoint of the plain layer loads with ``strict=False`` (``gamma``, ``u``,
    ``v`` are the new keys). Use :attr:`effective_weight` for the matrix the layer applies.

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        gamma: initial γ; ``None`` (default) sets it to σ(W) of the initial W so that Ŵ = W at the start.
        eps: floor for the norms in the power iteration and for σ (default 1e-12).
    """

    u: Tensor  # buffers: the left and right singular vector estimates
    v: Tensor

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, gamma: float | None = None,
                 eps: float = 1e-12, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.eps = eps
        self.gamma_init = gamma
        self.gamma = nn.Parameter(torch.ones((), device=device, dtype=dtype))
        self.register_buffer("u", torch.zeros(out_features, device=device, dtype=dtype))
        self.register_buffer("v", torch.zeros(in_features, device=device, dtype=dtype))
        self.reset_sigma_()

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, gamma: float | None = None, eps: float = 1e-12) -> SigmaReparamLinear:
        """A σReparam layer sharing ``linear``'s weight and bias *tensors* (tying and optimizer refs survive)."""
        w = linear.weight
        # Built on the meta device so no throw-away weight is initialised (or SVD'd) before ours replaces it.
        new = cls(linear.in_features, linear.out_features, bias=False, gamma=gamma, eps=eps, device="meta",
                  dtype=w.dtype)
        new.weight = w
        new.bias = linear.bias
        new.gamma = nn.Parameter(torch.ones((), device=w.device, dtype=w.dtype))
        new.u = torch.zeros(linear.out_features, device=w.device, dtype=w.dtype)
        new.v = torch.zeros(linear.in_features, device=w.device, dtype=w.dtype)
        new.train(linear.training)
        new.reset_sigma_()
        return new

    @torch.no_grad()
    def reset_sigma_(self) -> None:
        """Set ``u``, ``v`` to W's top singular vectors (SVD) and γ to ``gamma_init``, or to σ(W) if that is None."""
        if self.weight.is_meta:
            return
        w = self.weight.detach()
        w = w.float() if w.dtype in (torch.float16, torch.bfloat16) else w  # SVD wants single or double precision
        left, s, right_t = torch.linalg.svd(w, full_matrices=False)
        if self.gamma_init is None and not s[0] > 0:
            raise ValueError("σReparam of an all-zero weight is undefined (W/σ(W)); initialise the layer first")
        self.u.copy_(left[:, 0])
        self.v.copy_(right_t[0])
        self.gamma.fill_(float(s[0]) if self.gamma_init is None else self.gamma_init)

    @torch.no_grad()
    def power_iteration_(self, steps: int = 1) -> None:
        """``steps`` power-iteration steps on the stored ``u``, ``v`` (what each training forward does once)."""
        w = self.weight.detach()
        for _ in range(steps):
            self.v.copy_(F.normalize(w.t() @ self.u, dim=0, eps=self.eps))
            self.u.copy_(F.normalize(w @ self.v, dim=0, eps=self.eps))

    def sigma(self) -> Tensor:
        """The current estimate ``σ(W) ≈ uᵀWv`` (differentiable in W; ``u``, ``v`` are constants)."""
        # Clones: the graph must not hold the buffers themselves, or the next training forward's in-place
        # power-iteration step would invalidate it (two forwards before one backward, a layer used twice).
        return torch.dot(self.u.clone(), self.weight @ self.v.clone()).clamp_min(self.eps)

    @property
    def effective_weight(self) -> Tensor:
        """``Ŵ = γ/σ(W)·W`` with the stored estimate (no power-iteration step)."""
        return self.weight * (self.gamma / self.sigma())

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.power_iteration_(1)
        return F.linear(x, self.effective_weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, sigma_reparam=True"


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def apply_sigma_reparam_(model: nn.Module, include: Iterable[str] | None = None, exclude: Iterable[str] = (),
                         *, gamma: float | None = None) -> int:
    """Replace ``nn.Linear`` submodules of ``model`` by :class:`SigmaReparamLinear` in place; returns how many.

    Weights and biases are kept (the same tensors: weight tying survives), and with the default ``gamma=None``
    the model computes the same function afterwards (Ŵ = W at the start). The paper reparametrises *all*
    linear layers, which is the default.

    Args:
        include: ``fnmatch`` patterns on qualified module names (``"blocks.*.attn.*"``); ``None``: every Linear.
        exclude: patterns of names to leave alone (e.g. ``("head",)``); exclusion wins over inclusion.
        gamma: initial γ of every replaced layer (see :class:`SigmaReparamLinear`).

    Layers already reparametrised are skipped; so is ``model`` itself if it is a Linear (nothing holds it; use
    :meth:`SigmaReparamLinear.from_linear`). Call before building the optimizer: γ is a new parameter.
    """
    include = list(include) if include is not None else None
    exclude = list(exclude)
    targets = [(name, m) for name, m in model.named_modules(remove_duplicate=False)
               if name and type(m) is nn.Linear  # exact type: subclasses may have their own forward
               and isinstance(m.weight, nn.Parameter)  # not a frozen copy's (OutputScaled.reference) buffer
               and (include is None or _matches(name, include)) and not _matches(name, exclude)]
    replaced: dict[int, SigmaReparamLinear] = {}  # a Linear reachable by two names is replaced once, by one module
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        if id(linear) not in replaced:
            replaced[id(linear)] = SigmaReparamLinear.from_linear(linear, gamma=gamma)
        setattr(parent, child, replaced[id(linear)])
    return len(replaced)
