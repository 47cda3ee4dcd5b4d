"""What a report leaves on disk: the previous report after a full disk or a kill, valid UTF-8 whatever the run's
names and command hold, never a run's records overwritten (``--out``), user text escaped, and a run with
20,000 events reported."""

from __future__ import annotations

import errno
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trainlab import cli
from trainlab.report import output, write_compare_report, write_run_report

PNG = b"\x89PNG\r\n\x1a\n"


def make_run(root: Path, name: str = "run", *, rows: int = 20, events: list[dict] | None = None,
             summary: dict | None = None, config: dict | None = None) -> Path:
    """A finished run directory ``root/name`` in the trainer's format: falling losses, rising accuracies."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    config = config or {"name": name, "workload": {"name": "modular"}, "optimizer": {"name": "adamw", "lr": 1e-3}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    metrics = [{"step": 10 * i, "time": 0.1 * i, "train_loss": 1.0 / (i + 1), "val_loss": 1.5 / (i + 1),
                "train_acc": min(1.0, i / 10), "val_acc": min(1.0, i / 15)} for i in range(rows)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    (run_dir / "events.json").write_text(json.dumps(events or []))
    summary = {"name": name, "status": "completed", "workload": "modular", "metric": "acc", "threshold": 0.99,
               "command": f"trainlab run name={name}", **(summary or {})}
    (run_dir / "summary.json").write_text(json.dumps(summary))  # non-UTF-8 text as \udcXX escapes, as Python does
    return run_dir


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def disk_full_while_writing(monkeypatch, name: str) -> None:
    """Make the write of each file called ``name`` fail half-way, as a full disk does."""
    real = output.atomic_write_with

    def write(path, writer):
        if path.name != name:
            return real(path, writer)

        def half_then_full(f):
            whole = io.BytesIO()
            writer(whole)
            f.write(whole.getvalue()[: len(whole.getvalue()) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        return real(path, half_then_full)

    monkeypatch.setattr(output, "atomic_write_with", write)


# ------------------------------------------------------------------------------------- failed writes


@pytest.mark.parametrize("failing", ["report.html", "loss.png"])
def test_a_full_disk_leaves_the_previous_report_and_one_line(tmp_path, monkeypatch, capsys, failing):
    run_dir = make_run(tmp_path)
    write_run_report(run_dir)
    before = snapshot(run_dir)
    disk_full_while_writing(monkeypatch, failing)
    with pytest.raises(OSError) as failed:
        write_run_report(run_dir)
    assert failed.value.errno == errno.ENOSPC and Path(failed.value.filename).name == failing
    assert cli.main(["report", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and failing in err[0] and "No space left on device" in err[0]
    assert snapshot(run_dir) == before  # every file as it was, no temporary file left beside them
    monkeypatch.undo()
    assert write_run_report(run_dir).read_text().startswith("<!DOCTYPE html>")  # the next report just works


def test_a_kill_between_write_and_rename_leaves_the_previous_report(tmp_path):
    run_dir = make_run(tmp_path)
    write_run_report(run_dir)
    before = (run_dir / "report.html").read_bytes()
    code = ("import os, signal, sys\n"
            "from trainlab import cli\n"
            "rename = os.replace\n"
            "def kill_at_report(src, dst):\n"
            "    if str(dst).endswith('report.html'):\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n"
            "    rename(src, dst)\n"
            "os.replace = kill_at_report\n"
            "cli.main(['report', sys.argv[1]])\n")
    killed = subprocess.run([sys.executable, "-c", code, str(run_dir)], env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert killed.returncode < 0  # killed by the signal
    assert (run_dir / "report.html").read_bytes() == before
    assert write_run_report(run_dir).read_text().startswith("<!DOCTYPE html>")


# ------------------------------------------------------------------------------------------ encoding


def test_names_and_commands_that_are_not_utf8_are_written_escaped(tmp_path, capsys):
    # A directory named with a Latin-1 byte, a name and a command holding it as Python carries it (a surrogate).
    run_dir = make_run(tmp_path, os.fsdecode(b"caf\xe9"), summary={"name": "run caf\udce9",
                                                                   "command": "trainlab run name=caf\udce9"})
    page = write_run_report(run_dir).read_bytes().decode("utf-8")  # strict: the page is valid UTF-8
    assert "run caf\\xe9" in page and "trainlab run name=caf\\xe9" in page and "caf\\xe9" in page
    assert all((run_dir / "plots" / f).read_bytes()[:8] == PNG for f in ("loss.png", "metric.png"))
    other = make_run(tmp_path, "other")
    compare = write_compare_report([run_dir, other], tmp_path / "compare.html").read_bytes().decode("utf-8")
    assert "run caf\\xe9" in compare
    assert cli.main(["report", str(run_dir)]) == 0  # and the line it prints is printable on any terminal
    assert capsys.readouterr().out.strip().endswith("caf\\xe9/report.html")


# --------------------------------------------------------------------------------------- output paths


RECORDS = ["metrics.jsonl", "config.yaml", "summary.json", "events.json", "trace.jsonl", "checkpoints/step_1.pt"]


@pytest.mark.parametrize("record", RECORDS)
@pytest.mark.parametrize("command", ["report", "law", "export"])
def test_out_never_replaces_a_runs_records(tmp_path, capsys, command, record):
    run_dir = make_run(tmp_path)
    (run_dir / "trace.jsonl").write_text('{"step": 0, "lr": 0.001, "loss": 2.0}\n')
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "step_1.pt").write_bytes(b"weights")
    before = snapshot(run_dir)
    args = {"report": ["report", str(run_dir)], "law": ["law", str(run_dir)],
            "export": ["export", str(run_dir)]}[command]
    assert cli.main([*args, "--out", str(run_dir / record)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and record in err[0] and "refusing to write" in err[0]
    assert snapshot(run_dir) == before


def test_out_through_a_link_or_dotdot_is_refused_too(tmp_path, capsys):
    run_dir = make_run(tmp_path)
    (tmp_path / "link.html").symlink_to(run_dir / "metrics.jsonl")
    before = snapshot(run_dir)
    for out in (tmp_path / "link.html", run_dir / "plots" / ".." / "metrics.jsonl"):
        assert cli.main(["report", str(run_dir), "--out", str(out)]) == 2
        assert "metrics.jsonl" in capsys.readouterr().err
    assert snapshot(run_dir) == before


def test_law_refuses_an_image_format_matplotlib_cannot_write(tmp_path, capsys):
    assert cli.main(["law", str(make_run(tmp_path)), "--out", str(tmp_path / "law.nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0] and ".png" in err[0]


def test_out_may_replace_a_report(tmp_path):
    run_dir = make_run(tmp_path)
    write_run_report(run_dir)
    assert cli.main(["report", str(run_dir), str(run_dir), "--out", str(run_dir / "report.html")]) == 0
    assert "Comparing 2 runs" in (run_dir / "report.html").read_text()


# ------------------------------------------------------------------------------------------- escaping


EVIL = "<script>alert(1)</script> | a\nb"


def test_user_text_is_escaped_in_run_and_comparison_pages(tmp_path):
    config = {"name": EVIL, "workload": {"name": "modular"}, "optimizer": {"name": EVIL, "lr": 1e-3}}
    events = [{"name": "memorized", "step": 50, "time": 0.5, "detail": EVIL}]
    run_dir = make_run(tmp_path, "evil", config=config, events=events, summary={"name": EVIL, "command": EVIL})
    for page in (write_run_report(run_dir).read_text(),
                 write_compare_report([run_dir, make_run(tmp_path, "plain")], tmp_path / "c.html").read_text()):
        assert "<script" not in page.lower()
        assert "&lt;script&gt;alert(1)&lt;/script&gt; | a\nb" in page


# ------------------------------------------------------------------------------------- many events


def test_a_run_with_20000_events_is_reported(tmp_path):
    spikes = [{"name": "loss_spike", "step": 10 * k, "time": 0.01 * k, "value": 2.5, "metric": "train_loss",
               "detail": f"spike {k}"} for k in range(1, 20_001)]
    run_dir = make_run(tmp_path, "spiky", rows=2_000, events=spikes)
    page = write_run_report(run_dir).read_text()
    assert len(re.findall(r"<td>spike \d+</td>", page)) == 20_000  # every event in the table
    assert "<td>spike 20000</td>" in page and page.count("data:image/png;base64,") == 4
