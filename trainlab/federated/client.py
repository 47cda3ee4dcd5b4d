"""One client's local update in federated training: ``local_update(job, spec, model, loss_fn, x, y)``.

The simulator keeps ONE working copy of the model and runs every client on it in turn (a client's model exists
only while it trains), and the same function runs inside a Ray task; so everything it reads is passed in and
picklable -- the server weights sent, the client's data, this dispatch's seed, the rule's per-client state -- and
it returns what the client uploads (:class:`ClientResult`). It reads no global state and draws no global random
numbers.

Local rules (:data:`CLIENT_RULES`, ``LocalSpec.rule``); ``x_t`` is the server weights sent, ``x_k`` the local
weights before local step ``k`` (``x_0 = x_t``), ``K`` = ``job.steps``, ``eta`` = ``spec.lr``:

- ``sgd`` -- FedAvg's client (McMahan et al. 2017): ``K`` steps of the local optimizer on the batch loss; uploads
  ``delta = x_t - x_K``.
- ``fedprox`` -- FedProx (Li et al. 2020): the local objective is ``f_i(x) + mu/2 ||x - x_t||^2``, so
  ``mu (x_k - x_t)`` is added to each step's gradient before the optimizer step; uploads ``x_t - x_K``.
  ``mu = 0`` is ``sgd`` exactly.
- ``fedspeed`` -- FedSpeed (Sun et al. 2023, woodenchild95/FL-Simulator). Per step, on the same batch:
  ``g1 = grad f_i(x_k)``, ``g2 = grad f_i(x_k + rho g1/||g1||)`` (one perturbation of all parameters jointly,
  ``||.||`` the global L2 norm; ``x_k`` is restored exactly afterwards), ``g~ = (1-alpha) g1 + alpha g2``, and the
  optimizer steps with ``g~ - ghat_i + (x_k - x_t)/lambda`` (with plain SGD:
  ``x_{k+1} = x_k - eta (g~ - ghat_i + (x_k - x_t)/lambda)``). After ``K`` steps
  ``ghat_i <- ghat_i - (x_K - x_t)/lambda`` (returned as ``rule_state``, kept by the server for the client's next
  dispatch) and the client uploads ``xhat_i = x_K - lambda ghat_i`` as ``delta = x_t - xhat_i``; the server's
  ``x_{t+1} = mean_i xhat_i`` is ``x_t - mean_i delta_i``. Defaults from FL-Simulator's code: ``1/lambda = 0.1``
  (``lambda = 10``), ``rho = 0.1``, ``alpha = 1`` (only ``g2``); the paper's alpha and lambda are unverified.
  FL-Simulator folds ``1/lambda`` into the SGD weight decay and keeps ``h_i = -lambda ghat_i`` in parameter units;
  the algebra is the same. Its SAM step adds ``1e-7`` to ``||g1||``; here a zero ``g1`` means no perturbation.
  Cost: two forward/backward passes per step (one with ``alpha = 0`` or ``rho = 0``).

Decisions (the simulator relies on them):

- **Buffers are not communicated** (FedAvg leaves "BN buffers" to decide): the server model's buffers
  (BatchNorm running statistics, ...) are what every client trains with, and ``local_update`` restores the model's
  buffers on return to what they were on entry, so one client's forward passes never leak into the next client's
  start or into the server model. Only parameters travel (``job.weights``, ``ClientResult.delta``).
- **The model's parameters on return** hold the client's final local weights ``x_K`` (for fedspeed ``x_K``, not
  ``xhat_i``; for an optimizer with train/eval weights, e.g. schedule-free, its evaluation weights, which are also
  what is uploaded). Whatever they held on entry is overwritten with ``job.weights`` first, so the caller need not
  load them. Gradients are cleared (``None``) and the train/eval mode is restored on return; on an exception the
  buffers and mode are restored too, the parameters are left mid-update.
- ``job.weights`` and ``job.rule_state`` are only read, never written (they may be read-only Ray objects).
- The local optimizer is built fresh for each dispatch (no optimizer state carries over between dispatches, as in
  FedAvg and FL-Simulator), with ``trainlab.optim.build`` -- the same registry and option checks as
  ``trainlab run`` -- and ``lr = spec.lr``. Its train/eval protocol (:mod:`trainlab.optim.protocol`) is honoured:
  ``train()`` before the first step, ``eval()`` after the last, ``observe_loss`` after every step.
- Batches: a private ``torch.Generator`` seeded with ``job.seed`` draws a fresh permutation of the client's rows
  per epoch; a step takes the next ``batch_size`` rows, and the rows left over at an epoch's end (fewer than a
  batch) are skipped, as :class:`trainlab.train.data.BatchSampler` does. A client with at most ``batch_size`` rows
  uses all its rows (in their order) every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import Tensor, nn

from trainlab import optim
from trainlab.errors import ConfigError, UnknownNameError
from trainlab.optim.protocol import capabilities
from trainlab.registry import Registry

__all__ = ["CLIENT_RULES", "ClientJob", "ClientResult", "LocalSpec", "flat_params", "load_flat_", "local_update"]

LossFn = Callable[[nn.Module, Tensor, Tensor], Tensor]


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, kw_only=True)
class LocalSpec:
    """How every client of a run trains locally (keyword arguments only; checked on construction).

    ``rule``: a :data:`CLIENT_RULES` name. ``optimizer``: a ``trainlab.optim`` registry name (``trainlab list
    optimizers``), built with ``lr`` and ``optimizer_options`` (its other hyperparameters, e.g.
    ``{"momentum": 0.9, "weight_decay": 1e-3}``; given as a mapping, stored as sorted ``(key, value)`` pairs so the
    spec stays hashable). ``batch_size``: rows per local step. ``prox_mu``: FedProx's mu (fedprox only; 0 = sgd).
    ``fedspeed_rho``, ``fedspeed_lambda``, ``fedspeed_alpha``: FedSpeed's perturbation radius (in parameter units),
    the proximal/dual scale lambda (the prox coefficient is ``1/lambda``) and the weight of the perturbed gradient.
    """

    rule: str
    lr: float
    batch_size: int
    optimizer: str = "sgd"
    optimizer_options: Any = ()  # Mapping[str, Any] or (key, value) pairs; normalised to tuple[tuple[str, Any], ...]
    prox_mu: float = 0.0
    fedspeed_rho: float = 0.1
    fedspeed_lambda: float = 10.0
    fedspeed_alpha: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.rule, str) or self.rule.lower() not in CLIENT_RULES:
            raise ConfigError("rule", f"unknown client rule {self.rule!r}; allowed: {', '.join(CLIENT_RULES.names())}")
        object.__setattr__(self, "rule", self.rule.lower())
        if not _finite(self.lr) or self.lr <= 0:
            raise ConfigError("lr", f"must be a finite number > 0, got {self.lr!r}")
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise ConfigError("batch_size", f"must be an integer >= 1, got {self.batch_size!r}")
        if not _finite(self.prox_mu) or self.prox_mu < 0:
            raise ConfigError("prox_mu", f"must be a finite number >= 0, got {self.prox_mu!r}")
        if self.prox_mu != 0 and self.rule != "fedprox":
            raise ConfigError("prox_mu", f"is FedProx's coefficient, but rule is {self.rule!r}; use rule fedprox")
        if not _finite(self.fedspeed_rho) or self.fedspeed_rho < 0:
            raise ConfigError("fedspeed_rho", f"must be a finite number >= 0, got {self.fedspeed_rho!r}")
        if not _finite(self.fedspeed_lambda) or self.fedspeed_lambda <= 0:
            raise ConfigError("fedspeed_lambda", f"must be a finite number > 0, got {self.fedspeed_lambda!r}")
        if not _finite(self.fedspeed_alpha) or not 0 <= self.fedspeed_alpha <= 1:
            raise ConfigError("fedspeed_alpha", f"must be in [0, 1], got {self.fedspeed_alpha!r}")
        options = self.optimizer_options
        try:
            pairs = tuple(sorted((options.items() if isinstance(options, Mapping) else dict(options).items())))
        except (TypeError, ValueError):
            raise ConfigError("optimizer_options", f"must be a mapping of option names to values, got "
                                                   f"{type(options).__name__}") from None
        object.__setattr__(self, "optimizer_options", pairs)
        taken = {"lr", "params"} & {key for key, _ in pairs}
        if taken:
            raise ConfigError("optimizer_options", f"{', '.join(sorted(taken))} is set by the spec, not here")
        if not isinstance(self.optimizer, str):
            raise ConfigError("optimizer", f"must be an optimizer name, got {self.optimizer!r}")
        try:  # checked here (names, types, ranges) so a bad spec fails when built, not inside a Ray task
            optim.resolve_options(self.optimizer, {"lr": self.lr, **dict(pairs)})
        except UnknownNameError as err:
            raise ConfigError("optimizer", str(err)) from None

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """A fresh local optimizer over ``model``'s parameters (or the model, for optimizers that need it)."""
        return optim.build(self.optimizer, model, lr=self.lr, **dict(self.optimizer_options))


@dataclass(frozen=True)
class ClientJob:
    """One dispatch of one client.

    ``weights``: the server weights sent (``x_t``), a flat float vector of the parameters only, in
    ``model.parameters()`` order (:func:`flat_params`). ``steps``: local steps ``Q`` (>= 1). ``seed``: this
    dispatch's batch-sampling seed (0 <= seed < 2**64). ``rule_state``: the rule's per-client state from the last
    dispatch, flat like ``weights`` (fedspeed's ``ghat_i``; ``None`` = zeros at the first dispatch), ``None`` for
    sgd and fedprox.
    """

    client: int
    weights: Tensor
    steps: int
    seed: int
    rule_state: Tensor | None = None


@dataclass(frozen=True)
class ClientResult:
    """What one client uploads after one dispatch.

    ``delta``: ``x_t - x_local`` (float32, CPU, flat; for fedspeed ``x_t - xhat_i``), so the server applies
    ``x <- x - server_lr * aggregate(delta)``. ``rule_state``: the rule's new per-client state (float32, CPU) or
    ``None``. ``loss``: the mean over the local steps of the batch loss (``loss_fn``'s value, without the rule's
    prox/correction terms) at the weights before each step. ``examples``: the client's number of rows (``n_k``,
    FedAvg's aggregation weight).
    """

    client: int
    delta: Tensor
    rule_state: Tensor | None
    loss: float
    examples: int


def flat_params(model: nn.Module) -> Tensor:
    """The model's parameters as one new flat vector (``model.parameters()`` order, their dtype and device)."""
    # torch.cat always allocates, so the result never shares storage with the model (even with one parameter)
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def load_flat_(model: nn.Module, flat: Tensor) -> None:
    """Copy ``flat`` (as from :func:`flat_params`) into the model's parameters, in place.

    A copy, unlike ``torch.nn.utils.vector_to_parameters``, which makes the parameters views of ``flat``: the
    optimizer's in-place steps would then write into the caller's vector (the server weights).
    """
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    if flat.dim() != 1 or flat.numel() != total:
        raise ValueError(f"weights must be a flat vector of the model's {total} parameters, got shape "
                         f"{tuple(flat.shape)}")
    with torch.no_grad():
        for p, chunk in zip(params, torch.split(flat.detach(), [p.numel() for p in params])):
            p.copy_(chunk.view_as(p))


class _Context:
    """What a rule needs during one dispatch: the trainable parameters and the sent weights shaped like them."""

    def __init__(self, spec: LocalSpec, model: nn.Module, weights: Tensor, state: Tensor | None) -> None:
        self.spec, self.model = spec, model
        params = list(model.parameters())
        sizes = [p.numel() for p in params]
        keep = [p.requires_grad for p in params]  # frozen parameters are sent and returned but never move
        self.params = [p for p, k in zip(params, keep) if k]
        # copies on the parameters' device and dtype: read every step, and never a view of the caller's tensor
        self.anchor = [c.view_as(p).to(p.device, p.dtype, copy=True)
                       for p, c, k in zip(params, torch.split(weights, sizes), keep) if k]
        self.state = None if state is None else [c.view_as(p).to(p.device, p.dtype, copy=True)
                                                 for p, c, k in zip(params, torch.split(state, sizes), keep) if k]

    def grads(self) -> list[Tensor]:
        """The trainable parameters' gradients, zeros where backward left none (a rule's term applies anyway)."""
        out = []
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            out.append(p.grad)
        return out

    def clear_grads(self) -> None:
        for p in self.params:
            p.grad = None


class LocalRule:
    """Plain local training (FedAvg's client, McMahan et al. 2017): the step's gradient is the batch loss's.

    A rule is built per dispatch; :meth:`gradient` leaves in ``p.grad`` what the optimizer steps with and returns
    the batch loss at the current weights; :meth:`finish` turns the sent and final flat weights (float32, CPU)
    into the upload and the new per-client state.
    """

    stateful = False  # whether the rule keeps per-client state (ClientJob.rule_state) across dispatches

    def __init__(self, ctx: _Context) -> None:
        self.ctx = ctx

    def gradient(self, loss_fn: LossFn, xb: Tensor, yb: Tensor) -> Tensor:
        self.ctx.clear_grads()
        loss = loss_fn(self.ctx.model, xb, yb)
        loss.backward()
        return loss.detach()

    def finish(self, sent: Tensor, final: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor | None]:
        return sent - final, None


class FedProxRule(LocalRule):
    """FedProx (Li et al. 2020): the local objective ``f_i(x) + mu/2 ||x - x_t||^2``; adds ``mu (x - x_t)``."""

    def gradient(self, loss_fn: LossFn, xb: Tensor, yb: Tensor) -> Tensor:
        loss = super().gradient(loss_fn, xb, yb)
        mu = self.ctx.spec.prox_mu
        if mu != 0:  # mu = 0 leaves the gradient bit-identical to sgd's
            with torch.no_grad():
                for p, g, a in zip(self.ctx.params, self.ctx.grads(), self.ctx.anchor):
                    g.add_(p - a, alpha=mu)
        return loss


class FedSpeedRule(LocalRule):
    """FedSpeed (Sun et al. 2023): perturbed (SAM-like) gradient, prox-correction with the dual ``ghat_i``."""

    stateful = True

    def gradient(self, loss_fn: LossFn, xb: Tensor, yb: Tensor) -> Tensor:
        ctx, spec = self.ctx, self.ctx.spec
        rho, lam, alpha = spec.fedspeed_rho, spec.fedspeed_lambda, spec.fedspeed_alpha
        loss = super().gradient(loss_fn, xb, yb)  # at x_k: the loss reported and g1
        g1 = ctx.grads()
        x_k = [p.detach().clone() for p in ctx.params]
        g = g1
        if alpha > 0:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.float()) for t in g1]))
            if rho > 0 and float(norm) > 0:  # else the perturbed point is x_k itself: g2 = g1, no second pass
                with torch.no_grad():
                    for p, t in zip(ctx.params, g1):
                        p.add_(t * (rho / norm).to(t.dtype))
                ctx.clear_grads()
                loss_fn(ctx.model, xb, yb).backward()
                g2 = ctx.grads()
                with torch.no_grad():  # copy back, not subtract: x_k + e - e may differ from x_k in the last bit
                    for p, saved in zip(ctx.params, x_k):
                        p.copy_(saved)
                g = g2 if alpha == 1 else [(1 - alpha) * a + alpha * b for a, b in zip(g1, g2)]
        assert ctx.state is not None
        with torch.no_grad():
            for p, t, h, xk, a in zip(ctx.params, g, ctx.state, x_k, ctx.anchor):
                p.grad = t - h + (xk - a) / lam
        return loss

    def finish(self, sent: Tensor, final: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor | None]:
        lam = self.ctx.spec.fedspeed_lambda
        ghat = (torch.zeros_like(sent) if state is None else state) - (final - sent) / lam
        xhat = final - lam * ghat
        return sent - xhat, ghat


CLIENT_RULES: Registry[type[LocalRule]] = Registry("client rule")
CLIENT_RULES.add("sgd", LocalRule, summary="local steps of the optimizer on the client's loss; uploads x_t - x_K",
                 paper="McMahan et al. 2017, Communication-Efficient Learning of Deep Networks from Decentralized Data")
CLIENT_RULES.add("fedprox", FedProxRule, summary="adds mu (x - x_t) to each local gradient (prox_mu; 0 = sgd)",
                 paper="Li et al. 2020, Federated Optimization in Heterogeneous Networks")
CLIENT_RULES.add("fedspeed", FedSpeedRule, summary="perturbed gradient (fedspeed_rho, fedspeed_alpha) with a "
                                                   "prox-correction by the client's dual ghat_i (fedspeed_lambda); "
                                                   "uploads x_K - lambda ghat_i; two passes per step",
                 paper="Sun et al. 2023, FedSpeed: Larger Local Interval, Less Communication Round, and Higher "
                       "Generalization Accuracy", source="woodenchild95/FL-Simulator")


def _batches(n: int, batch_size: int, steps: int, seed: int) -> Iterator[Tensor | None]:
    """Row indices per local step (``None`` = all rows): epochs of a private generator's permutations."""
    if n <= batch_size:
        for _ in range(steps):
            yield None
        return
    gen = torch.Generator().manual_seed(seed)  # private: the global RNG is never drawn from
    per_epoch = n // batch_size
    perm = torch.arange(n)
    for step in range(steps):
        pos = step % per_epoch
        if pos == 0:
            perm = torch.randperm(n, generator=gen)
        yield perm[pos * batch_size:(pos + 1) * batch_size]


def _check_job(job: ClientJob, spec: LocalSpec, model: nn.Module, x: Tensor, y: Tensor) -> int:
    """The client's number of rows, after checking the job against the spec, the model and the data."""
    total = sum(p.numel() for p in model.parameters())
    if not isinstance(job.weights, Tensor) or job.weights.dim() != 1 or job.weights.numel() != total \
            or not job.weights.is_floating_point():
        shape = tuple(job.weights.shape) if isinstance(job.weights, Tensor) else type(job.weights).__name__
        raise ValueError(f"job.weights must be a flat float vector of the model's {total} parameters, got {shape}")
    if not isinstance(job.steps, int) or isinstance(job.steps, bool) or job.steps < 1:
        raise ValueError(f"job.steps must be an integer >= 1, got {job.steps!r}")
    if not isinstance(job.seed, int) or isinstance(job.seed, bool) or not 0 <= job.seed < 2**64:
        raise ValueError(f"job.seed must be an integer in [0, 2**64), got {job.seed!r}")
    stateful = CLIENT_RULES.get(spec.rule).factory.stateful
    if job.rule_state is not None:
        if not stateful:
            raise ValueError(f"rule {spec.rule!r} keeps no per-client state, but job.rule_state was given")
        if not isinstance(job.rule_state, Tensor) or tuple(job.rule_state.shape) != (total,):
            shape = tuple(job.rule_state.shape) if isinstance(job.rule_state, Tensor) else type(job.rule_state)
            raise ValueError(f"job.rule_state must be a flat vector like job.weights ({total},), got {shape}")
    n = len(x)
    if n < 1 or len(y) != n:
        raise ValueError(f"the client's data must have at least one row and as many targets as inputs, got "
                         f"{n} inputs and {len(y)} targets")
    return n


def local_update(job: ClientJob, spec: LocalSpec, model: nn.Module, loss_fn: LossFn, x: Tensor,
                 y: Tensor) -> ClientResult:
    """Train ``model`` from ``job.weights`` for ``job.steps`` local steps on ``(x, y)`` by ``spec``'s rule.

    ``loss_fn(model, xb, yb)`` returns the mean batch loss (a 0-dim tensor). ``x``, ``y``: this client's rows
    (indexed rows of ``x`` and ``y`` are moved to the model's device per batch). The model is trained in train
    mode; see the module docstring for what the model holds on return (final local weights, buffers and mode
    restored). Raises ``ValueError`` (one line) for a job that does not fit the spec, model or data.
    """
    n = _check_job(job, spec, model, x, y)
    rule_cls = CLIENT_RULES.get(spec.rule).factory
    sent = job.weights.detach().to("cpu", torch.float32)  # a copy unless it already is float32 on CPU: never written
    state = None
    if rule_cls.stateful:
        state = torch.zeros_like(sent) if job.rule_state is None else job.rule_state.detach().to("cpu", torch.float32)
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    was_training = model.training
    try:
        load_flat_(model, job.weights)
        model.train()
        ctx = _Context(spec, model, job.weights.detach(), state)
        rule = rule_cls(ctx)
        optimizer = spec.build_optimizer(model)
        hooks = capabilities(optimizer)
        hooks.train_mode()  # schedule-free optimizers must be in train mode to step
        losses = []
        for idx in _batches(n, spec.batch_size, job.steps, job.seed):
            xb, yb = (x, y) if idx is None else (x[idx.to(x.device)], y[idx.to(y.device)])
            loss = rule.gradient(loss_fn, xb.to(device), yb.to(device))
            optimizer.step()
            hooks.observe(loss)
            losses.append(loss.float())
        hooks.eval_mode()  # an optimizer with separate evaluation weights uploads those
        final = flat_params(model).to("cpu", torch.float32)
        delta, new_state = rule.finish(sent, final, state)
        mean_loss = float(torch.stack(losses).double().mean())
    finally:
        for p in params:  # the gradients of the last step are the client's, not the next one's
            p.grad = None
        with torch.no_grad():  # buffers are not communicated: the server model's stay (see the module docstring)
            for name, b in model.named_buffers():
                if name in buffers:
                    b.copy_(buffers[name])
        model.train(was_training)
    # ``final`` was copied off the model (cat + to); ``delta`` is a new tensor in every rule: nothing aliases it
    return ClientResult(client=job.client, delta=delta.contiguous(), rule_state=new_state, loss=mean_loss,
                        examples=n)

