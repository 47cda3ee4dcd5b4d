"""Workloads: data, model spec, loss, metric, target and budget (see :mod:`trainlab.workloads.base`)."""

# ruff: noqa: I001  -- import order is registration order (own names before other packages)

# Importing the modules registers their workloads.
# Registration order is listing order.
from trainlab.workloads import modular  # noqa: I001,E402,F401
from trainlab.workloads import sparse_parity  # noqa: E402,F401
from trainlab.workloads import mnist1d  # noqa: E402,F401
from trainlab.workloads import charlm  # noqa: E402,F401
from trainlab.workloads import regression  # noqa: E402,F401
from trainlab.workloads import vision  # noqa: E402,F401
from trainlab.workloads.base import Dataset, DataSpec, RegressionWorkload, Workload
from trainlab.workloads.registry import WORKLOADS, build, names, register


def _register_sequences() -> None:
    import trainlab.continual.sequences  # noqa: F401  (registers the task sequences, listed after the workloads)


# Task sequences are workloads too; registered on first lookup of a name not held yet, or when all are listed:
# trainlab.continual imports this package, so an import here would be a cycle.
WORKLOADS.add_source(_register_sequences)

__all__ = ["DataSpec", "Dataset", "RegressionWorkload", "Workload", "WORKLOADS", "build", "names", "register"]
