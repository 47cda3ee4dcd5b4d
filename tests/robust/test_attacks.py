"""FGSM and PGD (trainlab.robust.attacks) against closed forms on linear models and against torchattacks 3.5.1.

Closed forms: for logits ``Wx + b`` and cross-entropy, the input gradient of one example's loss is
``Wᵀ(softmax(Wx + b) − onehot(y))``; with two classes it is ``−p_other·(w_y − w_other)``, so the loss is a
decreasing function of the margin ``d·x`` (``d = w_y − w_other``) alone, every sign step moves each coordinate
towards ``x − ε·sign d``, and that corner is the exact maximiser of the loss over the L∞ ball.
"""

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainlab.robust.attacks import (Bounds, LossFn, Norm, accuracy, adversarial_accuracy, cross_entropy, default_alpha,
                                      fgsm, pgd)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mlp(seed: int = 0, d: int = 6, classes: int = 4) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, classes))


def linear(weight: Tensor, bias: Tensor) -> nn.Linear:
    model = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        model.weight.copy_(weight)
        model.bias.copy_(bias)
    return model


def binary_case(n: int = 32, d: int = 5, seed: int = 1) -> tuple[nn.Linear, Tensor, Tensor]:
    """A two-class linear model and inputs with a spread of margins (some correct, some not)."""
    g = gen(seed)
    model = linear(torch.randn(2, d, generator=g), torch.randn(2, generator=g) * 0.1)
    x, y = torch.randn(n, d, generator=g), torch.randint(0, 2, (n,), generator=g)
    return model, x, y


def per_example_loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


# ------------------------------------------------------------------------------------------- feasibility


BOXES: dict[str, Bounds | None] = {"none": None, "unit": (0.0, 1.0),
         "per_feature": (torch.tensor([0.0, 0.1, 0.2, 0.0, 0.0, 0.3]), torch.tensor([1.0, 0.9, 1.0, 0.8, 1.0, 1.0]))}


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("restarts", [1, 3])
@pytest.mark.parametrize("box", sorted(BOXES))
def test_pgd_stays_in_the_ball_and_the_box(norm: Norm, restarts: int, box: str) -> None:
    bounds = BOXES[box]
    g = gen(2)
    x = 0.3 + 0.4 * torch.rand(40, 6, generator=g)  # inside every box above
    y = torch.randint(0, 4, (40,), generator=g)
    eps = 0.35 if norm == "linf" else 0.6
    # a step as long as the ball is wide: without the projection most iterates would leave it
    adv = pgd(mlp(), x, y, eps, alpha=eps, steps=5, norm=norm, restarts=restarts, generator=gen(), bounds=bounds)
    delta = adv - x
    size = delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)
    assert bool((size <= eps * (1 + 1e-6)).all()), size.max()
    assert float(size.max()) > 0.9 * eps  # the attack did reach the edge of the ball (the check can fail)
    if bounds is not None:
        low, high = (torch.as_tensor(b).expand_as(x) for b in bounds)
        assert bool(((adv >= low) & (adv <= high)).all())
        assert bool(((adv == low) | (adv == high)).any())  # and the box bit: the clamp mattered


def test_fgsm_stays_in_the_ball_and_the_box() -> None:
    g = gen(3)
    x, y = torch.rand(30, 6, generator=g), torch.randint(0, 4, (30,), generator=g)
    adv = fgsm(mlp(), x, y, 0.2, bounds=(0.0, 1.0))
    assert float((adv - x).abs().max()) <= 0.2 + 1e-7 and float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert float(adv.min()) == 0.0 and float(adv.max()) == 1.0  # some coordinates were clamped


# -------------------------------------------------------------------------------------------- closed forms


def test_fgsm_on_a_linear_model_is_the_closed_form() -> None:
    g = gen(4)
    weight, bias = torch.randn(4, 6, generator=g), torch.randn(4, generator=g)
    x, y = torch.randn(25, 6, generator=g), torch.randint(0, 4, (25,), generator=g)
    p = torch.softmax(x @ weight.T + bias, dim=1)
    grad = (p - F.one_hot(y, 4).float()) @ weight  # Wᵀ(softmax − onehot), one row per example
    assert bool((grad != 0).all())  # every coordinate's sign is defined
    model = linear(weight, bias)
    torch.testing.assert_close(fgsm(model, x, y, 0.3), x + 0.3 * grad.sign(), rtol=0, atol=1e-7)
    box = (-1.0, 1.0)
    inside = x.clamp(-1, 1)
    p = torch.softmax(inside @ weight.T + bias, dim=1)
    grad = (p - F.one_hot(y, 4).float()) @ weight
    torch.testing.assert_close(fgsm(model, inside, y, 0.3, bounds=box), (inside + 0.3 * grad.sign()).clamp(-1, 1),
                               rtol=0, atol=1e-7)


def test_fgsm_on_a_binary_linear_model_moves_against_the_margin() -> None:
    model, x, y = binary_case()
    w = model.weight.detach()
    d = w[y] - w[1 - y]  # margin direction per example
    torch.testing.assert_close(fgsm(model, x, y, 0.1), x - 0.1 * d.sign(), rtol=0, atol=1e-7)


@pytest.mark.parametrize("box", [None, (-3.0, 3.0)])
def test_pgd_linf_on_a_binary_linear_model_finds_the_optimal_corner(box: tuple[float, float] | None) -> None:
    model, x, y = binary_case()
    x = x.clamp(-2.5, 2.5)
    eps = 0.4
    w = model.weight.detach()
    best = x - eps * (w[y] - w[1 - y]).sign()  # the loss's maximiser over the ball
    if box is not None:
        best = best.clamp(*box)
    adv = pgd(model, x, y, eps, default_alpha(eps, 10), 10, generator=gen(), bounds=box)
    torch.testing.assert_close(adv, best, rtol=0, atol=1e-6)
    # and so it beats every other point of the ball
    for seed in range(3):
        other = x + torch.empty_like(x).uniform_(-eps, eps, generator=gen(100 + seed))
        other = other if box is None else other.clamp(*box)
        assert bool((per_example_loss(model, adv, y) >= per_example_loss(model, other, y) - 1e-6).all())


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_never_lowers_the_loss_on_a_binary_linear_model(norm: Norm) -> None:
    model, x, y = binary_case(seed=5)
    eps = 0.5
    alpha = eps / 4
    clean = per_example_loss(model, x, y)
    # the start pgd draws (the module's documented draws): the same generator seed gives the same start
    if norm == "linf":
        start = x + torch.empty_like(x).uniform_(-eps, eps, generator=gen(7))
    else:
        g = gen(7)
        z = torch.empty_like(x).normal_(generator=g)
        u = torch.empty(len(x)).uniform_(0, 1, generator=g)
        start = x + z * (u[:, None] / z.norm(dim=1, keepdim=True) * eps)
    losses = [per_example_loss(model, start, y)]
    for steps in range(1, 9):  # the k-step result is the k-th iterate of the same run
        adv = pgd(model, x, y, eps, alpha, steps, norm=norm, generator=gen(7))
        losses.append(per_example_loss(model, adv, y))
    for before, after in zip(losses, losses[1:]):
        assert bool((after >= before - 1e-6).all())
    assert bool((losses[-1] >= clean - 1e-6).all())
    assert bool((losses[-1] > losses[0]).all())  # and it rose everywhere: a test that can fail


def test_adversarial_accuracy_on_a_binary_linear_model_is_the_certified_one() -> None:
    model, x, y = binary_case(n=200, seed=6)
    w, b = model.weight.detach(), model.bias.detach()
    margin = (x * (w[y] - w[1 - y])).sum(1) + b[y] - b[1 - y]
    slack = (w[1] - w[0]).abs().sum()  # ε·‖d‖₁: what the worst L∞ corner removes from the margin
    for eps in (0.0, 0.05, 0.2, 0.5):
        robust = float((margin - eps * slack > 0).float().mean())
        assert adversarial_accuracy(model, x, y, eps, generator=gen()) == pytest.approx(robust)
    assert adversarial_accuracy(model, x, y, 0.5, generator=gen()) < accuracy(model, x, y)


# ------------------------------------------------------------------------------------------- torchattacks


def image_case() -> tuple[nn.Sequential, Tensor, Tensor]:
    """A 4-D [0, 1] batch (PGDL2 reshapes its norms to (N, 1, 1, 1)) and an MLP with dropout, in train mode."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 5))
    g = gen(8)
    x, y = torch.rand(8, 1, 4, 4, generator=g), torch.randint(0, 5, (8,), generator=g)
    return model, x, y


# torchattacks differentiates the batch mean of the loss, we the sum: the gradient differs by a factor N, which
# changes neither a sign (FGSM, L∞ steps) nor a direction (L2 steps). With N = 8 (a power of two) the scaling is
# exact and the results agree bit for bit; PGDL2 divides by ‖g‖ + 1e-10 where we divide by max(‖g‖, 1e-12),
# a relative 1e-10/‖g‖ (≈ 1e-9 here). Both attack in eval mode (torchattacks' default; dropout is off).
# Deviation, not compared: torchattacks restores the mode with model.train() on the whole model, we restore
# every submodule's own flag (test_modes_are_restored_per_submodule).
@pytest.mark.parametrize("attack", ["fgsm", "pgd", "pgd_no_start", "pgdl2", "pgdl2_no_start"])
def test_agrees_with_torchattacks(attack: str) -> None:
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = image_case()
    box = (0.0, 1.0)  # torchattacks clamps into [0, 1]
    random_start = not attack.endswith("no_start")
    if attack == "fgsm":
        theirs = torchattacks.FGSM(model, eps=0.1)(x, y)
        ours = fgsm(model, x, y, 0.1, bounds=box)
    elif attack.startswith("pgdl2"):
        torch.manual_seed(11)
        theirs = torchattacks.PGDL2(model, eps=0.5, alpha=0.1, steps=10, random_start=random_start)(x, y)
        ours = pgd(model, x, y, 0.5, 0.1, 10, norm="l2", random_start=random_start, generator=gen(11), bounds=box)
    else:
        torch.manual_seed(11)
        theirs = torchattacks.PGD(model, eps=0.1, alpha=0.03, steps=10, random_start=random_start)(x, y)
        ours = pgd(model, x, y, 0.1, 0.03, 10, random_start=random_start, generator=gen(11), bounds=box)
    assert model.training  # both restored the caller's mode
    assert not torch.equal(ours, x)  # the attack moved the inputs
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------- restarts


class Ripple(nn.Module):
    """Two classes on 1-d inputs: class 1's logit is 3·sin(8x), so class 0 is wrong wherever sin(8x) > 0 --
    whether a random start is misclassified depends on where in the ball it lands."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([torch.zeros_like(x[:, 0]), 3 * torch.sin(8 * x[:, 0])], dim=1)


def negative_cross_entropy(output: Tensor, y: Tensor) -> Tensor:
    return -F.cross_entropy(output, y, reduction="none")


@pytest.mark.parametrize("loss_fn", [cross_entropy, negative_cross_entropy], ids=["cross_entropy", "negative"])
def test_restarts_keep_each_examples_worst_start(loss_fn: LossFn) -> None:
    # with cross-entropy on two classes the misclassified start is also the one of highest loss; with its
    # negative the two criteria disagree, and a misclassifying start must still win
    model = Ripple()
    x = torch.linspace(-1, 1, 64)[:, None]
    y = torch.zeros(64, dtype=torch.long)
    eps, alpha = 0.4, 1e-3  # small steps: each start's result stays near where it landed
    g = gen(12)  # the same stream of starts, one attack at a time
    singles = [pgd(model, x, y, eps, alpha, 2, generator=g, loss_fn=loss_fn) for _ in range(4)]
    combined = pgd(model, x, y, eps, alpha, 2, restarts=4, generator=gen(12), loss_fn=loss_fn)
    with torch.no_grad():
        wrong = torch.stack([model(s).argmax(1) != y for s in singles])  # (starts, N)
        loss = torch.stack([loss_fn(model(s), y) for s in singles])
    # the rule: the highest loss among the misclassifying starts, or among all when none misclassifies
    pick = torch.where(wrong.any(0) & ~wrong, -math.inf, loss).argmax(0)
    expected = torch.stack(singles)[pick, torch.arange(64)]
    torch.testing.assert_close(combined, expected, rtol=0, atol=0)
    # the case is not trivial: the winners come from different starts, and the union beats every single start
    assert len(set(pick.tolist())) == 4
    wrong_any = wrong.any(0)
    assert bool((model(combined).argmax(1) != y).eq(wrong_any).all())
    assert all(accuracy(model, combined, y) < accuracy(model, s, y) for s in singles)


# ------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("call, message", [
    (lambda m, x, y: pgd(m, x.long(), y, 0.1, 0.01, 2), "real-valued inputs"),
    (lambda m, x, y: fgsm(m, torch.randint(0, 4, (3, 6)), y, 0.1), "integer token ids"),
    (lambda m, x, y: pgd(m, x, y, -0.1, 0.01, 2), "eps must be"),
    (lambda m, x, y: fgsm(m, x, y, float("nan")), "eps must be"),
    (lambda m, x, y: pgd(m, x, y, 0.1, 0.01, 2, bounds=(0.0, 0.5)), "outside bounds"),
    (lambda m, x, y: fgsm(m, x, y, 0.1, bounds=(1.0, 0.0)), "low <= high"),
    (lambda m, x, y: pgd(m, x, y, 0.1, 0.01, 2, restarts=2, random_start=False), "random_start"),
    (lambda m, x, y: pgd(m, x, y, 0.1, 0.0, 2), "alpha"),
    (lambda m, x, y: pgd(m, x, y, 0.1, 0.01, 0), "steps and restarts"),
    (lambda m, x, y: pgd(m, x, y, 0.1, 0.01, 2, norm="l1"), "norm must be"),  # type: ignore[arg-type]
    (lambda m, x, y: pgd(m, x, y, 0.1, 0.01, 2, loss_fn=lambda o, t: F.cross_entropy(o, t)), "one loss per example"),
    (lambda m, x, y: adversarial_accuracy(m, x, y.float(), 0.1), "class indices"),
])
def test_bad_inputs_are_one_line_value_errors(call: Callable[[nn.Module, Tensor, Tensor], object],
                                                message: str) -> None:
    g = gen(13)
    x, y = torch.rand(3, 6, generator=g), torch.randint(0, 4, (3,), generator=g)
    with pytest.raises(ValueError, match=message) as err:
        call(mlp(), x, y)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------ side effects


def test_parameter_grads_are_untouched() -> None:
    model = mlp()
    g = gen(14)
    x, y = torch.rand(10, 6, generator=g), torch.randint(0, 4, (10,), generator=g)
    weight = model.get_parameter("0.weight")
    weight.grad = torch.full_like(weight, 0.5)  # a gradient the caller is accumulating
    fgsm(model, x, y, 0.1)
    pgd(model, x, y, 0.1, 0.03, 3, restarts=2, generator=gen())
    assert torch.equal(weight.grad, torch.full_like(weight, 0.5))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "0.weight")


def test_modes_are_restored_per_submodule_and_the_attack_runs_in_eval_mode() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 4))
    model.train()
    model[3].eval()  # a mixed state: the restore must be per submodule, not model.train()
    g = gen(15)
    x, y = torch.randn(12, 6, generator=g), torch.randint(0, 4, (12,), generator=g)
    stats = model.get_buffer("1.running_mean").clone()
    first = pgd(model, x, y, 0.1, 0.03, 3, generator=gen())
    second = pgd(model, x, y, 0.1, 0.03, 3, generator=gen())
    assert [m.training for m in model] == [True, True, True, False, True]
    assert torch.equal(model.get_buffer("1.running_mean"), stats)  # eval mode: batch norm read, never updated
    assert torch.equal(first, second)  # dropout off: one fixed function
    model.eval()
    torch.testing.assert_close(pgd(model, x, y, 0.1, 0.03, 3, generator=gen()), first, rtol=0, atol=0)


def test_works_inside_no_grad_and_leaves_the_global_rng_alone() -> None:
    model, x, y = binary_case()
    outside = pgd(model, x, y, 0.3, 0.1, 4, norm="l2", restarts=2, generator=gen(16))
    rng = torch.get_rng_state()
    with torch.no_grad():
        inside = pgd(model, x, y, 0.3, 0.1, 4, norm="l2", restarts=2, generator=gen(16))
        fast = fgsm(model, x, y, 0.3)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(inside, outside) and not inside.requires_grad
    torch.testing.assert_close(fast, fgsm(model, x, y, 0.3), rtol=0, atol=0)


def test_the_same_seed_gives_the_same_result_and_none_uses_the_global_generator() -> None:
    model, x, y = binary_case()
    a = pgd(model, x, y, 0.3, 0.01, 2, generator=gen(17))
    b = pgd(model, x, y, 0.3, 0.01, 2, generator=gen(17))
    c = pgd(model, x, y, 0.3, 0.01, 2, generator=gen(18))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(17)
    torch.testing.assert_close(pgd(model, x, y, 0.3, 0.01, 2), a, rtol=0, atol=0)


def test_eps_zero_is_the_clean_accuracy() -> None:
    model = mlp()
    g = gen(19)
    x, y = torch.randn(50, 6, generator=g), torch.randint(0, 4, (50,), generator=g)
    clean = accuracy(model, x, y)
    with torch.no_grad():
        hand = float((model(x).argmax(1) == y).float().mean())
    assert clean == hand and adversarial_accuracy(model, x, y, 0.0) == clean
    assert 0 < clean < 1
    # and a zero-radius PGD leaves every input where it was
    assert torch.equal(pgd(model, x, y, 0.0, 0.1, 3, generator=gen()), x)
    assert torch.equal(pgd(model, x, y, 0.0, 0.1, 3, norm="l2", generator=gen()), x)


def test_default_alpha() -> None:
    assert math.isclose(default_alpha(8 / 255, 10), 2.5 * 8 / 255 / 10)


class Scalar(nn.Module):
    """Two classes of a batch of scalars ``(N,)``: logits (x, −x)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([x, -x], dim=1)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_a_batch_of_scalars_is_attacked(norm: Norm) -> None:
    # for one coordinate both balls are the interval [x − ε, x + ε] and the worst point its end against the class
    x = torch.tensor([0.5, -0.2, 1.0, -1.5])
    y = torch.tensor([0, 1, 1, 0])
    adv = pgd(Scalar(), x, y, 0.3, 0.2, 4, norm=norm, generator=gen())
    torch.testing.assert_close(adv, x + 0.3 * torch.where(y == 0, -1.0, 1.0), rtol=0, atol=1e-6)
