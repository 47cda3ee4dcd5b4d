"""Submissions from words, YAML and Python files; the workload/submission boundary."""

import json
import textwrap

import pytest
from bench_testing import TINY_PARITY

from trainlab.bench import plan, runner, submission
from trainlab.bench.tuning import Dim
from trainlab.config import ConfigError
from trainlab.train.config import from_cli


def test_words_presets_and_search_space():
    sub = submission.parse("adamw")
    assert (sub.optimizer, sub.schedule, sub.search_space) == ("adamw", "constant", {})
    sub = submission.parse("optimizer=lion optimizer.lr=3e-4 schedule=cosine schedule.warmup_frac=0.1 grad_clip=1 "
                           "optimizer.weight_decay=loguniform(1e-3,1) name=my-lion")
    assert sub.name == "my-lion" and sub.optimizer == "lion" and sub.trainer == {"grad_clip": "1"}
    assert sub.search_space == {"optimizer.weight_decay": Dim("loguniform", (1e-3, 1.0))}
    words = sub.overrides({"optimizer.weight_decay": 0.5}, steps=200)
    assert "schedule.warmup=20" in words and "optimizer.weight_decay=0.5" in words and "grad_clip=1" in words
    cfg = from_cli(None, ["workload=sparse_parity", "steps=200", *words])
    assert cfg.optimizer.name == "lion" and cfg.optimizer.options.lr == 3e-4 and cfg.schedule.options.warmup == 20
    base = submission.parse("nadamw")
    assert base.optimizer == "nadam" and base.optimizer_options["decoupled_weight_decay"] is True
    assert isinstance(base.search_space, tuple) and all(set(p) == {"optimizer.lr", "optimizer.weight_decay"}
                                                        for p in base.search_space)  # a list of points


def test_yaml_submission(tmp_path):
    file = tmp_path / "lamb.yaml"
    file.write_text("optimizer: {name: lamb, weight_decay: 0.01}\nschedule: {name: linear, warmup_frac: 0.05}\n"
                    "batch_size: 64\nsearch_space:\n  optimizer.lr: loguniform(1e-4, 1e-2)\n")
    sub = submission.parse(str(file))
    assert sub.name == "lamb" and sub.trainer == {"batch_size": 64}
    assert sub.search_space["optimizer.lr"].kind == "loguniform"
    assert "batch_size=64" in sub.overrides({"optimizer.lr": 1e-3}, steps=100)


@pytest.mark.parametrize("spec, key", [
    ("adamw steps=10", "steps"), ("adamw model.width=8", "model.width"), ("adamw extra", "extra"),
    ("schedule=cosine", "submission"), ("adamw optimizer.lr=uniform(1)", "optimizer.lr"),
])
def test_mistakes_name_the_key(spec, key):
    with pytest.raises(ConfigError) as err:
        submission.parse(spec)
    assert err.value.key == key


RECORDER = '''
import json, os, sys
import torch

HYPERPARAMETERS = {"lr": 0.05, "momentum": 0.5}
SEARCH_SPACE = {"lr": "loguniform(1e-3, 1e-1)"}
SEEN = {}

def make_optimizer(*args, **kwargs):
    params, hyperparameters = args
    SEEN["n_args"] = len(args) + len(kwargs)
    SEEN["params"] = [[type(p).__name__, list(p.shape), str(p.dtype)] for p in params]
    SEEN["hyperparameters"] = hyperparameters
    SEEN["argv"] = list(sys.argv)
    SEEN["cwd"] = os.getcwd()
    with open(OUT, "w") as f:
        json.dump(SEEN, f)
    return torch.optim.SGD(params, lr=hyperparameters["lr"], momentum=hyperparameters["momentum"])

def make_schedule(total_steps, hyperparameters):
    SEEN["schedule"] = [total_steps, hyperparameters]
    with open(OUT, "w") as f:
        json.dump(SEEN, f)
    return lambda step: 1.0
'''


def test_python_file_submission_sees_only_parameters_and_hyperparameters(tmp_path):
    record = tmp_path / "seen.json"
    file = tmp_path / "recorder.py"
    file.write_text(f"OUT = {str(record)!r}\n" + textwrap.dedent(RECORDER))
    sub = submission.parse(str(file))
    assert sub.search_space == {"optimizer.lr": Dim("loguniform", (1e-3, 1e-1))}
    trial = plan.bench_trial(TINY_PARITY, sub, ruleset="external", study=0, index=0, seed=0,
                             hyperparameters={"optimizer.lr": 0.02}, suite="secret_suite")
    outcome = runner.execute(trial, str(tmp_path / "trial"), threads=1)
    assert "error" not in outcome, outcome
    seen = json.loads(record.read_text())
    assert seen["n_args"] == 2
    assert seen["hyperparameters"] == {"lr": 0.02, "momentum": 0.5}
    assert seen["schedule"] == [TINY_PARITY.steps, {"lr": 0.02, "momentum": 0.5}]
    assert all(kind == "Parameter" for kind, _, _ in seen["params"])  # tensors: shapes and dtypes, no module
    assert [shape for _, shape, _ in seen["params"]] == [[32, 16], [32], [2, 32], [2]]
    assert seen["argv"] == ["trainlab-bench-trial"]
    text = json.dumps(seen)
    for secret in ("sparse_parity", "tiny_parity", "secret_suite", "workload", str(TINY_PARITY.resolved_target())):
        assert secret not in text, secret
    # the registered optimizer trained the run, through the trainer's own path
    config = (tmp_path / "trial" / "config.yaml").read_text()
    assert f"name: {sub.optimizer}" in config and "lr: 0.02" in config


def test_python_file_without_schedule_keeps_hyperparameters_on_the_optimizer(tmp_path):
    file = tmp_path / "plain.py"
    file.write_text("import torch\nHYPERPARAMETERS = {'lr': 0.1, 'batch_size': 16}\n"
                    "def make_optimizer(params, hp):\n    return torch.optim.SGD(params, lr=hp['lr'])\n")
    sub = submission.parse(str(file))
    assert sub.schedule == "constant" and sub.trainer == {"batch_size": 16}
    submission.register_file(sub.file)  # as the process that trains does (parse never imports the file)
    cfg = from_cli(None, ["workload=sparse_parity", *sub.overrides({"optimizer.lr": 0.3}, steps=50)])
    assert cfg.optimizer.options.lr == 0.3 and cfg.train.batch_size == 16 and cfg.schedule.name == "constant"


def test_python_file_without_make_optimizer_is_refused(tmp_path):
    file = tmp_path / "empty.py"
    file.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="make_optimizer"):
        submission.parse(str(file))


WRONG = {  # a submission file's mistake -> what its one-line message names
    "HYPERPARAMETERS = 3": "HYPERPARAMETERS is 3 (int); expected a dict",
    "HYPERPARAMETERS = {'lr': {'a': 1}}": "HYPERPARAMETERS['lr'] is {'a': 1} (dict)",
    "HYPERPARAMETERS = {1: 0.1}": "HYPERPARAMETERS key 1 is not a Python identifier",
    "SEARCH_SPACE = {'lr': 5}": "SEARCH_SPACE['lr'] is 5 (int); expected 'loguniform(lo, hi)'",
    "SEARCH_SPACE = {'lr': 'loguniform(1e-3)'}": "SEARCH_SPACE['lr']: loguniform(lo, hi) needs two numbers",
    "BATCH_SIZE = 'big'": "BATCH_SIZE is 'big' (str); expected None or a positive int",
    "BATCH_SIZE = 0": "BATCH_SIZE is 0 (int)",
    "make_optimizer = 3": "defines no make_optimizer(params, hyperparameters)",
    "def make_optimizer(params, hp):\n    return 42": "make_optimizer returned 42 (int), not a torch.optim.Optimizer",
    "def make_optimizer(params, hp):\n    raise ValueError('no\\nmore')": "make_optimizer(params, hyperparameters) raised "
                                                                          "ValueError: no",
    "make_schedule = 5": "make_schedule is 5 (int), not a function",
    "def make_schedule(total, hp):\n    return 5": "make_schedule returned 5 (int), not a function",
    "def make_schedule(total, hp):\n    return lambda step: float('nan')": "make_schedule's function returned nan "
                                                                          "(float) at step 0; expected a finite",
    "def make_schedule(total):\n    return lambda step: 'fast'": "make_schedule's function returned 'fast' (str) at "
                                                                   "step 0",
    # SEARCH_SPACE as a list of points
    "SEARCH_SPACE = []": "SEARCH_SPACE: an empty list of points",
    "SEARCH_SPACE = [{'lr': 0.1}, 0.2]": "SEARCH_SPACE[1]: expected a mapping of keys to values, got 0.2 (float)",
    "SEARCH_SPACE = [{'lr': 0.1, 'wd': 0}, {'lr': 0.2}]": "SEARCH_SPACE[1]: lacks 'wd', which SEARCH_SPACE[0] has",
    "SEARCH_SPACE = [{'lr': 0.1}, {'lr': 0.2, 'wd': 0}]": "SEARCH_SPACE[1]: has 'wd', which SEARCH_SPACE[0] lacks",
    "SEARCH_SPACE = [{'lr': {0.1}}]": "SEARCH_SPACE[0]: 'lr' is {0.1} (set); expected a number",
    "SEARCH_SPACE = [{'lr': 'uniform(0, 1)'}]": "SEARCH_SPACE[0]: 'lr' is the dimension 'uniform(0, 1)'",
    "SEARCH_SPACE = [{'my-lr': 0.1}]": "SEARCH_SPACE[0] key 'my-lr' is not a Python identifier",
}
GOOD = "import torch\n\ndef make_optimizer(params, hp):\n    return torch.optim.SGD(params, lr=0.1)\n"


@pytest.mark.parametrize("mistake", list(WRONG))
def test_wrong_types_in_a_python_file_are_one_line_naming_the_file(tmp_path, mistake):
    file = tmp_path / "algo.py"
    file.write_text(GOOD + mistake + "\n")  # the mistake comes last: it replaces the good definition
    with pytest.raises(ConfigError) as err:
        submission.probe(file)  # what the check process runs (the bench never imports the file itself)
    message = str(err.value)
    assert message.startswith(f"submission: {file}: ") and "\n" not in message, message
    assert WRONG[mistake] in message, message


def test_a_file_that_exits_at_import_is_one_line_and_never_imported_by_the_bench(tmp_path, capsys):
    from trainlab.cli import main

    file = tmp_path / "exits.py"
    file.write_text("import sys\nsys.exit(3)\n")
    assert main(["bench", "sparse_parity", "--submission", str(file), "--no-baseline", "--quiet",
                 "--out", str(tmp_path / "bench")]) == 2
    err = capsys.readouterr().err
    assert err == f"trainlab: config error: submission: {file}: importing it raised SystemExit: 3\n"
    assert not (tmp_path / "bench").exists()  # refused before anything was planned or written


def test_a_file_whose_check_process_dies_is_one_line(tmp_path):
    file = tmp_path / "dies.py"
    file.write_text("import os\nos._exit(4)\n")
    with pytest.raises(ConfigError, match=r"dies.py: checking it \(import, make_optimizer, make_schedule\) failed: "
                                          r"its process died \(exit code 4\)$"):
        submission.parse(str(file))


def test_a_schedule_the_check_cannot_catch_fails_its_trial_in_one_line(tmp_path):
    file = tmp_path / "long_nan.py"  # finite over the check's 100 steps, NaN over the trial's 300
    file.write_text(GOOD + "def make_schedule(total):\n    return lambda step: 1.0 if total <= 100 else float('nan')\n")
    sub = submission.parse(str(file))
    trial = plan.bench_trial(TINY_PARITY, sub, ruleset="external", study=0, index=0, seed=0, hyperparameters={},
                             suite="test")
    outcome = runner.execute(trial, str(tmp_path / "trial"), threads=1)
    assert outcome == {"error": f"ConfigError: submission: {sub.file}: make_schedule's function returned nan (float) "
                                "at step 0; expected a finite number (the lr multiplier)"}


def test_values_render_to_words_the_config_reads_back():
    words = [f"optimizer.betas={submission.fmt((0.9, 0.98))}", f"optimizer.amsgrad={submission.fmt(True)}",
             f"optimizer.lr={submission.fmt(1e-3)}"]
    options = from_cli(None, ["optimizer=adamw", *words]).optimizer.options
    assert (options.betas, options.amsgrad, options.lr) == ((0.9, 0.98), True, 1e-3)


# --- search spaces as lists of points -------------------------------------------------------------------------

POINTS_YAML = """\
optimizer: {name: nadam, decoupled_weight_decay: true}
schedule: {name: cosine, warmup_frac: 0.02}
search_space:
  - {optimizer.lr: 1.0e-2, optimizer.weight_decay: 0.01}
  - {optimizer.weight_decay: 0.1, optimizer.lr: 3e-3}
  - {optimizer.lr: 1.0e-3, optimizer.weight_decay: 1}
"""


def _points_sub(tmp_path, text=POINTS_YAML, name="points.yaml"):
    file = tmp_path / name
    file.write_text(text)
    return submission.parse(str(file))


def test_yaml_search_space_as_a_list_of_points(tmp_path):
    sub = _points_sub(tmp_path)
    assert sub.search_space == ({"optimizer.lr": 1e-2, "optimizer.weight_decay": 0.01},  # 3e-3: YAML's string, a
                                {"optimizer.lr": 3e-3, "optimizer.weight_decay": 0.1},   # number here; keys in
                                {"optimizer.lr": 1e-3, "optimizer.weight_decay": 1})     # point 0's order
    assert [list(p) for p in sub.search_space] == [["optimizer.lr", "optimizer.weight_decay"]] * 3
    assert sub.describe() == ("nadam decoupled_weight_decay=true schedule=cosine warmup_frac=0.02 search_space~["
                              "optimizer.lr=0.01 optimizer.weight_decay=0.01 | optimizer.lr=0.003 "
                              "optimizer.weight_decay=0.1 | optimizer.lr=0.001 optimizer.weight_decay=1]")
    cfg = from_cli(None, ["workload=sparse_parity", "steps=100", *sub.overrides(sub.search_space[1], steps=100)])
    assert (cfg.optimizer.options.lr, cfg.optimizer.options.weight_decay) == (3e-3, 0.1)
    # trials take the points in order in every study, seeded by the study
    trials = plan.base_trials([TINY_PARITY], [sub], ruleset="external", seeds=3, studies=2, trials=5, suite="t")
    assert [(t.meta["study"], t.meta["trial"], t.meta["seed"], t.meta["hyperparameters"]) for t in trials] == [
        (s, i, s, point) for s in range(2) for i, point in enumerate(sub.search_space)]
    assert "optimizer.lr=0.003" in trials[1].overrides and "optimizer.weight_decay=0.1" in trials[1].overrides


def test_a_point_gives_the_trial_and_record_the_mapping_form_gives(tmp_path):
    fixed = "optimizer: {name: adamw}\nname: same\nsearch_space:\n"
    as_points = _points_sub(tmp_path, fixed + "  - {optimizer.lr: 3e-3, optimizer.betas: [0.9, 0.98]}\n", "p.yaml")
    as_dims = _points_sub(tmp_path, fixed + "  optimizer.lr: choice(3e-3)\n  optimizer.betas: choice([0.9, 0.98])\n",
                          "d.yaml")
    a, b = (plan.base_trials([TINY_PARITY], [sub], ruleset="external", seeds=1, studies=1, trials=1, suite="t")
            for sub in (as_points, as_dims))
    assert a[0].meta["hyperparameters"] == b[0].meta["hyperparameters"] == {"optimizer.lr": 3e-3,
                                                                           "optimizer.betas": (0.9, 0.98)}
    assert a == b  # the same id, overrides and meta: a resumed bench finds the same trials


def test_the_heldout_gate_reuses_the_chosen_point(tmp_path):
    sub = _points_sub(tmp_path, "optimizer: {name: adamw}\nsearch_space:\n"
                                "  - {optimizer.lr: 1.0e-2, optimizer.weight_decay: 0.01, grad_clip: 1}\n"
                                "  - {optimizer.lr: 3.0e-3, optimizer.weight_decay: 0.1, grad_clip: 1}\n"
                                "  - {optimizer.lr: 1.0e-3, optimizer.weight_decay: 1, grad_clip: 0.5}\n")
    assert [p["grad_clip"] for p in sub.search_space] == [1, 1, 0.5]
    trials = plan.base_trials([TINY_PARITY], [sub], ruleset="external", seeds=2, studies=2, trials=5, suite="t")
    times = {(0, 0): None, (0, 1): 4.0, (0, 2): 6.0, (1, 0): 9.0, (1, 1): None, (1, 2): 2.0}
    records = [json.loads(json.dumps({**t.meta, "score": {"time": times[t.meta["study"], t.meta["trial"]]}}))
               for t in trials]  # as results.jsonl holds them
    gated = plan.heldout_trials([TINY_PARITY], [sub], records, ruleset="external", suite="t")
    assert [(t.meta["variant"], t.meta["study"], t.meta["trial"], t.meta["hyperparameters"]) for t in gated] == [
        ("heldout", 0, 1, sub.search_space[1]), ("heldout", 1, 2, dict(sub.search_space[2]))]
    assert "grad_clip=0.5" in gated[1].overrides and "optimizer.lr=0.001" in gated[1].overrides


def test_a_list_longer_than_trials_runs_its_first_points_and_says_so(tmp_path, capsys):
    sub = _points_sub(tmp_path)
    trials = plan.base_trials([TINY_PARITY], [sub], ruleset="external", seeds=1, studies=2, trials=2, suite="t")
    assert [(t.meta["study"], t.meta["trial"]) for t in trials] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert capsys.readouterr().err == ("trainlab: points: its search space lists 3 points; --trials 2 runs the first 2 "
                                       "of them in each study\n")
    plan.base_trials([TINY_PARITY], [sub], ruleset="external", seeds=1, studies=2, trials=5, suite="t")
    assert capsys.readouterr().err == ""  # fewer points than --trials: every point, nothing to say


def test_python_file_search_space_as_a_list_of_points(tmp_path):
    file = tmp_path / "points.py"
    file.write_text("import torch\nHYPERPARAMETERS = {'lr': 0.05}\n"
                    "SEARCH_SPACE = [{'lr': 0.1, 'momentum': 0, 'batch_size': 16},\n"
                    "                {'batch_size': 8, 'lr': '3e-2', 'momentum': 0.9}]\n"
                    "def make_optimizer(params, hp):\n"
                    "    return torch.optim.SGD(params, lr=hp['lr'], momentum=hp['momentum'])\n")
    sub = submission.parse(str(file))
    assert sub.search_space == ({"optimizer.lr": 0.1, "optimizer.momentum": 0, "batch_size": 16},
                                {"optimizer.lr": 0.03, "optimizer.momentum": 0.9, "batch_size": 8})
    assert sub.optimizer_options == {"lr": 0.05} and sub.describe().endswith(
        "search_space~[optimizer.lr=0.1 optimizer.momentum=0 batch_size=16 | optimizer.lr=0.03 "
        "optimizer.momentum=0.9 batch_size=8]")
    submission.register_file(sub.file)  # as the process that trains does (parse never imports the file)
    for point in sub.search_space:  # momentum, only in the points, is a float option (0 and 0.9)
        cfg = from_cli(None, ["workload=sparse_parity", *sub.overrides(point, steps=50)])
        assert (cfg.optimizer.options.lr, cfg.optimizer.options.momentum, cfg.train.batch_size) == (
            point["optimizer.lr"], point["optimizer.momentum"], point["batch_size"])


@pytest.mark.parametrize("search_space, message", [
    ("[]", "search_space: an empty list of points; give at least one point, or no search space"),
    ("3", "search_space: expected a mapping of dotted keys to dimensions, or a list of points"),
    ("[{optimizer.lr: 0.1, optimizer.weight_decay: 0}, {optimizer.lr: 0.2}]",
     "search_space[1]: lacks 'optimizer.weight_decay', which search_space[0] has (every point needs the same keys: "
     "['optimizer.lr', 'optimizer.weight_decay'])"),
    ("[{optimizer.lr: 0.1}, {optimizer.lr: 0.2, grad_clip: 1}]",
     "search_space[1]: has 'grad_clip', which search_space[0] lacks"),
    ("[{optimizer.lr: {a: 1}}]", "search_space[0]: 'optimizer.lr' is {'a': 1} (dict); expected a number"),
    ("[{optimizer.lr: 'loguniform(1e-3, 1e-1)'}]", "search_space[0]: 'optimizer.lr' is the dimension"),
    ("[0.1, 0.2]", "search_space[0]: expected a mapping of keys to values, got 0.1 (float)"),
    ("[{steps: 100}]", "steps: not a submission key; allowed: optimizer.KEY, schedule.KEY, grad_clip"),
])
def test_yaml_point_mistakes_are_one_line(tmp_path, search_space, message):
    file = tmp_path / "bad.yaml"
    file.write_text(f"optimizer: {{name: adamw}}\nsearch_space: {search_space}\n")
    with pytest.raises(ConfigError) as err:
        submission.parse(str(file))
    assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)


def test_a_dimension_beside_a_list_of_points_is_refused(tmp_path):
    file = tmp_path / "mixed.yaml"
    file.write_text("optimizer:\n  name: adamw\n  weight_decay: uniform(0, 1)\nsearch_space: [{optimizer.lr: 0.1}]\n")
    with pytest.raises(ConfigError, match=r"^optimizer.weight_decay: a dimension \(uniform\(0.0, 1.0\)\) beside a "
                                          r"search space that is a list of points"):
        submission.parse(str(file))


def test_a_point_mistake_stops_the_bench_in_one_line(tmp_path, capsys):
    from trainlab.cli import main

    file = tmp_path / "bad.yaml"
    file.write_text("optimizer: {name: adamw}\nsearch_space: [{optimizer.lr: 0.1}, {optimizer.lr: 0.2, grad_clip: 1}]\n")
    assert main(["bench", "sparse_parity", "--submission", str(file), "--no-baseline", "--quiet",
                 "--out", str(tmp_path / "bench")]) == 2
    assert capsys.readouterr().err == ("trainlab: config error: search_space[1]: has 'grad_clip', which "
                                       "search_space[0] lacks (every point needs the same keys: ['optimizer.lr'])\n")
    assert not (tmp_path / "bench").exists()
