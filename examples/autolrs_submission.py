"""AutoLRS (Jin et al. 2021) as a Python-file bench submission: no tuning, it picks its own lr per stage.

    trainlab bench --submission examples/autolrs_submission.py --ruleset self --no-baseline

The algorithm lives in :mod:`trainlab.optim.autolrs` (also registered as ``optimizer=autolrs`` once that
module is imported); this file only hands it to the bench through the submission interface, which sees the
parameter tensors and nothing about the workload. The base optimizer is AdamW (weight decay 0.01); AutoLRS
searches its lr in [1e-4, 1e-1] (log space), trying 5 lrs for tau' steps at the start of each stage and
training tau steps with the best forecast (tau' = 20, tau = 200 at first, both doubling up to tau = 1600).
The search steps count as training time. The schedule is constant: AutoLRS sets the lr itself.
"""

HYPERPARAMETERS = {"lr_min": 1e-4, "lr_max": 1e-1, "candidates": 5, "explore_steps": 20, "stage_steps": 200,
                   "max_stage_steps": 1600, "kappa": 1.0, "weight_decay": 0.01}


def make_optimizer(params, hyperparameters):
    from trainlab.optim.autolrs import AutoLRS

    hp = dict(hyperparameters)
    weight_decay = hp.pop("weight_decay", 0.01)
    return AutoLRS(params, "adamw", lr=1e-3, weight_decay=weight_decay, **hp)
