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
from trainlab.continual import sequences  # noqa: E402,F401  (task sequences are workloads too)
from trainlab.workloads.base import Dataset, DataSpec, RegressionWorkload, Workload
from trainlab.workloads.registry import WORKLOADS, build, names, register

__all__ = ["DataSpec", "Dataset", "RegressionWorkload", "Workload", "WORKLOADS", "build", "names", "register"]
