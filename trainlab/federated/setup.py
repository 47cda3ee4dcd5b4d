"""Building a run's federation from its config, and refusing what a federated run cannot do (in one line each)."""

from __future__ import annotations

from typing import Any

from torch import nn

from trainlab.errors import ConfigError, RunError
from trainlab.federated.simulator import ClientLoss, Simulator, local_spec


def check_run(cfg: Any, n_train: int, labels_ok: bool, world_size: int) -> None:
    """What a federated run refuses: other parallelism, and training-loop features the clients do not run."""
    fed = cfg.fed
    if world_size > 1 or cfg.dist.strategy not in ("none", "ddp"):
        raise ConfigError("fed.strategy", "simulates its clients in one process; run it without torchrun and "
                                          "dist.strategy (fed.backend=ray runs the clients in parallel)")
    loss = cfg.loss
    for key in ("adversarial", "certified"):
        if getattr(loss, key) != "none":
            raise ConfigError(f"loss.{key}", "is not run by federated clients (they train on loss.function alone)")
    if loss.z_loss or loss.grokalign or loss.elr:
        raise ConfigError("loss", "federated clients train on loss.function alone: leave z_loss, grokalign and elr "
                                  "at 0")
    if cfg.prune.method != "none" or cfg.prune.from_run is not None:
        raise ConfigError("prune.method", "is not run by federated clients")
    if cfg.data.keep < 1.0 or cfg.data.order != "random":
        raise ConfigError("data.keep", "data diets choose rows of one trainer's batches; a federation partitions "
                                       "the rows over clients (fed.partition)")
    if fed.clients > n_train:
        raise ConfigError("fed.clients", f"{fed.clients} clients exceed the {n_train:,} training examples")
    if fed.partition in ("dirichlet", "shards") and not labels_ok:
        raise ConfigError("fed.partition", f"{fed.partition} splits by class label, and this workload's targets "
                                           "are not class labels; use iid or quantity")


def build_federation(cfg: Any, model: nn.Module, data: Any, objective: Any, spec: Any, env: Any) -> Simulator:
    """The :class:`Simulator` of ``cfg.fed`` over the run's model and training set."""
    y = data.y_train
    labels_ok = y.dim() == 1 and not y.is_floating_point()
    check_run(cfg, data.n_train, labels_ok, env.world_size)
    backend = None
    if cfg.fed.backend == "ray":
        from trainlab.federated.ray_backend import RayBackend

        backend = RayBackend(cfg.fed, local_spec(cfg.fed), model, data.x_train, y, ClientLoss(objective.primary))
    try:
        return Simulator(cfg.fed, model, data.x_train, y, y if labels_ok else None, ClientLoss(objective.primary),
                         seed=cfg.train.seed, backend=backend)
    except ValueError as err:  # a partition or speed trace that cannot be made: the user's setting
        raise RunError(f"fed: {err}") from None
