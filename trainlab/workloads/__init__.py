"""Workloads: data, model spec, loss, metric, target and budget (see :mod:`trainlab.workloads.base`)."""

from trainlab.workloads.base import DataSpec, Dataset, RegressionWorkload, Workload
from trainlab.workloads.registry import WORKLOADS, build, names, register

# Importing the modules registers their workloads.
from trainlab.workloads import modular, sparse_parity, mnist1d, charlm, regression, vision  # noqa: E402,F401

__all__ = ["DataSpec", "Dataset", "RegressionWorkload", "Workload", "WORKLOADS", "build", "names", "register"]
