import math
from typing import Any

import pytest

from trainlab.train.events import Event, EventTracker, check_state


def row(step: int, train: float, val: float, loss: float = 1.0) -> dict[str, Any]:
    return {"step": step, "time": step / 10, "train_acc": train, "val_acc": val, "train_loss": loss}


def test_memorized_then_generalized_gives_the_grokking_delay() -> None:
    tracker = EventTracker("acc", True, 0.99)
    assert tracker.update(row(0, 0.1, 0.1)) == []
    assert [e.name for e in tracker.update(row(100, 0.995, 0.2))] == ["memorized"]
    assert tracker.update(row(200, 1.0, 0.5)) == []  # fires once
    assert [e.name for e in tracker.update(row(900, 1.0, 0.99))] == ["generalized"]
    summary = tracker.summary()
    assert summary["memorized"] == 100 and summary["generalized"] == 900
    assert summary["grokking_delay_steps"] == 800 and math.isclose(summary["grokking_delay_seconds"], 80.0)


def test_lower_is_better_and_divergence() -> None:
    tracker = EventTracker("mse", False, 0.01)
    events = tracker.update({"step": 5, "time": 1.0, "train_mse": 0.005, "val_mse": 0.5, "train_loss": float("nan")})
    assert [e.name for e in events] == ["memorized", "diverged"]
    assert tracker.summary()["grokking_delay_steps"] is None


def test_restored_events_do_not_fire_again() -> None:
    first = EventTracker("acc", True, 0.9)
    first.update(row(10, 0.95, 0.1))
    again = EventTracker("acc", True, 0.9, [e.to_dict() for e in first.events])
    assert again.update(row(20, 0.97, 0.1)) == []


def _rows(**series: list[float | None]) -> list[dict[str, Any]]:
    """Rows at steps 0, 10, 20, ... with the given per-row values (None: key absent)."""
    n = len(next(iter(series.values())))
    out = []
    for i in range(n):
        row: dict[str, Any] = {"step": 10 * i, "time": float(i)}
        row.update({k.replace("__", "/"): v[i] for k, v in series.items() if v[i] is not None})
        out.append(row)
    return out


def _fire(rows: list[dict[str, Any]]) -> EventTracker:
    tracker = EventTracker("acc", True, 0.99)
    for row in rows:
        tracker.update(row)
    return tracker


def test_loss_spikes_fire_each_time_the_loss_leaves_and_returns() -> None:
    tracker = _fire(_rows(train_loss=[4.0, 1.0, 0.5, 1.2, 0.4, 0.3, 0.9, 0.35]))
    spikes = [e.step for e in tracker.events if e.name == "loss_spike"]
    assert spikes == [30, 60]  # 1.2 > 2 x 0.5; back under 1.0 at 0.4; 0.9 > 2 x 0.3
    assert tracker.summary()["loss_spike"] == 30 and tracker.summary()["loss_spike_count"] == 2


def test_a_near_zero_loss_wobbling_is_no_spike() -> None:
    """Relative rises of a loss near zero (1e-9 -> 5e-9) are float noise; a rise of at least SPIKE_MIN_RISE is one."""
    tracker = _fire(_rows(train_loss=[1.0, 1e-9, 5e-9, 1e-9, 0.004, 1e-9, 0.5]))
    assert [e.step for e in tracker.events if e.name == "loss_spike"] == [60]


def test_slingshot_needs_a_spike_and_a_growing_last_layer() -> None:
    tracker = _fire(_rows(train_loss=[1.0, 0.2, 0.9, 0.1, 0.5],
                          weights__last_layer=[10.0, 10.2, 11.0, 11.1, 11.2]))
    # step 20: spike and +7.8% norm -> slingshot; step 40: spike (0.5 > 0.2) but only +0.9% -> none
    assert [e.step for e in tracker.events if e.name == "slingshot"] == [20]
    assert [e.step for e in tracker.events if e.name == "loss_spike"] == [20, 40]


def test_probe_events_fire_once_at_their_thresholds() -> None:
    tracker = _fire(_rows(attention_entropy__min=[2.0, 1.0, 0.19, 0.1],
                          hessian__eos_ratio=[0.1, 0.5, 0.95, 1.2],
                          softmax_collapse__fraction=[0.0, 0.2, 0.5, 0.9],
                          ntk__distance_from_init=[0.0, 0.05, 0.1, 0.3]))
    first = {e.name: e.step for e in reversed(tracker.events)}
    assert first == {"entropy_collapse": 20, "edge_of_stability": 20, "softmax_collapse": 20, "lazy_to_rich": 30}
    assert len(tracker.events) == 4


def test_detector_state_survives_a_checkpoint() -> None:
    rows = _rows(train_loss=[4.0, 1.0, 0.5, 1.2, 0.4, 0.3, 0.9, 0.35])
    whole = _fire(rows)
    first = _fire(rows[:4])
    second = EventTracker("acc", True, 0.99, [e.to_dict() for e in first.events], dict(first.state))
    for row in rows[4:]:
        second.update(row)
    assert [e.to_dict() for e in second.events] == [e.to_dict() for e in whole.events]


def test_an_evaluated_divergence_names_the_train_loss() -> None:
    tracker = EventTracker("acc", True, 0.99)
    [event] = tracker.update(row(30, 0.1, 0.1, loss=float("inf")))
    assert (event.name, event.step, event.metric, event.detail) == ("diverged", 30, "train_loss", "train loss is inf")


def test_a_recorded_event_counts_as_fired_and_is_not_detected_again() -> None:
    tracker = EventTracker("acc", True, 0.99)
    found = Event("diverged", 12, 1.5, None, "loss", "the training loss of step 12 is nan")
    assert tracker.record(found) is found and tracker.fired("diverged") is found
    assert tracker.update(row(13, 0.1, 0.1, loss=float("nan"))) == []
    assert tracker.summary()["diverged"] == 12


@pytest.mark.parametrize(("entry", "problem"), [
    ([1, 2], "is list, not a mapping"),
    ({"name": "memorized", "time": 1.0}, "has no 'step'"),
    ({"name": "memorized", "step": "3", "time": 1.0}, "has 'step' of type str"),
    ({"name": "memorized", "step": True, "time": 1.0}, "has 'step' of type bool"),
    ({"name": "memorized", "step": 3, "time": 1.0, "colour": "red"}, "has an unknown field 'colour'"),
])
def test_an_event_from_a_file_is_checked_field_by_field(entry: Any, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        EventTracker("acc", True, 0.9, [entry])


def test_detector_state_from_a_file_is_checked() -> None:
    with pytest.raises(ValueError, match="has 'in_spike' of type str"):
        EventTracker("acc", True, 0.9, [], {"in_spike": "yes"})
    assert check_state({"min_loss": 0.5, "unknown": object}) == {"min_loss": 0.5, "unknown": object}


def _task_rows(accs: list[tuple[float, float]], tasks: list[int]) -> list[dict[str, Any]]:
    """Rows of a two-task sequence at steps 0, 10, 20, ...: ``accs`` the (task0, task1) accuracies per row."""
    return [{"step": 10 * i, "time": float(i), "task": task, "task0_acc": a0, "task1_acc": a1}
            for i, ((a0, a1), task) in enumerate(zip(accs, tasks))]


def _sequence_tracker(rows: list[dict[str, Any]], gap_threshold: float) -> EventTracker:
    tracker = EventTracker("acc", True, 0.99, gap_threshold=gap_threshold)
    for row in rows:
        tracker.update(row)
    return tracker


def test_a_stability_gap_fires_once_per_switch_when_an_old_task_falls_the_threshold() -> None:
    rows = _task_rows([(0.1, 0.1), (0.9, 0.0), (0.75, 0.5), (0.625, 0.8), (0.5, 0.9), (0.9, 0.95)],
                      [0, 0, 1, 1, 1, 1])
    tracker = _sequence_tracker(rows, 0.125)
    # the switch row (step 20, task 0 at 0.75) is the reference: 0.625 is 0.125 below it, at step 30
    [gap] = [e for e in tracker.events if e.name == "stability_gap"]
    assert (gap.step, gap.metric, gap.value) == (30, "task0_acc", 0.625)
    assert gap.detail == "task 0 acc 0.625, 0.125 below its 0.75 at the switch to task 1"
    assert tracker.summary()["stability_gap_count"] == 1


def test_the_gap_threshold_comes_from_the_tracker_and_a_shallow_dip_fires_nothing() -> None:
    rows = _task_rows([(0.9, 0.0), (0.9, 0.1), (0.82, 0.5), (0.9, 0.9)], [0, 1, 1, 1])
    assert not [e for e in _sequence_tracker(rows, 0.1).events if e.name == "stability_gap"]
    assert [e.step for e in _sequence_tracker(rows, 0.05).events if e.name == "stability_gap"] == [20]


def test_the_deepest_old_task_is_named_and_the_others_counted() -> None:
    rows = [{"step": 0, "time": 0.0, "task": 2, "task0_acc": 0.9, "task1_acc": 0.8, "task2_acc": 0.0},
            {"step": 1, "time": 0.1, "task": 2, "task0_acc": 0.5, "task1_acc": 0.2, "task2_acc": 0.3}]
    [gap] = _sequence_tracker(rows, 0.1).events
    assert gap.metric == "task1_acc" and gap.detail.endswith("at the switch to task 2; 2 of 2 old tasks fell that far")


def test_the_gap_detector_survives_a_checkpoint_between_switch_and_drop() -> None:
    rows = _task_rows([(0.9, 0.0), (0.88, 0.2), (0.87, 0.5), (0.6, 0.8), (0.3, 0.9)], [0, 1, 1, 1, 1])
    whole = _sequence_tracker(rows, 0.1)
    first = _sequence_tracker(rows[:3], 0.1)
    second = EventTracker("acc", True, 0.99, [e.to_dict() for e in first.events], dict(first.state),
                          gap_threshold=0.1)
    for row in rows[3:]:
        second.update(row)
    assert [e.to_dict() for e in second.events] == [e.to_dict() for e in whole.events]
    assert [e.step for e in whole.events if e.name == "stability_gap"] == [30]


def test_gap_state_from_a_file_is_checked() -> None:
    with pytest.raises(ValueError, match="has a 'switch_acc' entry of type str"):
        EventTracker("acc", True, 0.9, [], {"switch_acc": [0.5, "high"]})
    with pytest.raises(ValueError, match="has 'gap_open' of type int"):
        EventTracker("acc", True, 0.9, [], {"gap_open": 1})


def test_in_a_sequence_the_loss_of_a_new_task_is_no_spike_but_a_spike_within_a_task_is() -> None:
    losses, tasks = [2.0, 0.1, 5.0, 1.0, 0.2, 0.9], [0, 0, 1, 1, 1, 1]
    rows = [{**r, "train_loss": loss} for r, loss in zip(_task_rows([(0.5, 0.0)] * 6, tasks), losses)]
    tracker = _sequence_tracker(rows, 0.1)
    # step 20: the first row of task 1 (5.0 > 2 x 0.1, but task 1 was never learned); step 50: 0.9 > 2 x 0.2
    assert [e.step for e in tracker.events if e.name == "loss_spike"] == [50]


def _robust_rows(val: list[float | None], clean: list[float | None],
                 advs: dict[str, list[float | None]]) -> list[dict[str, Any]]:
    """Rows at steps 0, 10, ... with val_acc (None: a probe-only row, no evaluation), the robustness probe's
    clean accuracy and ``advs``: a mapping eps-key suffix -> per-row adversarial accuracies (None: key absent)."""
    out = []
    for i, (v, c) in enumerate(zip(val, clean)):
        row: dict[str, Any] = {"step": 10 * i, "time": float(i)}
        if v is not None:
            row.update(train_acc=1.0, val_acc=v)
        if c is not None:
            row["robustness/clean_acc"] = c
        row.update({f"robustness/adv_acc_eps{k}": a[i] for k, a in advs.items() if a[i] is not None})
        out.append(row)
    return out


def test_robust_fires_once_after_generalized_at_the_largest_eps() -> None:
    from trainlab.train.events import ROBUST_FRACTION

    assert ROBUST_FRACTION == 0.9
    rows = _robust_rows(val=[0.2, 0.5, 1.0, 1.0, 1.0, 1.0],
                        clean=[0.2, 0.5, 1.0, 1.0, 1.0, 1.0],
                        advs={"0.05": [0.2, 0.5, 1.0, 1.0, 1.0, 1.0],  # the small radius is robust throughout
                              "0.2": [0.19, 0.46, 0.5, 0.85, 0.95, 0.99]})
    # steps 0 and 10: adv/clean >= 0.9 but before generalized (step 20); step 20: 0.5 at the largest eps;
    # step 30: 0.85 < 0.9; step 40: 0.95 >= 0.9 x 1.0 -> robust; step 50: once only
    tracker = _fire(rows)
    [robust] = [e for e in tracker.events if e.name == "robust"]
    assert (robust.step, robust.metric, robust.value) == (40, "robustness/adv_acc_eps0.2", 0.95)
    assert robust.detail == "adv acc 0.95 at eps 0.2 >= 0.9 x clean 1"
    assert tracker.summary()["robust"] == 40 and tracker.summary()["generalized"] == 20


def test_robust_can_fire_in_the_row_that_generalized_and_in_a_probe_only_row() -> None:
    same = _fire(_robust_rows(val=[0.5, 1.0], clean=[0.5, 1.0], advs={"0.1": [0.5, 0.95]}))
    assert [(e.name, e.step) for e in same.events] == [("memorized", 0), ("generalized", 10), ("robust", 10)]
    # probe-only rows (no val_acc) between evaluations: the robustness keys there count
    between = _fire(_robust_rows(val=[1.0, None, None, 1.0], clean=[1.0, 0.9, 0.9, 0.9],
                                 advs={"0.1": [0.1, 0.5, 0.85, 0.9]}))
    assert [e.step for e in between.events if e.name == "robust"] == [20]  # 0.85 >= 0.9 x 0.9 = 0.81


def test_robust_compares_radii_as_numbers_and_needs_a_positive_clean_accuracy() -> None:
    # "1e-05" sorts after "0.2" as text; the largest radius is 0.2
    tracker = _fire(_robust_rows(val=[1.0, 1.0], clean=[1.0, 1.0], advs={"1e-05": [1.0, 1.0], "0.2": [0.3, 0.92]}))
    assert [(e.step, e.metric) for e in tracker.events if e.name == "robust"] == [(10, "robustness/adv_acc_eps0.2")]
    # a row of zero clean accuracy is no robustness (0 >= 0.9 x 0); nor a row without the probe's keys
    assert not _fire(_robust_rows(val=[1.0, 1.0], clean=[0.0, None], advs={"0.1": [0.0, None]})).fired("robust")


def test_the_robust_detector_survives_a_checkpoint_between_generalized_and_robust() -> None:
    rows = _robust_rows(val=[0.5, 1.0, 1.0, 1.0, 1.0], clean=[0.5, 1.0, 1.0, 1.0, 1.0],
                        advs={"0.1": [0.5, 0.2, 0.5, 0.95, 0.99]})
    whole = _fire(rows)
    first = _fire(rows[:2])
    second = EventTracker("acc", True, 0.99, [e.to_dict() for e in first.events], dict(first.state))
    for row in rows[2:]:
        second.update(row)
    assert [e.to_dict() for e in second.events] == [e.to_dict() for e in whole.events]
    assert [e.step for e in whole.events if e.name == "robust"] == [30]
