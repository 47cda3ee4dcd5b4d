"""Probes by name, for the trainer: each entry adapts one plain probe function to a :class:`ProbeContext`.

``trainlab run probes=weights,hessian`` runs the named probes at their cadence (see
:class:`trainlab.train.config.ProbeOptions`); each returns a flat ``{key: float}`` that lands in
``metrics.jsonl`` as ``<probe>/<key>`` beside the evaluation metrics. An entry's ``cost`` metadata says what
one call costs (forward/backward passes, Hessian-vector products over the probe batch), and the trainer
records the measured seconds of each call as ``probe_seconds/<probe>`` so the report can show the overhead.

A probe that cannot apply to the model or data (attention entropy on an MLP, local complexity on token
inputs) raises :class:`NotApplicable`; the trainer then drops it for the rest of the run and says why once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from trainlab.registry import Registry


class NotApplicable(Exception):
    """The probe does not apply to this model or data; the message says why in one line."""


@dataclass
class ProbeContext:
    """What a probe may read. Probes never change the model, its gradients, or the caller's RNG.

    ``x_train``/``y_train`` and ``x_val``/``y_val`` are fixed subsets chosen once per run (``probes.examples``),
    so successive values are comparable. ``initial`` holds the parameters at step 0 (by name); ``last_update``
    is theta_t - theta_{t-1} of the step just taken, when the trainer recorded it; ``cache`` keeps a probe's
    own state between calls (e.g. the kernel at initialisation).
    """

    model: nn.Module
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    step: int
    lr: float
    options: Any
    initial: dict[str, Tensor] = field(default_factory=dict)
    last_update: list[Tensor] | None = None
    run_dir: Path | None = None
    x_train_all: Tensor | None = None
    y_train_all: Tensor | None = None
    train_rows: Tensor | None = None  # the workload's row of each x_train_all row (a data diet's subset); None: i
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def float_inputs(self) -> bool:
        return self.x_train.is_floating_point()

    def train_order(self) -> Tensor | None:
        """The prober's seeded order of the training set (positions in ``x_train_all``, on CPU), whose first
        ``len(x_train)`` rows are the probe batch; None without the training set, or when that draw does not
        give exactly the probe batch (so a change in the prober gives null, never wrong rows).

        The prober draws ``randperm(n_train, generator=seed(probes.seed))`` and keeps only the examples; the draw
        is repeated here once per probe (kept in its ``cache``).
        """
        if "train_order" not in self.cache:
            order = None
            if self.x_train_all is not None and self.y_train_all is not None:
                perm = torch.randperm(len(self.x_train_all), generator=torch.Generator().manual_seed(self.options.seed))
                first = perm[: len(self.x_train)].to(self.x_train_all.device)
                if torch.equal(self.x_train_all[first], self.x_train) and torch.equal(self.y_train_all[first],
                                                                                      self.y_train):
                    order = perm
            self.cache["train_order"] = order
        return self.cache["train_order"]


Probe = Callable[[ProbeContext], dict[str, float]]
PROBES: Registry[Probe] = Registry("probe")


def register(name: str, *, summary: str, cost: str, paper: str = "", needs_initial: bool = False,
             needs_update: bool = False) -> Callable[[Probe], Probe]:
    def add(fn: Probe) -> Probe:
        PROBES.add(name, fn, summary=summary, cost=cost, paper=paper, needs_initial=needs_initial,
                   needs_update=needs_update)
        return fn
    return add


def _classification(ctx: ProbeContext, what: str) -> None:
    if ctx.y_train.is_floating_point():
        raise NotApplicable(f"{what} needs class labels; this workload's targets are real-valued")


def _logits(ctx: ProbeContext, x: Tensor) -> Tensor:
    from trainlab.probes.hessian import probe_mode

    with torch.no_grad(), probe_mode(ctx.model):
        return ctx.model(x)


# --------------------------------------------------------------------------------------------------- weights


@register("weights", summary="parameter norms: total, last layer (slingshot cycles), every weight matrix",
          cost="no passes; one read of the parameters", paper="Thilak et al. 2022, The Slingshot Mechanism")
def _weights(ctx: ProbeContext) -> dict[str, float]:
    from trainlab.probes.weights import weight_norms

    norms = weight_norms(ctx.model)
    matrices = {n for n, p in ctx.model.named_parameters() if p.dim() >= 2}
    return {k: v for k, v in norms.items() if k in ("total", "last_layer") or k in matrices}


@register("grad_alignment", summary="cosine between the gradient and the weights (naive loss minimisation); reads "
                                    ".grad after the step, which perpgrad has replaced by its projection (~0 there)",
          cost="no passes; reads the last step's .grad",
          paper="Prieto et al. 2025, Grokking at the Edge of Numerical Stability")
def _grad_alignment(ctx: ProbeContext) -> dict[str, float]:
    from trainlab.probes.weights import gradient_weight_alignment

    values = gradient_weight_alignment(ctx.model)
    return {"global": values["global"]}


# ------------------------------------------------------------------------------------------------- curvature


@register("hessian", summary="top Hessian eigenvalue(s) of the loss on the probe batch (probes.examples; set it to "
                             "the training-set size for full-batch GD) by Lanczos, and the ratio lr*lambda/2",
          cost="1 fwd + 1 bwd (with graph) + lanczos_iters Hessian-vector products",
          paper="Cohen et al. 2021, Gradient Descent on Neural Networks Typically Occurs at the Edge of Stability")
def _hessian(ctx: ProbeContext) -> dict[str, float]:
    from trainlab.probes.hessian import edge_of_stability_ratio, hessian_top_eigenvalues

    values = hessian_top_eigenvalues(ctx.model, ctx.loss_fn, ctx.x_train, ctx.y_train, k=ctx.options.hessian_k,
                                     iters=ctx.options.lanczos_iters, seed=ctx.options.seed)
    out = {f"eig{i + 1}": float(v) for i, v in enumerate(values.tolist())}
    out["eos_ratio"] = edge_of_stability_ratio(out["eig1"], ctx.lr)
    return out


@register("hessian_trace", summary="Hessian trace by Hutchinson (Rademacher vectors), with its standard error, "
                                   "drawn until stderr <= hutchinson_rel_se * |trace| (samples: the count drawn; "
                                   "converged: 1 if the target was met)",
          cost="1 fwd + 1 bwd (with graph) + between hutchinson_samples and hutchinson_max_samples Hessian-vector "
               "products (exactly hutchinson_samples with hutchinson_rel_se=0)",
          paper="Wu et al. 2022, The Alignment Property of SGD Noise and How it Helps Select Flat Minima")
def _hessian_trace(ctx: ProbeContext) -> dict[str, float]:
    from trainlab.probes.hessian import hessian_trace

    o = ctx.options
    est = hessian_trace(ctx.model, ctx.loss_fn, ctx.x_train, ctx.y_train, samples=o.hutchinson_samples,
                        seed=o.seed, rel_se=o.hutchinson_rel_se,
                        max_samples=max(o.hutchinson_max_samples, o.hutchinson_samples))
    return {"mean": float(est.mean), "stderr": float(est.stderr), "sgd_ratio": float(est.mean) * ctx.lr / 2,
            "samples": float(est.samples), "converged": float(est.converged)}


@register("update_sharpness", summary="curvature along the step just taken: u^T H u / u^T u",
          cost="1 fwd + 1 bwd (with graph) + 1 Hessian-vector product; keeps a copy of the parameters "
               "before the step that precedes each probe", needs_update=True,
          paper="Cohen et al. 2022, Adaptive Gradient Methods at the Edge of Stability")
def _update_sharpness(ctx: ProbeContext) -> dict[str, float]:
    from trainlab.probes.hessian import directional_sharpness

    if ctx.last_update is None:
        raise NotApplicable("no update recorded yet")  # step 0: nothing has been taken
    value = directional_sharpness(ctx.model, ctx.loss_fn, ctx.x_train, ctx.y_train, ctx.last_update)
    return {"value": value, "eos_ratio": value * ctx.lr / 2}


@register("noise_scale", summary="gradient noise scale B_simple = tr(Sigma)/|G|^2 from per-example gradients, with "
                                 "its jackknife standard error; further batches of probes.examples training examples "
                                 "until stderr <= noise_scale_rel_se * |B_simple| (examples: the count read; "
                                 "converged: 1 if the target was met)",
          cost="per-example gradients (vmapped fwd + bwd) of between probes.examples and noise_scale_max_examples "
               "training examples (the probe batch alone with noise_scale_rel_se=0); 16 float64 copies of the "
               "parameters (jackknife groups)",
          paper="McCandlish et al. 2018, An Empirical Model of Large-Batch Training")
def _noise_scale(ctx: ProbeContext) -> dict[str, float]:
    from trainlab.probes.noise_scale import simple_noise_scale

    o = ctx.options
    x, y = ctx.x_train, ctx.y_train
    order = ctx.train_order() if o.noise_scale_rel_se > 0 else None
    # further training rows: the prober's seeded order read on (no RNG of the run's)
    if order is not None and ctx.x_train_all is not None and ctx.y_train_all is not None:
        rows = order[: max(o.noise_scale_max_examples, len(ctx.x_train))].to(ctx.x_train_all.device)
        x, y = ctx.x_train_all[rows], ctx.y_train_all[rows]
    ns = simple_noise_scale(ctx.model, ctx.loss_fn, x, y, rel_se=o.noise_scale_rel_se,
                            batch_size=max(len(ctx.x_train), 2))
    return {"b_simple": float(ns.noise_scale), "trace_sigma": float(ns.trace_sigma), "grad_sq": float(ns.grad_sq),
            "stderr": float(ns.stderr), "examples": float(ns.batch_size), "converged": float(ns.converged)}


# ------------------------------------------------------------------------------------------ regimes and rank


@register("rank", summary="effective rank of W - W0 per weight matrix (incremental learning)",
          cost="one SVD per weight matrix", needs_initial=True,
          paper="Abbe et al. 2023, SGD learning on neural networks: leap complexity and saddle-to-saddle dynamics")
def _rank(ctx: ProbeContext) -> dict[str, float]:
    from trainlab.probes.rank import delta_ranks

    if ctx.step == 0:
        return {}
    ranks = delta_ranks(ctx.model, ctx.initial)
    finite = [v for v in ranks.values() if math.isfinite(v)]
    return {"mean": sum(finite) / len(finite) if finite else math.nan, **ranks}


@register("ntk", summary="empirical NTK: alignment with the labels and distance from the kernel at step 0 "
                         "(lazy vs rich)",
          cost="per-example Jacobians of ntk_examples inputs (one backward per output for the trace kernel)",
          needs_initial=True,
          paper="Fort et al. 2020; Kumar et al. 2024, Grokking as the Transition from Lazy to Rich Training Dynamics")
def _ntk(ctx: ProbeContext) -> dict[str, float]:
    from trainlab.probes.ntk import empirical_ntk, kernel_alignment, kernel_distance, ntk_at

    x, y = ctx.x_train[: ctx.options.ntk_examples], ctx.y_train[: ctx.options.ntk_examples]
    if "ntk0" not in ctx.cache:
        ctx.cache["ntk0"] = ntk_at(ctx.model, ctx.initial, x) if ctx.initial else empirical_ntk(ctx.model, x)
    kernel = empirical_ntk(ctx.model, x)
    out = {"distance_from_init": kernel_distance(ctx.cache["ntk0"], kernel)}
    if not y.is_floating_point():
        out["label_alignment"] = kernel_alignment(kernel, y, centered=True)
    return out


@register("local_complexity", summary="linear regions near train, validation and random points "
                                      "(cross-polytope neighbourhoods)",
          cost="2 * lc_directions forwards per point, for 3 sets of points; no backward",
          paper="Humayun et al. 2024, Deep Networks Always Grok and Here is Why")
def _local_complexity(ctx: ProbeContext) -> dict[str, float]:
    from trainlab.probes.local_complexity import local_complexity, random_points_like

    if not ctx.float_inputs:
        raise NotApplicable("local complexity needs real-valued inputs; this model reads tokens")
    if "random_points" not in ctx.cache:
        ctx.cache["random_points"] = random_points_like(ctx.x_train, len(ctx.x_train), seed=ctx.options.seed)
    out = {}
    for name, x in (("train", ctx.x_train), ("val", ctx.x_val), ("random", ctx.cache["random_points"])):
        try:
            lc = local_complexity(ctx.model, x, n_dirs=ctx.options.lc_directions, radius=ctx.options.lc_radius,
                                  seed=ctx.options.seed)
        except ValueError as err:
            raise NotApplicable(str(err).splitlines()[0]) from None
        out[name] = float(lc.mean)
    return out


# ---------------------------------------------------------------------------------------- output and loss


@register("softmax_collapse", summary="fraction of examples whose softmax rounds to one-hot, and of exactly-zero "
                                      "losses (the softmax is measured even when loss=stablemax is trained)",
          cost="1 forward of the probe batch",
          paper="Prieto et al. 2025, Grokking at the Edge of Numerical Stability")
def _softmax_collapse(ctx: ProbeContext) -> dict[str, float]:
    from trainlab.probes.softmax_collapse import softmax_collapse_fraction, zero_loss_fraction

    _classification(ctx, "softmax collapse")
    logits = _logits(ctx, ctx.x_train)
    losses = ctx.loss_fn(logits, ctx.y_train)
    return {"fraction": softmax_collapse_fraction(logits, dtype=torch.float32 if logits.dtype in
                                                  (torch.float16, torch.bfloat16) else None),
            "zero_loss": zero_loss_fraction(losses)}


@register("attention_entropy", summary="entropy of each head's attention (min and mean over heads, per layer)",
          cost="1 forward through the explicit attention path",
          paper="Zhai et al. 2023, Stabilizing Transformer Training by Preventing Attention Entropy Collapse")
def _attention_entropy(ctx: ProbeContext) -> dict[str, float]:
    from trainlab.probes.attention import model_attention_entropy

    try:
        per_layer = model_attention_entropy(ctx.model, ctx.x_train)
    except TypeError as err:
        raise NotApplicable(str(err).splitlines()[0]) from None
    out: dict[str, float] = {}
    for layer, entropies in per_layer.items():
        out[f"layer{layer}_min"] = float(entropies.min())
        out[f"layer{layer}_mean"] = float(entropies.mean())
    out["min"] = min(v for k, v in out.items() if k.endswith("_min"))
    return out


@register("margin", summary="classification margin f_y - max_other f, raw and normalised by ||theta||^L",
          cost="1 forward of the probe batch", paper="Lyu & Li 2020, Gradient Descent Maximizes the Margin of "
                                                     "Homogeneous Neural Networks")
def _margin(ctx: ProbeContext) -> dict[str, float]:
    from trainlab.probes.margin import normalized_margin

    _classification(ctx, "the margin")
    if ctx.y_train.dim() != 1:
        raise NotApplicable("the margin is defined per example; this workload predicts sequences")
    m = normalized_margin(ctx.model, ctx.x_train, ctx.y_train)
    return {"min": float(m.min), "mean": float(m.mean), "normalized_min": float(m.normalized_min),
            "normalized_mean": float(m.normalized_mean)}


@register("jacobian", summary="input-output Jacobian Frobenius norm (GrokAlign's estimate) and centroid alignment",
          cost="1 forward + 2 backward passes of the probe batch",
          paper="Walker et al. 2025, GrokAlign: Geometric Characterisation and Acceleration of Grokking")
def _jacobian(ctx: ProbeContext) -> dict[str, float]:
    from trainlab.losses.grokalign import centroid_alignment, jacobian_norm_estimate
    from trainlab.probes.hessian import probe_mode

    if not ctx.float_inputs:
        raise NotApplicable("the input Jacobian needs real-valued inputs; this model reads tokens")
    gen = torch.Generator(device=ctx.x_train.device).manual_seed(ctx.options.seed)
    with probe_mode(ctx.model):
        x = ctx.x_train.detach().clone().requires_grad_(True)
        est = jacobian_norm_estimate(ctx.model, x, n_proj=4, create_graph=False, generator=gen)
        align = centroid_alignment(ctx.model, ctx.x_train.detach().clone())
    return {"fro_norm": float(est.detach().mean()), "centroid_alignment": float(align.detach().mean())}


@register("data_diet", summary="EL2N and GraNd scores of every training example, written to data_diet/step_N.csv",
          cost="1 forward (EL2N) + per-example gradients (GraNd) over the whole training set",
          paper="Paul et al. 2021, Deep Learning on a Data Diet")
def _data_diet(ctx: ProbeContext) -> dict[str, float]:
    from trainlab.probes.data_diet import el2n_scores, grand_scores, write_scores

    _classification(ctx, "EL2N and GraNd")
    x = ctx.x_train_all if ctx.x_train_all is not None else ctx.x_train
    y = ctx.y_train_all if ctx.y_train_all is not None else ctx.y_train
    el2n = el2n_scores(ctx.model, x, y)
    grand = grand_scores(ctx.model, ctx.loss_fn, x, y)
    if el2n.dim() > 1:  # sequences: one score per example
        el2n = el2n.mean(dim=tuple(range(1, el2n.dim())))
    if ctx.run_dir is not None:
        # under a data diet the rows are a subset: name each by its row of the workload's training set
        rows = ctx.train_rows if ctx.train_rows is not None and ctx.x_train_all is not None else torch.arange(len(x))
        write_scores(ctx.run_dir / "data_diet" / f"step_{ctx.step}.csv", rows,
                     {"el2n": el2n, "grand": grand})
    return {"el2n_mean": float(el2n.mean()), "grand_mean": float(grand.mean())}


def names() -> list[str]:
    return PROBES.names()


# Probes whose adapter lives beside their function (imported last: they import ``register`` from here).
from trainlab.probes import robustness as _robustness  # noqa: E402, F401
from trainlab.probes import certified as _certified  # noqa: E402, F401
from trainlab.probes import spectral_density as _spectral_density  # noqa: E402, F401
from trainlab.probes import fisher_kernel as _fisher_kernel  # noqa: E402, F401
from trainlab.probes import opposing_signals as _opposing_signals  # noqa: E402, F401
from trainlab.probes import info_plane as _info_plane  # noqa: E402, F401
from trainlab.probes import ipr as _ipr  # noqa: E402, F401
