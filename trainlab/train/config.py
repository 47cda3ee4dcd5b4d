"""The run configuration: four named components plus the trainer's own options, resolved from layers.

Layers, lowest first: the built-in defaults (the grokking recipe of ``trainlab run`` with no arguments), a
YAML file, then ``key=value`` overrides from the command line. Rules:

- A component (``workload``, ``model``, ``optimizer``, ``schedule``) is written ``optimizer=lion`` or
  ``optimizer: {name: lion, lr: 1e-4}``; its options as dotted keys ``optimizer.lr=1e-4``.
- Naming a *different* component in a higher layer starts from that component's own defaults: YAML options
  of ``adamw`` do not leak into ``optimizer=lion``.
- The model's bottom layer is the workload's default model; ``steps``, ``eval_every`` and ``batch_size``
  default to the workload's budget when left unset.
- Three plain sections have fixed options and no name: ``loss`` (the loss function and regularisers),
  ``param`` (initialisation and parametrisation) and ``probes`` (which probes run, and when); e.g.
  ``loss.z_loss=1e-4``, ``param.init=orthogonal``, ``probes=weights,hessian probes.every=100``.
- The ``dist`` section picks the distributed strategy and its options (``dist=fsdp`` is
  ``dist.strategy=fsdp``; ``dist.inner_steps=100``); see :mod:`trainlab.distributed.strategy`.
- Unknown keys, wrong types and out-of-range values raise :class:`~trainlab.config.ConfigError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

from trainlab import models, optim, schedules, workloads
from trainlab.continual.options import ContinualOptions, check_continual
from trainlab.federated.options import SERVER_DEFAULTS, FedOptions
from trainlab.config import ConfigError, build_options, load_yaml_file, option, seed_option, to_plain
from trainlab.errors import quote_path, shorten
from trainlab.registry import Registry, UnknownNameError

COMPONENTS: dict[str, Registry] = {
    "workload": workloads.WORKLOADS,
    "model": models.MODELS,
    "optimizer": optim.OPTIMIZERS,
    "schedule": schedules.SCHEDULES,
}

# The components of a run that names none. `trainlab run` with no arguments: a+b mod 97 on the modular
# workload's own recipe (its default model and its grokking optimizer settings; see Workload.recipe).
DEFAULTS: dict[str, Any] = {
    "workload": {"name": "modular"},
    "optimizer": {"name": "adamw"},
    "schedule": {"name": "constant"},
}


@dataclass(frozen=True)
class TrainOptions:
    """The trainer's own options (top-level keys)."""

    steps: int | None = option(None, ge=1, help="training steps (default: the workload's budget)")
    seed: int = seed_option(help="seed of initialisation and batch order (workload.seed sets the data)")
    batch_size: int | None = option(
        None, ge=0, help="examples per step over all processes; 0 = full batch (default: the workload's)")
    eval_every: int | None = option(None, ge=1, help="evaluate every N steps (default: the workload's)")
    eval_examples: int = option(0, ge=0, help="evaluate on at most N examples per split (0 = all)")
    checkpoint_every: int = option(0, ge=0, help="checkpoint every N steps (0 = only at the end or on interrupt)")
    grad_clip: float | None = option(None, gt=0, help="clip the global gradient norm to this value")
    threshold: float | None = option(None, help="'solved' value of the workload's metric (default: the workload's)")
    stop_at_target: bool = option(False, help="stop at the first evaluation whose validation metric reaches the "
                                              "threshold (status: reached_target), or target_metric reaches target")
    target_metric: str | None = option(None, help="with stop_at_target: stop on this evaluation column instead "
                                                  "(val_loss or train_loss: lower is better), e.g. val_loss")
    target: float | None = option(None, help="the value target_metric must reach")
    time_budget: float | None = option(None, gt=0, help="seconds of training time (evaluation excluded); checked "
                                                        "at each evaluation, stops with status out_of_time")
    device: Literal["auto", "cpu", "cuda", "mps"] = option("auto", help="auto picks cuda, then mps, then cpu")
    threads: int = option(0, ge=0, help="torch intra-op threads per process; 0 = OMP_NUM_THREADS if set, else the "
                                        "CPUs the load average leaves free (trainlab.train.threads)")
    dtype: Literal["float32", "float64"] = option("float32", help="parameter and data dtype")
    autocast: Literal["auto", "off", "bf16"] = option("auto", help="auto = bf16 autocast on CUDA, off elsewhere")
    compile: bool = option(False, help="torch.compile the model")
    tensorboard: bool = option(False, help="also write TensorBoard event files (needs trainlab[tensorboard])")
    trace: bool = option(True, help="record every step's loss, gradient norm and lr in trace.jsonl "
                                    "(refined schedules are built from it)")
    name: str | None = option(None, help="run name (default: workload-optimizer-time)")
    init_from: str | None = option(None, help="start from the weights of this run directory's newest checkpoint "
                                              "(fine-tuning: same model shapes; optimizer, schedule and step start "
                                              "fresh)")


@dataclass(frozen=True)
class LossOptions:
    """The training objective: the workload's loss or a replacement, plus regularisers (0 = off)."""

    function: Literal["default", "stablemax", "spherical_z"] = option(
        "default", help="default: the workload's loss; stablemax: StableMax cross-entropy in float64 (Prieto et al. "
                        "2025); spherical_z: the shift- and scale-invariant Z-loss (de Brebisson & Vincent 2016)")
    z_loss: float = option(0.0, ge=0.0, help="weight of log(Z)^2 per example (PaLM uses 1e-4)")
    grokalign: float = option(0.0, ge=0.0, help="GrokAlign Jacobian regulariser weight (Walker et al.: 1e-3 with "
                                                "cross-entropy, 1e-4 with MSE)")
    grokalign_projections: int = option(1, ge=1, help="random projections per example for the Jacobian estimate")
    elr: float = option(0.0, ge=0.0, help="early-learning regularisation weight for noisy labels (Liu et al. 2020 "
                                          "use 3)")
    elr_beta: float = option(0.7, ge=0.0, lt=1.0, help="ELR's temporal-ensembling momentum of the targets")
    adversarial: Literal["none", "fgsm", "pgd"] = option(
        "none", help="adversarial training (trainlab.losses.adversarial): train on the loss at an attack's input "
                     "x' in the eps-ball, mixed with the clean loss; fgsm (Goodfellow et al. 2015) or pgd (Madry et "
                     "al. 2018)")
    adversarial_eps: float | None = option(None, gt=0.0, help="the attack's radius eps in input units (required: "
                                                              "standardised features, one-hot codes; Madry et al.: "
                                                              "0.3 for MNIST pixels in [0, 1])")
    adversarial_alpha: float | None = option(None, gt=0.0, help="pgd step size (default: 2.5 * eps / steps)")
    adversarial_steps: int = option(10, ge=1, help="pgd steps per attack (Madry et al.: 40 on MNIST, 7 on "
                                                   "CIFAR-10)")
    adversarial_norm: Literal["linf", "l2"] = option("linf", help="pgd's ball: linf (sign steps) or l2")
    adversarial_mix: float | None = option(None, ge=0.0, le=1.0, help="weight m of (1 - m) L(x) + m L(x') "
                                                                      "(default: 0.5 with fgsm, Goodfellow et al.; 1 "
                                                                      "with pgd, Madry et al.; 0: clean training)")
    adversarial_warmup: int = option(0, ge=0, help="steps over which eps ramps linearly from 0 (0: full eps from "
                                                   "the first step)")

    certified: Literal["none", "ibp"] = option(
        "none", help="certified training (trainlab.robust.certified): minimise the cross-entropy of interval-bound "
                     "(IBP) worst-case margins over the L-inf eps-ball (Gowal et al. 2018), with Shi et al. 2021's "
                     "warm-up regularisers; mlp/cnn1d/cnn2d models")
    certified_eps: float | None = option(None, gt=0.0, help="the certified L-inf radius eps in input units "
                                                            "(required with loss.certified=ibp)")
    certified_start: int = option(0, ge=0, help="the ramp starts after step certified_start (eps = 0 through it; "
                                                "Shi et al.: one epoch); with certified_warmup=0, eps is full from "
                                                "step certified_start")
    certified_warmup: int = option(0, ge=0, help="steps over which eps ramps from 0 to certified_eps (0: full eps "
                                                 "after certified_start; Shi et al.'s short warm-up vs Gowal et al.'s "
                                                 "long one)")
    certified_ramp: Literal["smoothed", "linear"] = option(
        "smoothed", help="the eps ramp: smoothed (exponential growth, then linear: Shi et al. / auto_LiRPA) or "
                         "linear (Gowal et al.)")
    certified_kappa: float = option(0.0, ge=0.0, le=1.0, help="weight of the clean cross-entropy after the warm-up "
                                                              "(it ramps from 1 with eps); Gowal et al. 0.5, Shi et "
                                                              "al. 0")
    certified_reg: float = option(0.5, ge=0.0, help="lambda of Shi et al.'s tightness and ReLU-balance regularisers, "
                                                    "weighted lambda * (1 - eps_t / eps) during the warm-up (0: off)")

    def validate(self) -> None:
        """The ``adversarial_*`` and ``certified_*`` options apply to the methods that read them; each needs a
        radius; adversarial and certified training exclude each other."""
        defaults = LossOptions()
        for key, (section, methods) in METHOD_OPTION_OWNERS.items():
            if getattr(self, key) != getattr(defaults, key) and getattr(self, section) not in methods:
                raise ConfigError(key, f"applies to loss.{section}={' or '.join(methods)} only, not to "
                                       f"loss.{section}={getattr(self, section)}")
        if self.adversarial != "none" and self.adversarial_eps is None:
            raise ConfigError("adversarial_eps", f"give the radius of loss.adversarial={self.adversarial} in input "
                                                 f"units, e.g. loss.adversarial_eps=0.1")
        if self.certified != "none" and self.certified_eps is None:
            raise ConfigError("certified_eps", "give the certified radius in input units, e.g. "
                                               "loss.certified_eps=0.1")
        if self.certified != "none" and self.adversarial != "none":
            raise ConfigError("certified", "and loss.adversarial exclude each other: choose one way of training "
                                           "for robustness")


# Which method of loss.adversarial / loss.certified reads which of their options (the others must stay at their
# defaults). FGSM takes one signed step of eps, so it has no step size, step count or L2 ball.
METHOD_OPTION_OWNERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "adversarial_eps": ("adversarial", ("fgsm", "pgd")), "adversarial_mix": ("adversarial", ("fgsm", "pgd")),
    "adversarial_warmup": ("adversarial", ("fgsm", "pgd")), "adversarial_alpha": ("adversarial", ("pgd",)),
    "adversarial_steps": ("adversarial", ("pgd",)), "adversarial_norm": ("adversarial", ("pgd",)),
    **{f"certified_{k}": ("certified", ("ibp",)) for k in ("eps", "start", "warmup", "ramp", "kappa", "reg")},
}


@dataclass(frozen=True)
class ParamOptions:
    """Initialisation and parametrisation, applied after the model is built and before the optimizer sees it."""

    init: Literal["default", "orthogonal", "spectral", "data_dependent", "ibp", "nanda"] = option(
        "default", help="default: the model's own; data_dependent: unit sample variance of every pre-activation "
                        "on a training batch (Luther & Seung 2019); ibp: N(0, (sqrt(2 pi)/fan_in)^2) weights but the "
                        "output layer's, for interval-bound training (Shi et al. 2021); nanda: the transformer's "
                        "weights N(0, 1/d_model), unembedding N(0, 1/n_outputs) (Nanda et al. 2023)")
    sigma_reparam: bool = option(False, help="replace every Linear by a sigmaReparam layer (Zhai et al. 2023)")
    mup_base_width: int = option(0, ge=0, help="muP (Yang & Hu): per-layer lr multipliers and output init "
                                               "relative to this base width (0: off)")
    output_scale: float = option(1.0, gt=0.0, help="alpha of the lazy/rich output scaling alpha*(f - f0) "
                                                   "(Chizat et al. 2019; scale the lr yourself: lr/alpha^2 for SGD, "
                                                   "lr/alpha for Adam); 1: off (and not centred)")
    center: bool = option(True, help="with output_scale != 1: subtract the output at initialisation")


@dataclass(frozen=True)
class ProbeOptions:
    """Which probes run (``probes=weights,hessian``; ``trainlab list probes``) and when."""

    names: tuple[str, ...] = option((), help="probes to run (comma list; trainlab list probes)")
    every: int = option(0, ge=0, help="run every N steps (0: at each evaluation)")
    log_spaced: int = option(0, ge=0, help="also at N log-spaced steps per decade (0: off)")
    examples: int = option(256, ge=1, help="training and validation examples the probes read (fixed per run)")
    seed: int = seed_option(help="seed of the probe batch and of every random probe vector")
    hessian_k: int = option(1, ge=1, le=32, help="Hessian eigenvalues to find")
    lanczos_iters: int = option(20, ge=2, help="Lanczos iterations (Hessian-vector products)")
    hutchinson_samples: int = option(10, ge=1, help="Rademacher vectors of the Hessian-trace estimate")
    hutchinson_rel_se: float = option(0.02, ge=0.0, lt=1.0, help="hessian_trace: draw vectors until the standard "
                                                                "error <= this * |trace| (hutchinson_samples is then "
                                                                "the minimum, >= 2); 0: exactly hutchinson_samples")
    hutchinson_max_samples: int = option(100, ge=2, le=10000, help="hessian_trace: most vectors drawn with "
                                                                   "hutchinson_rel_se > 0 (at least hutchinson_samples)")
    noise_scale_rel_se: float = option(0.2, ge=0.0, lt=1.0, help="noise_scale: read further batches of "
                                                                 "probes.examples training examples until the "
                                                                 "standard error <= this * |B_simple| (the probe "
                                                                 "batch is the minimum); 0: the probe batch alone")
    noise_scale_max_examples: int = option(2048, ge=2, le=1_000_000, help="noise_scale: most training examples read "
                                                                          "with noise_scale_rel_se > 0 (at least "
                                                                          "probes.examples; about 1 fwd + 1 bwd "
                                                                          "each)")
    ntk_examples: int = option(32, ge=2, help="examples in the empirical NTK")
    lc_directions: int = option(16, ge=1, help="cross-polytope directions of local complexity")
    lc_radius: float = option(0.05, gt=0.0, help="cross-polytope radius of local complexity (input units)")
    robust_eps: tuple[float, ...] = option((0.05, 0.1, 0.2), gt=0.0, help="robustness: attack radii eps (input "
                                                                          "units: standardised features, one-hot)")
    robust_steps: int = option(10, ge=1, help="robustness: PGD steps per eps (step size 2.5 * eps / steps)")
    robust_norm: Literal["linf", "l2"] = option("linf", help="robustness: the attack's norm")
    robust_restarts: int = option(1, ge=1, help="robustness: random starts per example (its worst one counts)")
    hessian_density_iters: int = option(100, ge=2, help="hessian_density: Lanczos steps per run (Hessian-vector "
                                                        "products; PyHessian: 100)")
    hessian_density_runs: int = option(1, ge=1, help="hessian_density: Rademacher start vectors averaged (PyHessian: 1)")
    hessian_density_outlier: float = option(0.1, gt=0.0, lt=1.0, help="hessian_density: outliers are nodes with "
                                                                      "|lambda| above this fraction of the largest")
    nfk_examples: int = option(64, ge=2, help="nfk: training examples in the Fisher kernel (at most probes.examples)")
    nfk_top: int = option(3, ge=1, le=32, help="nfk: top eigenvalues reported")
    nfk_labels: Literal["true", "model"] = option("true", help="nfk: scores at the true labels (empirical Fisher) "
                                                               "or at labels sampled from the model (Fisher)")
    opposing_signals_fraction: float = option(0.1, gt=0.0, le=1.0, help="opposing_signals: fraction of the probe "
                                                                       "batch reported as top changers (by |dloss|)")
    opposing_signals_lr: float = option(0.0, ge=0.0, help="opposing_signals: lr of the virtual SGD step (0: the "
                                                          "trainer's lr at the probed step)")
    info_plane_bins: int = option(30, ge=2, help="info_plane: bins per unit (fixed: equal width; adaptive: equal "
                                                 "counts of distinct values; Shwartz-Ziv & Tishby: 30)")


@dataclass(frozen=True)
class DistOptions:
    """How the processes of a ``torchrun`` launch train together (``dist=fsdp``; ``trainlab.distributed.strategy``).

    Without torchrun (one process) ``ddp`` is the plain single-process trainer; every other strategy runs its
    own code path on a one-process gloo group (sharding over one process is the identity; DiLoCo is its
    outer loop with one worker). Options of a strategy that is not selected are refused.
    """

    strategy: Literal["ddp", "zero1", "fsdp", "diloco", "streaming_diloco", "gradient_coding", "gossip"] = option(
        "ddp", help="ddp: DistributedDataParallel; zero1: DDP + ZeroRedundancyOptimizer (optimizer state sharded; "
                    "Rajbhandari et al. 2020); fsdp: FSDP2 fully_shard, ZeRO-3; diloco / streaming_diloco: local "
                    "inner steps, outer Nesterov step on averaged pseudo-gradients (Douillard et al. 2023, 2025); "
                    "gradient_coding: coded gradients decoded despite s stragglers (Tandon et al. 2017); gossip: "
                    "each worker its own model, averaged along graph edges on Poisson clocks (Nabli & Oyallon 2023)")
    compression: Literal["none", "dgc", "powersgd"] = option(
        "none", help="DDP communication hook (ddp, zero1): dgc = Deep Gradient Compression (Lin et al. 2018), "
                     "powersgd = PowerSGD (Vogels et al. 2019)")
    distributed_muon: bool = option(True, help="optimizer=muon under ddp/fsdp: each process orthogonalises the "
                                               "matrices it owns, results are shared (off: ddp repeats the work "
                                               "on every process; fsdp needs it)")
    reshard_after_forward: bool = option(True, help="fsdp: free gathered parameters after forward (re-gathered "
                                                    "in backward) -- ZeRO-3; false keeps them until backward")
    inner_steps: int = option(50, ge=1, help="diloco: H, inner optimizer steps between outer steps")
    outer_lr: float = option(0.7, gt=0.0, help="diloco: outer SGD learning rate")
    outer_momentum: float = option(0.9, ge=0.0, lt=1.0, help="diloco: outer SGD momentum")
    nesterov: bool = option(True, help="diloco: Nesterov outer momentum")
    fragments: int = option(2, ge=1, help="streaming_diloco: P, fragments synchronised in turn")
    overlap: int = option(1, ge=0, help="streaming_diloco: tau, inner steps the all-reduce overlaps with")
    alpha: float = option(0.5, ge=0.0, le=1.0, help="streaming_diloco: mixing of the new global fragment into "
                                                    "the local one (1: take the global)")
    quant_bits: Literal[0, 4, 8] = option(4, help="streaming_diloco: bits of the communicated outer gradients "
                                                  "(0: full precision)")
    dgc_density: float = option(0.001, gt=0.0, le=1.0, help="dgc: final fraction of each sparsified tensor sent "
                                                            "per step (paper: 0.001 = 99.9% sparsity)")
    dgc_warmup_steps: int = option(0, ge=0, help="dgc: steps of the warm-up ladder 75% -> 93.75% -> 98.4% -> "
                                                 "99.6% sparsity before dgc_density (paper: 4 epochs)")
    dgc_momentum: float = option(0.9, ge=0.0, lt=1.0, help="dgc: momentum of the momentum correction (use the "
                                                           "optimizer without momentum, e.g. sgd)")
    dgc_nesterov: bool = option(False, help="dgc: Nesterov form of the momentum correction")
    dgc_clip: float | None = option(None, gt=0.0, help="dgc: local gradient clipping norm, per tensor, scaled by "
                                                       "N^-1/2 (none: off)")
    dgc_min_sparse_numel: int = option(1024, ge=0, help="dgc: smaller tensors (and all vectors) are sent dense")
    powersgd_rank: int = option(2, ge=1, help="powersgd: rank of the low-rank approximation (paper: 2)")
    powersgd_start_iter: int = option(0, ge=0, help="powersgd: steps all-reduced dense before compressing")
    powersgd_min_compression_rate: float = option(1.0, ge=0.0, help="powersgd: compress an n x m matrix when "
                                                                    "nm/((n+m)r) exceeds this")
    stragglers: int = option(1, ge=0, help="gradient_coding: s, workers per step whose coded gradients are ignored; "
                                           "s + 1 must divide the number of processes")
    straggler_seed: int = seed_option(help="gradient_coding: seed of each step's straggler draw (the same on every "
                                           "process)")
    graph: Literal["ring", "torus", "complete", "random"] = option(
        "ring", help="gossip: the communication graph (torus: r x c = processes, r, c >= 2; random: Erdos-Renyi "
                     "G(n, graph_p), redrawn until connected)")
    graph_p: float = option(0.5, gt=0.0, le=1.0, help="gossip with graph=random: the edge probability")
    gossip_clock: Literal["poisson", "synchronous"] = option(
        "poisson", help="gossip: poisson = pairwise averages on edges firing as Poisson clocks after each step "
                        "(DADAO's decoupled clocks); synchronous = one Metropolis-Hastings round every step "
                        "(on the complete graph: the exact average, = DDP for SGD)")
    gossip_rate: float = option(1.0, gt=0.0, help="gossip with gossip_clock=poisson: expected edge firings per "
                                                  "worker per step (each sends the model each way)")
    gossip_seed: int = seed_option(help="gossip: seed of the edge clocks and of graph=random")

    def validate(self) -> None:
        """The options of gradient_coding and gossip apply to them only (the other strategies' options are
        checked by :func:`check_dist`); graph sizes and ``(s + 1) | processes`` are checked once the processes
        are known."""
        defaults = DistOptions()
        owners = {"stragglers": "gradient_coding", "straggler_seed": "gradient_coding", "graph": "gossip",
                  "graph_p": "gossip", "gossip_clock": "gossip", "gossip_rate": "gossip", "gossip_seed": "gossip"}
        for key, owner in owners.items():
            if getattr(self, key) != getattr(defaults, key) and self.strategy != owner:
                raise ConfigError(key, f"applies to {owner} only, not to dist.strategy={self.strategy}")
        if self.graph_p != defaults.graph_p and self.graph != "random":
            raise ConfigError("graph_p", f"applies to dist.graph=random only, not to dist.graph={self.graph}")
        if self.gossip_rate != defaults.gossip_rate and self.gossip_clock != "poisson":
            raise ConfigError("gossip_rate", "applies to dist.gossip_clock=poisson only (a synchronous round "
                                             "gossips once per step)")
        if self.gossip_seed != defaults.gossip_seed and self.gossip_clock != "poisson" and self.graph != "random":
            raise ConfigError("gossip_seed", "seeds the Poisson clocks and graph=random; a synchronous round over a "
                                             f"{self.graph} graph draws nothing")


# Which DistOptions belong to which strategy / compression (the others must stay at their defaults).
DIST_OPTION_OWNERS: dict[str, tuple[str, ...]] = {
    "reshard_after_forward": ("fsdp",),
    "inner_steps": ("diloco", "streaming_diloco"), "outer_lr": ("diloco", "streaming_diloco"),
    "outer_momentum": ("diloco", "streaming_diloco"), "nesterov": ("diloco", "streaming_diloco"),
    "fragments": ("streaming_diloco",), "overlap": ("streaming_diloco",), "alpha": ("streaming_diloco",),
    "quant_bits": ("streaming_diloco",),
    "dgc_density": ("dgc",), "dgc_warmup_steps": ("dgc",), "dgc_momentum": ("dgc",), "dgc_nesterov": ("dgc",),
    "dgc_clip": ("dgc",), "dgc_min_sparse_numel": ("dgc",),
    "powersgd_rank": ("powersgd",), "powersgd_start_iter": ("powersgd",), "powersgd_min_compression_rate": ("powersgd",),
}


def check_dist(options: DistOptions) -> None:
    """Cross-option rules of the ``dist`` section (one-line :class:`ConfigError` s)."""
    defaults = DistOptions()
    for key, owners in DIST_OPTION_OWNERS.items():
        if getattr(options, key) != getattr(defaults, key) and options.strategy not in owners \
                and options.compression not in owners:
            raise ConfigError(f"dist.{key}", f"applies to {' / '.join(owners)} only, not to "
                                             f"dist.strategy={options.strategy}")
    if options.compression != "none" and options.strategy not in ("ddp", "zero1"):
        raise ConfigError("dist.compression", f"is a DDP communication hook: use it with dist.strategy=ddp or "
                                              f"zero1, not {options.strategy}")
    if options.strategy == "streaming_diloco":
        if options.fragments > options.inner_steps:
            raise ConfigError("dist.fragments", f"must not exceed dist.inner_steps ({options.inner_steps})")
        if options.overlap * options.fragments >= options.inner_steps:
            raise ConfigError("dist.overlap", f"overlap * fragments must be less than inner_steps "
                                              f"({options.inner_steps}): a fragment's exchange must finish before "
                                              f"the next one starts")


@dataclass(frozen=True)
class DataOptions:
    """Which training examples a run trains on, and in what order (``trainlab.train.diet``): a data diet.

    Paul, Ganguli & Dziugaite 2021, "Deep Learning on a Data Diet": score every training example early in
    training (EL2N or GraNd; ``probes=data_diet`` writes ``RUN/data_diet/step_K.csv``), average the scores over
    several runs, keep the highest-scoring (hardest) examples and retrain on them; ``select=random`` is their
    control arm, ``skip_hardest`` their high-pruning variant that also drops the very hardest. ``order`` adds a
    curriculum with the linear pacing of Wu, Dyer & Neyshabur 2021, "When Do Curricula Work?". The defaults train
    on every example in the sampler's random order, exactly as without this section.
    """

    keep: float = option(1.0, gt=0.0, le=1.0, help="fraction of the workload's training examples trained on: "
                                                   "round(keep * N) of them (1: all; Paul et al. keep 0.5 of "
                                                   "CIFAR-10 at no loss)")
    select: Literal["hardest", "easiest", "random"] = option(
        "hardest", help="which examples keep < 1 keeps: hardest (highest score; Paul et al.), easiest (lowest), or "
                        "random (the control arm, drawn with data.seed); score ties go to the lower index")
    skip_hardest: float = option(0.0, ge=0.0, lt=1.0, help="fraction of the training examples with the highest "
                                                           "scores dropped before selecting (Paul et al. at high "
                                                           "pruning: the hardest may be mislabelled); 0: off")
    scores: tuple[str, ...] = option((), help="scores CSV files (index,<score>,... with one row per training "
                                              "example, e.g. RUN/data_diet/step_K.csv); several (comma list) are "
                                              "averaged per example, as Paul et al. average over initialisations")
    score: str = option("el2n", help="the column of data.scores to use: el2n or grand (probes=data_diet), or any "
                                     "column of your own scores file")
    seed: int = seed_option(help="seed of select=random's draw (its own: the subset stays fixed across run seeds)")
    order: Literal["random", "curriculum", "anti_curriculum"] = option(
        "random", help="random: the sampler's shuffled epochs; curriculum: easy to hard by score; anti_curriculum: "
                       "hard to easy. A curriculum step draws its batch uniformly from the first n(t) rows of that "
                       "ordering, n(t) growing linearly (Wu et al. 2021)")
    start: float = option(0.2, gt=0.0, le=1.0, help="curriculum: fraction of the kept examples available at step 0 "
                                                    "(Wu et al.'s b)")
    pace: float = option(0.8, gt=0.0, help="curriculum: fraction of steps after which every kept example is "
                                           "available (Wu et al.'s a; > 1: never all)")
    selected: str | None = option(None, help="written by the trainer to config.yaml: 'K/N sha256:HEX' of the "
                                             "training rows a diet chose, in order; a config carrying it (a "
                                             "resume, a rerun) refuses a selection that differs, e.g. a changed "
                                             "scores file")

    def validate(self) -> None:
        """Options that nothing reads are refused, as in the other sections; the scores are read at build time."""
        defaults = DataOptions()
        uses_scores = (self.keep < 1 and self.select != "random") or self.skip_hardest > 0 or self.order != "random"
        # (a sum that is 1 in decimals can be 1 + 2**-52 in floats; the counts are checked exactly once N is known)
        if self.keep + self.skip_hardest > 1 + 1e-12:
            raise ConfigError("skip_hardest", f"data.keep + data.skip_hardest must be at most 1 (keep {self.keep:g} "
                                              f"of the examples after skipping {self.skip_hardest:g})")
        if uses_scores and not self.scores:
            needs = ("data.order=" + self.order if self.order != "random"
                     else "data.skip_hardest" if self.skip_hardest > 0 else f"data.select={self.select}")
            raise ConfigError("scores", f"{needs} needs per-example scores: give a scores CSV, e.g. "
                                        f"data.scores=RUN/data_diet/step_K.csv (probes=data_diet writes them)"
                              + (", or data.select=random" if needs.startswith("data.select") else ""))
        if self.scores and not uses_scores:
            raise ConfigError("scores", "nothing reads them: they serve data.keep < 1 with select=hardest or "
                                        "easiest, data.skip_hardest or data.order=curriculum/anti_curriculum")
        if self.score != defaults.score and not self.scores:
            raise ConfigError("score", "names a column of data.scores, and none is given")
        if not self.score.strip() or self.score == "index":
            raise ConfigError("score", f"names a score column (e.g. el2n or grand), got {shorten(self.score)}")
        if any(not path.strip() for path in self.scores):
            raise ConfigError("scores", "an empty file name in the list")
        if self.select != defaults.select and self.keep == 1:
            raise ConfigError("select", "chooses which examples data.keep < 1 keeps; data.keep=1 keeps them all")
        if self.seed != defaults.seed and not (self.select == "random" and self.keep < 1):
            raise ConfigError("seed", "seeds data.select=random with data.keep < 1 only")
        curriculum = self.order != "random"
        for key in ("start", "pace"):
            if getattr(self, key) != getattr(defaults, key) and not curriculum:
                raise ConfigError(key, "applies to data.order=curriculum or anti_curriculum only")
        active = self.keep < 1 or curriculum
        if self.selected is not None:
            if not active:
                raise ConfigError("selected", "records a diet's choice (data.keep < 1 or a curriculum); this config "
                                              "trains on every example in random order")
            if not _is_selection_record(self.selected):
                raise ConfigError("selected", f"is written by the trainer as 'K/N sha256:HEX' (16 hex digits), "
                                              f"got {shorten(self.selected)}")


def _is_selection_record(text: str) -> bool:
    """Whether ``text`` has the form of :attr:`DataOptions.selected`: ``K/N sha256:`` and 16 lowercase hex digits."""
    counts, _, digest = text.partition(" sha256:")
    kept, _, total = counts.partition("/")
    return (all(part.isascii() and part.isdigit() for part in (kept, total)) and len(digest) == 16
            and all(c in "0123456789abcdef" for c in digest))


@dataclass(frozen=True)
class PruneOptions:
    """Weight pruning (``trainlab.prune``): which weights are zeroed by a mask, when, and from which run.

    ``prune.method=magnitude`` removes the weights of smallest |w| (Han et al. 2015, "Learning both Weights and
    Connections for Efficient Neural Networks"); ``neurons`` removes whole hidden units -- rows of a hidden Linear,
    output channels of a convolution, with their bias and BatchNorm entries -- of smallest L2 (or L1) weight norm
    (structured pruning, Liu et al. 2019, "Rethinking the Value of Network Pruning"). The fraction pruned follows
    Zhu & Gupta 2017 ("To prune, or not to prune"): s_t = s_f + (s_i - s_f)(1 - (t - start)/(end - start))^3 at the
    steps start, start + every, ..., and end (s_i: the fraction already pruned when the run starts, 0 unless
    from_run). ``from_run`` trains with another pruning run's final masks, starting from that run's final weights
    (finetune), its weights at step rewind_step (rewind: Frankle & Carbin 2019; Frankle et al. 2020) or a fresh
    initialisation (scratch: Liu et al. 2019). Prunable: the weights of Linear and convolution layers except the
    output head. The defaults prune nothing and change nothing.
    """

    method: Literal["none", "magnitude", "neurons", "ipr"] = option(
        "none", help="none: no pruning; magnitude: single weights of smallest |w| (Han et al. 2015); neurons: "
                     "hidden units / conv channels of smallest weight norm, with their bias (Liu et al. 2019); ipr: "
                     "the first hidden layer's units of lowest Fourier IPR, the memorising ones (modular + mlp; "
                     "Doshi et al. 2024)")
    sparsity: float = option(0.0, ge=0.0, lt=1.0, help="final fraction s_f of the prunable weights (magnitude), "
                                                       "hidden units (neurons) or first-layer units (ipr) pruned, "
                                                       "in [0, 1)")
    scope: Literal["layer", "global"] = option(
        "layer", help="layer: every layer pruned to the same fraction (Han et al.; Zhu & Gupta); global: one "
                      "threshold over all prunable layers (Frankle et al. 2020 for deep nets)")
    norm: Literal["l2", "l1"] = option("l2", help="neurons: the norm of a unit's incoming weights it is ranked by")
    start: int = option(0, ge=0, help="step of the schedule's first pruning (Zhu & Gupta's t0)")
    end: int | None = option(None, ge=0, help="step at which sparsity reaches prune.sparsity (default: the last "
                                              "step; end = start: one-shot pruning at that step)")
    every: int = option(100, ge=1, help="steps between prunings of the schedule (Zhu & Gupta's delta t)")
    from_run: str | None = option(None, help="a pruning run's directory: train with its final masks, fixed from "
                                             "step 0 (further pruned if prune.method is set)")
    reset: Literal["finetune", "rewind", "scratch"] = option(
        "finetune", help="with from_run, the starting weights: finetune: its final weights; rewind: its weights at "
                         "step prune.rewind_step (Frankle et al.); scratch: a fresh initialisation (Liu et al.)")
    rewind_step: int = option(0, ge=0, help="the step whose weights a pruning run keeps in RUN/prune/rewind."
                                            "safetensors, and reset=rewind starts from (0: the initial weights)")

    def validate(self) -> None:
        """Options that nothing would read are refused; the step bounds are checked once the budget is known."""
        pruning = self.method != "none" or self.from_run is not None
        if self.method == "none":
            for key in ("sparsity", "scope", "norm", "start", "end", "every"):
                if getattr(self, key) != getattr(PruneOptions, key):
                    raise ConfigError(key, "applies to prune.method=magnitude, neurons or ipr only, not to "
                                           "prune.method=none")
        if self.method != "neurons" and self.norm != PruneOptions.norm:
            raise ConfigError("norm", f"ranks the units of prune.method=neurons, not {self.method}")
        if self.from_run is None and self.reset != PruneOptions.reset:
            raise ConfigError("reset", "chooses the starting weights of a run with prune.from_run=RUN_DIR; give one")
        if not pruning and self.rewind_step != PruneOptions.rewind_step:
            raise ConfigError("rewind_step", "applies to pruning runs only (prune.method or prune.from_run)")
        if self.from_run is not None and not self.from_run.strip():
            raise ConfigError("from_run", "give the directory of a pruning run")
        if self.end is not None and self.end < self.start:
            raise ConfigError("end", f"must not come before prune.start={self.start}")


@dataclass(frozen=True)
class BatchOptions:
    """How the lr and the step budget follow ``batch_size`` (:mod:`trainlab.train.batch_rules`: the formulas)."""

    base: int | None = option(None, ge=1, help="the batch size the recipe's lr and steps are tuned for (default: the "
                                               "workload's default batch size)")
    lr_rule: Literal["none", "linear", "sqrt"] = option(
        "none", help="lr x B/base (linear: SGD, Granziol et al. 2022) or x sqrt(B/base) (sqrt: Hoffer et al. 2017; "
                     "Adam, Granziol et al.); none: as configured")
    steps_rule: Literal["iterations", "epochs"] = option(
        "iterations", help="the workload's step budget at B: as at base (iterations: Hoffer et al.'s regime "
                           "adaptation) or x base/B (epochs: the same epochs); an explicit steps=N is kept")

    def validate(self) -> None:
        if self.base is not None and self.lr_rule == "none" and self.steps_rule == "iterations":
            raise ConfigError("base", "is read by batch.lr_rule or batch.steps_rule=epochs only; set one of them")


SECTIONS: dict[str, type] = {"loss": LossOptions, "param": ParamOptions, "probes": ProbeOptions, "dist": DistOptions,
                             "continual": ContinualOptions, "data": DataOptions,
                             "prune": PruneOptions, "batch": BatchOptions, "fed": FedOptions}
# the key a section's bare value sets: `probes=weights,hessian` is `probes.names=weights,hessian`
SECTION_VALUE_KEY = {"loss": "function", "param": "init", "probes": "names", "dist": "strategy",
                     "continual": "method", "data": "keep", "prune": "method", "batch": "lr_rule",
                     "fed": "strategy"}

TRAIN_KEYS = tuple(f.name for f in fields(TrainOptions))
# Options that may change when resuming without breaking bit-identical continuation.
RESUMABLE_KEYS = {"steps", "checkpoint_every", "tensorboard", "eval_examples", "stop_at_target", "time_budget",
                  "target_metric", "target"}


@dataclass(frozen=True)
class Component:
    """A registry name plus its validated options dataclass instance."""

    name: str
    options: Any

    def kwargs(self) -> dict[str, Any]:
        return {f.name: getattr(self.options, f.name) for f in fields(self.options)}

    def to_plain(self) -> dict[str, Any]:
        return {"name": self.name, **to_plain(self.options)}


@dataclass(frozen=True)
class RunConfig:
    workload: Component
    model: Component
    optimizer: Component
    schedule: Component
    train: TrainOptions = field(default_factory=TrainOptions)
    loss: LossOptions = field(default_factory=LossOptions)
    param: ParamOptions = field(default_factory=ParamOptions)
    probes: ProbeOptions = field(default_factory=ProbeOptions)
    dist: DistOptions = field(default_factory=DistOptions)
    continual: ContinualOptions = field(default_factory=ContinualOptions)
    data: DataOptions = field(default_factory=DataOptions)
    prune: PruneOptions = field(default_factory=PruneOptions)
    batch: BatchOptions = field(default_factory=BatchOptions)
    fed: FedOptions = field(default_factory=FedOptions)
    # components taken from the workload's recipe because no layer named one (said in config.yaml and at start)
    from_recipe: tuple[str, ...] = field(default=(), compare=False)

    def to_plain(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name).to_plain() for name in COMPONENTS}
        out.update({name: to_plain(getattr(self, name)) for name in SECTIONS})
        out.update(to_plain(self.train))
        return out

    def recipe_note(self) -> str | None:
        """One line saying which components came from the workload's recipe, or None."""
        if not self.from_recipe:
            return None
        wl_cls = workloads.WORKLOADS.get(self.workload.name).factory
        recipe = wl_cls.recipe_components()
        parts = []
        for kind in self.from_recipe:
            component = getattr(self, kind)
            shown = [f"{key}={_short(getattr(component.options, key))}" for key in recipe[kind] if key != "name"]
            parts.append(" ".join([kind, component.name, *shown]))
        source = f" ({wl_cls.recipe_source})" if wl_cls.recipe_source else ""
        named = " or ".join(f"{kind}={getattr(self, kind).name}" for kind in self.from_recipe)
        return (f"the {self.workload.name} workload's recipe{source}: {'; '.join(parts)} "
                f"(naming {named} gives that component's own defaults)")

    def to_yaml(self) -> str:
        """The resolved configuration as YAML (``trainlab run`` of it reproduces the run)."""
        note = self.recipe_note()
        head = f"# {note}\n" if note else ""
        return head + yaml.safe_dump(self.to_plain(), sort_keys=False)

    def save(self, path: Path) -> None:
        path.write_text(self.to_yaml())


def _short(value: Any) -> str:
    """A value as a person writes it: 0.003, 1, (0.9, 0.98)."""
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_short(v) for v in value) + ")"
    return f"{value:g}" if isinstance(value, float) else str(value)


# ---------------------------------------------------------------------------------------------------------
# Parsing layers


def _set_dotted(tree: dict[str, Any], key: str, value: Any, source: str) -> None:
    head, _, rest = key.partition(".")
    if not head:
        raise ConfigError(key, f"empty key in {source}")
    if head in COMPONENTS:
        comp = tree.setdefault(head, {})
        if not rest:
            if isinstance(value, Mapping):
                for sub_key, sub_value in value.items():
                    _set_dotted(tree, f"{head}.{sub_key}", sub_value, source)
            elif isinstance(value, str):
                comp["name"] = value
            else:
                raise ConfigError(head, f"expected a {head} name or a mapping, got {shorten(value)}")
            return
        if "." in rest:
            raise ConfigError(key, "components have flat options; expected e.g. optimizer.lr=1e-3")
        comp[rest] = value
        return
    if head in SECTIONS:
        section = tree.setdefault(head, {})
        if not rest:
            if isinstance(value, Mapping):
                for sub_key, sub_value in value.items():
                    _set_dotted(tree, f"{head}.{sub_key}", sub_value, source)
            else:
                section[SECTION_VALUE_KEY[head]] = value
            return
        if "." in rest:
            raise ConfigError(key, f"{head} options are flat; expected e.g. {head}.{SECTION_VALUE_KEY[head]}=...")
        section[rest] = value
        return
    if rest:
        raise ConfigError(key, f"unknown key; allowed sections: {', '.join([*COMPONENTS, *SECTIONS])}")
    if head not in TRAIN_KEYS:
        raise ConfigError(key, f"unknown key; allowed: {', '.join([*COMPONENTS, *SECTIONS, *TRAIN_KEYS])}")
    tree[head] = value


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["optimizer=lion", "optimizer.lr=1e-4", "steps=100"]`` -> a layer (values stay strings)."""
    layer: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(item, "expected key=value (e.g. optimizer.lr=1e-3)")
        _set_dotted(layer, key.strip(), value.strip(), "the command line")
    return layer


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file -> a layer. Nested mappings and dotted keys are both accepted.

    The file is read within limits (:func:`trainlab.config.load_yaml_file`: a regular file of at most a
    megabyte, plain values, no alias bombs or deep nesting); every problem is a one-line :class:`ConfigError`.
    """
    raw = load_yaml_file(path, "config file", _config_error)
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError("", f"config file {quote_path(path)}: expected a mapping of keys to values at the top level")
    layer: dict[str, Any] = {}
    for key, value in raw.items():
        _set_dotted(layer, str(key), value, f"config file {quote_path(path)}")
    return layer


def _config_error(message: str) -> ConfigError:
    """A config file's problem as a :class:`ConfigError` of no key (the message names the file)."""
    return ConfigError("", message)


def _merge_plain(layers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The top-level keys and sections of ``layers`` (components are merged by :func:`_component_values`)."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if key in SECTIONS:
                out[key] = {**out.get(key, {}), **value}
            elif key not in COMPONENTS:
                out[key] = value
    return out


def _component_values(kind: str, base: Mapping[str, Any], layers: Sequence[Mapping[str, Any]]) -> tuple[dict, bool]:
    """The options of component ``kind``: ``base`` (the default or the workload's recipe) under ``layers``.

    Naming a component in a layer starts from that component's own defaults: the base's options do not
    leak into it, even when it names the same component (``optimizer=adamw`` means AdamW's defaults, not a
    recipe's AdamW settings). A later layer naming the same component again keeps the earlier layers' options
    (a YAML's ``optimizer: {name: adamw, lr: 1e-3}`` plus ``optimizer=adamw`` on the command line keeps lr).
    Options given without a name (``optimizer.lr=1e-3``) apply to whatever was named before them.
    Returns the values and whether the base was kept (nothing named).
    """
    values, from_base = dict(base), True
    for layer in layers:
        given = layer.get(kind)
        if not given:
            continue
        name = given.get("name")
        if name is not None:
            if from_base or str(name).lower() != str(values.get("name", "")).lower():
                values = {}
            from_base = False
        values.update(given)
    return values, from_base


# ---------------------------------------------------------------------------------------------------------
# Resolution


def _component(kind: str, values: Mapping[str, Any]) -> Component:
    values = dict(values)
    name = values.pop("name", None)
    if name is None:
        raise ConfigError(kind, f"no {kind} named")
    try:
        entry = COMPONENTS[kind].get(str(name))
    except UnknownNameError as err:
        raise ConfigError(kind, str(err)) from None
    assert entry.options is not None
    if kind == "optimizer":  # wrappers take their base optimizer's options too
        return Component(entry.name, optim.resolve_options(entry.name, values))
    return Component(entry.name, build_options(entry.options, values, prefix=kind))


def resolve(layers: Sequence[Mapping[str, Any]] = ()) -> RunConfig:
    """Validate ``layers`` (lowest first) over the defaults and the workload's recipe into a :class:`RunConfig`."""
    workload = _component("workload", _component_values("workload", DEFAULTS["workload"], layers)[0])
    wl_cls = workloads.WORKLOADS.get(workload.name).factory
    recipe = wl_cls.recipe_components()
    chosen, from_recipe = {}, []
    merged = _merge_plain(layers)
    federated = str(merged.get("fed", {}).get("strategy", "none")).lower() != "none"
    for kind in ("model", "optimizer", "schedule"):
        base = SERVER_DEFAULTS[kind] if federated and kind in SERVER_DEFAULTS else recipe.get(kind) or DEFAULTS[kind]
        values, kept = _component_values(kind, base, layers)
        chosen[kind] = _component(kind, values)
        if kept and kind in recipe and not (federated and kind in SERVER_DEFAULTS):
            from_recipe.append(kind)
    model, optimizer, schedule = chosen["model"], chosen["optimizer"], chosen["schedule"]
    train = build_options(TrainOptions, {k: v for k, v in merged.items() if k not in COMPONENTS and k not in SECTIONS})
    sections = {name: build_options(cls, merged.get(name, {}), prefix=name) for name, cls in SECTIONS.items()}
    _check_probe_names(sections["probes"])
    check_dist(sections["dist"])
    check_sequence(wl_cls, workload, train, sections)
    if sections["loss"].grokalign > 0 and sections["dist"].strategy == "fsdp":
        raise ConfigError("loss.grokalign", "needs a double backward, which fsdp cannot give (its post-backward hooks "
                                            "free the gathered parameters the second backward reads); use "
                                            "dist.strategy=ddp")
    train = replace(
        train,
        steps=train.steps if train.steps is not None else _budget(wl_cls, workload, train, sections["batch"]),
        eval_every=train.eval_every if train.eval_every is not None else wl_cls.default_eval_every,
        batch_size=train.batch_size if train.batch_size is not None else wl_cls.default_batch_size,
        threshold=train.threshold if train.threshold is not None else wl_cls.threshold,
    )
    if train.target_metric is not None:
        if train.target_metric not in ("val_loss", "train_loss"):
            raise ConfigError("target_metric", f"{shorten(train.target_metric)} is not allowed; allowed: val_loss, "
                                               "train_loss (the workload's own metric is the default target: use "
                                               "threshold)")
        if train.target is None:
            raise ConfigError("target", "give the value target_metric must reach, e.g. target=2.4")
    # A schedule whose options do not fit the step budget is a config error, found now rather than later.
    schedules.build(schedule.name, train.steps, **schedule.kwargs())
    _check_radius_ramps(sections["loss"], train.steps)
    return RunConfig(workload, model, optimizer, schedule, train, **sections, from_recipe=tuple(from_recipe))


def _budget(wl_cls: type[workloads.Workload], workload: Component, train: TrainOptions, batch: BatchOptions) -> int:
    """The workload's step budget, scaled by ``batch.steps_rule`` for ``batch_size`` against ``batch.base``."""
    from trainlab.train.batch_rules import scaled_steps

    budget = wl_cls.budget(workload.options)
    if batch.steps_rule == "iterations":
        return budget
    size = train.batch_size if train.batch_size is not None else wl_cls.default_batch_size
    base = batch.base if batch.base is not None else wl_cls.default_batch_size
    if not size or not base:
        raise ConfigError("batch.steps_rule", f"epochs needs batch sizes in examples, not full batch (batch_size="
                                              f"{size}, batch.base={base}): set batch_size and batch.base")
    return scaled_steps(batch.steps_rule, budget, size, base)


def _check_radius_ramps(loss: LossOptions, steps: int) -> None:
    """A robust-training radius must reach its full value within the run: a longer ramp is a mistake, not a
    silently weaker threat model."""
    if loss.adversarial != "none" and loss.adversarial_warmup > steps:
        raise ConfigError("loss.adversarial_warmup", f"{loss.adversarial_warmup} steps exceed the run's {steps}: eps "
                                                     f"would never reach loss.adversarial_eps")
    if loss.certified != "none" and loss.certified_start + loss.certified_warmup > steps:
        raise ConfigError("loss.certified_warmup", f"certified_start + certified_warmup = "
                                                   f"{loss.certified_start + loss.certified_warmup} exceeds the run's "
                                                   f"{steps} steps: eps would never reach loss.certified_eps")


def check_sequence(wl_cls: type[workloads.Workload], workload: Component, train: TrainOptions, sections: dict[str, Any]) -> None:
    """Rules of task-sequence workloads: the ``continual`` section applies to them only; their length is the sum
    of their tasks' budgets; they train in one process."""
    from trainlab.continual.sequence import TaskSequence

    sequence = issubclass(wl_cls, TaskSequence)
    check_continual(sections["continual"], sequence)
    if not sequence:
        return
    budget = wl_cls.budget(workload.options)
    if train.steps is not None and train.steps != budget:
        raise ConfigError("steps", f"a task sequence trains workload.steps_per_task x tasks = {budget} steps; change "
                                   f"workload.steps_per_task instead of steps={train.steps}")
    if sections["dist"] != DistOptions():
        raise ConfigError("dist", "task sequences train in one process (the default dist section)")
    if sections["batch"].steps_rule != "iterations":
        raise ConfigError("batch.steps_rule", "a task sequence trains workload.steps_per_task x tasks steps; change "
                                              "workload.steps_per_task instead")


def _check_probe_names(options: ProbeOptions) -> None:
    from trainlab.probes.registry import PROBES

    for name in options.names:
        try:
            PROBES.get(name)
        except UnknownNameError as err:
            raise ConfigError("probes", str(err)) from None


def from_cli(config_file: str | None, overrides: Sequence[str]) -> RunConfig:
    layers = [load_yaml(config_file)] if config_file else []
    layers.append(parse_overrides(overrides))
    return resolve(layers)


def for_resume(saved: Path, overrides: Sequence[str]) -> RunConfig:
    """The saved config of a run, with only the overrides that keep a resume bit-identical."""
    layer = parse_overrides(overrides)
    refused = [k for k in layer if k not in RESUMABLE_KEYS]
    if refused:
        raise ConfigError(refused[0], f"cannot change when resuming; allowed: {', '.join(sorted(RESUMABLE_KEYS))}")
    return resolve([load_yaml(saved), layer])
