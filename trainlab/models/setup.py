"""Apply the ``param.*`` options to a freshly built model, and give the optimizer μP's parameter groups.

Order (each step sees the previous one's result)::

    init (param.init)  ->  sigmaReparam (param.sigma_reparam)  ->  muP output init (param.mup_base_width)
                       ->  output scaling alpha * (f - f0) (param.output_scale; f0 frozen at this point)

The optimizer is built afterwards, over :func:`optimizer_params` (μP's per-layer lr multipliers) or the module.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from trainlab.config import ConfigError

# optimizers whose per-layer μP rule is SGD's (Tensor Programs V, Table 3); every other one gets Adam's
SGD_LIKE = {"sgd", "asgd", "sgdw", "sgdp", "signsgd", "sgd_schedulefree", "po_sgd"}


def apply_param_options(model: nn.Module, options: Any, sample_inputs: Tensor) -> nn.Module:
    """``model`` after the ``param.*`` options (possibly wrapped by :class:`OutputScaled`); ``sample_inputs``
    is a training batch for ``param.init=data_dependent``."""
    if options.init != "default":
        from trainlab.models.init import apply_init

        kwargs = {"inputs": sample_inputs} if options.init == "data_dependent" else {}
        try:
            apply_init(model, options.init, **kwargs)
        except ValueError as err:
            raise ConfigError("param.init", str(err).splitlines()[0]) from None
    if options.sigma_reparam:
        from trainlab.models.reparam import apply_sigma_reparam_

        if apply_sigma_reparam_(model) == 0:
            raise ConfigError("param.sigma_reparam", "the model has no Linear layer to reparametrise")
    if options.mup_base_width:
        from trainlab.models.parametrization import mup_init_

        try:
            mup_init_(model, options.mup_base_width)
        except ValueError as err:
            raise ConfigError("param.mup_base_width", str(err).splitlines()[0]) from None
    if options.output_scale != 1.0:
        from trainlab.models.parametrization import OutputScaled

        model = OutputScaled(model, options.output_scale, center=options.center)
    return model


def optimizer_params(model: nn.Module, options: Any, optimizer_name: str, lr: float | None, needs_model: bool) -> Any:
    """What the optimizer is built over: μP's parameter groups when ``param.mup_base_width`` is set, else the
    module itself (the registry passes ``.parameters()`` to optimizers that do not take the model)."""
    if not options.mup_base_width:
        return model
    if needs_model:
        raise ConfigError("param.mup_base_width", f"optimizer {optimizer_name} assigns its own per-layer treatment; "
                                                  "muP's lr multipliers need an elementwise optimizer (e.g. adamw)")
    from trainlab.models.parametrization import OptimizerKind, OutputScaled, mup_param_groups

    if lr is None:
        raise ConfigError("param.mup_base_width", f"optimizer {optimizer_name} has no learning rate to scale")

    inner = model.model if isinstance(model, OutputScaled) else model
    kind: OptimizerKind = "sgd" if optimizer_name in SGD_LIKE else "adam"
    try:
        groups = mup_param_groups(inner, options.mup_base_width, lr, optimizer_kind=kind)
    except ValueError as err:
        raise ConfigError("param.mup_base_width", str(err).splitlines()[0]) from None
    # the registry's options carry the base lr; the groups' own lr (base * multiplier) must win
    return [{k: v for k, v in g.items() if k not in ("lr_multiplier", "mup_role", "param_names")} for g in groups]
