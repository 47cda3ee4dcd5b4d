"""The ``fed`` section of a run's config: federated training on a simulated clock (:mod:`trainlab.federated`).

``trainlab run workload=mnist1d fed.strategy=fedbuff fed.clients=100 fed.alpha=0.3 steps=300``. With
``fed.strategy`` set, ``steps`` counts *server updates* and the run's ``optimizer``/``lr``/``schedule`` are the
server's, applied to the aggregated client deltas (default, when none is named: ``optimizer=sgd lr=1``, plain
averaging; FedAdam-style outer optimizers by naming one, as DiLoCo's outer step). With ``fed.strategy=none`` (the
default) every other option must keep its default. This module imports no torch: the config is resolved first.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

from trainlab.config import ConfigError, option

Strategy = Literal["none", "fedavg", "async_fedavg", "fedbuff", "fedfix", "fedcompass"]
# the server's optimizer and schedule when the layers name none: x <- x - 1 x (the weighted mean delta)
SERVER_DEFAULTS: dict[str, dict[str, Any]] = {"optimizer": {"name": "sgd", "lr": 1.0}, "schedule": {"name": "constant"}}


@dataclass(frozen=True)
class FedOptions:
    """Clients, their data and speeds, their local work, and the server strategy (``fed.strategy``)."""

    strategy: Strategy = option("none", help="fedavg: synchronous rounds (McMahan et al. 2017); async_fedavg: every "
                                             "arrival updates the server (Fraboni et al. 2023); fedbuff: buffered "
                                             "asynchronous aggregation (Nguyen et al. 2022); fedfix: aggregation "
                                             "every fed.window of simulated time (Fraboni et al. 2023); fedcompass: "
                                             "local steps sized by client speed so groups arrive together (Li et "
                                             "al. 2024); none: not federated")
    clients: int = option(100, ge=1, le=100_000, help="simulated clients (N)")
    partition: Literal["iid", "dirichlet", "shards", "quantity"] = option(
        "dirichlet", help="how the training set is split: iid; dirichlet: per class, shares ~ Dir(alpha) (Hsu et al. "
                          "2019); shards: label-sorted shards (McMahan et al. 2017); quantity: sizes ~ Dir(alpha)")
    alpha: float = option(0.3, gt=0.0, help="dirichlet/quantity concentration: smaller is more skewed")
    shards_per_client: int = option(2, ge=1, help="shards: label-sorted shards each client gets")
    participation: float | None = option(None, gt=0.0, le=1.0, help="fraction of clients training at once: a "
                                                                    "round's cohort (fedavg, default 0.1) or the "
                                                                    "asynchronous slots (default 1; fedbuff 0.1)")
    weighting: Literal["examples", "uniform"] = option("examples", help="target weight p_i of client i: its share "
                                                                        "of the examples, or 1/N")
    client: Literal["sgd", "fedprox", "fedspeed"] = option(
        "sgd", help="local rule: sgd (FedAvg's); fedprox: + mu/2 |x - x_t|^2 (Li et al. 2020); fedspeed: "
                    "prox-correction and a perturbed gradient (Sun et al. 2023)")
    local_steps: int = option(10, ge=1, help="local steps Q of each dispatch (fedcompass: q_min..q_max instead)")
    local_batch: int = option(32, ge=1, help="examples per local step")
    local_lr: float = option(0.05, gt=0.0, help="the clients' learning rate")
    local_optimizer: str = option("sgd", help="the clients' optimizer (a registry name; fresh at each dispatch)")
    prox_mu: float = option(0.0, ge=0.0, help="fedprox: mu")
    fedspeed_rho: float = option(0.1, ge=0.0, help="fedspeed: perturbation radius rho")
    fedspeed_lambda: float = option(10.0, gt=0.0, help="fedspeed: lambda (the prox term is (x - x_t)/lambda)")
    fedspeed_alpha: float = option(1.0, ge=0.0, le=1.0, help="fedspeed: weight of the perturbed gradient g2")
    speeds: Literal["constant", "uniform", "lognormal", "trace"] = option(
        "lognormal", help="clients' simulated seconds per local step: constant 1; uniform on [1, 1 + spread]; "
                          "lognormal exp(spread N(0,1)); trace: from fed.speed_trace")
    speed_spread: float = option(1.0, ge=0.0, help="spread of the step times (see fed.speeds)")
    speed_trace: str | None = option(None, help="speeds=trace: a file of seconds per step, one per line (cycled)")
    dropout: float = option(0.0, ge=0.0, lt=1.0, help="probability that a dispatched client never returns")
    buffer: int = option(10, ge=1, help="fedbuff: arrivals per server update (K)")
    staleness: Literal["constant", "polynomial", "hinge"] | None = option(
        None, help="factor of an arrival s updates stale: constant 1, polynomial (1+s)^-a, hinge (Xie et al. 2019); "
                   "default: polynomial for fedbuff and fedcompass, constant otherwise")
    staleness_a: float = option(0.5, ge=0.0, help="staleness: a")
    staleness_b: float = option(4.0, ge=0.0, help="staleness=hinge: b")
    window: float | None = option(None, gt=0.0, help="fedfix: simulated seconds between aggregations (default: the "
                                                     "median client's time for fed.local_steps)")
    q_min: int = option(20, ge=1, help="fedcompass: fewest local steps assigned")
    q_max: int = option(100, ge=1, help="fedcompass: most local steps assigned")
    compass_lambda: float = option(1.5, ge=1.0, help="fedcompass: a group's deadline, as a multiple of its expected "
                                                     "time")
    backend: Literal["local", "ray"] = option("local", help="who computes the clients' local work: this process, "
                                                            "or Ray tasks (a local instance, or fed.ray_address); "
                                                            "the simulated clock orders the results either way")
    ray_address: str | None = option(None, help="backend=ray: an existing cluster's address (default: start a "
                                                "local instance)")
    ray_cpus: int = option(2, ge=1, help="backend=ray: CPUs of the local instance it starts")

    @property
    def on(self) -> bool:
        return self.strategy != "none"

    def stale_kind(self) -> str:
        if self.staleness is not None:
            return self.staleness
        return "polynomial" if self.strategy in ("fedbuff", "fedcompass") else "constant"

    def validate(self) -> None:
        if not self.on:
            for f in fields(self):
                if f.name != "strategy" and getattr(self, f.name) != f.default:
                    raise ConfigError(f.name, "applies to federated runs only; set fed.strategy (fedavg, async_fedavg, "
                                              "fedbuff, fedfix, fedcompass)")
            return
        only = {"shards_per_client": ("partition", "shards"), "prox_mu": ("client", "fedprox"),
                "fedspeed_rho": ("client", "fedspeed"), "fedspeed_lambda": ("client", "fedspeed"),
                "fedspeed_alpha": ("client", "fedspeed"), "speed_trace": ("speeds", "trace"),
                "buffer": ("strategy", "fedbuff"), "window": ("strategy", "fedfix"),
                "q_min": ("strategy", "fedcompass"), "q_max": ("strategy", "fedcompass"),
                "compass_lambda": ("strategy", "fedcompass"), "ray_address": ("backend", "ray"),
                "ray_cpus": ("backend", "ray")}
        defaults = {f.name: f.default for f in fields(self)}
        for key, (owner, value) in only.items():
            if getattr(self, key) != defaults[key] and getattr(self, owner) != value:
                raise ConfigError(key, f"applies to fed.{owner}={value} only, not {getattr(self, owner)}")
        if self.speeds == "trace" and self.speed_trace is None:
            raise ConfigError("speed_trace", "give the file of seconds per local step for fed.speeds=trace")
        if self.partition in ("iid", "shards") and self.alpha != defaults["alpha"]:
            raise ConfigError("alpha", f"applies to partition=dirichlet or quantity, not {self.partition}")
        if self.q_min > self.q_max:
            raise ConfigError("q_min", f"must not exceed fed.q_max={self.q_max}")
        if self.strategy == "fedcompass" and self.participation not in (None, 1.0):
            raise ConfigError("participation", "fedcompass schedules every client (cross-silo): leave it at 1")
        if self.strategy == "fedfix" and self.participation not in (None, 1.0):
            raise ConfigError("participation", "fedfix's weights ceil(tau/window) p_i assume every client trains "
                                               "(Fraboni et al.): leave it at 1")
