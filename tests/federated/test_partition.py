"""Non-IID partitions (trainlab.federated.partition): disjoint and covering, deterministic by seed, and skewed the
way each kind's paper says -- measured on label histograms, not just on shapes."""

from __future__ import annotations

import math

import pytest
import torch

from trainlab.federated.partition import (MAX_DRAWS, PARTITIONS, _dirichlet, _log_gamma_samples, label_histogram,
                                          partition)

CLASSES = 10
N = 6000  # 600 per class, as MNIST-like as a test can afford


def shuffled_labels(n: int = N, classes: int = CLASSES, seed: int = 123) -> torch.Tensor:
    labels = torch.arange(n) % classes
    return labels[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]


LABELS = shuffled_labels()


def class_shares(parts: list[torch.Tensor], labels: torch.Tensor = LABELS) -> torch.Tensor:
    hist = label_histogram(labels, parts, CLASSES).double()
    return hist / hist.sum(1, keepdim=True)


def mean_top_share(parts: list[torch.Tensor], k: int = 1) -> float:
    """Mean over clients of the share of their k most frequent classes (IID with 10 classes: about k/10)."""
    return class_shares(parts).sort(1, descending=True).values[:, :k].sum(1).mean().item()


def assert_partition(parts: list[torch.Tensor], n: int, clients: int) -> None:
    assert len(parts) == clients
    for part in parts:
        assert part.dtype == torch.int64 and part.dim() == 1
        assert torch.equal(part, part.sort().values)
    everything = torch.cat(parts)
    assert len(everything.unique()) == len(everything), "parts overlap"
    assert torch.equal(everything.sort().values, torch.arange(n)), "parts do not cover the examples"


def test_registry_names_and_metadata():
    assert PARTITIONS.names() == ["iid", "dirichlet", "shards", "quantity"]
    for entry in PARTITIONS:
        assert entry.summary and entry.meta.get("paper"), entry.name


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "shards", "quantity"])
@pytest.mark.parametrize("n,clients", [(6000, 10), (6000, 1), (997, 13), (6000, 100)])
def test_disjoint_sorted_and_covering(kind, n, clients):
    labels = shuffled_labels(n)
    parts = partition(kind, n, clients, labels, seed=3)
    assert_partition(parts, n, clients)
    assert min(len(p) for p in parts) >= 1  # min_size 1 by default


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "shards", "quantity"])
def test_deterministic_by_seed_and_private_rng(kind):
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = partition(kind, N, 20, LABELS, seed=5)
    assert torch.equal(torch.get_rng_state(), before), "the global RNG was used"
    torch.manual_seed(999)  # the global RNG's state must not matter either
    again = partition(kind, N, 20, LABELS, seed=5)
    other = partition(kind, N, 20, LABELS, seed=6)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert any(not torch.equal(a, b) for a, b in zip(first, other))


def test_kind_is_case_insensitive_and_labels_optional_for_iid_and_quantity():
    assert [len(p) for p in partition("IID", 10, 3, None)] == [4, 3, 3]
    assert_partition(partition("quantity", 100, 7, None), 100, 7)


def test_iid_sizes_near_equal_and_labels_balanced():
    parts = partition("iid", 997, 10, None, seed=1)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 997
    assert mean_top_share(partition("iid", N, 10, None)) < 0.14  # 600 per client: the top class ~ 0.12


def test_dirichlet_large_alpha_is_near_iid():
    parts = partition("dirichlet", N, 10, LABELS, alpha=1e3, seed=0)
    shares = class_shares(parts)
    assert (shares - 0.1).abs().max() < 0.02  # each client close to the global 10% per class
    assert max(len(p) for p in parts) - min(len(p) for p in parts) < 40


def test_dirichlet_small_alpha_concentrates_clients_on_one_or_two_classes():
    # the statistic: the mean over clients of their top-1 / top-2 class share (IID: ~0.12 / ~0.22)
    for seed in range(3):
        parts = partition("dirichlet", N, 10, LABELS, alpha=0.05, seed=seed)
        assert mean_top_share(parts, 1) > 0.6
        assert mean_top_share(parts, 2) > 0.85
    # and the skew falls as alpha grows
    skew = [mean_top_share(partition("dirichlet", N, 10, LABELS, alpha=a, seed=0)) for a in (0.05, 0.5, 1e3)]
    assert skew[0] > skew[1] > skew[2]


def test_dirichlet_balance_cap_of_the_reference_code():
    # a client stops receiving once it holds >= N / clients: it ends below the cap plus one class's examples
    for seed in range(3):
        parts = partition("dirichlet", N, 10, LABELS, alpha=0.05, seed=seed)
        assert max(len(p) for p in parts) < N / 10 + N / CLASSES


def test_dirichlet_honours_min_size_by_redrawing_deterministically():
    parts = partition("dirichlet", N, 10, LABELS, alpha=0.05, min_size=200, seed=2)
    assert min(len(p) for p in parts) >= 200
    assert_partition(parts, N, 10)
    again = partition("dirichlet", N, 10, LABELS, alpha=0.05, min_size=200, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(parts, again))
    # a seed whose first draw fails min_size: redrawn, still a valid partition
    first_draws = [min(len(p) for p in partition("dirichlet", N, 10, LABELS, alpha=0.05, min_size=0, seed=s))
                   for s in range(6)]
    assert min(first_draws) < 200  # so the redraw above was really exercised for some seed
    for s in range(6):
        assert min(len(p) for p in partition("dirichlet", N, 10, LABELS, alpha=0.05, min_size=200, seed=s)) >= 200


def test_dirichlet_gives_up_after_max_draws_with_advice():
    labels = shuffled_labels(1000)
    with pytest.raises(ValueError) as info:
        partition("dirichlet", 1000, 20, labels, alpha=0.01, min_size=40)
    message = str(info.value)
    assert "\n" not in message and str(MAX_DRAWS) in message
    for fragment in ("alpha=0.01", "clients=20", "min_size=40", "raise alpha"):
        assert fragment in message


def test_dirichlet_handles_classes_that_are_not_0_to_k():
    labels = LABELS * 7 + 3  # labels 3, 10, 17, ...: only their equality matters
    parts = partition("dirichlet", N, 10, labels, alpha=0.1, seed=0)
    assert_partition(parts, N, 10)
    reference = partition("dirichlet", N, 10, LABELS, alpha=0.1, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(parts, reference))


def test_dirichlet_tiny_alpha_stays_finite():
    assert_partition(partition("dirichlet", 500, 5, shuffled_labels(500), alpha=1e-6, min_size=0), 500, 5)
    gen = torch.Generator().manual_seed(0)
    for alpha in (1e-310, 1e-6, 0.05):
        shares = _dirichlet(alpha, 7, gen)
        assert torch.isfinite(shares).all() and math.isclose(shares.sum().item(), 1.0)


@pytest.mark.parametrize("alpha", [0.05, 0.3, 1.0, 2.5, 1e3])
def test_gamma_sampler_moments(alpha):
    # Gamma(alpha, 1): mean alpha, variance alpha; the Dirichlet shares are these, normalised
    x = _log_gamma_samples(alpha, 50_000, torch.Generator().manual_seed(1)).exp()
    assert x.mean().item() == pytest.approx(alpha, rel=0.03)
    assert x.var().item() == pytest.approx(alpha, rel=0.1)


def test_dirichlet_shares_moments():
    gen = torch.Generator().manual_seed(4)
    n, alpha = 4, 0.5
    draws = torch.stack([_dirichlet(alpha, n, gen) for _ in range(3000)])
    assert torch.allclose(draws.sum(1), torch.ones(3000, dtype=torch.float64))
    assert torch.allclose(draws.mean(0), torch.full((n,), 1 / n, dtype=torch.float64), atol=0.02)
    expected_var = (1 / n) * (1 - 1 / n) / (n * alpha + 1)  # Var of a Dir(alpha 1_n) component
    assert draws.var(0).mean().item() == pytest.approx(expected_var, rel=0.1)


def test_shards_label_pure_as_in_mcmahan():
    # 6000 examples, 10 classes of 600, 100 clients x 2 shards of 30: every shard holds one label
    parts = partition("shards", N, 100, LABELS, shards_per_client=2, seed=0)
    assert_partition(parts, N, 100)
    assert {len(p) for p in parts} == {60}
    hist = label_histogram(LABELS, parts, CLASSES)
    assert ((hist > 0).sum(1) <= 2).all()
    assert ((hist > 0).sum(1) == 1).any() and ((hist > 0).sum(1) == 2).any()  # both cases happen
    # every count is a multiple of the shard size: whole shards
    assert (hist % 30 == 0).all()
    parts3 = partition("shards", N, 20, LABELS, shards_per_client=3, seed=0)
    assert ((label_histogram(LABELS, parts3, CLASSES) > 0).sum(1) <= 3).all()


def test_shards_are_contiguous_runs_of_the_stably_label_sorted_order():
    n, clients, spc = 1003, 10, 3  # 30 shards: 13 of 34 and 17 of 33, nothing dropped
    labels = shuffled_labels(n, seed=9)
    order = torch.sort(labels, stable=True).indices
    position = torch.empty(n, dtype=torch.int64)
    position[order] = torch.arange(n)
    parts = partition("shards", n, clients, labels, shards_per_client=spc, seed=4)
    assert_partition(parts, n, clients)
    for part in parts:
        pos = position[part].sort().values
        breaks = int((pos.diff() != 1).sum())
        assert breaks <= spc - 1  # at most spc runs (adjacent shards merge into one run)
        assert len(part) in range(spc * 33, spc * 34 + 1)


def test_shards_that_leave_a_client_empty_are_refused():
    with pytest.raises(ValueError, match=r"60 shards of 50 examples would leave a client empty"):
        partition("shards", 50, 30, shuffled_labels(50), shards_per_client=2)
    with pytest.raises(ValueError, match=r"shards_per_client must be an integer >= 1, got 0"):
        partition("shards", 50, 5, shuffled_labels(50), shards_per_client=0)
    with pytest.raises(ValueError, match=r"'shards' leaves a client with 10 examples < min_size 11"):
        # 110 = 20 shards of 5 or 6: a client holding two 5s has 10
        partition("shards", 110, 10, shuffled_labels(110), shards_per_client=2, min_size=11)


def test_quantity_sizes_vary_labels_stay_iid():
    parts = partition("quantity", N, 10, LABELS, alpha=0.3, seed=0)
    assert_partition(parts, N, 10)
    sizes = torch.tensor([len(p) for p in parts], dtype=torch.float64)
    assert sizes.std() / sizes.mean() > 0.5  # equal sizes would give 0
    # labels: every client large enough to measure has about 10% of each class
    big = [p for p in parts if len(p) >= 300]
    assert len(big) >= 3
    assert (class_shares(big) - 0.1).abs().max() < 0.06
    iid_sizes = torch.tensor([len(p) for p in partition("quantity", N, 10, None, alpha=1e3)], dtype=torch.float64)
    assert iid_sizes.std() / iid_sizes.mean() < 0.1


def test_quantity_honours_min_size_in_one_draw():
    parts = partition("quantity", N, 50, None, alpha=0.05, min_size=100, seed=0)
    sizes = [len(p) for p in parts]
    assert min(sizes) >= 100 and max(sizes) > 300 and sum(sizes) == N
    assert [len(p) for p in partition("quantity", 500, 50, None, min_size=10)] == [10] * 50  # exactly full


def test_iid_min_size_check():
    assert_partition(partition("iid", 100, 10, None, min_size=10), 100, 10)


def test_label_histogram():
    labels = torch.tensor([0, 1, 1, 2, 2, 2])
    hist = label_histogram(labels, [torch.tensor([0, 3]), torch.tensor([1, 2, 4, 5]), torch.tensor([], dtype=torch.int64)],
                           4)
    assert hist.dtype == torch.int64
    assert hist.tolist() == [[1, 0, 1, 0], [0, 2, 2, 0], [0, 0, 0, 0]]
    assert label_histogram(labels, [], 3).shape == (0, 3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\), got \[0, 2\]"):
        label_histogram(labels, [torch.tensor([0])], 2)
    with pytest.raises(ValueError, match="1-D integer tensor"):
        label_histogram(labels.float(), [torch.tensor([0])], 3)
    with pytest.raises(ValueError, match="n_classes must be an integer >= 1, got 0"):
        label_histogram(labels, [torch.tensor([0])], 0)


@pytest.mark.parametrize("call,fragment", [
    (lambda: partition("iid", 10, 0, None), "clients must be an integer in [1, 10], got 0"),
    (lambda: partition("iid", 10, 11, None), "clients must be an integer in [1, 10], got 11"),
    (lambda: partition("iid", 10, True, None), "clients must be an integer in [1, 10], got True"),
    (lambda: partition("iid", 10, 2.0, None), "clients must be an integer in [1, 10], got 2.0"),
    (lambda: partition("iid", 0, 1, None), "n_examples must be an integer >= 1, got 0"),
    (lambda: partition("iid", 10, 2, None, min_size=-1), "min_size must be an integer >= 0, got -1"),
    (lambda: partition("iid", 10, 4, None, min_size=3), "4 clients x min_size 3 exceeds the 10 examples"),
    (lambda: partition("iid", 10, 2, None, seed=1.5), "seed must be an integer"),
    (lambda: partition("dirichlet", N, 10, LABELS, alpha=0), "alpha must be a finite number > 0"),
    (lambda: partition("dirichlet", N, 10, LABELS, alpha=-1.0), "alpha must be a finite number > 0"),
    (lambda: partition("quantity", N, 10, None, alpha=float("nan")), "alpha must be a finite number > 0"),
    (lambda: partition("quantity", N, 10, None, alpha=float("inf")), "alpha must be a finite number > 0"),
    (lambda: partition("dirichlet", N, 10, None), "'dirichlet' needs class labels: a classification workload"),
    (lambda: partition("shards", N, 10, None), "'shards' needs class labels: a classification workload"),
    (lambda: partition("shards", N, 10, LABELS.float()), "needs class labels: a classification workload"),
    (lambda: partition("dirichlet", N, 10, LABELS.view(60, 100)), "got a 2-D torch.int64 tensor"),
    (lambda: partition("dirichlet", N, 10, LABELS[:10]), "10 labels for 6000 examples"),
    (lambda: partition("noniid", N, 10, LABELS), "unknown partition 'noniid'; allowed: iid, dirichlet, shards, "
                                                 "quantity"),
    (lambda: partition(None, N, 10, LABELS), "unknown partition None; allowed: iid"),
])
def test_errors_are_one_line_value_errors(call, fragment):
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_bad_input_message_is_bounded():
    with pytest.raises(ValueError) as info:
        partition("x" * 10_000, N, 10, LABELS)
    assert len(str(info.value)) < 300
