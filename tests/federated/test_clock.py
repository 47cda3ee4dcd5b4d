"""The simulated clock (trainlab.federated.clock): client speed models and the server's event queue, whose order
(ties by push order) must survive a checkpoint exactly."""

from __future__ import annotations

import io
import json
import math
import random

import pytest
import torch

from trainlab.federated.clock import SPEEDS, Event, EventQueue, read_trace, step_times


# ---------------------------------------------------------------------------------------------------- speeds


def test_registry_names():
    assert SPEEDS.names() == ["constant", "uniform", "lognormal", "trace"]
    assert all(entry.summary for entry in SPEEDS)


def test_constant():
    times = step_times("constant", 5)
    assert times.dtype == torch.float64 and times.tolist() == [1.0] * 5


def test_uniform_range_and_mean():
    times = step_times("uniform", 2000, spread=3.0, seed=1)
    assert times.dtype == torch.float64 and times.shape == (2000,)
    assert times.min() >= 1.0 and times.max() <= 4.0
    assert times.min() < 1.05 and times.max() > 3.95  # fills the range
    assert times.mean().item() == pytest.approx(2.5, abs=0.1)


def test_lognormal_median_one_and_log_spread():
    times = step_times("lognormal", 2000, spread=0.5, seed=0)
    assert (times > 0).all()
    assert times.median().item() == pytest.approx(1.0, abs=0.05)
    assert times.log().std().item() == pytest.approx(0.5, rel=0.08)
    assert times.log().mean().item() == pytest.approx(0.0, abs=0.05)


@pytest.mark.parametrize("kind", ["uniform", "lognormal"])
def test_zero_spread_is_homogeneous(kind):
    assert step_times(kind, 7, spread=0).tolist() == [1.0] * 7


@pytest.mark.parametrize("kind", ["uniform", "lognormal"])
def test_deterministic_by_seed_private_rng(kind):
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = step_times(kind, 50, seed=3)
    assert torch.equal(torch.get_rng_state(), before), "the global RNG was used"
    torch.manual_seed(1)
    assert torch.equal(first, step_times(kind, 50, seed=3))
    assert not torch.equal(first, step_times(kind, 50, seed=4))
    assert torch.equal(first[:10], step_times(kind, 10, seed=3))  # client k's speed does not depend on N


def test_trace_text_with_comments_cycles_over_clients(tmp_path):
    path = tmp_path / "speeds.txt"
    path.write_text("# seconds per step, measured\n0.5\n\n  2   # a slow phone\n1.25e0\n")
    assert read_trace(path) == [0.5, 2.0, 1.25]
    times = step_times("trace", 7, trace=str(path))
    assert times.dtype == torch.float64
    assert times.tolist() == [0.5, 2.0, 1.25, 0.5, 2.0, 1.25, 0.5]
    assert step_times("trace", 2, trace=str(path)).tolist() == [0.5, 2.0]


def test_trace_json_list(tmp_path):
    path = tmp_path / "speeds.json"
    path.write_text(json.dumps([3, 0.25]))
    assert step_times("trace", 3, trace=str(path)).tolist() == [3.0, 0.25, 3.0]


@pytest.mark.parametrize("content,fragment", [
    ("", "no values"),
    ("# only a comment\n\n", "no values"),
    ("1.0\n2.0\nfast\n", "line 3: 'fast' is not a number"),
    ("1.0\n0\n", "line 2: 0.0 is not a positive finite number"),
    ("-2\n", "line 1: -2.0 is not a positive finite number"),
    ("nan\n", "line 1: nan is not a positive finite number"),
    ("1\ninf\n", "line 2: inf is not a positive finite number"),
    ("[1, \"x\"]", "item 1: 'x' is not a number"),
    ("[1, true]", "item 1: True is not a number"),
    ("[1, -1]", "item 1: -1 is not a positive finite number"),
    ("[]", "no values"),
    ("[1,\n2,,]", "line 2: invalid JSON"),
])
def test_trace_file_errors_name_file_and_line(tmp_path, content, fragment):
    path = tmp_path / "trace.txt"
    path.write_text(content)
    with pytest.raises(ValueError) as info:
        step_times("trace", 4, trace=str(path))
    message = str(info.value)
    assert fragment in message and "trace.txt" in message and "\n" not in message


def test_trace_missing_unreadable_or_binary(tmp_path):
    for path, fragment in [(tmp_path / "nope.txt", "no such file"), (tmp_path, "cannot be read as text")]:
        with pytest.raises(ValueError, match=fragment):
            step_times("trace", 2, trace=str(path))
    binary = tmp_path / "speeds.bin"
    binary.write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(ValueError, match="speeds.bin.*cannot be read as text"):
        step_times("trace", 2, trace=str(binary))


@pytest.mark.parametrize("call,fragment", [
    (lambda: step_times("gpu", 3), "unknown client speed 'gpu'; allowed: constant, uniform, lognormal, trace"),
    (lambda: step_times("uniform", 0), "clients must be an integer >= 1, got 0"),
    (lambda: step_times("uniform", 3, spread=-0.1), "spread must be a finite number >= 0, got -0.1"),
    (lambda: step_times("lognormal", 3, spread=float("nan")), "spread must be a finite number >= 0"),
    (lambda: step_times("uniform", 3, seed=0.5), "seed must be an integer"),
    (lambda: step_times("trace", 3), "client speed 'trace' needs a trace file"),
    (lambda: step_times("uniform", 3, trace="speeds.txt"), "read only by client speed 'trace'"),
])
def test_step_times_errors(call, fragment):
    with pytest.raises(ValueError) as info:
        call()
    assert fragment in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------------- queue


def drain(queue: EventQueue) -> list[Event]:
    return [queue.pop() for _ in range(len(queue))]


def test_queue_orders_by_time_then_push_order():
    queue = EventQueue()
    assert len(queue) == 0 and queue.peek() is None
    queue.push(2.0, "arrival", 0, 10)
    queue.push(1.0, "zeta", 9, 11)      # ties at 1.0: push order, not client id or kind
    queue.push(1.0, "arrival", 3, 12)
    queue.push(1.0, "alpha", 1, 13)
    queue.push(0.5, "deadline", -1, 14)  # a server timer: client -1
    assert len(queue) == 5
    assert queue.peek() == Event(0.5, 4, "deadline", -1, 14)
    assert len(queue) == 5  # peek does not remove
    events = drain(queue)
    assert [e.ticket for e in events] == [14, 11, 12, 13, 10]
    assert [e.seq for e in events] == [4, 1, 2, 3, 0]
    with pytest.raises(IndexError, match="empty EventQueue"):
        queue.pop()


def test_queue_accepts_numbers_of_other_types():
    queue = EventQueue()
    queue.push(3, "a", torch.tensor(2), 0)
    queue.push(torch.tensor(1.5, dtype=torch.float64), "b", 1, 1)
    first = queue.pop()
    assert first == Event(1.5, 1, "b", 1, 1) and type(first.time) is float
    second = queue.pop()
    assert type(second.time) is float and type(second.client) is int and second.client == 2


@pytest.mark.parametrize("args,fragment", [
    ((float("nan"), "a", 0, 0), "time must be a finite number >= 0, got nan"),
    ((-1.0, "a", 0, 0), "time must be a finite number >= 0, got -1.0"),
    ((float("inf"), "a", 0, 0), "time must be a finite number >= 0, got inf"),
    (("1.0", "a", 0, 0), "time must be a finite number >= 0, got '1.0'"),
    ((True, "a", 0, 0), "time must be a finite number >= 0, got True"),
    ((1.0, "", 0, 0), "kind must be a non-empty string"),
    ((1.0, 3, 0, 0), "kind must be a non-empty string"),
    ((1.0, "a", 1.0, 0), "client must be an integer, got 1.0"),
    ((1.0, "a", 0, False), "ticket must be an integer, got False"),
])
def test_push_refuses_bad_events(args, fragment):
    queue = EventQueue()
    with pytest.raises(ValueError, match=None) as info:
        queue.push(*args)
    assert fragment in str(info.value)
    assert len(queue) == 0
    queue.push(1.0, "a", 0, 0)  # the counter was not advanced by the refused push
    assert queue.pop().seq == 0


def checkpointed(state: dict) -> dict:
    """``state`` through torch.save / torch.load(weights_only=True), as a checkpoint carries it."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def fill(queue: EventQueue, rng: random.Random, count: int, start: int) -> None:
    for i in range(count):
        # few distinct times (many ties) and some irrational ones (exact float round trip)
        time = rng.choice([0.0, 1.0, 2.5, 2.5, math.pi, 1 / 3]) + rng.randrange(3)
        queue.push(time, rng.choice(["arrival", "deadline"]), rng.randrange(-1, 5), start + i)


def test_state_round_trip_mid_way_reproduces_the_pop_order():
    rng = random.Random(0)
    reference, resumed_from = EventQueue(), EventQueue()
    for queue in (reference, resumed_from):
        fill(queue, random.Random(1), 200, 0)
        for _ in range(60):
            queue.pop()
    state = resumed_from.state_dict()
    resumed = EventQueue()
    resumed.load_state_dict(checkpointed(state))
    assert len(resumed) == len(reference) == 140
    assert resumed.state_dict() == state
    # pushes after the resume get later sequence numbers, so ties with old events break as without the resume
    fill(reference, random.Random(2), 50, 1000)
    fill(resumed, random.Random(2), 50, 1000)
    interleaved_ref, interleaved_res = [], []
    while len(reference):
        interleaved_ref.append(reference.pop())
        interleaved_res.append(resumed.pop())
        if rng.random() < 0.2:  # and pushes between pops, too
            t = interleaved_ref[-1].time + rng.choice([0.0, 1.0])
            reference.push(t, "arrival", 0, 5000 + len(interleaved_ref))
            resumed.push(t, "arrival", 0, 5000 + len(interleaved_res))
    assert interleaved_res == interleaved_ref
    assert len(resumed) == 0
    times = [e.time for e in interleaved_ref]
    assert times == sorted(times)
    ties = [(a.seq, b.seq) for a, b in zip(interleaved_ref, interleaved_ref[1:]) if a.time == b.time]
    assert len(ties) > 50 and all(x < y for x, y in ties)


def test_state_dict_is_plain_python():
    queue = EventQueue()
    queue.push(1.5, "arrival", 2, 7)
    queue.push(0.5, "deadline", -1, 8)
    state = queue.state_dict()
    assert state == {"version": 1, "next_seq": 2,
                     "events": [[0.5, 1, "deadline", -1, 8], [1.5, 0, "arrival", 2, 7]]}
    assert json.loads(json.dumps(state)) == state
    empty = EventQueue()
    empty.load_state_dict(checkpointed(EventQueue().state_dict()))
    assert len(empty) == 0 and empty.peek() is None


def good_state() -> dict:
    return {"version": 1, "next_seq": 3, "events": [[0.5, 1, "deadline", -1, 8], [1.5, 0, "arrival", 2, 7]]}


def with_event(index: int, value: object) -> dict:
    state = good_state()
    state["events"][0][index] = value
    return state


@pytest.mark.parametrize("state,fragment", [
    ([], "got 'list', not the keys"),
    ({"version": 1, "events": []}, "not the keys ['events', 'next_seq', 'version']"),
    ({**good_state(), "extra": 1}, "not the keys"),
    ({**good_state(), "version": 2}, "version 2 (this trainlab reads version 1)"),
    ({**good_state(), "version": True}, "version True"),
    ({**good_state(), "next_seq": -1}, "next_seq -1 is not an integer >= 0"),
    ({**good_state(), "next_seq": 3.0}, "next_seq 3.0 is not an integer >= 0"),
    ({**good_state(), "events": "x"}, "events is a str, not a list"),
    ({**good_state(), "events": [[0.5, 1, "a", 0]]}, "event 0 is [0.5, 1, 'a', 0], not [time, seq, kind, client"),
    (with_event(0, float("nan")), "event 0 time nan is not a finite float >= 0"),
    (with_event(0, -0.5), "event 0 time -0.5 is not a finite float >= 0"),
    (with_event(0, 1), "event 0 time 1 is not a finite float"),
    (with_event(1, 0), "event 1 seq 0 is not a unique integer"),  # the duplicate is found at the second
    (with_event(1, 3), "event 0 seq 3 is not a unique integer in [0, next_seq=3)"),
    (with_event(1, True), "event 0 seq True"),
    (with_event(2, ""), "event 0 kind '' is not a non-empty string"),
    (with_event(3, "2"), "client/ticket '2'/8 are not integers"),
    (with_event(4, 8.0), "client/ticket -1/8.0 are not integers"),
])
def test_malformed_state_refused_and_queue_unchanged(state, fragment):
    queue = EventQueue()
    queue.push(9.0, "arrival", 1, 1)
    before = queue.state_dict()
    with pytest.raises(ValueError) as info:
        queue.load_state_dict(state)
    message = str(info.value)
    assert message.startswith("malformed EventQueue state") and fragment in message and "\n" not in message
    assert queue.state_dict() == before


def test_good_state_loads_and_continues_numbering():
    queue = EventQueue()
    queue.load_state_dict(good_state())
    queue.push(0.5, "arrival", 4, 9)
    assert [(e.seq, e.ticket) for e in drain(queue)] == [(1, 8), (3, 9), (0, 7)]
