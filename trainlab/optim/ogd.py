"""Orthogonal Gradient Descent (Farajtabar et al. 2020, "Orthogonal Gradient Descent for Continual Learning"), a
wrapper around any base optimizer.

At the end of each task of a sequence, OGD stores the gradients ∇_θ f_y(x) of the true class's logit for
``memory`` training examples of that task (200 in the paper's replications) and keeps an orthonormal basis S of
everything stored so far (Gram–Schmidt; here a blocked equivalent, see :func:`extend_basis`). Every later step
removes from the gradient its part in span(S), over the flattened vector of all projected parameters::

    g <- g - Σ_{v ∈ S} <g, v> v   ( = g - S Sᵀ g )
    base optimizer step (any registry optimizer; default ``sgd``, the paper's)

To first order, a step along g ⊥ span(S) leaves the stored logits of earlier tasks unchanged. Before the first
task ends S is empty and OGD *is* its base optimizer (the step is not touched at all). Units and defaults are the
base's (the paper uses plain SGD); OGD adds ``memory`` (directions per task, default 200), ``project`` and
``budget_mb``.

- **What is projected** (``project``): ``all`` (default) projects every trainable parameter, the rule above.
  ``body`` leaves the output layer unprojected, as the paper does with its multi-head networks ("heads
  unprojected"): the head is the module the model registers as ``head`` (trainlab's MLP, CNNs and transformer
  have one), else its last :class:`torch.nn.Linear` -- the same rule as Muon's parameter split
  (:mod:`trainlab.optim.param_split`). Finding the head needs the model, so OGD is registered with
  ``needs_model`` (``build("ogd", model, ...)`` and ``trainlab run`` pass it) and ``body`` is refused when only
  parameters are given. On a single head shared by all classes (class-incremental) ``all`` is the rule that keeps
  the old classes' logits; ``body`` suits a head whose rows of other tasks the current loss never touches
  (task-incremental).
- **Which gradients**: the loop's ``end_task(task, gradients)`` (:class:`~trainlab.optim.protocol.TaskAware`)
  gives a callable yielding, per example, a list aligned with the model's trainable parameters (the controller's
  ``logit_gradients``, over the task's first training examples, at most 200 of them; ``None`` where a parameter
  does not reach the logit, read as zeros). OGD takes the first ``memory`` it yields. Built over plain parameters
  instead of the model, the list is read in param-group order.
- **Memory** grows with the tasks: the basis holds up to tasks × ``memory`` × P numbers (P = projected
  parameters, in their dtype; float32 for half-precision models) -- 200 directions of a 1M-parameter float32 model
  are 0.8 GB per task -- and a task's end briefly needs twice the basis plus the ``memory`` new gradients.
  ``budget_mb`` (default 1024 MiB) caps the basis: a construction where one task's directions exceed it is
  refused at once, and a task end that would take the basis past it stops the run with a one-line config error
  (``optimizer=sketchogd`` keeps a fixed-size sketch instead).
- **Guarantee**: with a plain SGD base the parameter change is orthogonal to span(S) (to rounding). With momentum
  it becomes so once the buffer has forgotten the gradients of before the task's end; an adaptive base (Adam)
  rescales the projected gradient coordinate-wise, so its update is not orthogonal -- a heuristic use.
- **State**: ``state_dict()`` is the base's plus ``"ogd": {"basis": S}`` (a tensor, readable with
  ``torch.load(weights_only=True)``), so a resumed run projects exactly as the original. Parameters added later
  with ``add_param_group`` are stepped unprojected.

Deviation from the OGD code that SketchOGD's authors compare with (azizanlab/sketchogd, ``algos/ogd.py``): its
Gram–Schmidt normalises every residual, so a gradient already in span(S) (a duplicate example, a zero
gradient) adds a direction of rounding noise or NaN; here such residuals are dropped (:func:`extend_basis`).
"""

import functools
import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from trainlab.config import ConfigError, option
from trainlab.optim.param_split import _head_module
from trainlab.optim.registry import OPTIMIZERS
from trainlab.optim.wrappers import GradientTransformWrapper

Gradients = Callable[[], Iterable[list[Tensor | None]]]
MIB = 2 ** 20


def project_out_(grads: list[Tensor], basis: Tensor) -> None:
    """g <- g - S Sᵀ g over the concatenation of ``grads`` (flattened, in order), in place.

    ``basis`` is S: (P, n) with orthonormal columns, P = total size of ``grads``; computed in S's dtype.
    """
    flat = torch.cat([g.reshape(-1).to(basis.dtype) for g in grads])
    flat -= basis @ (basis.T @ flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def orth(matrix: Tensor, rtol: float, *, scale: Tensor | float | None = None, cap: int | None = None) -> Tensor:
    """An orthonormal basis of the numerical range of ``matrix`` (P, c): its leading left singular vectors with
    singular value above ``rtol`` times ``scale`` (default: the largest singular value), at most ``cap`` of them."""
    u, s, _ = torch.linalg.svd(matrix, full_matrices=False)
    if s.numel() == 0:
        return u
    rank = int((s > rtol * (s[0] if scale is None else scale)).sum())
    return u[:, :rank if cap is None else min(rank, cap)]


def rank_tolerance(dtype: torch.dtype) -> float:
    """Relative size below which a direction counts as rounding noise: √ε of ``dtype`` (3.5e-4 in float32).
    Rounding leaves ~ε-sized residuals of directions already spanned; real directions of a gradient set are far
    above √ε of its largest member."""
    return math.sqrt(torch.finfo(dtype).eps)


def extend_basis(basis: Tensor, new: Tensor) -> Tensor:
    """S extended by the new columns' directions outside span(S): Gram–Schmidt of ``new`` (P, m) against
    ``basis`` (P, n, orthonormal), blocked.

    The residuals R = new - S Sᵀ new keep their directions with singular value above √ε times the largest new
    column's norm (:func:`orth`: gradients that are (nearly) in span(S) or repeat each other add nothing), then
    those directions are projected against S twice more and re-orthonormalised (QR): one pass of classical
    Gram–Schmidt leaves O(ε·‖new‖) of span(S) behind, which the division by a small singular value would magnify.
    """
    if new.shape[1] == 0:
        return basis
    scale = torch.linalg.vector_norm(new, dim=0).max()
    directions = orth(new - basis @ (basis.T @ new), rank_tolerance(new.dtype), scale=scale)
    for _ in range(2):
        directions = directions - basis @ (basis.T @ directions)
    return torch.cat([basis, torch.linalg.qr(directions).Q], dim=1)


class SubspaceProjection(GradientTransformWrapper):
    """Step the base optimizer on gradients with their part in span(``self.basis``) removed (the step of OGD and
    SketchOGD). Subclasses build the basis in ``end_task`` and add their state in ``_own_state``/``_load_own``.

    Args:
        params: the model (``project="body"`` needs it, to find the head) or tensors / param-group dicts.
        base: registry name or class of the base optimizer.
        project: ``"all"`` trainable parameters, or ``"body"``: all but the output layer's.
        memory: gradients of each finished task that ``end_task`` reads.
        budget_mb: most memory, in MiB, that what the subclass keeps may take.
        **base_options: the base optimizer's options.
    """

    key = ""  # the subclass's entry in state_dict()

    def __init__(self, params: Any, base: str | type[torch.optim.Optimizer], *, project: str, memory: int,
                 budget_mb: float, **base_options: Any) -> None:
        if project not in ("all", "body"):
            raise ValueError(f"project must be 'all' or 'body', got {project!r}")
        if memory < 1:
            raise ValueError(f"memory must be >= 1, got {memory}")
        if not budget_mb > 0:
            raise ValueError(f"budget_mb must be > 0, got {budget_mb}")
        self.project, self.memory, self.budget_mb = project, int(memory), float(budget_mb)
        model = params if isinstance(params, nn.Module) else None
        super().__init__(model.parameters() if model is not None else params, base, **base_options)
        # The gradient lists of end_task are aligned with these: the model's trainable parameters in its own order
        # (what the continual controller yields), else the param groups' order.
        self.trainable: list[Tensor] = [p for p in (model.parameters() if model is not None else
                                                    (q for g in self.param_groups for q in g["params"]))
                                        if p.requires_grad]
        head: set[int] = set()
        if project == "body":
            head_module = _head_module(model) if model is not None else None
            if head_module is None:
                raise ValueError("project='body' leaves the output layer unprojected, so it needs the model with a "
                                 "`head` module or a Linear layer (pass the module, not its parameters)")
            head = {id(p) for p in head_module.parameters()}
        self.projected = [i for i, p in enumerate(self.trainable) if id(p) not in head]
        params_projected = [self.trainable[i] for i in self.projected]
        self.size = sum(p.numel() for p in params_projected)  # P
        # half-precision models are projected in float32: dot products over P entries lose too much in 16 bits
        self.dtype = functools.reduce(torch.promote_types, (p.dtype for p in params_projected), torch.float32)
        self.device = params_projected[0].device if params_projected else torch.device("cpu")
        self.basis = torch.zeros(self.size, 0, dtype=self.dtype, device=self.device)

    @property
    def itemsize(self) -> int:
        return torch.finfo(self.dtype).bits // 8

    def check_budget(self, need: int, what: str, remedy: str) -> None:
        """A one-line config error when ``need`` bytes are over ``budget_mb``."""
        if need > self.budget_mb * MIB:
            raise ConfigError("optimizer.budget_mb", f"{type(self).__name__}'s {what} would take {need / MIB:,.0f} "
                                                     f"MiB, over the budget of {self.budget_mb:g} MiB; {remedy}")

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.basis.shape[1]:  # before the first task ends: exactly the base's step
            params = [self.trainable[i] for i in self.projected]
            for p in params:  # an unused parameter has gradient 0, which the projection may make non-zero
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                elif p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            project_out_([g for p in params if (g := p.grad) is not None], self.basis)
        self.optimizer.step()
        return loss

    def gather(self, gradients: Gradients) -> Tensor:
        """The first ``memory`` gradients that ``gradients()`` yields, flattened over the projected parameters:
        (P, m), m <= memory, in the projection's dtype (None read as zeros)."""
        rows = torch.empty(self.memory, self.size, dtype=self.dtype, device=self.device)
        count = 0
        for grads in itertools.islice(gradients(), self.memory):
            if len(grads) != len(self.trainable):
                raise ValueError(f"end_task: a gradient list has {len(grads)} entries for {len(self.trainable)} "
                                 f"trainable parameters")
            offset = 0
            for i in self.projected:
                p, g = self.trainable[i], grads[i]
                if g is not None and g.shape != p.shape:
                    raise ValueError(f"end_task: gradient {i} has shape {tuple(g.shape)}, its parameter "
                                     f"{tuple(p.shape)} (the lists must follow the model's parameters)")
                part = rows[count, offset:offset + p.numel()]
                if g is None:
                    part.zero_()
                else:
                    part.copy_(g.reshape(-1))
                offset += p.numel()
            count += 1
        return rows[:count].T

    def end_task(self, task: int, gradients: Gradients) -> None:
        raise NotImplementedError

    def _own_state(self) -> dict[str, Any]:
        return {"basis": self.basis}

    def _load_own(self, state: dict[str, Any]) -> None:
        self.basis = self._tensor(state, "basis", (self.size, None))

    def _tensor(self, state: dict[str, Any], name: str, shape: tuple[int | None, ...]) -> Tensor:
        """``state[name]`` on this optimizer's device and dtype (a copy: the sketches are updated in place),
        checked against ``shape`` (None: any size)."""
        value = state[name]
        if value.dim() != len(shape) or any(n is not None and n != m for n, m in zip(shape, value.shape)):
            raise ValueError(f"{type(self).__name__} state {name!r} has shape {tuple(value.shape)}; this optimizer "
                             f"expects {tuple('*' if n is None else n for n in shape)} (a different model?)")
        return value.to(device=self.device, dtype=self.dtype, copy=True)

    def state_dict(self) -> dict[str, Any]:
        return {**self.optimizer.state_dict(), self.key: self._own_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.key not in state_dict:
            raise ValueError(f"not a {type(self).__name__} state: it has no {self.key!r} entry")
        self._load_own(state_dict[self.key])
        self.optimizer.load_state_dict({k: v for k, v in state_dict.items() if k != self.key})


REMEDY = "raise optimizer.budget_mb, lower optimizer.memory, or use optimizer=sketchogd (a fixed-size sketch)"


class OGD(SubspaceProjection):
    """Orthogonal Gradient Descent (Farajtabar et al. 2020): the base optimizer stepped on gradients orthogonal
    to the stored logit gradients of finished tasks.

    Args:
        params: the model, or tensors / param-group dicts (then ``project`` must be ``"all"``).
        base: registry name or class of the base optimizer (default ``"sgd"``, the paper's).
        memory: logit gradients stored per finished task (default 200, the paper's replications).
        project: ``"all"`` (default) or ``"body"`` (output layer unprojected, the paper's multi-head setting).
        budget_mb: most memory the stored basis may take, MiB (default 1024).
        **base_options: the base optimizer's options (``lr``, ``momentum``, ...).
    """

    key = "ogd"

    def __init__(self, params: Any, base: str | type[torch.optim.Optimizer] = "sgd", memory: int = 200,
                 project: str = "all", budget_mb: float = 1024.0, **base_options: Any) -> None:
        super().__init__(params, base, project=project, memory=memory, budget_mb=budget_mb, **base_options)
        self.check_budget(self.memory * self.size * self.itemsize,
                          f"stored basis ({self.memory} directions x {self.size:,} parameters) for one task", REMEDY)

    def end_task(self, task: int, gradients: Gradients) -> None:
        """Store up to ``memory`` logit gradients of task ``task`` and orthonormalise them against the basis."""
        columns = self.basis.shape[1] + self.memory
        self.check_budget(columns * self.size * self.itemsize,
                          f"stored basis after task {task} ({columns} directions x {self.size:,} parameters)", REMEDY)
        self.basis = extend_basis(self.basis, self.gather(gradients))


@dataclass(frozen=True)
class OGDOptions:
    base: str = option("sgd", help="registry name of the base optimizer stepped on the projected gradients (its "
                                   "options follow, e.g. optimizer.lr)")
    memory: int = option(200, ge=1, help="logit gradients stored per finished task (200 in the paper's "
                                         "replications)")
    project: Literal["all", "body"] = option("all", help="all: project every parameter's gradient; body: leave the "
                                                         "output layer (model.head, else the last Linear) unprojected")
    budget_mb: float = option(1024.0, gt=0.0, help="most memory the stored basis (tasks x memory x parameters) may "
                                                   "take, MiB; a task end past it stops the run")


OPTIMIZERS.add("ogd", OGD, options=OGDOptions,
               summary="Orthogonal gradient descent: gradients projected off finished tasks' logit gradients, then "
                       "any base optimizer (continual learning)",
               source="trainlab", own=True, wrapper=True, needs_model=True, tensor_lr=True,
               paper="Farajtabar et al. 2020, Orthogonal Gradient Descent for Continual Learning")
