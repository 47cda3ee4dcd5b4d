"""Building a run's :class:`~trainlab.prune.pruner.Pruner` from its config, with the refusals that need more than
the ``prune`` section (the model, the step budget, the processes, the optimizer)."""

from __future__ import annotations

from typing import Any

from torch import nn

from trainlab.config import ConfigError
from trainlab.prune.layers import prunable_layers
from trainlab.prune.pruner import Pruner, Schedule

# Models whose prunable layers' output units are independent hidden units that end where they are zeroed (an MLP's
# rows, a CNN's channels): zero weights, bias and BatchNorm entries, and the unit outputs exactly 0, since every
# activation trainlab offers maps 0 to 0. A transformer's rows are not: its attention projections are split into
# heads and its MLP's outputs are added to the residual stream.
STRUCTURED_MODELS = ("mlp", "cnn1d", "cnn2d")
# prune.method=ipr (Doshi et al. 2024) ranks units by the Fourier spectrum of their weights over the residues of
# one-hot inputs: defined for an MLP's first hidden layer reading modular's concatenated one-hot codes of a and b.
IPR_WORKLOAD, IPR_MODEL = "modular", "mlp"


def build_pruner(cfg: Any, model: nn.Module, device: Any, processes: int, *, resuming: bool) -> Pruner | None:
    """The pruner of run ``cfg`` over ``model`` (None when the run does not prune); its masks are applied.

    A fresh run with ``prune.from_run`` gets the source's masks and starting weights here (``init_from``'s place:
    before the optimizer sees the model); a resumed run gets its masks from its own checkpoint later, so the
    source is not read (it may have gone). A schedule that prunes at step 0 prunes here."""
    p = cfg.prune
    if p.method == "none" and p.from_run is None:
        return None
    key = "prune.method" if p.method != "none" else "prune.from_run"
    steps = cfg.train.steps
    if processes > 1:
        raise ConfigError(key, f"trains in one process, not {processes} (the masks are not yet kept alike across "
                               f"processes); run without torchrun")
    if cfg.dist.strategy != "ddp":
        raise ConfigError(key, f"trains with the default dist.strategy=ddp only, not {cfg.dist.strategy} (it shards "
                               f"or averages the weights the masks must follow)")
    if p.method == "neurons" and cfg.model.name not in STRUCTURED_MODELS:
        raise ConfigError("prune.method", f"neurons prunes the hidden units of model={'/'.join(STRUCTURED_MODELS)}, "
                                          f"not {cfg.model.name}; use prune.method=magnitude")
    if p.method == "ipr":
        if (cfg.workload.name, cfg.model.name) != (IPR_WORKLOAD, IPR_MODEL):
            raise ConfigError("prune.method", f"ipr ranks the first-layer units of model={IPR_MODEL} reading the one-hot "
                                              f"residues of workload={IPR_WORKLOAD} (Fourier IPR), not model="
                                              f"{cfg.model.name} on workload={cfg.workload.name}; use "
                                              f"prune.method=neurons")
        if p.scope != "layer":
            raise ConfigError("prune.scope", "ipr prunes one layer (the first hidden one); scope=global has no "
                                             "other layer to rank against, leave the default layer")
    end = p.end if p.end is not None else steps
    for name, value in (("start", p.start), ("end", end)):
        if p.method != "none" and value > steps:
            raise ConfigError(f"prune.{name}", f"is step {value}, after the run's last step ({steps})")
    inherits = p.from_run is not None and p.reset == "rewind"  # its rewind point is its source's
    if p.rewind_step >= steps and not inherits:
        raise ConfigError("prune.rewind_step", f"must come before the run's last step ({steps}); rewinding to the "
                                               f"final weights is prune.reset=finetune")
    if p.from_run is not None and cfg.train.init_from is not None:
        raise ConfigError("prune.from_run", "sets the starting weights itself (prune.reset); drop init_from")
    layers = prunable_layers(model)
    if not layers:
        raise ConfigError(key, f"model {cfg.model.name} has no Linear or convolution weights to prune besides its "
                               f"output head")
    ipr_p = 0
    if p.method == "ipr":  # the first hidden layer only: later layers read hidden units, not residues
        ipr_p = cfg.workload.options.p
        layers = [layer for layer in layers if layer.module.rpartition(".")[2] == "fc0"][:1]
        if not layers or model.get_parameter(layers[0].weight).shape[1] != 2 * ipr_p:
            raise ConfigError("prune.method", f"ipr needs a first hidden layer body.fc0 reading the 2p = {2 * ipr_p} "
                                              f"one-hot features; this model has none")
    schedule = Schedule(p.sparsity, p.start, end, p.every) if p.method != "none" else None
    pruner = Pruner(model, layers, p.method, schedule, scope=p.scope, norm=p.norm,
                    rewind_step=None if inherits else p.rewind_step, ipr_p=ipr_p)
    if resuming:
        return pruner
    if p.from_run is not None:
        from trainlab.prune.source import load_start_weights, read_source

        source = read_source(p.from_run, device)
        try:
            pruner.masks = pruner.checked_masks(source.masks, f"{p.from_run}'s", fill=True)
        except ValueError as err:
            raise ConfigError("prune.from_run", f"does not fit this run's model: {err}") from None
        pruner.inherited_rewind = load_start_weights(model, p.from_run, p.reset, p.rewind_step)
        pruner.recount()
        if schedule is not None:
            schedule.initial = pruner.fraction()
            if p.sparsity < schedule.initial:
                raise ConfigError("prune.sparsity", f"is {p.sparsity:g}, below the {schedule.initial:.4g} that "
                                                    f"prune.from_run's masks already prune (pruned weights stay "
                                                    f"pruned)")
    if schedule is not None and schedule.due(0):
        pruner.prune_to(schedule.target(0))
    pruner.apply_()
    return pruner


def check_optimizer(pruner: Pruner | None, optimizer_name: str, hooks: Any) -> None:
    """Refuse an optimizer that evaluates other weights than those it trains (schedule-free: train()/eval()):
    its evaluation weights are averages the masks do not reach."""
    if pruner is not None and hooks.modes:
        raise ConfigError("prune.method", f"optimizer {optimizer_name} evaluates averaged weights (train()/eval() "
                                          f"modes) that the masks cannot keep at 0; choose another optimizer")
