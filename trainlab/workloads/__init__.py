"""Workloads: data, model spec, loss, metric, target and budget (see :mod:`trainlab.workloads.base`)."""

# Importing the modules registers their workloads.
from trainlab.workloads import charlm, mnist1d, modular, regression, sparse_parity, vision  # noqa: E402,F401
from trainlab.workloads.base import Dataset, DataSpec, RegressionWorkload, Workload
from trainlab.workloads.registry import WORKLOADS, build, names, register

__all__ = ["DataSpec", "Dataset", "RegressionWorkload", "Workload", "WORKLOADS", "build", "names", "register"]
