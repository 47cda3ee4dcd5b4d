"""The task sequences' data (classes, permutations, op codes, class frequencies), the TaskSampler, and a short run
of each sequence through the trainer."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

import trainlab
from trainlab.workloads import build  # before trainlab.continual.sequence: importing that first is circular
from trainlab.config import ConfigError
from trainlab.continual.sequence import Task, TaskSampler, dense_steps, task_starts
from trainlab.continual.sequences import class_weights, draw_classes, permutations
from trainlab.train.config import from_cli
from trainlab.workloads.modular import operation

SMALL = {"num_samples": 1000}  # 800 training and 200 validation examples of MNIST-1D


def mnist1d():
    return build("mnist1d", **SMALL).data("vector")


# --- split_mnist1d ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tasks, order_seed", [(2, 0), (5, 0), (5, 7), (10, 3)])
def test_split_puts_every_class_in_exactly_one_task_and_rows_match_labels(tasks, order_seed):
    wl = build("split_mnist1d", tasks=tasks, class_order_seed=order_seed, **SMALL)
    data, seq = wl.data("vector"), wl.tasks("vector")
    assert sorted(torch.cat([t.classes for t in seq]).tolist()) == list(range(10))
    for t in seq:
        assert len(t.classes) == 10 // tasks
        assert set(data.y_train[t.train].tolist()) == set(t.classes.tolist())
        assert set(data.y_val[t.val].tolist()) == set(t.classes.tolist())
    assert sorted(torch.cat([t.train for t in seq]).tolist()) == list(range(data.n_train))
    assert sorted(torch.cat([t.val for t in seq]).tolist()) == list(range(data.n_val))


# --- permuted_mnist1d ------------------------------------------------------------------------------------------
def test_permutations_are_fixed_by_their_seed_distinct_and_do_not_depend_on_later_tasks():
    perms = permutations(6, seed=3)
    assert torch.equal(perms, permutations(6, seed=3))
    assert not torch.equal(perms, permutations(6, seed=4))
    assert len({tuple(p.tolist()) for p in perms}) == 6
    assert all(sorted(p.tolist()) == list(range(40)) for p in perms)  # permutations of the 40 positions
    assert torch.equal(permutations(3, seed=3), perms[:3])
    first = permutations(6, seed=3, identity_first=True)
    assert torch.equal(first[0], torch.arange(40)) and torch.equal(first[1:], perms[1:])


@pytest.mark.parametrize("scenario", ["domain", "class", "task"])
def test_permuted_tasks_are_all_of_mnist1d_permuted_and_invertible(scenario):
    wl = build("permuted_mnist1d", tasks=3, scenario=scenario, permutation_seed=5, **SMALL)
    source, data, seq = mnist1d(), wl.data("vector"), wl.tasks("vector")
    stride = 0 if scenario == "domain" else 10
    assert wl.scenario == scenario and wl.spec("vector").n_outputs == 10 + 2 * stride
    for i, (task, perm) in enumerate(zip(seq, permutations(3, seed=5))):
        inverse = torch.argsort(perm)
        assert torch.equal(data.x_train[task.train], source.x_train[:, perm])
        assert torch.equal(data.x_train[task.train][:, inverse], source.x_train)
        assert torch.equal(data.x_val[task.val][:, inverse], source.x_val)
        assert torch.equal(data.y_train[task.train], source.y_train + i * stride)
        assert torch.equal(data.y_val[task.val], source.y_val + i * stride)
        if scenario == "domain":
            assert task.classes is None
        else:
            assert torch.equal(task.classes, torch.arange(10 * i, 10 * i + 10))
    signal = wl.data("signal")
    assert torch.equal(signal.x_train[:, 0], data.x_train)  # the same permutation in either input kind


# --- modular_sequence ------------------------------------------------------------------------------------------
def decode(x, kind, p, n_ops):
    """(a, b, op code) of modular_sequence inputs, checking their layout on the way."""
    if kind == "vector":
        parts = x[:, :p], x[:, p:2 * p], x[:, 2 * p:]
        assert x.shape[1] == 2 * p + n_ops and all(torch.equal(part.sum(1), torch.ones(len(x))) for part in parts)
        return tuple(part.argmax(1) for part in parts)
    assert bool((x[:, 3] == p + n_ops).all())  # the "=" token
    return x[:, 0], x[:, 2], x[:, 1] - p


@pytest.mark.parametrize("kind", ["vector", "tokens"])
def test_modular_sequence_inputs_name_the_op_and_labels_are_its_results(kind):
    p, ops = 11, ["add", "mul", "div", "add"]
    wl = build("modular_sequence", ops=",".join(ops), p=p, train_frac=0.5)
    data, seq = wl.data(kind), wl.tasks(kind)
    codes = {"add": 0, "mul": 1, "div": 2}
    for task, op in zip(seq, ops):
        assert task.classes is None and task.name == op
        for x, y, rows in ((data.x_train, data.y_train, task.train), (data.x_val, data.y_val, task.val)):
            a, b, code = decode(x[rows], kind, p, len(codes))
            assert bool((code == codes[op]).all())
            assert torch.equal(y[rows], operation(op, a, b, p))
        pairs = len(task.train) + len(task.val)
        assert pairs == (p * (p - 1) if op == "div" else p * p)  # every pair of the op, as in modular
    assert torch.equal(seq[0].train, seq[3].train)  # a recurring op is the same task, the same examples
    inputs = [{tuple(row.tolist()) for row in data.x_train[t.train]} for t in seq[:3]]
    assert not (inputs[0] & inputs[1] or inputs[0] & inputs[2] or inputs[1] & inputs[2])  # the op tells them apart
    assert wl.scenario == "domain" and wl.spec(kind).n_outputs == p
    if kind == "tokens":
        assert wl.spec(kind).vocab_size == p + len(codes) + 1


# --- scole -----------------------------------------------------------------------------------------------------
def inclusion(weights):
    """The exact probability that each class is one of two drawn one after another without replacement, each
    with probability proportional to its weight among those not drawn yet."""
    total = weights.sum()
    second = torch.stack([sum(weights[d] / total * weights[c] / (total - weights[d]) for d in range(10) if d != c)
                          for c in range(10)])
    return weights / total + second


@pytest.mark.parametrize("frequencies, exponent", [("uniform", 1.0), ("power_law", 1.0), ("power_law", 2.0)])
def test_scole_class_frequencies_follow_the_option(frequencies, exponent):
    n = 4000
    draws = draw_classes(n, 2, class_weights(frequencies, exponent), seed=0)
    assert bool((draws[:, 0] < draws[:, 1]).all())  # two distinct classes a task, sorted
    counts = torch.bincount(draws.flatten(), minlength=10).double()
    p = inclusion(class_weights(frequencies, exponent))
    # each count is binomial(n, p_c): within 4 standard deviations (a correct sampler misses that with
    # probability under 1e-3 over the ten classes for an arbitrary seed; this seed is fixed)
    assert bool(((counts - n * p).abs() <= 4 * (n * p * (1 - p)).sqrt()).all()), (counts, n * p)
    if frequencies == "power_law":
        assert counts[0] > counts[3] > counts[9]  # a long tail


def test_scole_tasks_hold_their_own_copy_of_their_classes_rows():
    wl = build("scole", tasks=30, frequencies="power_law", task_seed=4, **SMALL)
    source, data, seq = mnist1d(), wl.data("vector"), wl.tasks("vector")
    draws = draw_classes(30, 2, class_weights("power_law", 1.0), seed=4)
    assert len({tuple(c.tolist()) for c in draws}) < 30  # tasks recur
    assert sorted(torch.cat([t.train for t in seq]).tolist()) == list(range(data.n_train))  # a row, one task
    for task, classes in zip(seq, draws):
        of_task = torch.isin(source.y_train, classes)
        assert torch.equal(task.classes, classes) and task.steps == 10
        assert torch.equal(data.x_train[task.train], source.x_train[of_task])
        assert torch.equal(data.y_train[task.train], source.y_train[of_task])
        assert torch.equal(task.val, torch.nonzero(torch.isin(source.y_val, classes)).flatten())
    assert torch.equal(data.x_val, source.x_val)  # evaluation on MNIST-1D's validation split, every class
    assert wl.scenario == "class" and wl.options.mask_train


# --- config rules ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["workload=modular_sequence", "workload.ops=add"], "at least 2 tasks"),
    (["workload=modular_sequence", "workload.ops=add,pow"], "expected one of add, sub"),
    (["workload=modular_sequence", "workload.ops=add,div", "workload.p=12"], "needs a prime modulus"),
    (["workload=modular_sequence", "workload.ops=add,sub", "workload.steps_per_task=7", "steps=15"], "= 14 steps"),
    (["workload=permuted_mnist1d", "workload.tasks=100", "workload.num_samples=100000"], "more than 5,000,000"),
    (["workload=scole", "workload.exponent=2"], "applies to frequencies=power_law only"),
    (["workload=scole", "steps=5"], "change workload.steps_per_task"),
])
def test_sequence_options_are_checked_in_one_line(args, words):
    with pytest.raises(ConfigError, match=words):
        from_cli(None, args)


# --- TaskSampler -----------------------------------------------------------------------------------------------
TASKS = [Task("a", torch.arange(0, 50), torch.arange(0), None, steps=7),
         Task("b", torch.arange(50, 80), torch.arange(0), None, steps=12),
         Task("c", torch.arange(80, 200), torch.arange(0), None, steps=5)]
TOTAL = 24


def test_sampler_batches_come_from_the_current_task_only():
    sampler = TaskSampler(TASKS, batch_size=8, seed=3)
    for step in range(TOTAL + 5):  # past the end: the last task
        task = TASKS[sampler.task(step)]
        assert sampler.task(step) == (0 if step < 7 else 1 if step < 19 else 2)
        rows = sampler.indices(step)
        assert len(rows) == 8 and set(rows.tolist()) <= set(task.train.tolist())
    epoch = torch.cat([sampler.indices(step) for step in range(7, 10)])  # task b: 30 rows, 3 batches an epoch
    assert len(set(epoch.tolist())) == 24  # without repeats within an epoch
    full = TaskSampler(TASKS, batch_size=0, seed=3)
    assert all(torch.equal(full.indices(step), TASKS[full.task(step)].train) for step in range(TOTAL))


def test_sampler_is_a_pure_function_of_seed_and_step():
    forward = TaskSampler(TASKS, batch_size=8, seed=3)
    expected = [forward.indices(step).clone() for step in range(TOTAL)]
    other = TaskSampler(TASKS, batch_size=8, seed=3)
    order = torch.randperm(TOTAL, generator=torch.Generator().manual_seed(0)).tolist()
    for step in [*order, *reversed(order), 20, 3, 20, 3]:  # arbitrary order, repeats, jumps between tasks
        assert torch.equal(other.indices(step), expected[step])
    reseeded = TaskSampler(TASKS, batch_size=8, seed=4)
    assert any(not torch.equal(reseeded.indices(step), expected[step]) for step in range(TOTAL))


def test_sampler_refuses_a_batch_larger_than_the_smallest_task():
    with pytest.raises(ConfigError, match="30 training examples of the sequence's smallest task"):
        TaskSampler(TASKS, batch_size=31, seed=0)


def test_dense_steps_by_hand():
    starts = task_starts(TASKS)
    assert starts == [0, 7, 19]
    # offsets round(10^(k/2)) = 1, 3, 10, 32, ... until the next switch (or the end, 30)
    assert dense_steps([0, 100, 130], 160, 2) == {0, 1, 3, 10, 32, 100, 101, 103, 110, 130, 131, 133, 140}
    assert dense_steps(starts, TOTAL, 2) == {0, 1, 3, 7, 8, 10, 17, 19, 20, 22}
    assert dense_steps(starts, TOTAL, 0) == {0, 7, 19}


# --- the sequences through the trainer -------------------------------------------------------------------------
RUNS = {
    "permuted_mnist1d": (["workload.tasks=2", "workload.steps_per_task=15", "workload.num_samples=1000",
                          "model.width=32", "eval_every=10"], 2, 30),
    "permuted_mnist1d task": (["workload.scenario=task", "workload.tasks=2", "workload.steps_per_task=15",
                               "workload.num_samples=1000", "model.width=32", "eval_every=10"], 2, 30),
    "modular_sequence": (["workload.ops=add,sub", "workload.p=7", "workload.steps_per_task=10", "model.width=16",
                          "eval_every=5"], 2, 20),
    "modular_sequence tokens": (["workload.ops=add,mul,add", "workload.p=7", "workload.steps_per_task=5",
                                 "model=transformer", "model.d_model=16", "model.n_head=2", "model.n_layer=1",
                                 "eval_every=5"], 3, 15),
    "scole": (["workload.tasks=4", "workload.steps_per_task=5", "workload.num_samples=1000", "model.width=32",
               "eval_every=5"], 4, 20),
}


@pytest.mark.parametrize("case", sorted(RUNS))
def test_a_short_run_of_each_sequence_completes_with_per_task_columns(case, tmp_path):
    overrides, tasks, steps = RUNS[case]
    run_dir = trainlab.run(overrides=[f"workload={case.split()[0]}", *overrides], out=tmp_path / "run", quiet=True,
                           report=False)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == steps
    assert all(0 <= row[f"task{j}_acc"] <= 1 for row in metrics for j in range(tasks))
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    if case == "scole":  # the loss masked to the task's two classes: ln 2 at initialisation, not ln 10
        first = json.loads((run_dir / "trace.jsonl").read_text().splitlines()[0])
        assert abs(first["loss"] - math.log(2)) < 0.2


def test_list_shows_the_sequences_and_their_options():
    out = subprocess.run([sys.executable, "-m", "trainlab", "list", "workloads", "--options"], capture_output=True,
                         text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert out.returncode == 0, out.stderr
    for line in ("workload.scenario = 'domain'  (one of domain, class, task)",
                 "workload.ops = ('add', 'sub', 'mul')  (a list of one of add, sub, mul, div, x2_xy, x2_xy_y2)",
                 "workload.frequencies = 'uniform'  (one of uniform, power_law)",
                 "workload.mask_train = True  (bool)"):
        assert line in out.stdout
    for name in ("split_mnist1d", "permuted_mnist1d", "modular_sequence", "scole"):
        assert f"\n{name} " in out.stdout
