"""The command line end to end, as a user types it (subprocesses; no traceback for user mistakes)."""

import json
import os
import re
import subprocess
import sys

import pytest

import trainlab

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "trainlab", *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd, timeout=300)


def test_version_and_help():
    assert cli("--version").stdout.strip() == f"trainlab {trainlab.__version__}"
    for command in ("run", "list", "report"):
        out = cli(command, "--help")
        assert out.returncode == 0 and "examples:" in out.stdout and f"trainlab {command}" in out.stdout


def test_list():
    out = cli("list", "optimizers")
    assert out.returncode == 0 and "adamw" in out.stdout and "[torch.optim.AdamW]" in out.stdout
    out = cli("list", "workloads", "--options")
    assert "modular" in out.stdout and "workload.p = 97" in out.stdout
    out = cli("list", "pruning", "--options")
    assert out.returncode == 0 and "magnitude" in out.stdout and "prune.sparsity = 0.0" in out.stdout


def test_run_help_names_every_top_level_key():
    from trainlab.train.config import TRAIN_KEYS

    out = cli("run", "--help").stdout
    top = out.split("top level:", 1)[1].split("sections", 1)[0]
    missing = [key for key in TRAIN_KEYS if not re.search(rf"(?<![\w.]){key}(?![\w.])", top)]
    assert not missing, missing
    from trainlab.distributed.strategy import STRATEGIES
    from trainlab.train.config import SECTIONS

    sections = out.split("sections", 1)[1]
    assert [s for s in SECTIONS if f"{s}.KEY" not in sections] == []  # every section, fed and dist included
    assert [n for n in STRATEGIES.names() if n not in sections] == []  # and every dist.strategy


def test_list_sections_shows_every_key_of_every_section():
    from dataclasses import fields

    from trainlab.train.config import SECTIONS

    out = cli("list", "sections", "--options")
    assert out.returncode == 0
    for section, options in SECTIONS.items():
        for f in fields(options):
            assert f"    {section}.{f.name} = " in out.stdout, f"{section}.{f.name}"
    assert "batch.lr_rule = 'none'" in out.stdout


def imported_by(*args, cwd=None):
    """The modules ``trainlab ARGS`` imports (it must exit 0)."""
    code = ("import sys\nfrom trainlab.cli import main\ntry:\n    code = main(sys.argv[1:])\n"
            "except SystemExit as stop:\n    code = stop.code\n"
            "print('MODULES', *sorted(sys.modules), file=sys.stderr)\nsys.exit(code)")
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=ENV, cwd=cwd,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return set(out.stderr.rsplit("MODULES", 1)[1].split())


def test_commands_import_only_what_they_use():
    """Start-up time is mostly imports: torch (1 s), pytorch_optimizer (0.8 s more) -- only where needed."""
    for args in (["--help"], ["run", "--help"], ["bench", "--help"], ["list", "schedules"]):
        assert "torch" not in imported_by(*args), args
    for what in ("workloads", "models", "probes"):
        assert "trainlab.optim" not in imported_by("list", what), what
    assert "pytorch_optimizer" not in imported_by("list", "strategies")  # (the strategies use optim's protocol)
    assert "pytorch_optimizer" in imported_by("list", "optimizers")


@pytest.mark.parametrize("args, words", [
    (["run", "optimizer.lrr=1"], "optimizer.lrr: unknown key; allowed: lr"),
    (["run", "steps=-3"], "steps: must be >= 1"),
    (["run", "workload=nope"], "unknown workload 'nope'"),
    (["run", "missing.yaml"], "config file 'missing.yaml' not found"),
    (["run", "workload=charlm", "workload.path=/no/such/file.txt", "steps=1"], "does not exist"),
    (["run", "workload=mnist", "workload.root=/nonexistent", "steps=1"], "never downloads"),
    (["run", "--resume", "/nonexistent"], "no config.yaml"),
    (["report", "/nonexistent"], "is not a directory"),
])
def test_user_mistakes_get_one_line_and_exit_2(args, words, tmp_path):
    out = cli(*args, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and words in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.mark.slow
def test_run_then_report_two_runs(tmp_path):
    base = ["run", "workload.p=23", "steps=40", "eval_every=20", "model.width=32"]
    first = cli(*base, "--out", "a", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "memorized" in first.stdout and "report:" in first.stdout
    quiet = cli(*base, "optimizer.weight_decay=0", "--out", "b", "--quiet", cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stdout == ""
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["command"].startswith("__main__.py run") or "run" in summary["command"]
    assert "torch" not in imported_by("report", "a", "b", "--out", "both.html", cwd=tmp_path)  # files only
    assert (tmp_path / "both.html").exists()
    page = (tmp_path / "both.html").read_text()
    assert ">a<" in page and ">b<" in page


def test_law_fits_one_run_and_predicts_another(tmp_path, capsys):
    from trainlab.cli import main

    for schedule in ("cosine", "wsd"):
        trainlab.run(None, ["workload=teacher_student", f"schedule={schedule}", "steps=300", "eval_every=300"],
                     out=tmp_path / schedule, quiet=True, report=False)
    assert main(["law", str(tmp_path / "cosine"), str(tmp_path / "wsd"), "--out", str(tmp_path / "law.png")]) == 0
    out = capsys.readouterr().out
    assert "fit on" in out and "predicted final loss" in out and (tmp_path / "law.png").stat().st_size > 1000
    assert main(["law", str(tmp_path / "missing")]) == 2
    assert "trace.jsonl not found" in capsys.readouterr().err

    # a hypothetical run with the WSD run's schedule, steps and lr gets exactly that run's predicted curve
    assert main(["law", str(tmp_path / "cosine"), str(tmp_path / "wsd"), "--predict", "schedule=wsd",
                 "--predict", "schedule=constant", "steps=600"]) == 0
    lines = capsys.readouterr().out.splitlines()
    real = next(line for line in lines if line.strip().startswith(str(tmp_path / "wsd")))
    hypo = next(line for line in lines if line.strip().startswith("schedule=wsd:"))
    assert real.split("predicted final loss ")[1].split(",")[0] == hypo.split("predicted final loss ")[1].split()[0]
    assert any(line.strip().startswith("schedule=constant steps=600:") and "600 steps" in line for line in lines)
    for bad in (["schedule=nope"], ["steps=10"], ["schedule=wsd", "schedule.nope=1"], ["colour=red"],
                ["schedule=wsd", "steps=0"], ["wsd"]):
        assert main(["law", str(tmp_path / "cosine"), "--predict", *bad]) == 2
        assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("what", ["sections", "optimizers", "probes"])
def test_list_into_a_closed_pipe_exits_quietly(what):
    """`trainlab list WHAT | head -1`: the reader stops early; no BrokenPipeError traceback."""
    out = subprocess.run(f"{sys.executable} -m trainlab list {what} --options | head -1", shell=True,
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert len(out.stdout.splitlines()) == 1 and "Traceback" not in out.stderr, out.stderr
