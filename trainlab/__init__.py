"""trainlab: train deep networks with the algorithms of the training literature, watch their dynamics, rank them.

Python entry points::

    import trainlab
    run_dir = trainlab.run(overrides=["optimizer.weight_decay=0", "steps=500"])
    trainlab.optim.build("adamw", model.parameters(), lr=1e-3)
    trainlab.workloads.build("modular", p=97, op="add")
"""

from typing import Any

__version__ = "0.1.0"


def run(*args: Any, **kwargs: Any) -> Any:
    """Train a configuration and return its run directory; see :func:`trainlab.train.run.run`."""
    from trainlab.train.run import run as _run

    return _run(*args, **kwargs)


def __getattr__(name: str) -> Any:  # lazy subpackages keep `import trainlab` and `trainlab --version` fast
    if name in {"optim", "workloads", "models", "schedules", "train", "report", "distributed", "config"}:
        import importlib

        return importlib.import_module(f"trainlab.{name}")
    raise AttributeError(name)
