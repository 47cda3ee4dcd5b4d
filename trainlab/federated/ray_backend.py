"""``fed.backend=ray``: the clients' local work as Ray tasks, on a local instance or an existing cluster.

The simulator stays the one place that decides order: a dispatch submits its client's work as a task and keeps
the task's reference; the arrival, taken in simulated-time order, waits for that reference. Tasks therefore run
in parallel (as many as Ray has CPUs) while the results are used exactly as the in-process backend uses them; with
the same torch threads per task as the run's, the two backends give the same run bit for bit (tested).

The model, the training set and the loss are put into Ray's object store once; a task gets the model and a
client's row indices. No RPC of trainlab's own: Ray ships jobs and results. Needs ``pip install 'trainlab[ray]'``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from trainlab.errors import RunError
from trainlab.federated.client import ClientJob, ClientResult, LocalSpec, local_update


def _client_work(job: ClientJob, spec: LocalSpec, model: nn.Module, loss: Any, x: Tensor, y: Tensor, rows: Tensor,
                 threads: int) -> ClientResult:
    torch.set_num_threads(threads)  # the run's: a float result depends on the thread count
    return local_update(job, spec, model, loss, x[rows], y[rows])


class RayBackend:
    """Submits client jobs as Ray tasks; :meth:`get` waits for one."""

    def __init__(self, opts: Any, spec: LocalSpec, model: nn.Module, x: Tensor, y: Tensor, loss: Any) -> None:
        try:
            import ray
        except ImportError:
            raise RunError("fed.backend=ray needs Ray: pip install 'trainlab[ray]' (or pip install ray)") from None
        self.ray = ray
        if not ray.is_initialized():
            try:
                if opts.ray_address is not None:
                    ray.init(address=opts.ray_address, log_to_driver=False)
                else:
                    ray.init(num_cpus=opts.ray_cpus, include_dashboard=False, log_to_driver=False)
            except Exception as err:  # Ray's own errors name the address or the resource it could not get
                raise RunError(f"fed.backend=ray: could not start or reach Ray: {err}") from None
        self.spec = spec
        self._task = ray.remote(num_cpus=1)(_client_work)
        self._model = ray.put(model)
        self._loss = ray.put(loss)
        self._x, self._y = ray.put(x), ray.put(y)

    def submit(self, job: ClientJob, rows: Tensor) -> Any:
        return self._task.remote(job, self.spec, self._model, self._loss, self._x, self._y, rows,
                                 torch.get_num_threads())

    def get(self, ref: Any) -> ClientResult:
        return self.ray.get(ref)
