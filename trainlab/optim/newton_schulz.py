"""Approximate orthogonalisation ``G = U S Vᵀ ↦ U Vᵀ`` by odd matrix polynomials (Newton–Schulz iterations).

Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks"; reference
KellerJordan/Muon ``zeropower_via_newtonschulz5``) and the modular dualisation of Linear layers (Bernstein &
Newhouse 2024) replace a gradient matrix by its orthogonal polar factor. Computing ``U Vᵀ`` by SVD is slow on
accelerators; instead a few steps of the quintic iteration

    A = X Xᵀ;   B = b·A + c·A·A;   X ← a·X + B·X          (X ↦ a·X + b·(XXᵀ)X + c·(XXᵀ)²X)

push every singular value of a suitably normalised ``X`` towards 1 while keeping the singular vectors.

Coefficient sets (:data:`COEFFICIENTS`; ``coefficients=`` takes a name or an explicit sequence of ``(a, b, c)``):

- ``quintic`` -- one set, ``(3.4445, -4.7750, 2.0315)``, used at every step (Jordan et al.; torch.optim.Muon).
  Tuned for the steepest slope at 0, it does not converge to 1: after 5 steps the singular values lie in
  about [0.68, 1.13], which does not hurt training.
- ``tuned`` -- five per-step quintics from modded-nanogpt ``train_gpt_medium.py`` (also timm's "quintic"):
  ``(4.0848, -6.8946, 2.9270), (3.9505, -6.3029, 2.6377), (3.7418, -5.5913, 2.3037),
  (2.8769, -3.1427, 1.2046), (2.8366, -3.0525, 1.2012)``.
- ``you`` -- You Jiacheng's six per-step quintics, the integers below divided by 1024.
- ``polar_express`` -- Amsel et al. 2025, "The Polar Express" (arXiv:2505.16932), the five-step set of
  modded-nanogpt (safety factor 2%), with its own pre-normalisation ``X / (||X||_F·1.02 + 1e-6)``.

Measured bands (float32, Gaussian 64×128 matrices; tests/optim/test_newton_schulz.py): quintic 5 steps
[0.68, 1.13]; tuned 5 [0.98, 1.03]; you 6 [0.996, 0.999] (with 5 steps [0.77, 1.02]); polar_express 5
[0.86, 1.14]. For condition number 1000 the smallest directions lag after 5 steps (≈0.2–0.4 for all sets).

``steps`` versus the length of a per-step set: the first ``steps`` sets are used; beyond the end the *last*
set is repeated (the Polar Express reference code's convention; modded-nanogpt itself never runs more steps
than it lists). A single-set name (``quintic``) repeats its set, as the Muon reference does.

Normalisation (makes the spectral norm at most 1, since ``||X||₂ ≤ ||X||_F``): ``X / (||X||_F + 1e-7)`` for
``quintic``, ``tuned`` and ``you`` (KellerJordan/Muon), ``X / (||X||_F·1.02 + 1e-6)`` for ``polar_express``.
torch.optim.Muon divides by ``max(||X||_F, 1e-7)`` instead: identical for any gradient with norm ≫ 1e-7.

Shapes: ``G`` is ``(..., rows, cols)``; leading dimensions are a batch (stack same-shape matrices and
orthogonalise them in one call: every product is one ``baddbmm``). Wide matrices are iterated as they are,
tall ones (``rows > cols``) transposed first, so the Gram matrix ``XXᵀ`` is the smaller one.

Precision (``dtype``): the iteration is run in ``dtype`` and the result returned in ``G``'s dtype. ``None``
(default) picks bfloat16 on CUDA (tensor cores; the reference's choice) and float32 elsewhere, or float64
for float64 input. On CPU bf16 matmuls have no fast kernels on most machines: measured once on this
project's 2-core CPU, a 512×512 quintic (5 steps, 1 thread) took 121 ms in float32 and 4750 ms in bfloat16
(~40× slower), hence the CPU default. Pass ``dtype=torch.bfloat16`` to reproduce the reference's numerics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch
from torch import Tensor

Coefficients = tuple[tuple[float, float, float], ...]

_YOU_1024 = ((3955, -8306, 5008), (3735, -6681, 3463), (3799, -6499, 3211),
             (4019, -6385, 2906), (2677, -3029, 1162), (2172, -1833, 682))

COEFFICIENTS: dict[str, Coefficients] = {
    "quintic": ((3.4445, -4.7750, 2.0315),),
    "tuned": (
        (4.0848, -6.8946, 2.9270),
        (3.9505, -6.3029, 2.6377),
        (3.7418, -5.5913, 2.3037),
        (2.8769, -3.1427, 1.2046),
        (2.8366, -3.0525, 1.2012),
    ),
    "you": tuple((a / 1024, b / 1024, c / 1024) for a, b, c in _YOU_1024),
    "polar_express": (
        (8.156554524902461, -22.48329292557795, 15.878769915207462),
        (4.042929935166739, -2.808917465908714, 0.5000178451051316),
        (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
        (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
        (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
    ),
}
COEFFICIENT_NAMES: tuple[str, ...] = tuple(COEFFICIENTS)

# Pre-normalisation X / (||X||_F * scale + eps) per coefficient set.
NORMALISATION: dict[str, tuple[float, float]] = {
    "quintic": (1.0, 1e-7), "tuned": (1.0, 1e-7), "you": (1.0, 1e-7), "polar_express": (1.02, 1e-6),
}

CoefficientsLike = Union[str, Sequence[Sequence[float]]]


def schedule(coefficients: CoefficientsLike, steps: int) -> Coefficients:
    """The ``(a, b, c)`` used at each of ``steps`` steps: the first ``steps`` sets, then the last one repeated."""
    if isinstance(coefficients, str):
        try:
            sets = COEFFICIENTS[coefficients]
        except KeyError:
            raise ValueError(f"unknown Newton-Schulz coefficients {coefficients!r}; "
                             f"allowed: {', '.join(COEFFICIENT_NAMES)}") from None
    else:
        sets = tuple((float(a), float(b), float(c)) for a, b, c in coefficients)
        if not sets:
            raise ValueError("empty Newton-Schulz coefficient list")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    return tuple(sets[min(i, len(sets) - 1)] for i in range(steps))


def default_dtype(G: Tensor) -> torch.dtype:
    """bfloat16 on CUDA; elsewhere float32 (float64 input stays float64)."""
    if G.device.type == "cuda":
        return torch.bfloat16
    return torch.float64 if G.dtype == torch.float64 else torch.float32


class Workspace:
    """Buffers that :func:`orthogonalize` reuses from one call to the next, one per (role, shape, dtype, device).

    Why: on CPU every multi-megabyte tensor allocated afresh is new pages from the operating system (glibc
    returns large freed blocks), so a stacked Newton–Schulz step that allocated its Gram matrices and iterates
    anew on every call paid page faults on all of them. Measured on the issue-17 set (8×512² + 4×2048×512, bf16,
    AMD EPYC, one thread; benchmarks/RESULTS.md "Muon's bf16 step"), that was a large part of the step's
    non-matmul time.
    The cost is memory held between steps: the input stack, two iterates and two Gram-sized buffers per shape
    group, in the iteration's dtype. CUDA's caching allocator already reuses blocks, so Muon uses one on CPU only.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, tuple[int, ...], torch.dtype, torch.device], Tensor] = {}

    def buffer(self, role: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """An uninitialised tensor for ``role``, the same one on every call with the same shape, dtype, device."""
        key = (role, tuple(shape), dtype, torch.device(device))
        if key not in self._buffers:
            self._buffers[key] = torch.empty(shape, dtype=dtype, device=device)
        return self._buffers[key]

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return sum(t.numel() * t.element_size() for t in self._buffers.values())


def orthogonalize(
    G: Tensor,
    coefficients: CoefficientsLike = "quintic",
    steps: int = 5,
    dtype: torch.dtype | None = None,
    *,
    normalisation: tuple[float, float] | None = None,
    workspace: Workspace | None = None,
) -> Tensor:
    """Approximately ``U Vᵀ`` for each matrix of ``G`` (shape ``(..., rows, cols)``), in ``G``'s dtype.

    ``coefficients``: a name in :data:`COEFFICIENTS` or a sequence of ``(a, b, c)``; ``steps``: iterations;
    ``dtype``: precision of the iteration (None: bf16 on CUDA, float32 elsewhere); ``normalisation``:
    ``(scale, eps)`` of ``X / (||X||_F·scale + eps)`` (default: the set's own, ``(1, 1e-7)`` for custom sets).
    ``workspace``: iterate in its buffers instead of fresh tensors (the same numbers, bit for bit). Then ``G``
    may be overwritten, and the result is a view of the workspace, valid until its next use.
    """
    if G.ndim < 2:
        raise ValueError(f"orthogonalize needs a matrix or a batch of matrices, got shape {tuple(G.shape)}")
    hs = schedule(coefficients, steps)
    if normalisation is None:
        normalisation = NORMALISATION.get(coefficients, (1.0, 1e-7)) if isinstance(coefficients, str) else (1.0, 1e-7)
    scale, eps = normalisation
    rows, cols = G.shape[-2:]
    X = G.to(dtype or default_dtype(G))
    if rows > cols:
        X = X.mT
    norm = torch.linalg.matrix_norm(X, keepdim=True) * scale + eps  # Frobenius norm per matrix
    X = X.div_(norm) if workspace is not None else X / norm
    if X.ndim == 2 and workspace is None:
        for a, b, c in hs:
            A = X @ X.mT
            B = torch.addmm(A, A, A, beta=b, alpha=c)  # b·A + c·A·A
            X = torch.addmm(X, B, X, beta=a)  # a·X + B·X
    else:
        X = _iterate_batched(X, hs, workspace)
    if rows > cols:
        X = X.mT
    return X.to(G.dtype)


def _iterate_batched(X: Tensor, hs: Coefficients, workspace: Workspace | None) -> Tensor:
    """The iteration of :func:`orthogonalize` on normalised, wide ``X`` (any leading dimensions) as batched
    products, into ``workspace``'s buffers when given (else fresh tensors)."""
    shape, (m, n) = X.shape, X.shape[-2:]
    if not hs:
        return X
    X = X.reshape(-1, m, n)
    k = X.shape[0]

    def buffer(role: str, size: tuple[int, ...]) -> Tensor | None:
        return None if workspace is None else workspace.buffer(role, size, X.dtype, X.device)

    A, B = buffer("gram", (k, m, m)), buffer("poly", (k, m, m))
    iterates = [buffer("x0", (k, m, n)), buffer("x1", (k, m, n))]
    for i, (a, b, c) in enumerate(hs):
        A = torch.bmm(X, X.mT, out=A)
        B = torch.baddbmm(A, A, A, beta=b, alpha=c, out=B)  # b·A + c·A·A
        X = torch.baddbmm(X, B, X, beta=a, out=iterates[i % 2])  # a·X + B·X
    return X.reshape(shape)


def orthogonalize_exact(G: Tensor) -> Tensor:
    """``U Vᵀ`` from the reduced SVD of each matrix of ``G`` (computed in float64 off CUDA), in ``G``'s dtype.

    A reference for tests and for exact dualisation of small layers; ``0 ↦ 0``. Singular values below
    ``1e-12·max`` are treated as zero (their directions are dropped).
    """
    work = G.double() if G.device.type != "cuda" else G.float()
    U, S, Vh = torch.linalg.svd(work, full_matrices=False)
    keep = (S > 1e-12 * S.amax(dim=-1, keepdim=True).clamp_min(1e-300)).to(work.dtype)
    return ((U * keep.unsqueeze(-2)) @ Vh).to(G.dtype)


def singular_value_band(G: Tensor) -> tuple[float, float]:
    """``(min, max)`` singular value over all matrices of ``G`` (a diagnostic for tests and reports)."""
    s = torch.linalg.svdvals(G.double())
    return float(s.min()), float(s.max())
