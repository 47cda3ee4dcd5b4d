import math

from trainlab.train.events import EventTracker


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
