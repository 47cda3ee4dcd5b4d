"""SketchOGD (Wright et al. 2023, "SketchOGD: Memory-Efficient Continual Learning"; azizanlab/sketchogd), a wrapper
around any base optimizer.

OGD (:mod:`trainlab.optim.ogd`) with a fixed-size sketch of the stored gradients instead of all of them. Each
finished task's logit gradients (``memory`` of them, the columns of G) are added to a randomised sketch with
Gaussian test matrices Ω, Ψ (the streaming low-rank approximation of Tropp, Yurtsever, Udell & Cevher 2017,
"Practical sketching algorithms for low-rank matrix approximation"); after the task the projection
basis is recomputed from the sketch, and every step projects like OGD (g <- g - S Sᵀ g, then the base's step).
Three variants (``variant``; k = ``sketch_size``, l = k + 2 as in the paper's code, n = gradients so far)::

    g    sketch G (SketchOGD-1): per gradient g a new row ω of Ω,  Y += g ωᵀ;             S = orth(Y)
    ggt  sketch GGᵀ (SketchOGD-2):  Ω (P, k) fixed,              Y += g (gᵀΩ);           S = orth(Y)
    sym  symmetric (SketchOGD-3):   Ω, Ψ (l, P) fixed,           Y += g (gᵀΩ), W += (Ψg) gᵀ;
         Q = orth(Y), X = (ΨQ)⁺ W, S = orth([Q, orth(Xᵀ)])  (up to 2k directions)

orth keeps the leading singular directions above √ε of the largest, and at most n of them (the sketched matrix
has rank <= n): with k >= n the sketch is exact and S spans the same space as OGD's basis. (The paper's code
orthonormalises with a plain QR, which adds k - n directions of rounding noise while n < k; and in ``sym`` the
columns of Xᵀ, of size ‖g‖², are orthonormalised before they join Q's unit columns, so neither scale hides the
other from the rank decision.) The gradients of a task are added as one block (G_t Ω_t, G_t (G_tᵀ Ω), ...):
the same sums as the paper's one-gradient-at-a-time updates, in another order.

Defaults: ``variant="g"`` (the code's default), ``sketch_size=200`` (the code's default ties k to its memory
size, 480, with 480 gradients per task; the authors' rotated/permuted MNIST scripts use k = 1200 / 600 / 300 for
g / ggt / sym),
``memory=200`` gradients per task, test matrices from ``torch.Generator`` seeded with ``sketch_seed`` (0),
drawn on the CPU in the sketch's dtype. ``project`` and the gradients are as in OGD, and so is the guarantee
(orthogonal updates for a plain SGD base).

Memory is fixed, whatever the number of tasks: held between tasks (P = projected parameters, numbers in the
model's float dtype, float32 for half precision) are Y and S (``g``: 2 P k), plus Ω (``ggt``: 3 P k), plus W and
Ψ (``sym``: (4k + 2l) P, S up to 2k wide); a task's end briefly adds its ``memory`` gradients and the SVD's
workspace. (For ``g`` the paper's code also keeps Ψ, W = ΨG and the rows of Ω, which its basis orth(Y) never
reads; they are not kept here.) ``budget_mb`` (default 1024 MiB) refuses a construction whose
held matrices exceed it, in one line.

State: ``state_dict()`` is the base's plus ``"sketchogd"`` with the sketch (``y``; ``omega``; ``w``, ``psi``),
the basis, the count n and, for ``g``, the generator's state (the rows of later tasks) -- all tensors or ints, for
``torch.load(weights_only=True)``. The test matrices are saved rather than redrawn from the seed so that a resumed
run sketches with the same ones even where torch's generator stream differs.
"""

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from trainlab.config import option, seed_option
from trainlab.optim.ogd import Gradients, SubspaceProjection, orth, rank_tolerance
from trainlab.optim.registry import OPTIMIZERS

VARIANTS = ("g", "ggt", "sym")


@dataclass
class Sketch:
    """The sketch of the gradient matrix G (P, n) seen so far: Y (P, k); for ``ggt``/``sym`` Ω (P, k); for ``sym``
    W (l, P) and Ψ (l, P); n = ``count``."""

    variant: str
    y: Tensor
    omega: Tensor | None = None
    w: Tensor | None = None
    psi: Tensor | None = None
    count: int = 0


def sketch_add_(sketch: Sketch, new: Tensor, rows: Tensor | None = None) -> None:
    """Add the columns of ``new`` (P, m) to ``sketch`` in place; ``rows`` (m, k) are their new rows of Ω (``g``)."""
    if sketch.variant == "g":
        assert rows is not None
        sketch.y.addmm_(new, rows)
    else:
        assert sketch.omega is not None
        sketch.y.addmm_(new, new.T @ sketch.omega)
        if sketch.variant == "sym":
            assert sketch.w is not None and sketch.psi is not None
            sketch.w.addmm_(sketch.psi @ new, new.T)
    sketch.count += new.shape[1]


def sketch_basis(sketch: Sketch) -> Tensor:
    """The projection basis S (P, r) of ``sketch``: orth(Y), or for ``sym`` orth([Q, orth(Xᵀ)])."""
    rtol = rank_tolerance(sketch.y.dtype)
    q = orth(sketch.y, rtol, cap=sketch.count)
    if sketch.variant != "sym":
        return q
    assert sketch.w is not None and sketch.psi is not None
    x = torch.linalg.pinv(sketch.psi @ q) @ sketch.w  # (r, P): GGᵀ ≈ Q X
    return orth(torch.cat([q, orth(x.T, rtol, cap=sketch.count)], dim=1), rtol, cap=sketch.count)


class SketchOGD(SubspaceProjection):
    """SketchOGD (Wright et al. 2023): OGD's projection onto the orthogonal complement of a basis recomputed from a
    fixed-size sketch of all finished tasks' logit gradients.

    Args:
        params: the model, or tensors / param-group dicts (then ``project`` must be ``"all"``).
        base: registry name or class of the base optimizer (default ``"sgd"``, the paper's).
        variant: ``"g"`` (sketch G, default), ``"ggt"`` (sketch GGᵀ) or ``"sym"`` (symmetric approximation of GGᵀ).
        sketch_size: k, columns of Y (default 200); l = k + 2.
        memory: logit gradients sketched per finished task (default 200).
        sketch_seed: seed of the Gaussian test matrices (default 0).
        project: ``"all"`` (default) or ``"body"`` (output layer unprojected).
        budget_mb: most memory the sketch and basis may take, MiB (default 1024).
        **base_options: the base optimizer's options (``lr``, ``momentum``, ...).
    """

    key = "sketchogd"

    def __init__(self, params: Any, base: str | type[torch.optim.Optimizer] = "sgd", variant: str = "g",
                 sketch_size: int = 200, memory: int = 200, sketch_seed: int = 0, project: str = "all",
                 budget_mb: float = 1024.0, **base_options: Any) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if sketch_size < 1:
            raise ValueError(f"sketch_size must be >= 1, got {sketch_size}")
        super().__init__(params, base, project=project, memory=memory, budget_mb=budget_mb, **base_options)
        k, p = int(sketch_size), self.size
        self.k, self.l = k, k + 2
        widths = {"g": 2 * k, "ggt": 3 * k, "sym": 4 * k + 2 * self.l}[variant]
        self.check_budget(widths * p * self.itemsize, f"sketch and basis ({variant}, k={k}, {p:,} parameters)",
                          "raise optimizer.budget_mb or lower optimizer.sketch_size")
        generator = torch.Generator().manual_seed(int(sketch_seed))

        def draw(*shape: int) -> Tensor:  # on the CPU, so that a seed gives the same matrices on every device
            return torch.randn(*shape, generator=generator, dtype=self.dtype).to(self.device)

        self.sketch = Sketch(variant, torch.zeros(p, k, dtype=self.dtype, device=self.device))
        if variant != "g":
            self.sketch.omega = draw(p, k)
        if variant == "sym":
            self.sketch.psi = draw(self.l, p)
            self.sketch.w = torch.zeros(self.l, p, dtype=self.dtype, device=self.device)
        # variant g draws a row of Ω per gradient as the gradients come; the generator's state says where it is
        self.rng = generator.get_state() if variant == "g" else None

    def end_task(self, task: int, gradients: Gradients) -> None:
        """Sketch up to ``memory`` logit gradients of task ``task``, then recompute the basis from the sketch."""
        new = self.gather(gradients)
        rows = None
        if self.rng is not None:
            generator = torch.Generator()
            generator.set_state(self.rng)
            rows = torch.randn(new.shape[1], self.k, generator=generator, dtype=self.dtype).to(self.device)
            self.rng = generator.get_state()
        sketch_add_(self.sketch, new, rows)
        self.basis = sketch_basis(self.sketch)

    def _own_state(self) -> dict[str, Any]:
        s = self.sketch
        state: dict[str, Any] = {"basis": self.basis, "count": s.count, "y": s.y}
        state.update({name: t for name, t in (("omega", s.omega), ("w", s.w), ("psi", s.psi)) if t is not None})
        if self.rng is not None:
            state["rng"] = self.rng
        return state

    def _load_own(self, state: dict[str, Any]) -> None:
        s, p = self.sketch, self.size
        s.y = self._tensor(state, "y", (p, self.k))
        if s.omega is not None:
            s.omega = self._tensor(state, "omega", (p, self.k))
        if s.w is not None:
            s.w, s.psi = self._tensor(state, "w", (self.l, p)), self._tensor(state, "psi", (self.l, p))
        if self.rng is not None:
            self.rng = state["rng"].to(device="cpu", dtype=torch.uint8, copy=True)
        s.count = int(state["count"])
        super()._load_own(state)


@dataclass(frozen=True)
class SketchOGDOptions:
    base: str = option("sgd", help="registry name of the base optimizer stepped on the projected gradients (its "
                                   "options follow, e.g. optimizer.lr)")
    variant: Literal["g", "ggt", "sym"] = option("g", help="g: sketch the gradients G; ggt: sketch GG^T; sym: "
                                                           "symmetric low-rank approximation of GG^T (SketchOGD-1/2/3)")
    sketch_size: int = option(200, ge=1, help="k, columns of the sketch Y (l = k + 2); the basis has at most k "
                                              "directions (2k for sym)")
    memory: int = option(200, ge=1, help="logit gradients sketched per finished task")
    sketch_seed: int = seed_option(0, help="seed of the Gaussian test matrices")
    project: Literal["all", "body"] = option("all", help="all: project every parameter's gradient; body: leave the "
                                                         "output layer (model.head, else the last Linear) unprojected")
    budget_mb: float = option(1024.0, gt=0.0, help="most memory the sketch and basis may take, MiB (refused at "
                                                   "construction)")


OPTIMIZERS.add("sketchogd", SketchOGD, options=SketchOGDOptions,
               summary="SketchOGD: OGD with a fixed-size random sketch of the finished tasks' logit gradients, then "
                       "any base optimizer (continual learning)",
               source="trainlab", own=True, wrapper=True, needs_model=True, tensor_lr=True,
               paper="Wright et al. 2023, SketchOGD: Memory-Efficient Continual Learning")
