"""Non-IID partitions of a training set over ``N`` simulated clients.

A partition is a list of ``N`` sorted int64 index tensors into the training set, one per client, pairwise
disjoint. The kinds (:data:`PARTITIONS`):

- ``iid``: a seeded random permutation cut into near-equal parts (sizes differ by at most one) -- the IID
  baseline of McMahan et al. 2017.
- ``dirichlet``: label skew (Hsu, Qi & Brown 2019): per class, the class's examples are split over the clients
  with shares ``~ Dir(alpha * 1_N)``. Smaller ``alpha`` = more skew (0.1 / 0.3 / 0.6 are the usual settings;
  ``alpha -> inf`` tends to IID). Implemented as the widely copied code of Yurochkin et al. 2019 (PFNM/FedMA) and
  NIID-Bench (Li et al. 2022), including its balance cap: a client that already holds ``>= n_examples / N``
  examples gets a zero share of the classes dealt after that. The whole draw is repeated until every client holds
  at least ``min_size`` examples (at most 100 draws).
- ``shards``: pathological label skew (McMahan et al. 2017): sort by label (stable: ties by index), cut into
  ``N * shards_per_client`` contiguous shards, give each client ``shards_per_client`` random shards. The shard sizes
  differ by at most one (the first ``n_examples mod (N * shards_per_client)`` shards take one example more), so
  nothing is dropped: the parts cover the training set, as for every kind here.
- ``quantity``: quantity skew (Li et al. 2022, NIID-Bench): labels IID (a random permutation), client sizes
  ``min_size + Dir(alpha * 1_N) * (n_examples - N * min_size)``, so every client has at least ``min_size``
  examples without redrawing.

Everything random comes from a private ``torch.Generator`` seeded with ``seed`` (never the global RNG), so the same
arguments give identical parts on every run and machine. Dirichlet shares are drawn by
:func:`_dirichlet` (normalised Gamma variables, computed in log space) rather than ``torch.distributions``, whose
samplers take no generator.

Input mistakes raise :class:`~trainlab.errors.ConfigError` (a ``ValueError``) with a one-line message naming what
was wrong and what is allowed.
"""

from __future__ import annotations

import math
import operator
from typing import Callable

import torch

from trainlab.errors import ConfigError, shorten
from trainlab.registry import Registry

__all__ = ["PARTITIONS", "partition", "label_histogram"]

Parts = list[torch.Tensor]
PARTITIONS: Registry[Callable[..., Parts]] = Registry("partition")

MAX_DRAWS = 100  # dirichlet: full redraws allowed to reach min_size before giving up
_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


# ---------------------------------------------------------------------------------------------------- checks


def _error(message: str) -> ConfigError:
    # key "": the messages name the argument themselves; the caller knows the config key, if any
    return ConfigError("", message)


def _integer(name: str, value: object, low: int | None, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]`` (``None``: unbounded); bools and floats refused (``True`` clients is
    a mistake, ``2.5`` clients too)."""
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        number = None
    if (isinstance(value, bool) or number is None or (low is not None and number < low)
            or (high is not None and number > high)):
        allowed = ("an integer" if low is None else f"an integer >= {low}" if high is None
                   else f"an integer in [{low}, {high}]")
        raise _error(f"partition {name} must be {allowed}, got {shorten(value)}")
    return number


def _check_common(n_examples: int, clients: int, min_size: int) -> tuple[int, int, int]:
    n_examples = _integer("n_examples", n_examples, 1)
    clients = _integer("clients", clients, 1, n_examples)
    min_size = _integer("min_size", min_size, 0)
    if clients * min_size > n_examples:
        raise _error(f"partition: {clients} clients x min_size {min_size} exceeds the {n_examples} examples; "
                     f"lower clients or min_size")
    return n_examples, clients, min_size


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (math.isfinite(alpha) and alpha > 0):
        raise _error(f"partition alpha must be a finite number > 0 (smaller = more skew), got {shorten(alpha)}")
    return float(alpha)


def _check_labels(kind: str, labels: torch.Tensor | None, n_examples: int) -> torch.Tensor:
    """The labels as int64, refused unless a 1-D integer tensor of ``n_examples`` entries (any integer values:
    only their equality matters)."""
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.dtype not in _INT_DTYPES:
        got = "None" if labels is None else (f"a {labels.dim()}-D {labels.dtype} tensor"
                                             if isinstance(labels, torch.Tensor) else type(labels).__name__)
        raise _error(f"partition {kind!r} needs class labels: a classification workload "
                     f"(a 1-D integer tensor), got {got}")
    if labels.numel() != n_examples:
        raise _error(f"partition {kind!r}: {labels.numel()} labels for {n_examples} examples; they must match")
    return labels.to(torch.int64)


def _check_min_sizes(kind: str, parts: Parts, min_size: int, hint: str) -> Parts:
    smallest = min(len(p) for p in parts)
    if smallest < min_size:
        raise _error(f"partition {kind!r} leaves a client with {smallest} examples < min_size {min_size}; {hint}")
    return parts


# ---------------------------------------------------------------------------------------------------- sampling


def _generator(seed: int) -> torch.Generator:
    seed = _integer("seed", seed, None)
    return torch.Generator().manual_seed(seed % 2**63)  # manual_seed refuses negatives and values >= 2**64


def _log_gamma_samples(alpha: float, n: int, gen: torch.Generator) -> torch.Tensor:
    """``log`` of ``n`` Gamma(alpha, 1) samples, float64 (Marsaglia & Tsang 2000, vectorised rejection).

    For ``alpha < 1`` it uses ``G(alpha) = G(alpha + 1) * U^(1/alpha)``, in log space: for small ``alpha`` the
    factor ``U^(1/alpha)`` underflows to 0 (``alpha = 0.001``: in about half the draws), and a Dirichlet draw whose
    Gamma variables all underflow would be 0/0 -- in log space the shares stay exact (most of them tiny, one near
    1, as they should be).
    """
    a = alpha + 1.0 if alpha < 1.0 else alpha
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(n, dtype=torch.float64)
    pending = torch.arange(n)
    while len(pending):  # acceptance >= 95% per round: a few rounds
        x = torch.randn(len(pending), generator=gen, dtype=torch.float64)
        u = torch.rand(len(pending), generator=gen, dtype=torch.float64)
        v = (1.0 + c * x) ** 3
        ok = v > 0
        log_v = torch.log(torch.where(ok, v, torch.ones_like(v)))
        ok &= torch.log(u) < 0.5 * x * x + d - d * v + d * log_v
        out[pending[ok]] = math.log(d) + log_v[ok]
        pending = pending[~ok]
    if alpha < 1.0:
        u = torch.rand(n, generator=gen, dtype=torch.float64)
        out += torch.log(u) / alpha
    return out


def _dirichlet(alpha: float, n: int, gen: torch.Generator) -> torch.Tensor:
    """One draw of Dir(alpha * 1_n): ``n`` float64 shares >= 0 summing to 1."""
    logs = _log_gamma_samples(alpha, n, gen)
    if not torch.isfinite(logs.max()):
        # alpha so small (below ~1e-308) that log(u) / alpha overflowed to -inf everywhere: the limit is one-hot
        return torch.nn.functional.one_hot(logs.argmax(), n).to(torch.float64)
    return torch.softmax(logs, dim=0)


def _split_sizes(shares: torch.Tensor, total: int) -> torch.Tensor:
    """Integer sizes summing to ``total`` from shares summing to 1: cut points ``floor(cumsum(shares) * total)``,
    as the reference implementations do (the last part absorbs the rounding)."""
    cuts = torch.floor(torch.cumsum(shares, 0)[:-1] * total).to(torch.int64).clamp(0, total)
    bounds = torch.cat([torch.zeros(1, dtype=torch.int64), cuts, torch.tensor([total])])
    return bounds.diff()


def _cut(order: torch.Tensor, sizes: torch.Tensor) -> Parts:
    """``order`` cut into consecutive runs of ``sizes``, each sorted."""
    return [part.sort().values for part in torch.split(order, sizes.tolist())]


# ---------------------------------------------------------------------------------------------------- kinds


@PARTITIONS.register("iid", summary="a seeded random permutation cut into near-equal parts (the IID baseline)",
                     paper="McMahan et al. 2017, Communication-Efficient Learning of Deep Networks from "
                           "Decentralized Data")
def iid(n_examples: int, clients: int, labels: torch.Tensor | None = None, *, alpha: float = 0.3,
        shards_per_client: int = 2, seed: int = 0, min_size: int = 1) -> Parts:
    """IID: a random permutation of ``range(n_examples)`` cut into ``clients`` parts whose sizes differ by at most
    one (the first ``n_examples mod clients`` take one more). ``labels``, ``alpha`` and ``shards_per_client`` are
    ignored (accepted so that every kind has the same signature)."""
    n_examples, clients, min_size = _check_common(n_examples, clients, min_size)
    order = torch.randperm(n_examples, generator=_generator(seed))
    base, extra = divmod(n_examples, clients)
    sizes = torch.full((clients,), base, dtype=torch.int64)
    sizes[:extra] += 1
    return _cut(order, sizes)  # min_size holds: clients * min_size <= n_examples gives base >= min_size


@PARTITIONS.register("dirichlet", summary="label skew: each class's examples split over the clients with shares "
                                          "~ Dir(alpha); smaller alpha = more skew (default alpha 0.3)",
                     paper="Hsu, Qi & Brown 2019, Measuring the Effects of Non-Identical Data Distribution for "
                           "Federated Visual Classification; code as in Yurochkin et al. 2019 (PFNM) and Li et al. "
                           "2022, Federated Learning on Non-IID Data Silos: An Experimental Study (NIID-Bench)")
def dirichlet(n_examples: int, clients: int, labels: torch.Tensor | None = None, *, alpha: float = 0.3,
              shards_per_client: int = 2, seed: int = 0, min_size: int = 1) -> Parts:
    """Label skew (Hsu et al. 2019). For each class in increasing label order: shuffle its examples, draw shares
    ``p ~ Dir(alpha * 1_N)``, zero the share of every client already holding ``>= n_examples / N`` examples (the
    reference code's balance cap; renormalise), and cut the shuffled class at ``floor(cumsum(p) * n_class)``.
    Redrawn from the same generator until every client holds ``>= min_size`` examples; after
    :data:`MAX_DRAWS` draws a ``ConfigError``. Defaults: ``alpha`` 0.3, ``min_size`` 1, ``seed`` 0;
    ``shards_per_client`` is ignored."""
    n_examples, clients, min_size = _check_common(n_examples, clients, min_size)
    alpha = _check_alpha(alpha)
    y = _check_labels("dirichlet", labels, n_examples)
    gen = _generator(seed)
    by_class = [torch.nonzero(y == c).flatten() for c in torch.unique(y).tolist()]
    cap = n_examples / clients
    for _ in range(MAX_DRAWS):
        pieces: list[list[torch.Tensor]] = [[] for _ in range(clients)]
        held = torch.zeros(clients, dtype=torch.int64)
        for members in by_class:
            shuffled = members[torch.randperm(len(members), generator=gen)]
            shares = _dirichlet(alpha, clients, gen)
            capped = shares * (held < cap)
            # the cap can zero every client whose share is non-zero (tiny alpha): keep the uncapped draw then
            if capped.sum() > 0:
                shares = capped / capped.sum()
            sizes = _split_sizes(shares, len(members))
            for k, piece in enumerate(torch.split(shuffled, sizes.tolist())):
                pieces[k].append(piece)
            held += sizes
        if int(held.min()) >= min_size:
            return [torch.cat(p).sort().values for p in pieces]
    raise _error(f"partition 'dirichlet' left a client with fewer than min_size={min_size} examples in "
                 f"{MAX_DRAWS} draws (alpha={alpha:g}, clients={clients}, {n_examples} examples); "
                 f"raise alpha, or lower clients or min_size")


@PARTITIONS.register("shards", summary="pathological label skew: label-sorted shards, shards_per_client random ones "
                                       "per client (default 2)",
                     paper="McMahan et al. 2017, Communication-Efficient Learning of Deep Networks from "
                           "Decentralized Data")
def shards(n_examples: int, clients: int, labels: torch.Tensor | None = None, *, alpha: float = 0.3,
           shards_per_client: int = 2, seed: int = 0, min_size: int = 1) -> Parts:
    """Pathological non-IID (McMahan et al. 2017: MNIST sorted by digit, 200 shards of 300, 2 per client). The
    examples sorted by label (stable: equal labels by index) are cut into ``clients * shards_per_client``
    contiguous shards whose sizes differ by at most one (the first ``n_examples mod (clients *
    shards_per_client)`` take one more; nothing is dropped), and each client gets ``shards_per_client`` shards
    chosen by a seeded permutation. A client therefore holds at most ``shards_per_client`` labels when every shard
    is label-pure (class sizes multiples of the shard size). Defaults: ``shards_per_client`` 2, ``min_size`` 1,
    ``seed`` 0; ``alpha`` is ignored."""
    n_examples, clients, min_size = _check_common(n_examples, clients, min_size)
    y = _check_labels("shards", labels, n_examples)
    shards_per_client = _integer("shards_per_client", shards_per_client, 1)
    n_shards = clients * shards_per_client
    if n_shards > n_examples:
        raise _error(f"partition 'shards': {clients} clients x {shards_per_client} shards_per_client = {n_shards} "
                     f"shards of {n_examples} examples would leave a client empty; lower clients or "
                     f"shards_per_client")
    order = torch.sort(y, stable=True).indices
    base, extra = divmod(n_examples, n_shards)
    shard_sizes = torch.full((n_shards,), base, dtype=torch.int64)
    shard_sizes[:extra] += 1
    shard_list = torch.split(order, shard_sizes.tolist())
    dealt = torch.randperm(n_shards, generator=_generator(seed)).view(clients, shards_per_client)
    parts = [torch.cat([shard_list[s] for s in row.tolist()]).sort().values for row in dealt]
    return _check_min_sizes("shards", parts, min_size, "lower clients or min_size")


@PARTITIONS.register("quantity", summary="quantity skew: client sizes ~ Dir(alpha) above min_size, labels IID "
                                         "(default alpha 0.3)",
                     paper="Li et al. 2022, Federated Learning on Non-IID Data Silos: An Experimental Study "
                           "(NIID-Bench, quantity-based label-IID skew)")
def quantity(n_examples: int, clients: int, labels: torch.Tensor | None = None, *, alpha: float = 0.3,
             shards_per_client: int = 2, seed: int = 0, min_size: int = 1) -> Parts:
    """Quantity skew (NIID-Bench, Li et al. 2022): a random permutation cut into parts of sizes
    ``min_size + floor-split of (n_examples - clients * min_size) by shares ~ Dir(alpha * 1_N)``. NIID-Bench redraws
    until the smallest part reaches its minimum instead; adding ``min_size`` up front gives every client its minimum
    in one draw, where small ``alpha`` would make redraws fail for many clients. Labels stay IID; ``labels`` and
    ``shards_per_client`` are ignored. Defaults: ``alpha`` 0.3, ``min_size`` 1, ``seed`` 0."""
    n_examples, clients, min_size = _check_common(n_examples, clients, min_size)
    alpha = _check_alpha(alpha)
    gen = _generator(seed)
    order = torch.randperm(n_examples, generator=gen)
    rest = n_examples - clients * min_size
    sizes = min_size + _split_sizes(_dirichlet(alpha, clients, gen), rest)
    return _cut(order, sizes)


# ---------------------------------------------------------------------------------------------------- public


def partition(kind: str, n_examples: int, clients: int, labels: torch.Tensor | None, *, alpha: float = 0.3,
              shards_per_client: int = 2, seed: int = 0, min_size: int = 1) -> Parts:
    """Partition ``range(n_examples)`` over ``clients`` clients with the named kind (:data:`PARTITIONS`).

    Returns one sorted int64 index tensor per client; the parts are disjoint and cover every example.
    ``labels`` (1-D integer, one per example) is needed by ``dirichlet`` and ``shards``. Defaults: ``alpha`` 0.3
    (``dirichlet``, ``quantity``), ``shards_per_client`` 2 (``shards``), ``seed`` 0, ``min_size`` 1 (every kind).
    Same arguments => identical parts.
    """
    if not isinstance(kind, str) or kind.lower() not in PARTITIONS:
        raise _error(f"unknown partition {shorten(kind)}; allowed: {', '.join(PARTITIONS.names())}")
    factory = PARTITIONS.get(kind).factory
    return factory(n_examples, clients, labels, alpha=alpha, shards_per_client=shards_per_client, seed=seed,
                   min_size=min_size)


def label_histogram(labels: torch.Tensor, parts: list[torch.Tensor], n_classes: int) -> torch.Tensor:
    """``(clients, n_classes)`` int64 counts: row ``k`` counts the labels of ``parts[k]``'s examples."""
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.dtype not in _INT_DTYPES:
        raise _error("label_histogram needs labels as a 1-D integer tensor")
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
        raise _error(f"label_histogram n_classes must be an integer >= 1, got {shorten(n_classes)}")
    if labels.numel() and not (0 <= int(labels.min()) and int(labels.max()) < n_classes):
        raise _error(f"label_histogram: labels must lie in [0, {n_classes}), got "
                     f"[{int(labels.min())}, {int(labels.max())}]")
    y = labels.to(torch.int64)
    rows = [torch.bincount(y[part.to(torch.int64)], minlength=n_classes) for part in parts]
    return torch.stack(rows) if rows else torch.zeros(0, n_classes, dtype=torch.int64)
