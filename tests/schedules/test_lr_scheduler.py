"""as_lr_scheduler: a LambdaLR whose optimizer step t runs at base · multiplier(t), as in the trainer."""

import pytest
import torch

from trainlab.schedules import as_lr_scheduler, build


def lrs_seen_by_optimizer_steps(scheduler_factory, total, base=0.5):
    param = torch.zeros(2, requires_grad=True)
    opt = torch.optim.SGD([param], lr=base)
    scheduler = scheduler_factory(opt)
    seen = []
    for _ in range(total):
        param.grad = torch.ones_like(param)
        seen.append(opt.param_groups[0]["lr"])  # the lr this optimizer step uses
        opt.step()
        scheduler.step()
    return seen


@pytest.mark.parametrize("name, options", [("wsd", {"warmup": 5}), ("cosine", {"warmup": 3}), ("rex", {}),
                                           ("multistep", {"milestones": "10,20"})])
def test_step_t_runs_at_base_times_multiplier_t(name, options):
    total = 30
    multiplier = build(name, total, **options)
    by_name = lrs_seen_by_optimizer_steps(lambda opt: as_lr_scheduler(opt, name, total_steps=total, **options), total)
    by_fn = lrs_seen_by_optimizer_steps(lambda opt: as_lr_scheduler(opt, multiplier), total)
    expected = [0.5 * multiplier(t) for t in range(total)]
    assert by_name == pytest.approx(expected, abs=1e-15) and by_fn == pytest.approx(expected, abs=1e-15)


def test_is_an_lr_scheduler_and_build_still_works():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = as_lr_scheduler(opt, "cosine", total_steps=10, warmup=2)
    assert isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler)
    assert opt.param_groups[0]["lr"] == 0.5  # applied at construction: step 0's value, (0 + 1) / 2
    assert build("cosine", 100, warmup=10)(0) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        as_lr_scheduler(opt, "cosine")
    with pytest.raises(ValueError):
        as_lr_scheduler(opt, build("cosine", 10), total_steps=10)
