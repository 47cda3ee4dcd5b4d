"""The optimizers of ``pytorch_optimizer``, by their lower-case names, used as maintained upstream.

Every name of ``pytorch_optimizer.get_supported_optimizers()`` is registered with options derived from its
constructor signature (:func:`~trainlab.optim.registry.options_from_signature`), ``source`` =
``pytorch_optimizer.<ClassName>``, ``own=False`` and, when the class docstring links one, ``paper``.

Lazily: importing this module only adds :func:`register_pytorch_optimizer` as a source of the registry
(:meth:`~trainlab.registry.Registry.add_source`), which runs at the first lookup of a name that trainlab and
``torch.optim`` do not have (``build("adan", ...)``) or the first listing of all names. Importing
``pytorch_optimizer`` (it imports ``torch.distributed.tensor`` and sympy) and inspecting its classes took 0.8 s,
which every command and every ``build("adamw", ...)`` used to pay. :data:`SKIPPED` is filled by that run.

Policy for names that are already taken (trainlab's own modules and ``torch.optim`` register first): the
existing entry keeps the name and the pytorch-optimizer class is registered as ``po_<name>``, so both stay
usable, e.g. to compare ``lion`` with ``po_lion``. A name that ``pytorch_optimizer`` merely re-exports from
``torch.optim`` (``adam``, ``sgd``, ...) is not registered twice.

Optimizers that trainlab's trainer (``loss.backward(); optimizer.step()``) cannot drive -- a closure, a second
backward pass, Hessian-vector products, the update fused into backward, a required argument such as the run
length, a distributed process group -- are left out and listed with the reason in :data:`SKIPPED`.

Constructor arguments that the typed config cannot express (callables, dtypes, dicts) keep their upstream
defaults; they are listed per entry in ``meta["fixed"]`` (``trainlab list optimizers --options`` shows them).
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import re
import types
from collections.abc import Callable
from typing import Any, Literal, Union, get_args, get_origin

import torch

from trainlab.config import ConfigError, coerce, fields_of, option
from trainlab.optim.registry import OPTIMIZERS, options_from_signature, takes_tensor_lr

PREFIX = "po_"

#: Optimizers of pytorch_optimizer that are not registered: name -> why.
SKIPPED: dict[str, str] = {}

# What each of these needs is part of its API, not discoverable from the signature alone.
_INCOMPATIBLE: dict[str, str] = {
    "alig": "needs a closure returning the loss at every step (step(closure)); trainlab's trainer calls step() "
            "without one",
    "bsam": "SAM-style two-pass step driven by a closure; also requires num_data (the training-set size)",
    "adahessian": "needs Hessian-vector products: loss.backward(create_graph=True) before every step",
    "sophiah": "needs Hessian-vector products: loss.backward(create_graph=True) before every step",
    "lomo": "takes the model and fuses the update into the backward pass (fused_backward(loss, lr)); no step()",
    "adalomo": "takes the model and fuses the update into the backward pass (fused_backward(loss, lr)); no step()",
    "adammini": "needs the model plus its transformer layout (num_embeds, num_heads, parameter names)",
    "magma": "wraps another optimizer instance (a required `optimizer` argument), Lookahead-style",
    "ranger21": "requires num_iterations: it runs its own warm-up/warm-down lr schedule over the whole run, which "
                "is the job of trainlab's schedules",
    "muonclip": "its QK-clip needs per-head maximum attention logits passed to step(attention_max_logits=...), "
                "which the trainer does not have; without them it is Muon with the Moonlight lr adjustment",
    "distributedmuon": "needs an initialised torch.distributed process group at construction",
    "demo": "exchanges compressed gradients with all_gather over a torch.distributed process group inside step() "
            "(and needs the optional package einops)",
    "lorarite": "optimises LoRA factor pairs only: it pairs parameters in alternating (A, B) order and silently "
                "skips unpaired ones, which on an ordinary network updates the wrong things",
    "a2grad": "keeps no lr in its parameter groups (its step size follows its own schedule), so trainlab's "
              "schedules and lr logging cannot drive it",
}

# Arguments that select an implementation or a storage format, not the algorithm (left at upstream defaults).
_SWITCHES = {"process_group", "compress_state_dict", "check_numerics", "model_sharding"}

# Orthogonalising optimizers that take parameter groups flagged ``use_muon``: registered with
# ``needs_model=True`` and an adapter that splits the model's parameters as upstream's
# ``pytorch_optimizer.optimizer.muon.utils.prepare_muon_parameters`` does.
_MUON_FAMILY = {"muon", "adamuon", "adago", "normuon"}

# Optimizers that accept only matrices but say so at their first step, with a traceback: checked at build time.
_MATRICES_ONLY = {"spectralsphere"}


def _matrices_only(cls: type) -> Callable[..., torch.optim.Optimizer]:
    def factory(params: Any, **kwargs: Any) -> torch.optim.Optimizer:
        params = list(params)
        tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
        bad = next((tuple(t.shape) for t in tensors if t.dim() != 2), None)
        if bad is not None:
            raise ConfigError("optimizer", f"{cls.__name__} takes 2-D parameters only, got one of shape {bad} "
                                           "(biases and gains need another optimizer; e.g. model.bias=false)")
        return cls(params, **kwargs)

    return factory


# --- typed options ---------------------------------------------------------------------------------------------


def _supported(tp: Any) -> Any:
    """``tp`` narrowed to what :mod:`trainlab.config` can express, or ``None`` if nothing of it is."""
    origin, args = get_origin(tp), get_args(tp)
    if tp in (bool, int, float, str):
        return tp
    if origin is Literal:
        return tp
    if origin in (Union, types.UnionType):
        kept = [a for a in (_supported(a) if a is not type(None) else a for a in args) if a is not None]
        real = [a for a in kept if a is not type(None)]
        if not real:
            return None
        return kept[0] if len(kept) == 1 else Union[tuple(kept)]  # noqa: UP007
    if origin in (tuple, list):
        inner = [a if a is Ellipsis else _supported(a) for a in args]
        if any(a is None for a in inner):
            return None
        return types.GenericAlias(origin, tuple(inner) if origin is tuple else (inner[0],))  # tuple[...], list[...]
    return None


def _arg_help(cls: type, name: str) -> str | None:
    """The first line of argument ``name``'s description in the class docstring (``name: text``)."""
    match = re.search(rf"^\s*{re.escape(name)}(?: \([^)]*\))?:\s*(.+)$", cls.__doc__ or "", re.MULTILINE)
    return match.group(1).strip() if match else None


def _typed_options(cls: type) -> tuple[type, tuple[str, ...]]:
    """The options dataclass of ``cls`` and the arguments left at their upstream defaults (untypeable)."""
    derived = options_from_signature(cls, skip=_SWITCHES)
    fields, fixed = [], []
    for name, f in fields_of(derived).items():
        default, tp = f.default, f.type
        help_text = _arg_help(cls, name) or f.metadata.get("help", "")
        if isinstance(default, enum.IntEnum):  # e.g. Scion's norm_type=LMONorm.AUTO: the enum's integers
            members = ", ".join(f"{m.value}={m.name.lower()}" for m in type(default))
            tp, default, help_text = int, int(default), f"{help_text} ({members})"
        else:
            tp = _supported(tp)
        if tp is not None:
            try:
                default = coerce(name, default, tp)
            except (ConfigError, TypeError):
                tp = None
        if tp is None:
            fixed.append(name)
            continue
        bounds = {k: f.metadata.get(k) for k in ("ge", "gt", "le", "lt")}
        fields.append((name, tp, option(default, help=help_text, **bounds)))
    return dataclasses.make_dataclass(f"{cls.__name__}Options", fields, frozen=True), tuple(fixed)


# --- adapters ------------------------------------------------------------------------------------------------


def _muon_groups(params: Any) -> list[dict[str, Any]]:
    """Parameter groups flagged ``use_muon`` for the Muon family.

    From a module, upstream's rule: weights of ``Linear``/``Conv``/``LSTM`` layers with ``ndim >= 2`` whose name
    does not contain ``head`` are orthogonalised; everything else (embeddings, heads, biases, norms; a tied
    weight counts as the latter) takes the AdamW branch. From plain tensors: by ``ndim`` alone. Given groups
    that already carry ``use_muon``, they are used as they are. Empty groups are dropped.
    """
    if isinstance(params, torch.nn.Module):
        hidden: dict[int, torch.Tensor] = {}
        other: dict[int, torch.Tensor] = {}
        layers = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.LSTM)
        for module_name, module in params.named_modules():
            for name, p in module.named_parameters(recurse=False):
                if not p.requires_grad:
                    continue
                full = f"{module_name}.{name}" if module_name else name
                target = hidden if isinstance(module, layers) and p.ndim >= 2 and "head" not in full else other
                target[id(p)] = p
        muon = [p for key, p in hidden.items() if key not in other]
        rest = list(other.values())
    else:
        items = list(params)
        if items and all(isinstance(g, dict) and "use_muon" in g for g in items):
            return items
        if items and isinstance(items[0], dict):
            raise ValueError("Muon-family parameter groups need a `use_muon` flag in every group")
        muon = [p for p in items if p.ndim >= 2]
        rest = [p for p in items if p.ndim < 2]
    groups = [{"params": muon, "use_muon": True}, {"params": rest, "use_muon": False}]
    return [g for g in groups if g["params"]]


def _muon_factory(cls: type[torch.optim.Optimizer]) -> Callable[..., torch.optim.Optimizer]:
    def factory(params: Any, **hparams: Any) -> torch.optim.Optimizer:
        return cls(_muon_groups(params), **hparams)

    factory.__name__ = factory.__qualname__ = f"{cls.__name__}WithParameterSplit"
    factory.__doc__ = f"{cls.__name__} over a model's parameters split into ``use_muon`` groups."
    return factory


# --- registration --------------------------------------------------------------------------------------------


def _skip_reason(name: str, cls: type[object]) -> str | None:
    if name in _INCOMPATIBLE:
        return _INCOMPATIBLE[name]
    if cls.__module__.startswith("torch.optim"):
        return f"is torch.optim.{cls.__name__} itself (registered as {cls.__name__.lower()!r})"
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    required = [p.name for p in params[1:] if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if required:
        return f"requires {', '.join(required)} (no default), which a config cannot supply generically"
    return None


def _paper(cls: type) -> str | None:
    match = re.search(r"https?://[^\s>`]+", cls.__doc__ or "")
    return match.group(0).rstrip(".,;)") if match else None


def register_pytorch_optimizer() -> None:
    """Register pytorch_optimizer's classes (the registry's source: runs once, after trainlab's own entries)."""
    import pytorch_optimizer

    for name in pytorch_optimizer.get_supported_optimizers():
        name = name.lower()
        try:
            cls = pytorch_optimizer.load_optimizer(name)
        except Exception as err:  # noqa: BLE001 -- an optional upstream import failing must not break trainlab
            SKIPPED[name] = f"cannot be loaded: {type(err).__name__}: {err}"
            continue
        reason = _skip_reason(name, cls)
        if reason is not None:
            SKIPPED[name] = reason
            continue
        try:
            options, fixed = _typed_options(cls)
        except Exception as err:  # noqa: BLE001 -- a signature trainlab.config cannot type
            SKIPPED[name] = f"signature cannot be typed: {type(err).__name__}: {err}"
            continue
        key = name if name not in OPTIMIZERS else PREFIX + name
        if key in OPTIMIZERS:
            SKIPPED[name] = f"both {name!r} and {key!r} are already registered"
            continue
        meta: dict[str, Any] = {"source": f"pytorch_optimizer.{cls.__name__}", "own": False, "upstream_name": name,
                                "tensor_lr": takes_tensor_lr(cls)}
        if key != name:
            meta["shadowed_by"] = OPTIMIZERS.get(name).meta.get("source", "trainlab")
        if fixed:
            meta["fixed"] = fixed
        paper = _paper(cls)
        if paper:
            meta["paper"] = paper
        factory: Callable[..., torch.optim.Optimizer] = cls
        if name in _MUON_FAMILY:
            factory, meta["needs_model"] = _muon_factory(cls), True
        elif name in _MATRICES_ONLY:
            factory = _matrices_only(cls)
        summary = (cls.__doc__ or cls.__name__).strip().split("\n")[0].strip()
        OPTIMIZERS.add(key, factory, options=options, summary=summary, **meta)


OPTIMIZERS.add_source(register_pytorch_optimizer)
