"""trainlab.continual.metrics against hand-computed values on made-up rows, and against the formulas of
shared/reference/families.md (section 2, 1-based as the papers write them) on a random matrix."""

import json
import random

import pytest

import trainlab
from trainlab.continual import metrics as m
from trainlab.rundir import RunDir

# Three tasks of 10 steps (switches at 10 and 20), dense rows after each switch: (step, task, accuracies).
SPEC = [
    (0, 0, [0.2, 0.1, 0.3]),  # b
    (5, 0, [0.7, 0.1, 0.2]),
    (10, 1, [0.9, 0.2, 0.1]),  # the end of task 0: R[0]
    (11, 1, [0.5, 0.3, 0.1]),
    (12, 1, [0.6, 0.5, 0.2]),
    (15, 1, [0.86, 0.7, 0.2]),
    (20, 2, [0.8, 0.8, 0.4]),  # the end of task 1: R[1]
    (21, 2, [0.7, 0.6, 0.5]),
    (25, 2, [0.75, 0.78, 0.8]),
    (30, 2, [0.6, 0.7, 0.9]),  # the end of task 2 (the last row): R[2]
]


def rows(spec=SPEC):
    return [{"step": step, "time": step / 10, "task": task, **{f"task{j}_acc": a for j, a in enumerate(accs)}}
            for step, task, accs in spec]


def test_the_accuracy_matrix_takes_the_row_at_each_switch_and_the_last():
    assert m.task_count(rows()) == 3
    assert m.accuracy_matrix(rows()) == [[0.9, 0.2, 0.1], [0.8, 0.8, 0.4], [0.6, 0.7, 0.9]]
    assert m.initial_accuracies(rows()) == [0.2, 0.1, 0.3]


def test_acc_bwt_fwt_forgetting_by_hand():
    matrix, b = m.accuracy_matrix(rows()), m.initial_accuracies(rows())
    assert m.average_accuracy(matrix) == pytest.approx((0.6 + 0.7 + 0.9) / 3)
    assert m.backward_transfer(matrix) == pytest.approx(((0.6 - 0.9) + (0.7 - 0.8)) / 2)  # -0.2
    assert m.forward_transfer(matrix, b) == pytest.approx(((0.2 - 0.1) + (0.4 - 0.3)) / 2)  # 0.1
    # task 0: best 0.9, now 0.6; task 1: best 0.8 (after task 1), now 0.7
    assert m.forgetting(matrix) == pytest.approx((0.3 + 0.1) / 2)


def test_min_acc_and_wc_acc_by_hand():
    # task 0 after its end (step 10): lowest 0.5 at step 11; task 1 after step 20: lowest 0.6 at step 21
    assert m.min_acc(rows()) == pytest.approx((0.5 + 0.6) / 2)
    assert m.wc_acc(rows()) == pytest.approx(0.9 / 3 + (2 / 3) * 0.55)


def test_stability_gaps_by_hand():
    gaps = {(g["switch"], g["task"]): g for g in m.stability_gaps(rows(), tolerance=0.05)}
    assert set(gaps) == {(1, 0), (2, 0), (2, 1)}
    first = gaps[1, 0]  # 0.9 at the switch, 0.5 at step 11, back to 0.86 >= 0.85 at step 15
    assert (first["step"], first["at_switch"], first["min"], first["min_step"]) == (10, 0.9, 0.5, 11)
    assert first["depth"] == pytest.approx(0.4) and first["recovery_steps"] == 5
    assert gaps[2, 0]["min_step"] == 30 and gaps[2, 0]["recovery_steps"] is None  # still falling at the end
    assert gaps[2, 1]["depth"] == pytest.approx(0.2) and gaps[2, 1]["recovery_steps"] == 5  # 0.78 at step 25


def test_a_dip_within_the_tolerance_recovers_at_once():
    gaps = m.stability_gaps(rows([(0, 0, [0.0, 0.0]), (10, 1, [0.9, 0.0]), (11, 1, [0.88, 0.5])]), tolerance=0.05)
    assert [(g["depth"], g["recovery_steps"]) for g in gaps] == [(pytest.approx(0.02), 0)]


def test_a_run_in_progress_has_the_finished_tasks_only():
    middle = rows(SPEC[:8])  # in task 2, at step 21
    assert m.accuracy_matrix(middle, end_step=30) == [[0.9, 0.2, 0.1], [0.8, 0.8, 0.4]]
    entry = m.summary(middle, end_step=30)
    assert entry["task_end_steps"] == [10, 20] and entry["switch_steps"] == [10, 20]
    assert entry["acc"] == pytest.approx(0.8) and entry["bwt"] == pytest.approx(-0.1)
    assert entry["min_acc"] == pytest.approx((0.5 + 0.6) / 2)  # up to the last row, whatever has finished
    assert m.accuracy_matrix(middle) == [[0.9, 0.2, 0.1], [0.8, 0.8, 0.4], [0.7, 0.6, 0.5]]  # no end: the last row


def test_the_first_task_has_no_old_tasks():
    first = rows(SPEC[:2])
    assert m.min_acc(first) is None and m.wc_acc(first) == 0.7
    assert m.backward_transfer(m.accuracy_matrix(first, end_step=30)) is None
    assert m.stability_gaps(first) == []


def test_probe_rows_and_non_sequences():
    with_probes = rows()[:3] + [{"step": 7, "time": 0.7, "weights/all": 3.0}] + rows()[3:]
    with_probes.sort(key=lambda r: r["step"])
    assert m.summary(with_probes) == m.summary(rows())
    assert m.summary([{"step": 0, "time": 0.0, "val_acc": 0.5}]) == {}
    assert not m.is_sequence([{"step": 0, "task": True}])  # a bool is no task index


def test_a_row_whose_task_is_out_of_range_is_left_out():
    damaged = rows()
    damaged[3]["task"], damaged[4]["task"] = 10**18, -1  # no such tasks: no range(10**18) over them either
    assert m.accuracy_matrix(damaged) == m.accuracy_matrix(rows())
    assert len(m.stability_gaps(damaged)) == len(m.stability_gaps(rows()))


def test_a_missing_accuracy_leaves_its_term_out():
    spec = [(0, 0, [0.2, 0.1]), (10, 1, [0.9, None]), (20, 1, [0.5, 0.8])]
    matrix = m.accuracy_matrix(rows(spec))
    assert matrix == [[0.9, None], [0.5, 0.8]]
    assert m.forward_transfer(matrix, m.initial_accuracies(rows(spec))) is None
    assert m.backward_transfer(matrix) == pytest.approx(-0.4)


# ------------------------------------------------------------------- the formulas of families.md, 1-based


def families(R, b):
    """ACC, BWT, FWT (Lopez-Paz 2017) and forgetting (Chaudhry 2018) exactly as families.md writes them, with
    1-based R[i][j] (accuracy on task j after task i) and b[j]."""
    T = len(R) - 1  # R[0] and b[0] unused: 1-based
    acc = sum(R[T][j] for j in range(1, T + 1)) / T
    bwt = sum(R[T][j] - R[j][j] for j in range(1, T)) / (T - 1)
    fwt = sum(R[j - 1][j] - b[j] for j in range(2, T + 1)) / (T - 1)
    k = T
    f = [max(R[l][j] for l in range(1, k)) - R[k][j] for j in range(1, k)]
    return acc, bwt, fwt, sum(f) / (k - 1)


def test_the_metrics_are_the_families_md_formulas_on_a_random_matrix():
    rng = random.Random(3)
    T = 6
    b = [rng.random() for _ in range(T)]
    R = [[rng.random() for _ in range(T)] for _ in range(T)]
    spec = [(0, 0, b)] + [(10 * (i + 1), min(i + 1, T - 1), R[i]) for i in range(T)]
    matrix = m.accuracy_matrix(rows(spec))
    assert matrix == R
    one_based = [[0.0] * (T + 1)] + [[0.0, *r] for r in R]
    acc, bwt, fwt, forgetting = families(one_based, [0.0, *b])
    assert m.average_accuracy(matrix) == pytest.approx(acc)
    assert m.backward_transfer(matrix) == pytest.approx(bwt)
    assert m.forward_transfer(matrix, b) == pytest.approx(fwt)
    assert m.forgetting(matrix) == pytest.approx(forgetting)


def test_min_acc_and_wc_acc_are_de_lange_s_on_random_rows():
    rng = random.Random(5)
    T, per = 4, 10
    spec = [(s, min(s // per, T - 1), [rng.random() for _ in range(T)]) for s in range(T * per + 1)]
    A = {(j, s): accs[j] for s, _, accs in spec for j in range(T)}
    k, t = T, T * per  # 1-based current task and the last step; task i (1-based) ends at t_i = i * per
    min_acc = sum(min(A[i - 1, n] for n in range(i * per + 1, t + 1)) for i in range(1, k)) / (k - 1)
    assert m.min_acc(rows(spec)) == pytest.approx(min_acc)
    assert m.wc_acc(rows(spec)) == pytest.approx(A[k - 1, t] / k + (1 - 1 / k) * min_acc)


# ---------------------------------------------------------------------------------- through the trainer


@pytest.mark.parametrize("gap_threshold", [None, 0.99])
def test_a_sequence_s_summary_json_has_the_continual_entry_of_its_rows(tmp_path, gap_threshold):
    threshold = [] if gap_threshold is None else [f"continual.gap_threshold={gap_threshold}"]
    run_dir = trainlab.run(overrides=["workload=split_mnist1d", "workload.tasks=2", "workload.steps_per_task=30",
                                      "workload.num_samples=1000", "model.width=64", "optimizer.lr=3e-3",
                                      "eval_every=10", *threshold], out=tmp_path / "run", quiet=True, report=False)
    rd = RunDir.open(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["continual"] == json.loads(json.dumps(m.summary(rd.metrics(), 60)))
    assert summary["continual"]["task_end_steps"] == [30, 60] and summary["continual"]["switch_steps"] == [30]
    gaps = [e for e in summary["event_list"] if e["name"] == "stability_gap"]
    if gap_threshold is None:  # naive class-incremental training forgets task 0 within the second task
        [gap] = gaps
        assert gap["metric"] == "task0_acc" and 30 < gap["step"] <= 60 and summary["events"]["stability_gap_count"] == 1
    else:  # the config's threshold reaches the detector: task 0 never had 0.99 to lose
        assert gaps == [] and summary["continual"]["matrix"][0][0] < 0.99
