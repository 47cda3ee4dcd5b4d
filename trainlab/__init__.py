"""trainlab: train deep networks with the algorithms of the training literature, watch their dynamics, rank them.

Python entry points::

    import trainlab
    run_dir = trainlab.run(overrides=["optimizer.weight_decay=0", "steps=500"])
    trainlab.load_run(run_dir)                    # a run directory read back (see trainlab.train.load)
    trainlab.optim.build("adamw", model.parameters(), lr=1e-3)
    trainlab.optim.Lion(model.parameters(), lr=1e-4)
    trainlab.workloads.build("modular", p=97, op="add")

Subpackages and ``load_run`` are imported on first use, so ``import trainlab`` (and ``trainlab --help``)
stays fast.
"""

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "load_run", "models", "optim", "run", "schedules", "workloads"]

# Imported on first access: subpackages, and functions by the module that defines them.
_SUBPACKAGES = {"optim", "workloads", "models", "schedules", "train", "report", "distributed", "config"}
_FUNCTIONS = {"load_run": "trainlab.train.load"}


def run(*args: Any, **kwargs: Any) -> Any:
    """Train a configuration and return its run directory; see :func:`trainlab.train.run.run`."""
    from trainlab.train.run import run as _run

    return _run(*args, **kwargs)


def __getattr__(name: str) -> Any:
    import importlib

    if name in _SUBPACKAGES:
        return importlib.import_module(f"trainlab.{name}")
    if name in _FUNCTIONS:
        return getattr(importlib.import_module(_FUNCTIONS[name]), name)
    raise AttributeError(f"module 'trainlab' has no attribute {name!r}")
