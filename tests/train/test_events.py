import math

import pytest

from trainlab.train.events import Event, EventTracker, check_state


def row(step, train, val, loss=1.0):
    return {"step": step, "time": step / 10, "train_acc": train, "val_acc": val, "train_loss": loss}


def test_memorized_then_generalized_gives_the_grokking_delay():
    tracker = EventTracker("acc", True, 0.99)
    assert tracker.update(row(0, 0.1, 0.1)) == []
    assert [e.name for e in tracker.update(row(100, 0.995, 0.2))] == ["memorized"]
    assert tracker.update(row(200, 1.0, 0.5)) == []  # fires once
    assert [e.name for e in tracker.update(row(900, 1.0, 0.99))] == ["generalized"]
    summary = tracker.summary()
    assert summary["memorized"] == 100 and summary["generalized"] == 900
    assert summary["grokking_delay_steps"] == 800 and math.isclose(summary["grokking_delay_seconds"], 80.0)


def test_lower_is_better_and_divergence():
    tracker = EventTracker("mse", False, 0.01)
    events = tracker.update({"step": 5, "time": 1.0, "train_mse": 0.005, "val_mse": 0.5, "train_loss": float("nan")})
    assert [e.name for e in events] == ["memorized", "diverged"]
    assert tracker.summary()["grokking_delay_steps"] is None


def test_restored_events_do_not_fire_again():
    first = EventTracker("acc", True, 0.9)
    first.update(row(10, 0.95, 0.1))
    again = EventTracker("acc", True, 0.9, [e.to_dict() for e in first.events])
    assert again.update(row(20, 0.97, 0.1)) == []


def _rows(**series):
    """Rows at steps 0, 10, 20, ... with the given per-row values (None: key absent)."""
    n = len(next(iter(series.values())))
    out = []
    for i in range(n):
        row = {"step": 10 * i, "time": float(i)}
        row.update({k.replace("__", "/"): v[i] for k, v in series.items() if v[i] is not None})
        out.append(row)
    return out


def _fire(rows):
    tracker = EventTracker("acc", True, 0.99)
    for row in rows:
        tracker.update(row)
    return tracker


def test_loss_spikes_fire_each_time_the_loss_leaves_and_returns():
    tracker = _fire(_rows(train_loss=[4.0, 1.0, 0.5, 1.2, 0.4, 0.3, 0.9, 0.35]))
    spikes = [e.step for e in tracker.events if e.name == "loss_spike"]
    assert spikes == [30, 60]  # 1.2 > 2 x 0.5; back under 1.0 at 0.4; 0.9 > 2 x 0.3
    assert tracker.summary()["loss_spike"] == 30 and tracker.summary()["loss_spike_count"] == 2


def test_slingshot_needs_a_spike_and_a_growing_last_layer():
    tracker = _fire(_rows(train_loss=[1.0, 0.2, 0.9, 0.1, 0.5],
                          weights__last_layer=[10.0, 10.2, 11.0, 11.1, 11.2]))
    # step 20: spike and +7.8% norm -> slingshot; step 40: spike (0.5 > 0.2) but only +0.9% -> none
    assert [e.step for e in tracker.events if e.name == "slingshot"] == [20]
    assert [e.step for e in tracker.events if e.name == "loss_spike"] == [20, 40]


def test_probe_events_fire_once_at_their_thresholds():
    tracker = _fire(_rows(attention_entropy__min=[2.0, 1.0, 0.19, 0.1],
                          hessian__eos_ratio=[0.1, 0.5, 0.95, 1.2],
                          softmax_collapse__fraction=[0.0, 0.2, 0.5, 0.9],
                          ntk__distance_from_init=[0.0, 0.05, 0.1, 0.3]))
    first = {e.name: e.step for e in reversed(tracker.events)}
    assert first == {"entropy_collapse": 20, "edge_of_stability": 20, "softmax_collapse": 20, "lazy_to_rich": 30}
    assert len(tracker.events) == 4


def test_detector_state_survives_a_checkpoint():
    rows = _rows(train_loss=[4.0, 1.0, 0.5, 1.2, 0.4, 0.3, 0.9, 0.35])
    whole = _fire(rows)
    first = _fire(rows[:4])
    second = EventTracker("acc", True, 0.99, [e.to_dict() for e in first.events], dict(first.state))
    for row in rows[4:]:
        second.update(row)
    assert [e.to_dict() for e in second.events] == [e.to_dict() for e in whole.events]


def test_an_evaluated_divergence_names_the_train_loss():
    tracker = EventTracker("acc", True, 0.99)
    [event] = tracker.update(row(30, 0.1, 0.1, loss=float("inf")))
    assert (event.name, event.step, event.metric, event.detail) == ("diverged", 30, "train_loss", "train loss is inf")


def test_a_recorded_event_counts_as_fired_and_is_not_detected_again():
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
def test_an_event_from_a_file_is_checked_field_by_field(entry, problem):
    with pytest.raises(ValueError, match=problem):
        EventTracker("acc", True, 0.9, [entry])


def test_detector_state_from_a_file_is_checked():
    with pytest.raises(ValueError, match="has 'in_spike' of type str"):
        EventTracker("acc", True, 0.9, [], {"in_spike": "yes"})
    assert check_state({"min_loss": 0.5, "unknown": object}) == {"min_loss": 0.5, "unknown": object}
