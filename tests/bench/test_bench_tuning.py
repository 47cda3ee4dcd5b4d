"""Search spaces, quasi-random trials and the rulesets' trial plans."""

import math

import pytest

from trainlab.bench import tuning
from trainlab.config import ConfigError


def test_parse_dims():
    assert tuning.parse_dim("lr", "loguniform(1e-4, 1e-2)") == tuning.Dim("loguniform", (1e-4, 1e-2))
    assert tuning.parse_dim("wd", {"uniform": [0, 0.1]}) == tuning.Dim("uniform", (0.0, 0.1))
    assert tuning.parse_dim("b", "choice([0.9, 0.98], [0.9, 0.999])").values == ((0.9, 0.98), (0.9, 0.999))
    assert tuning.parse_dim("lr", "1e-3") is None and tuning.parse_dim("lr", 0.1) is None
    for bad in ("loguniform(0, 1)", "uniform(2, 1)", "choice()", "uniform(a, b)"):
        with pytest.raises(ConfigError):
            tuning.parse_dim("lr", bad)


def test_dim_values_span_the_range():
    dim = tuning.Dim("loguniform", (1e-4, 1e-2))
    assert dim.value(0.0) == pytest.approx(1e-4) and dim.value(0.5) == pytest.approx(1e-3)
    assert tuning.Dim("choice", ("a", "b", "c")).value(0.999) == "c"


def test_halton_trials_are_reproducible_spread_and_differ_between_studies():
    space = {"optimizer.lr": tuning.Dim("loguniform", (1e-4, 1e-1)), "optimizer.weight_decay": tuning.Dim("uniform", (0, 1))}
    a = tuning.study_hyperparameters(space, 8, study=0)
    assert a == tuning.study_hyperparameters(space, 8, study=0)
    assert a != tuning.study_hyperparameters(space, 8, study=1)
    logs = sorted(math.log10(h["optimizer.lr"]) for h in a)
    # low discrepancy: 8 points leave no gap wider than half the range in either dimension
    assert max(b - a_ for a_, b in zip([-4] + logs, logs + [-1])) < 1.5
    wds = sorted(h["optimizer.weight_decay"] for h in a)
    assert max(b - a_ for a_, b in zip([0] + wds, wds + [1])) < 0.5


def test_plans_by_ruleset():
    space = {"optimizer.lr": tuning.Dim("loguniform", (1e-4, 1e-2))}
    ext = tuning.plan_trials(space, "external", trials=5, studies=3, seeds=2)
    assert len(ext) == 15 and {p.seed for p in ext} == {0, 1, 2}
    assert all(p.seed == p.study for p in ext) and {p.index for p in ext} == set(range(5))
    fixed = tuning.plan_trials({}, "external", trials=5, studies=3, seeds=2)
    assert [(p.study, p.index, p.seed, p.hyperparameters) for p in fixed] == [(0, 0, 0, {}), (1, 0, 1, {})]
    self_tuned = tuning.plan_trials(space, "self", trials=5, studies=3, seeds=2)
    assert all(p.hyperparameters == {} for p in self_tuned) and len(self_tuned) == 2
    assert tuning.budget_factor("self") == 3.0 and tuning.budget_factor("external") == 1.0
    with pytest.raises(ConfigError):
        tuning.plan_trials(space, "oracle", trials=1, studies=1, seeds=1)


def test_study_best_picks_the_fastest_hit():
    assert tuning.study_best([math.inf, 4.0, 2.5, 3.0]) == (2.5, 2)
    assert tuning.study_best([math.inf, math.inf]) == (math.inf, None)


# --- search spaces as lists of points -------------------------------------------------------------------------

POINTS = ({"optimizer.lr": 1e-2, "optimizer.weight_decay": 0.01},
          {"optimizer.lr": 3e-3, "optimizer.weight_decay": 0.1},
          {"optimizer.lr": 1e-3, "optimizer.weight_decay": 1})


def test_points_plan_hand_checked():
    plans = tuning.plan_trials(POINTS, "external", trials=5, studies=2, seeds=4)
    assert [(p.study, p.index, p.seed, p.hyperparameters) for p in plans] == [
        (0, 0, 0, {"optimizer.lr": 1e-2, "optimizer.weight_decay": 0.01}),
        (0, 1, 0, {"optimizer.lr": 3e-3, "optimizer.weight_decay": 0.1}),
        (0, 2, 0, {"optimizer.lr": 1e-3, "optimizer.weight_decay": 1}),
        (1, 0, 1, {"optimizer.lr": 1e-2, "optimizer.weight_decay": 0.01}),
        (1, 1, 1, {"optimizer.lr": 3e-3, "optimizer.weight_decay": 0.1}),
        (1, 2, 1, {"optimizer.lr": 1e-3, "optimizer.weight_decay": 1}),
    ]
    plans[0].hyperparameters["optimizer.lr"] = 5.0  # each trial holds its own copy of its point
    assert plans[3].hyperparameters["optimizer.lr"] == 1e-2 and POINTS[0]["optimizer.lr"] == 1e-2
    # --trials caps a longer list: the first points, in order, in every study
    capped = tuning.plan_trials(POINTS, "external", trials=2, studies=2, seeds=4)
    assert [(p.study, p.index, p.seed, p.hyperparameters["optimizer.lr"]) for p in capped] == [
        (0, 0, 0, 1e-2), (0, 1, 0, 3e-3), (1, 0, 1, 1e-2), (1, 1, 1, 3e-3)]
    assert tuning.study_hyperparameters(POINTS, 3, study=7) == list(POINTS)  # the same points whatever the study
    # self-tuning ignores the points, as it ignores dimensions
    assert [(p.study, p.hyperparameters) for p in tuning.plan_trials(POINTS, "self", trials=5, studies=2, seeds=2)] \
        == [(0, {}), (1, {})]


def test_points_are_normalised_as_choice_values_are():
    # YAML 1.1 reads 1e-2 as a string; choice(1e-2, ...) reads it as a number: so does a point
    points = tuning.make_points([{"lr": "1e-2", "betas": [0.9, 0.98], "nesterov": True, "w": 1},
                                 {"w": 2, "nesterov": False, "betas": [0.9, 0.999], "lr": 3e-3}])
    assert points == ({"lr": 0.01, "betas": (0.9, 0.98), "nesterov": True, "w": 1},
                      {"lr": 0.003, "betas": (0.9, 0.999), "nesterov": False, "w": 2})
    assert [list(p) for p in points] == [["lr", "betas", "nesterov", "w"]] * 2  # point 0's key order
    assert tuning.parse_dim("lr", "choice(1e-2, 3e-3)").values == tuple(p["lr"] for p in points)
    assert tuning.parse_dim("b", "choice([0.9, 0.98], [0.9, 0.999])").values == tuple(p["betas"] for p in points)
    assert tuning.parse_dim("w", "choice(1, 2)").values == tuple(p["w"] for p in points)


@pytest.mark.parametrize("points, message", [
    ([], "search_space: an empty list of points"),
    ({"lr": 0.1}, "search_space: expected a list of points"),
    ([3], "search_space[0]: expected a mapping of keys to values, got 3 (int)"),
    ([{}], "search_space[0]: an empty point"),
    ([{"lr": 0.1, "wd": 0.0}, {"lr": 0.2}], "search_space[1]: lacks 'wd', which search_space[0] has (every point "
                                            "needs the same keys: ['lr', 'wd'])"),
    ([{"lr": 0.1}, {"lr": 0.2}, {"lr": 0.3, "wd": 0.1}], "search_space[2]: has 'wd', which search_space[0] lacks"),
    ([{"lr": 0.1}, {"lr": {"a": 1}}], "search_space[1]: 'lr' is {'a': 1} (dict); expected a number, a string"),
    ([{"lr": [[0.9], [0.98]]}], "search_space[0]: 'lr' is [[0.9], [0.98]] (list); expected"),
    ([{"lr": "loguniform(1e-3, 1e-1)"}], "search_space[0]: 'lr' is the dimension 'loguniform(1e-3, 1e-1)': a point "
                                         "holds values"),
])
def test_point_mistakes_are_one_line_naming_the_point(points, message):
    with pytest.raises(ConfigError) as err:
        tuning.make_points(points)
    assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)
