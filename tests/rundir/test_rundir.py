"""The run-directory format: what the writer writes the readers read back, torn lines, truncation on resume,
and one-line errors that name the file for everything a user can get wrong."""

import math
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from trainlab import cli
from trainlab.errors import RunDirError
from trainlab.rundir import CONFIG, METRICS, SUMMARY, TRACE, RunDir, new_run_dir, printable
from trainlab.rundir import summary as summary_of

CONFIG_TEXT = "workload:\n  name: modular\n  p: 97\noptimizer:\n  name: adamw\n  lr: 0.001\nsteps: 30\n"


def write_run(path):
    """A run directory written through the writer: three evaluations, a trace, events and a summary."""
    rd = RunDir(path)
    rd.create()
    rd.write_config(CONFIG_TEXT)
    for step in (0, 10, 20):
        rd.append_metrics({"step": step, "time": step / 10, "wall": step / 5, "train_loss": 1.0 / (step + 1),
                           "val_acc": step / 20})
    rd.append_trace([{"step": s, "lr": 0.1, "loss": 1.0, "grad_norm": 2.0} for s in range(21)])
    rd.write_json("events.json", [{"name": "memorized", "step": 10, "time": 1.0}])
    rd.write_json(SUMMARY, {"status": "completed", "steps": 20})
    return rd


def error(call):
    """The message of the RunDirError ``call()`` raises; it is one line."""
    with pytest.raises(RunDirError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------------ round trip


def test_what_is_written_is_read_back(tmp_path):
    write_run(tmp_path / "run")
    rd = RunDir.open(tmp_path / "run")
    assert rd.config() == {"workload": {"name": "modular", "p": 97}, "optimizer": {"name": "adamw", "lr": 0.001},
                           "steps": 30}
    assert [r["step"] for r in rd.metrics()] == [0, 10, 20] and rd.metrics()[1]["time"] == 1.0
    assert [r["step"] for r in rd.trace()] == list(range(21))
    assert rd.events() == [{"name": "memorized", "step": 10, "time": 1.0}]
    assert rd.summary() == {"status": "completed", "steps": 20}
    assert rd.checkpoints.is_dir() and rd.has_run() and rd.notes == []
    assert not list((tmp_path / "run").glob(".*.tmp"))  # atomic writes leave no temporary files


def test_missing_files_read_as_nothing(tmp_path):
    rd = RunDir(tmp_path)
    assert rd.config() == {} and rd.metrics() == [] and rd.trace() == [] and rd.events() == []
    assert rd.summary() is None and not rd.has_run()


def test_non_finite_numbers_are_strict_json_and_read_back(tmp_path):
    rd = RunDir(tmp_path)
    rd.append_metrics({"step": 0, "nan": math.nan, "inf": math.inf, "minf": -math.inf, "text": "x"})
    rd.write_json(SUMMARY, {"final": {"loss": math.inf, "acc": math.nan}})
    text = (tmp_path / METRICS).read_text() + (tmp_path / SUMMARY).read_text()
    assert "NaN" not in text and "Infinity" not in text
    row = rd.metrics()[0]
    assert row["nan"] is None and row["inf"] == math.inf and row["minf"] == -math.inf and row["text"] == "x"
    assert rd.summary()["final"] == {"loss": "inf", "acc": None}


def test_repeated_steps_keep_the_last_row_in_step_order(tmp_path):
    rd = RunDir(tmp_path)
    rows = [{"step": 0, "v": 0}, {"step": 10, "v": 1}, {"step": 20, "v": 2}, {"step": 10, "v": 3}, {"step": 5, "v": 4}]
    rd.append_jsonl(rd.metrics_path, rows)
    rd.append_trace(rows)
    for read in (rd.metrics, rd.trace):
        assert [(r["step"], r["v"]) for r in read()] == [(0, 0), (5, 4), (10, 3), (20, 2)]


# -------------------------------------------------------------------------------------------- torn lines


@pytest.mark.parametrize("torn", [b'{"step": 30, "val_ac', b'{"step": 30, "x": "\xc3', b"[1, 2]"])
def test_a_torn_last_line_is_skipped_and_noted(tmp_path, torn):
    rd = write_run(tmp_path / "run")
    with rd.metrics_path.open("ab") as f:
        f.write(torn)
    assert [r["step"] for r in rd.metrics()] == [0, 10, 20]
    assert rd.notes == [f"{rd.metrics_path}: skipped unparsable last line 4"]


@pytest.mark.parametrize("line, problem", [(b'{"step": 5, "lo', "is not valid JSON"),
                                           (b'{"step": 5, "x": "\xff"}', "is not UTF-8 text"),
                                           (b'{"time": 1.0}', "is not a JSON object with an integer step"),
                                           (b'{"step": 1.5}', "is not a JSON object with an integer step"),
                                           (b"[1, 2]", "is not a JSON object with an integer step")])
def test_a_bad_line_before_the_last_is_an_error(tmp_path, line, problem):
    rd = write_run(tmp_path / "run")
    lines = rd.trace_path.read_bytes().splitlines()
    lines[3] = line
    rd.trace_path.write_bytes(b"\n".join(lines) + b"\n")
    assert error(rd.trace) == f"{rd.trace_path}: line 4 {problem}"


# -------------------------------------------------------------------------------------------- truncation


def test_truncate_to_checkpoint(tmp_path):
    rd = write_run(tmp_path / "run")
    rd.append_metrics({"step": 30, "train_loss": 0.1})
    with rd.metrics_path.open("a") as f:
        f.write('{"step": 40, "tr')  # torn by a kill
    rd.truncate_to_checkpoint(20)
    assert [r["step"] for r in rd.metrics()] == [0, 10, 20]  # the evaluation of the checkpoint's step stays
    assert [r["step"] for r in rd.trace()] == list(range(20))  # the steps taken before it
    assert rd.metrics_path.read_text().endswith("}\n") and rd.notes == []
    rd.append_metrics({"step": 30, "train_loss": 0.2})  # appending after a torn line would have merged them
    assert [r["step"] for r in rd.metrics()] == [0, 10, 20, 30]


def test_truncate_without_logs_writes_nothing(tmp_path):
    RunDir(tmp_path).truncate_to_checkpoint(5)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kind", ["missing", "file", "empty dir"])
def test_open_refuses_what_is_not_a_run(tmp_path, kind):
    target = tmp_path / "nope"
    if kind == "file":
        target.write_text("hello")
    elif kind == "empty dir":
        target.mkdir()
    message = error(lambda: RunDir.open(target))
    assert message.startswith(f"not a trainlab run directory: {target} (")


def test_a_run_is_a_config_or_metrics(tmp_path):
    (tmp_path / CONFIG).write_text(CONFIG_TEXT)
    assert RunDir.open(tmp_path).path == tmp_path
    (tmp_path / CONFIG).unlink()
    (tmp_path / METRICS).write_text("")
    assert RunDir.open(str(tmp_path)).path == tmp_path


@pytest.mark.parametrize("content", [b"", b"\n\n", b'{"step": 0, "lo'])
def test_required_metrics_need_a_row(tmp_path, content):
    rd = RunDir(tmp_path)
    assert error(lambda: rd.metrics(required=True)) == f"no metrics in {rd.metrics_path} (file not found)"
    rd.metrics_path.write_bytes(content)
    assert rd.metrics() == []
    assert error(lambda: rd.metrics(required=True)) == f"no metrics in {rd.metrics_path} (empty, or no complete row)"


def test_required_trace(tmp_path):
    rd = RunDir(tmp_path)
    assert error(lambda: rd.trace(required=True)) == f"{rd.trace_path} not found (runs record it unless trace=false)"
    (tmp_path / TRACE).write_text("")
    assert error(lambda: rd.trace(required=True)) == f"{rd.trace_path} holds 0 steps (empty, or no complete row)"


def test_required_config(tmp_path):
    rd = RunDir(tmp_path)
    assert str(rd.config_path) in error(lambda: rd.config(required=True))


@pytest.mark.parametrize("content, problem", [
    (b"a: [1, 2\n", "not valid YAML (line 2)"),
    (b"- 1\n- 2\n", "expected a mapping of config keys, found a list"),
    (b"", "expected a mapping of config keys, found nothing (empty or null)"),
    (b"lr: 0.1\nname: \xff\n", "not UTF-8 text (byte 14)"),
])
def test_bad_config(tmp_path, content, problem):
    rd = RunDir(tmp_path)
    rd.config_path.write_bytes(content)
    assert error(rd.config) == f"{rd.config_path}: {problem}"


@pytest.mark.parametrize("name", ["summary", "events"])
@pytest.mark.parametrize("content, problem", [
    (b'{"status": "comp', "not valid JSON (line 1: Unterminated string starting at)"),
    (b"\xff\xfe", "not UTF-8 text (byte 0)"),
    (b"7", "expected {kind}, found a int (7)"),
])
def test_bad_json_files(tmp_path, name, content, problem):
    rd = RunDir(tmp_path)
    path = rd.summary_path if name == "summary" else rd.events_path
    path.write_bytes(content)
    kind = "an object (mapping)" if name == "summary" else "a list"
    assert error(getattr(rd, name)) == f"{path}: {problem.format(kind=kind)}"


def test_summary_and_events_of_the_wrong_kind(tmp_path):
    rd = RunDir(tmp_path)
    rd.write_json(SUMMARY, [1])
    rd.write_json("events.json", {"memorized": 3})
    assert error(rd.summary) == f"{rd.summary_path}: expected an object (mapping), found a list"
    assert error(rd.events) == f"{rd.events_path}: expected a list, found an object (mapping)"
    rd.write_json("events.json", [{"name": "memorized", "step": 3}, {"name": "generalized"}])
    assert error(rd.events) == (f"{rd.events_path}: entry 2 is not an event (an object with a name and an integer "
                                "step)")


def test_unreadable_file_is_a_one_line_error(tmp_path):
    rd = RunDir(tmp_path)
    rd.summary_path.mkdir()  # a directory where a file should be: not "missing", but not readable either
    message = error(rd.summary)
    assert str(rd.summary_path) in message and "not a regular file" in message


@pytest.mark.parametrize("setup", ["not a run", "empty metrics", "bad summary"])
def test_trainlab_report_prints_one_line_and_exits_2(tmp_path, capsys, setup):
    target = tmp_path / "x"
    target.mkdir()
    if setup != "not a run":
        (target / METRICS).write_text("" if setup == "empty metrics" else '{"step": 0, "train_loss": 1.0}\n')
    if setup == "bad summary":
        (target / SUMMARY).write_text("{")
    assert cli.main(["report", str(target)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("trainlab: error: ") and err.count("\n") == 1 and str(target) in err


# ------------------------------------------------------------------------------------------- the rest


def test_new_run_dir_never_reuses_a_name(tmp_path):
    first = new_run_dir(tmp_path / "runs", "a b/c")
    assert first == tmp_path / "runs" / "a-b-c" and first.is_dir()  # made, with its parents
    assert new_run_dir(tmp_path / "runs", "a b/c") == tmp_path / "runs" / "a-b-c-2"
    assert new_run_dir(tmp_path, "///") == tmp_path / "run"
    assert new_run_dir(tmp_path, "caf\udce9 \u00e9t\u00e9") == tmp_path / "caf-t"  # ASCII only, whatever the bytes


def test_new_run_dir_gives_simultaneous_callers_a_directory_each(tmp_path):
    start = threading.Barrier(8)

    def make(_):
        start.wait()
        return new_run_dir(tmp_path, "same")

    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(make, range(8)))
    assert sorted(made) == sorted([tmp_path / "same", *(tmp_path / f"same-{k}" for k in range(2, 9))])


def test_printable_writes_undecodable_bytes_as_escapes():
    assert printable("caf\udce9") == "caf\\xe9"  # the byte 0xe9 of a Latin-1 command line, as Python holds it
    assert printable("caf\u00e9 \u6f22") == "caf\u00e9 \u6f22"  # valid text is unchanged
    assert printable("x\ud800") == "x\\ud800"  # a lone surrogate that stands for no byte
    for text in ("caf\udce9", "x\ud800"):
        printable(text).encode("utf-8")


def test_importing_the_format_stays_light():
    code = ("import sys, trainlab.rundir, trainlab.rundir.summary, trainlab.rundir.atomic; "
            "print(sorted(m for m in ('torch', 'numpy', 'matplotlib', 'yaml') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------------------------- summary


ROWS = [
    {"step": 0, "time": 0.0, "wall": 0.5, "train_acc": 0.1, "val_acc": 0.1, "probe_seconds/weights": 0.01},
    {"step": 5, "time": 0.5, "wall": 1.0, "weights/total": 3.0, "probe_seconds/weights": 0.02},
    {"step": 10, "time": 1.0, "wall": 2.0, "train_acc": 0.9, "val_acc": 0.7, "val_loss": None},
    {"step": 15, "time": None, "wall": 2.5, "weights/total": 3.5, "probe_seconds/weights": 0.03},  # a probe row
]


def test_summary_from_rows():
    out = summary_of.from_rows(ROWS, "acc", higher_is_better=True)
    assert out["steps"] == 15 and out["train_time"] == 1.0 and out["wall_time"] == 2.5
    assert out["cpu_time"] is None  # rows written before the CPU clock
    assert summary_of.from_rows([{**r, "cpu_time": r["step"] / 8} for r in ROWS], "acc", True)["cpu_time"] == 1.875
    assert out["best_val_acc"] == 0.7 and summary_of.from_rows(ROWS, "acc", False)["best_val_acc"] == 0.1
    # final: each key's last value, so the probe row at the end does not hide the last evaluation
    assert out["final"]["train_acc"] == 0.9 and out["final"]["weights/total"] == 3.5 and out["final"]["time"] is None
    assert out["final"]["val_loss"] is None and out["final"]["step"] == 15
    empty = summary_of.from_rows([], "acc", True)
    assert empty == {"steps": None, "train_time": None, "cpu_time": None, "wall_time": None, "final": {},
                     "best_val_acc": None}


def test_probe_cost():
    assert summary_of.probe_cost(ROWS) == {"weights": {"calls": 3, "seconds": 0.06}}
    assert summary_of.probe_cost(ROWS, ["weights", "hessian"]) == {"weights": {"calls": 3, "seconds": 0.06},
                                                                   "hessian": {"calls": 0, "seconds": 0}}
    assert summary_of.probe_cost(ROWS, []) == {}


def test_events_summary_matches_the_trainers():
    from trainlab.train.events import REPEATING, EventTracker

    events = [{"name": "loss_spike", "step": 3, "time": 0.3, "value": 2.0, "metric": "train_loss", "detail": ""},
              {"name": "memorized", "step": 10, "time": 1.0, "value": 1.0, "metric": "acc", "detail": ""},
              {"name": "loss_spike", "step": 12, "time": 1.2, "value": 2.0, "metric": "train_loss", "detail": ""},
              {"name": "generalized", "step": 30, "time": 3.5, "value": 1.0, "metric": "acc", "detail": ""}]
    for some in (events, events[:2], []):
        tracker = EventTracker("acc", True, 0.99, events=some)
        assert summary_of.from_events(some, REPEATING) == tracker.summary()
    out = summary_of.from_events(events)
    assert out["memorized"] == 10 and out["loss_spike_count"] == 2
    assert out["grokking_delay_steps"] == 20 and out["grokking_delay_seconds"] == 2.5
