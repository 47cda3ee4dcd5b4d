"""Fuzz: malformed command lines and tampered run directories get one line and exit code 2, never a traceback.

Cases are generated from a seeded random stream, so a failure names a case that reproduces: every generated
command line is a user mistake by construction (one invalid element among valid ones), and it must be refused
with exit code 2 and exactly one line on stderr that starts with ``trainlab:``. Tampered run directories are
copies of one real, small run with one file damaged, edited, replaced or removed; every command that reads run
directories (report, run --resume, export, law, a refined schedule built from it) must then either succeed
(exit 0: the damage does not concern it) or refuse with one line -- never raise.

The commands run in this process through :func:`trainlab.cli.main` (what the ``trainlab`` script calls), so an
exception that escapes is a traceback the user would have seen. Crafted inputs (alias bombs, FIFOs, huge
integers, ...) and failures of the machine (a full disk, a read-only directory) have a section of their own
at the end: one test id per class, each printing its counts.
"""

from __future__ import annotations

import errno
import json
import math
import os
import random
import shutil
import string
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

import trainlab
import trainlab.rundir.checkpoints as checkpoints
from trainlab.cli import main
from trainlab.errors import shorten
from trainlab.rundir import RunDir

SEED = 20261206
N_RUN_CASES = 240  # generated `trainlab run` mistakes
QUIET = ["--quiet", "--no-report"]

# ------------------------------------------------------------------------------------------------ harness


def invoke(args: list[str], capsys) -> tuple[int, str]:
    """Run ``trainlab ARGS`` in-process: (exit code, stderr). An escaping exception fails the test as it is."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as stop:  # argparse's --help / usage errors
        code = stop.code if isinstance(stop.code, int) else 2
    return code, capsys.readouterr().err


def assert_refused(args: list[str], capsys, why: str = "") -> str:
    code, err = invoke(args, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"{args} ({why}) exited {code}, stderr: {err!r}"
    assert len(lines) == 1 and lines[0].startswith("trainlab:"), f"{args} ({why}): not one line: {err!r}"
    return lines[0]


def assert_ok_or_refused(args: list[str], capsys, why: str = "") -> int:
    code, err = invoke(args, capsys)
    if code == 0:
        return 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("trainlab:"), f"{args} ({why}): {code} {err!r}"
    return 2


def tally(record_property, group: str, attempts: int, handled: int) -> None:
    """Record a group's counts; tests/conftest.py prints every group's at the end of the session (CI's log)."""
    record_property("fuzz", [group, attempts, handled])


# ------------------------------------------------------------------------------------------------ run mistakes

# Keys with their option type, for type mistakes (one of each kind of type the config understands).
TYPED = {
    "steps": int, "seed": int, "batch_size": int, "eval_every": int, "checkpoint_every": int,
    "grad_clip": float, "threshold": float, "time_budget": float, "stop_at_target": bool, "compile": bool,
    "trace": bool, "dtype": "literal", "device": "literal", "autocast": "literal",
    "optimizer.lr": float, "optimizer.weight_decay": float, "optimizer.betas": "pair", "optimizer.amsgrad": bool,
    "model.width": int, "model.depth": int, "model.activation": "literal", "model.bias": bool,
    "workload.p": int, "workload.train_frac": float, "workload.op": "literal", "schedule.warmup": int,
    "loss.z_loss": float, "loss.function": "literal", "param.init": "literal", "param.output_scale": float,
    "probes.every": int, "probes.examples": int, "dist.strategy": "literal", "dist.inner_steps": int,
}
WRONG = {
    int: ["abc", "1.5", "true", "[1,2]", "", "1e400", "0x1g", "½"],
    float: ["abc", "nan", "inf", "-inf", "1,2", "true", "[]", "1e99999", "0.1.2"],
    bool: ["maybe", "2", "yes please", "1.0", "[]", "nul"],
    "literal": ["zzz", "CPU ", "float16", "42", "ñ"],
    "pair": ["0.9", "0.9,0.9,0.9", "a,b", "(0.9;0.99)"],
}
OUT_OF_RANGE = ["steps=0", "steps=-5", "eval_every=0", "batch_size=-1", "checkpoint_every=-1", "grad_clip=0",
                "optimizer.lr=-1", "optimizer.weight_decay=-0.1", "model.width=0", "workload.train_frac=1.5",
                "workload.train_frac=0", "probes.hessian_k=100", "dist.alpha=2", "dist.outer_momentum=1",
                "loss.elr_beta=1", "param.output_scale=0", "time_budget=0", "eval_examples=-1",
                "optimizer.betas=1.5,0.9", "model.depth=-1", "workload.p=1", "probes.examples=0"]
CONFLICTS = [  # each valid alone, refused together (or needing something the machine lacks)
    ["target_metric=val_acc", "target=0.5"], ["target_metric=val_loss"], ["dist.inner_steps=3"],
    ["dist=diloco", "dist.dgc_density=0.5"], ["dist=fsdp", "dist.compression=dgc"],
    ["schedule=cosine", "schedule.warmup=5000", "steps=100"], ["workload=mnist1d", "model=transformer"],
    ["optimizer=agd"], ["param.mup_base_width=32", "optimizer=muon"], ["device=cuda"], ["device=mps"],
    ["dist.compression=powersgd"], ["schedule=refined"], ["schedule=refined", "schedule.from_run=/no/such/run"],
    ["probes=nonexistent"], ["loss=stablemax", "workload=teacher_student"], ["model.width=300000"],
    ["workload.p=300000"], ["dist=streaming_diloco", "dist.fragments=100"], ["optimizer=perpgrad",
    "optimizer.base=nosuch"], ["optimizer=perpgrad", "optimizer.base=perpgrad"], ["schedule=step",
    "schedule.step_size=0"], ["schedule=multistep", "schedule.milestones=2,1"], ["workload=charlm",
    "workload.path=/etc"], ["workload=mnist", "workload.root=/nonexistent"],
]
SYNTAX = ["steps", "=3", " =3", "..=1", "optimizer..lr=1", "optimizer.lr.x=1", "probes.every.x=1", ".steps=1",
          "steps.x=1", "loss.z_loss.a=1", "workload.=1", "optimizer.=1", "model.width.=3"]


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase + "_") for _ in range(rng.randint(3, 12))) + "x"


def run_mistakes(rng: random.Random, n: int) -> list[tuple[list[str], str]]:
    """``n`` generated command lines, each with exactly one kind of mistake, plus valid neighbours."""
    valid = ["workload.p=11", "model.width=8", "steps=3", "eval_every=1", "optimizer.lr=1e-3", "seed=1"]
    kinds = ["unknown_key", "unknown_option", "unknown_name", "wrong_type", "range", "syntax", "conflict",
             "unknown_section_value"]
    cases = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        if kind == "unknown_key":
            bad = [f"{_word(rng)}=1"]
        elif kind == "unknown_option":
            bad = [f"{rng.choice(['optimizer', 'model', 'workload', 'schedule', 'loss', 'param', 'probes', 'dist'])}."
                   f"{_word(rng)}={rng.randint(0, 9)}"]
        elif kind == "unknown_name":
            bad = [f"{rng.choice(['optimizer', 'model', 'workload', 'schedule'])}={_word(rng)}"]
        elif kind == "wrong_type":
            key = rng.choice(sorted(TYPED))
            bad = [f"{key}={rng.choice(WRONG[TYPED[key]])}"]
        elif kind == "range":
            bad = [rng.choice(OUT_OF_RANGE)]
        elif kind == "syntax":
            bad = [rng.choice(SYNTAX)]
        elif kind == "conflict":
            bad = list(rng.choice(CONFLICTS))
        else:
            bad = [f"{rng.choice(['loss', 'param', 'dist'])}={_word(rng)}"]
        keys = {b.partition("=")[0].strip() for b in bad}
        others = [v for v in rng.sample(valid, rng.randint(0, len(valid))) if v.partition("=")[0] not in keys]
        args = others + bad
        rng.shuffle(args)
        cases.append((args, kind))
    return cases


def test_generated_run_mistakes_are_refused_in_one_line(tmp_path, capsys, monkeypatch, record_property):
    monkeypatch.chdir(tmp_path)
    rng = random.Random(SEED)
    seen = {}
    for args, kind in run_mistakes(rng, N_RUN_CASES):
        line = assert_refused(["run", *args, *QUIET, "--out", str(tmp_path / "never")], capsys, kind)
        seen.setdefault(kind, line)
    assert len(seen) == 8  # every kind of mistake was generated and refused
    assert not (tmp_path / "never").exists()  # nothing was written for a refused command
    tally(record_property, "generated run mistakes", N_RUN_CASES, N_RUN_CASES)


# ------------------------------------------------------------------------------------------------ config files

CONFIG_FILES = {
    "missing": None,
    "a directory": "DIR",
    "not UTF-8": b"\xff\xfe\x00steps: 3\n",
    "invalid YAML": b"steps: [3\n",
    "a list": b"- steps: 3\n",
    "a scalar": b"42\n",
    "unknown key": b"stepz: 3\n",
    "deep nesting": b"optimizer: {lr: {value: 3}}\n",
    "component as number": b"optimizer: 3\n",
    "component as list": b"optimizer: [adamw]\n",
    "non-string key": b"1: 2\n",
    "section as list": b"probes: [[1]]\n",
    "tabs": b"steps:\t3\n\tseed: 1\n",
    "binary": bytes(range(256)),
    "empty name": b"optimizer: {name: ''}\n",
    "null name": b"optimizer: {name: null, lr: 1}\n",
    "anchor bomb": b"a: &a [1,1,1,1]\nb: &b [*a,*a,*a,*a]\nsteps: *b\n",
    "python tag": b"steps: !!python/object/apply:os.system ['echo hi']\n",
}


@pytest.mark.parametrize("name", list(CONFIG_FILES))
def test_malformed_config_files_are_refused_in_one_line(name, tmp_path, capsys, monkeypatch, record_property):
    monkeypatch.chdir(tmp_path)
    content = CONFIG_FILES[name]
    path = tmp_path / "config.yaml"
    if content == "DIR":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    assert_refused(["run", str(path), *QUIET, "--out", str(tmp_path / "never")], capsys, name)
    tally(record_property, "malformed config files", 1, 1)


# ------------------------------------------------------------------------------------------------ other commands

def other_command_mistakes(tmp: Path) -> list[list[str]]:
    not_run = tmp / "empty"
    not_run.mkdir()
    a_file = tmp / "file.txt"
    a_file.write_text("hello")
    return [
        ["nosuch"], ["run", "--nosuch"], ["list"], ["list", "bogus"], ["list", "optimizers", "extra"],
        ["report"], ["report", str(tmp / "missing")], ["report", str(not_run)], ["report", str(a_file)],
        ["export", str(not_run)], ["export", str(a_file)], ["export"],
        ["law"], ["law", str(not_run)], ["law", str(a_file)], ["law", str(tmp / "missing")],
        ["run", "--resume", str(tmp / "missing")], ["run", "--resume", str(a_file)], ["run", "--resume", str(not_run)],
        ["run", "--auto-resume"], ["run", str(a_file), "x=1", "--out", str(tmp / "never")],
        ["run", "steps=3", "extra_positional"], ["run", "--out", str(a_file / "sub"), "steps=1", *QUIET],
        ["bench", "--seeds", "0", "--submission", "adamw"], ["bench", "--workers", "-1", "--submission", "adamw"],
        ["bench", "nosuch", "--submission", "adamw"], ["bench", "--submission", "optimizer=nosuch"],
        ["bench", "--submission", str(tmp / "missing.py")], ["bench", "--submission", str(a_file)],
        ["bench", "--submission", "adamw optimizer.lr=loguniform(1,0)"],
        ["bench", "--submission", "adamw optimizer.lr=uniform(a,b)"], ["bench", "--ruleset", "bogus"],
        ["bench", "report", str(not_run)], ["bench", "report"], ["bench", "set-targets", "--submission", "adamw"],
        ["bench", "--no-baseline"], ["bench", "--trials", "-2", "--submission", "adamw"],
        ["bench", "sensitivity", "nosuch"], ["bench", "sensitivity", "--lrs", "a,b"],
        ["bench", "sensitivity", "--variants", "nosuch"], ["bench", "transfer", "--widths", "x"],
        ["bench", "transfer", "--optimizers", "nosuch"], ["bench", "transfer", "extra"],
        ["bench", "sensitivity", "report", str(not_run)], ["bench", "transfer", "--steps", "0"],
    ]


def test_mistakes_in_the_other_commands_are_refused_in_one_line(tmp_path, capsys, monkeypatch, record_property):
    monkeypatch.chdir(tmp_path)
    mistakes = other_command_mistakes(tmp_path)
    for args in mistakes:
        assert_refused(args, capsys)
    tally(record_property, "mistakes in the other commands", len(mistakes), len(mistakes))


# ------------------------------------------------------------------------------------------------ tampered runs

def _tampers(run: Path) -> dict[str, Callable[[Path], object]]:
    """name -> function that damages a copy of ``run`` in one way."""
    def write(name: str, data: bytes):
        return lambda d: (d / name).write_bytes(data)

    def edit(name: str, old: str, new: str):
        return lambda d: (d / name).write_text((d / name).read_text().replace(old, new))

    def newest(d: Path) -> Path:
        return sorted((d / "checkpoints").glob("step_*.pt"))[-1]

    return {
        "metrics empty": write("metrics.jsonl", b""),
        "metrics garbage line": lambda d: (d / "metrics.jsonl").write_text(
            "{not json}\n" + (d / "metrics.jsonl").read_text()),
        "metrics not UTF-8": write("metrics.jsonl", b"\xff\xfe{}\n"),
        "metrics rows not objects": write("metrics.jsonl", b"[1, 2]\n3\n"),
        "metrics step not a number": write("metrics.jsonl", b'{"step": "x", "val_loss": 1}\n'),
        "metrics removed": lambda d: (d / "metrics.jsonl").unlink(),
        "metrics a directory": lambda d: ((d / "metrics.jsonl").unlink(), (d / "metrics.jsonl").mkdir()),
        "trace garbage": write("trace.jsonl", b"\x00\x01garbage\n{}\n"),
        "trace removed": lambda d: (d / "trace.jsonl").unlink(),
        "summary invalid JSON": write("summary.json", b"{"),
        "summary a list": write("summary.json", b"[1, 2]"),
        "summary wrong types": write("summary.json", b'{"final": 3, "events": [], "probes": 7, "steps": "x"}'),
        "summary not UTF-8": write("summary.json", b"\xff\xfe"),
        "events invalid": write("events.json", b"{{"),
        "events wrong shape": write("events.json", b'[{"nam": 1}]'),
        "config removed": lambda d: (d / "config.yaml").unlink(),
        "config invalid YAML": write("config.yaml", b"workload: [\n"),
        "config not UTF-8": write("config.yaml", b"\xff\xfe"),
        "config another workload": edit("config.yaml", "name: sparse_parity", "name: modular"),
        "config another width": edit("config.yaml", "width: 8", "width: 9"),
        "config another seed": edit("config.yaml", "seed: 0\n", "seed: 5\n"),
        "config unknown key": lambda d: (d / "config.yaml").write_text((d / "config.yaml").read_text() + "bogus: 1\n"),
        "manifest invalid": write("checkpoints/latest.json", b"{oops"),
        "manifest wrong sha": lambda d: (ckpt_of(d) / "latest.json").write_text(
            (ckpt_of(d) / "latest.json").read_text().replace('"sha256": "', '"sha256": "0')),
        "manifest points outside": lambda d: (ckpt_of(d) / "latest.json").write_text(
            '{"file": "../../../etc/passwd", "step": 1, "sha256": "00"}'),
        "manifest missing keys": write("checkpoints/latest.json", b'{"file": "x"}'),
        "manifest a list": write("checkpoints/latest.json", b"[]"),
        "checkpoint truncated": lambda d: newest(d).write_bytes(newest(d).read_bytes()[:100]),
        "checkpoint garbage": lambda d: newest(d).write_bytes(b"PK\x03\x04" + bytes(200)),
        "checkpoint removed": lambda d: newest(d).unlink(),
        "checkpoints removed": lambda d: shutil.rmtree(d / "checkpoints"),
        "checkpoints a file": lambda d: (shutil.rmtree(d / "checkpoints"), (d / "checkpoints").write_text("x")),
        "report dir is a file": lambda d: (d / "plots").write_text("x") if not (d / "plots").exists() else None,
    }


def ckpt_of(d: Path) -> Path:
    return d / "checkpoints"


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fuzz") / "run"
    trainlab.run(overrides=["workload=sparse_parity", "workload.n=10", "workload.n_train=64", "workload.n_val=32",
                            "model.width=8", "steps=6", "eval_every=3", "checkpoint_every=3"],
                 out=out, quiet=True, report=False)
    return out


# (tamper, command) pairs where success would be silent acceptance of a damaged or edited file. What is not
# here may succeed: a report needs no checkpoint, a resume rewrites the logs from its checkpoint, the law and a
# refined schedule read only trace.jsonl.
MUST_REFUSE = {
    *{(t, c) for t in ("config another workload", "config another width", "config another seed", "config unknown key",
                       "config invalid YAML", "config not UTF-8", "manifest invalid", "manifest wrong sha",
                       "manifest points outside", "manifest missing keys", "manifest a list", "checkpoint truncated",
                       "checkpoint garbage", "checkpoint removed", "checkpoints removed", "checkpoints a file")
      for c in ("resume", "export")},
    *{(t, "report") for t in ("metrics empty", "metrics garbage line", "metrics not UTF-8", "metrics rows not objects",
                              "metrics removed", "metrics a directory", "summary invalid JSON", "summary a list",
                              "summary not UTF-8", "events invalid", "events wrong shape", "config invalid YAML",
                              "config not UTF-8")},
    *{(t, c) for t in ("trace garbage", "trace removed") for c in ("law", "refined")},
}


def test_tampered_run_directories_are_refused_in_one_line_or_still_work(small_run, tmp_path, capsys, monkeypatch,
                                                                         record_property):
    monkeypatch.chdir(tmp_path)
    refused = set()
    tampers = _tampers(small_run)
    for i, (name, damage) in enumerate(tampers.items()):
        commands = {
            "report": lambda d: ["report", d, "--out", str(tmp_path / f"r{i}.html")],
            "resume": lambda d: ["run", "--resume", d, *QUIET],
            "export": lambda d: ["export", d, "--out", str(tmp_path / f"w{i}.safetensors")],
            "law": lambda d: ["law", d],
            "refined": lambda d: ["run", "workload=sparse_parity", "workload.n=10", "workload.n_train=64",
                                  "model.width=8", "steps=2", "schedule=refined", f"schedule.from_run={d}",
                                  *QUIET, "--out", str(tmp_path / f"refined-{i}")],
        }
        for command, args in commands.items():
            copy = tmp_path / f"{i}-{command}"
            shutil.copytree(small_run, copy)
            damage(copy)
            code = assert_ok_or_refused(args(str(copy)), capsys, f"{name} / {command}")
            if code == 2:
                refused.add((name, command))
    missing = MUST_REFUSE - refused
    assert not missing, f"accepted although damaged: {sorted(missing)}"
    attempts = len(tampers) * len(commands)
    tally(record_property, "tampered run directories x commands (refused or unaffected)", attempts, attempts)


# ------------------------------------------------------------------------------------------------ named cases

def _named_cases(run: Path, tmp: Path) -> dict[str, tuple[list[str], str]]:
    """The tracebacks the issue reported, each with the words of the one line that replaces it."""
    not_run = tmp / "not-a-run"
    not_run.mkdir(exist_ok=True)
    (not_run / "notes.txt").write_text("hello")
    empty = tmp / "empty-metrics"
    shutil.copytree(run, empty, dirs_exist_ok=True)
    (empty / "metrics.jsonl").write_text("")
    other_workload = tmp / "other-workload"
    shutil.copytree(run, other_workload, dirs_exist_ok=True)
    cfg = other_workload / "config.yaml"
    cfg.write_text(cfg.read_text().replace("width: 8", "width: 16"))
    binary = tmp / "binary-config"
    shutil.copytree(run, binary, dirs_exist_ok=True)
    (binary / "config.yaml").write_bytes(b"\xff\xfe\x00\x01")
    return {
        "report on a folder that is not a run": (["report", not_run], "not a trainlab run directory"),
        "report on an empty metrics file": (["report", empty], "no metrics in"),
        "resume after config.yaml was edited": (["run", "--resume", other_workload, *QUIET],
                                                "config.yaml says model.width=16 but the checkpoint was trained with "
                                                "model.width=8"),
        "resume of a config.yaml that is not UTF-8": (["run", "--resume", binary, *QUIET], "not UTF-8"),
        "a config that asks for 720 GB": (["run", "workload.p=300000", *QUIET, "--out", tmp / "never"],
                                          "asks for 720.0 GB at once"),
        "a model larger than memory": (["run", "model.width=300000", *QUIET, "--out", tmp / "never"],
                                       "parameters: 360.4 GB of weights alone"),
        "an --out inside a file": (["run", "--out", not_run / "notes.txt" / "x", *QUIET], "Not a directory"),
        "an argparse mistake": (["list", "bogus"], "invalid choice: 'bogus'"),
    }


@pytest.mark.parametrize("case", ["report on a folder that is not a run", "report on an empty metrics file",
                                  "resume after config.yaml was edited", "resume of a config.yaml that is not UTF-8",
                                  "a config that asks for 720 GB", "a model larger than memory",
                                  "an --out inside a file", "an argparse mistake"])
def test_each_reported_traceback_is_now_one_line(case, small_run, tmp_path, capsys, monkeypatch, record_property):
    monkeypatch.chdir(tmp_path)
    args, words = _named_cases(small_run, tmp_path)[case]
    line = assert_refused(args, capsys, case)
    assert words in line, line
    tally(record_property, "named regressions", 1, 1)


# ------------------------------------------------------------------------------------------------ crafted inputs
#
# Small inputs that ask for much -- a 400-byte YAML file that expands to 10^9 values, a FIFO that blocks the
# reader, an integer of 5000 digits -- and failures of the machine -- a full disk, a read-only directory, a
# name over 255 bytes. Each class is one test id; its cases come from a seeded stream and each must be refused
# with exit code 2 and one line that names the limit (one of the case's words). The test prints the class's
# counts (`pytest -s` shows them) and fails listing every case that was not refused so.
#
# Inputs that could hang or eat the machine's memory if their limit broke run in a child process with an
# address-space limit and a timeout, so a regression fails the test instead of the machine.

GUARDED_CHILD = """\
import contextlib, io, json, resource, sys, traceback
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # a blow-up becomes a MemoryError, not the OOM killer
from trainlab.cli import main
cases, results = json.load(open(sys.argv[1])), []
for args in cases:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 2
        except BaseException:  # this case's failure: reported with its traceback, the other cases still run
            code = -1
            err.write(traceback.format_exc())
    results.append([code, err.getvalue()])
json.dump(results, open(sys.argv[2], "w"))
"""
GUARD_TIMEOUT = 600  # seconds: a hang guard for the whole child, far above its normal run, not a speed check


@dataclass(frozen=True)
class Crafted:
    """A command line and the words of which its one-line refusal must contain one."""

    args: list[str]
    words: tuple[str, ...]


def _problem(code: int, err: str, words: tuple[str, ...]) -> str | None:
    """Why ``(code, err)`` is not a one-line refusal naming one of ``words``; None when it is."""
    lines = [line for line in err.splitlines() if line.strip()]
    if code != 2:
        return f"exit {code}: {err[-400:]!r}"
    if len(lines) != 1 or not lines[0].startswith("trainlab:"):
        return f"not one line: {err[-400:]!r}"
    if not any(word in lines[0] for word in words):
        return f"does not say {' / '.join(words)}: {lines[0][:300]!r}"
    return None


def _report(name: str, cases: list[Crafted], outcomes: list[tuple[int, str]], record_property) -> None:
    failures = [f"{shorten(' '.join(case.args), 300)}: {problem}" for case, (code, err) in zip(cases, outcomes)
                if (problem := _problem(code, err, case.words)) is not None]
    tally(record_property, f"crafted: {name}", len(cases), len(cases) - len(failures))
    assert not failures, "\n".join(failures)


def _run_guarded(cases: list[Crafted], tmp: Path) -> list[tuple[int, str]]:
    """(exit code, stderr) of each case, run by :func:`main` in one child process (see ``GUARDED_CHILD``)."""
    (tmp / "cases.json").write_text(json.dumps([[str(a) for a in case.args] for case in cases]))
    env = {**os.environ, "PYTHONPATH": str(Path(trainlab.__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    child = subprocess.run([sys.executable, "-c", GUARDED_CHILD, str(tmp / "cases.json"), str(tmp / "out.json")],
                           cwd=tmp, env=env, capture_output=True, text=True, timeout=GUARD_TIMEOUT)
    assert child.returncode == 0, child.stderr[-2000:]
    return [(code, err) for code, err in json.loads((tmp / "out.json").read_text())]


def _run_here(cases: list[Crafted], capsys) -> list[tuple[int, str]]:
    return [invoke(case.args, capsys) for case in cases]


def _yaml_case(rng: random.Random, tmp: Path, text: str, words: tuple[str, ...]) -> Crafted:
    """``text`` as a config file of ``trainlab run`` or as a submission file of ``trainlab bench``."""
    path = tmp / f"{_word(rng)}.yaml"
    path.write_text(text, encoding="utf-8")
    if rng.random() < 0.5:
        return Crafted(["bench", "--submission", str(path)], words)
    return Crafted(["run", str(path), *QUIET, "--out", str(tmp / "never")], words)


def alias_bombs(rng: random.Random, tmp: Path, n: int = 8) -> list[Crafted]:
    """YAML files of a few hundred bytes whose aliases expand to at least 10^9 values."""
    cases = []
    for _ in range(n):
        width = rng.randint(2, 12)
        levels = math.ceil(9 / math.log10(width)) + rng.randint(0, 2)
        names = [f"{_word(rng)}{i}" for i in range(levels)]
        items = [f"&{names[0]} [{', '.join(['x'] * width)}]"]
        items += [f"&{names[i]} [{', '.join([f'*{names[i - 1]}'] * width)}]" for i in range(1, levels)]
        key = rng.choice(["steps", "name", "optimizer", "probes", "schedule", "grad_clip"])
        if rng.random() < 0.5:
            text = f"{key}: [{', '.join(items)}]\n"
        else:
            text = f"{key}:\n" + "".join(f"  - {item}\n" for item in items)
        cases.append(_yaml_case(rng, tmp, text, ("values once aliases are expanded",)))
    return cases


def deep_nesting(rng: random.Random, tmp: Path, n: int = 8) -> list[Crafted]:
    """YAML nested past the limit: flow lists and mappings (to 100000 levels), block mappings, alias chains."""
    cases = []
    for _ in range(n):
        kind = rng.choice(["flow list", "flow mapping", "mixed", "block mapping", "alias chain"])
        # (an indented block of depth d is d^2 bytes: 600 levels stay under the 1 MB limit of YAML files)
        depth = rng.choice([21, 22, 64, 300, 600]) if kind in ("block mapping", "alias chain") else \
            rng.choice([21, 64, 999, 5000, 100_000])
        if kind == "flow list":
            text = "steps: " + "[" * depth + "]" * depth
        elif kind == "flow mapping":
            text = "steps: " + "{a: " * depth + "1" + "}" * depth
        elif kind == "mixed":
            text = "optimizer: " + "[{a: " * depth + "1" + "}]" * depth
        elif kind == "block mapping":
            text = "".join(f"{'  ' * i}k{i}:\n" for i in range(depth)) + "  " * depth + "x: 1"
        else:
            text = "a0: &a0 [1]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, depth))
        cases.append(_yaml_case(rng, tmp, text + "\n", ("nested deeper than",)))
    return cases


def special_files(rng: random.Random, tmp: Path) -> list[Crafted]:
    """FIFOs, devices and directories (also behind symbolic links) as a config, a submission and a text file."""
    fifo = tmp / "pipe.yaml"
    os.mkfifo(fifo)
    folder = tmp / "folder.yaml"
    folder.mkdir()
    targets = {"a FIFO": fifo, "/dev/zero": Path("/dev/zero"), "/dev/null": Path("/dev/null"), "a directory": folder}
    for name, target in list(targets.items()):
        link = tmp / f"link-{_word(rng)}.yaml"
        link.symlink_to(target)
        targets[f"a link to {name}"] = link
    never, words = str(tmp / "never"), ("FIFO", "device", "directory")
    cases = []
    for target in targets.values():
        cases.append(Crafted(["run", str(target), *QUIET, "--out", never], words))
        cases.append(Crafted(["run", "workload=charlm", f"workload.path={target}", "steps=1", *QUIET, "--out", never],
                             words))
        if target.suffix == ".yaml":  # how `bench` tells a YAML submission
            cases.append(Crafted(["bench", "--submission", str(target)], words))
    return cases


def absurd_sizes(rng: random.Random, tmp: Path, n: int = 12) -> list[Crafted]:
    """In-range sizes that no machine holds, or that would take days to generate."""
    choices = [
        lambda k: [f"workload.p={10 ** k}"],
        lambda k: ["workload=sparse_parity", f"workload.n_train={10 ** (k + 5)}"],
        lambda k: ["workload=sparse_parity", f"workload.n={10 ** (k + 5)}", "workload.n_train=10"],
        lambda k: ["workload=teacher_student", f"workload.n_train={10 ** (k + 5)}"],
        lambda k: ["workload=teacher_student", f"workload.teacher_width={10 ** (k + 5)}"],
        lambda k: ["workload=deep_linear", f"workload.d_in={10 ** (k + 4)}", f"workload.n_train={10 ** (k + 4)}"],
        lambda k: [f"model.width={10 ** k}"],
        lambda k: ["workload=mnist1d", f"workload.num_samples={10 ** (k + 1)}"],
    ]
    words = ("needs more memory than is free", "of weights alone", "must be <=")
    return [Crafted(["run", *rng.choice(choices)(rng.randint(6, 10)), "steps=1", *QUIET, "--out", str(tmp / "never")],
                    words) for _ in range(n)]


INT_KEYS = ["seed", "steps", "batch_size", "eval_every", "eval_examples", "checkpoint_every", "workload.seed",
            "probes.seed", "probes.examples", "probes.every", "model.width", "workload.p", "schedule.warmup"]
SEED_KEYS = ["seed", "workload.seed", "probes.seed"]
FLOAT_KEYS = ["optimizer.lr", "grad_clip", "workload.train_frac", "loss.z_loss", "time_budget"]


def huge_ints(rng: random.Random, tmp: Path, n: int = 24) -> list[Crafted]:
    """Integers past 64 bits (to 6000 digits, past what ``int()`` converts), seeds past 32 bits, floats past
    1.8e308: on the command line and as YAML numbers."""
    cases = []
    for i in range(n):
        kind = ("int64", "digits", "seed", "float")[i % 4]
        if kind == "int64":
            text = str(rng.choice([2**63 + rng.randint(0, 2**40), -(2**63) - 1]))
            key, words = rng.choice(INT_KEYS), ("64-bit",)
        elif kind == "digits":
            key, text, words = rng.choice(INT_KEYS), "9" * rng.randint(20, 6000), ("64-bit",)
        elif kind == "seed":
            key, text, words = rng.choice(SEED_KEYS), str(rng.randint(2**32, 2**63 - 1)), ("<= 4294967295",)
        else:
            key, text, words = rng.choice(FLOAT_KEYS), "9" * rng.randint(310, 6000), ("finite", "expected")
        if rng.random() < 0.5:
            cases.append(Crafted(["run", f"{key}={text}", *QUIET, "--out", str(tmp / "never")], words))
        else:  # YAML refuses integers of over 100 digits itself
            path = tmp / f"{_word(rng)}.yaml"
            path.write_text(f"{key}: {text}\n")
            cases.append(Crafted(["run", str(path), *QUIET, "--out", str(tmp / "never")], (*words, "64-bit")))
    return cases


TAGGED = ["!!python/object/apply:os.system ['echo hi']", "!!python/name:os.system", "!!python/tuple [1, 2]",
          "!!int abc", "!!float x", "!!bool maybe", "!!timestamp 2024-02-30", "!!binary AAAA", "!!set {a: null}",
          "!!str 3", "!custom 3", "!<tag:yaml.org,2002:str> x", "!!omap [a: 1]"]


def tags(rng: random.Random, tmp: Path, n: int = 10) -> list[Crafted]:
    """Explicit YAML tags, from code execution to ones that fail to construct: plain values only."""
    keys = ["steps", "name", "optimizer.lr", "schedule", "seed"]
    return [_yaml_case(rng, tmp, f"{rng.choice(keys)}: {rng.choice(TAGGED)}\n", ("is not allowed",)) for _ in range(n)]


CONTROL = ["\n", "\r", "\t", "\x1b[31m", "\u2028", "\x7f", "\n\n"]


def control_paths(rng: random.Random, tmp: Path, n: int = 10) -> list[Crafted]:
    """Paths with newlines and other control characters: the line shows them escaped, and the path's end
    (``-TAIL...``), so nothing was cut at the newline."""
    cases = []
    for _ in range(n):
        tail = f"-TAIL{rng.randint(0, 10**6)}"
        name = f"{_word(rng)}{rng.choice(CONTROL)}{_word(rng)}{tail}"
        role = rng.choice(["bad config", "missing config", "charlm text", "out in a file"])
        if role == "bad config":
            (tmp / f"{name}.yaml").write_text("steps: [3\n")
            args = ["run", str(tmp / f"{name}.yaml")]
        elif role == "missing config":
            args = ["run", str(tmp / f"{name}.yaml")]
        elif role == "charlm text":
            args = ["run", "workload=charlm", f"workload.path={tmp / name}"]
        else:
            (tmp / name).write_text("x")
            args = ["run", "steps=1", "--out", str(tmp / name / "run")]
        cases.append(Crafted([*args, *QUIET] + ([] if "--out" in args else ["--out", str(tmp / "never")]), (tail,)))
    return cases


def long_names(rng: random.Random, tmp: Path, n: int = 8) -> list[Crafted]:
    """File names over 255 bytes (ASCII or two bytes a character) as --out, a run name, a config, a text file."""
    cases = []
    for _ in range(n):
        role = rng.choice(["out", "run name", "config", "charlm text"])
        # (a run name keeps only ASCII letters, digits and _.+-: a name of é's becomes "run")
        name = rng.choice(["x", "_"] if role == "run name" else ["x", "é", "_"]) * rng.randint(256, 600)
        out = ["--out", str(tmp / (name if role == "out" else "never"))] if role != "run name" else []
        args = {"out": ["workload.p=5"], "run name": ["workload.p=5", f"name={name}"],
                "config": [str(tmp / f"{name}.yaml")],
                "charlm text": ["workload=charlm", f"workload.path={tmp / name}"]}[role]
        cases.append(Crafted(["run", *args, "steps=1", *QUIET, *out], ("File name too long",)))
    return cases


def oversized_and_not_utf8(rng: random.Random, tmp: Path, n: int = 8) -> list[Crafted]:
    """YAML files over the size limit, and user files that are not UTF-8 within what is read."""
    from trainlab.config import MAX_YAML_BYTES

    cases = []
    for i in range(n):
        if i % 2 == 0:
            padding = "# " + "x" * (MAX_YAML_BYTES + rng.randint(0, 10**6)) + "\n"
            cases.append(_yaml_case(rng, tmp, padding + "steps: 3\n", ("larger than",)))
            continue
        raw = bytearray("steps: 3\nname: abc\n" * 50, "ascii")
        raw[rng.randrange(len(raw))] = rng.choice([0xFF, 0xC3, 0x80, 0xFE])
        path = tmp / f"{_word(rng)}.yaml"
        path.write_bytes(bytes(raw))
        text = tmp / f"{_word(rng)}.txt"
        text.write_bytes(bytes(raw) * 10)
        cases.append(rng.choice([
            Crafted(["run", str(path), *QUIET, "--out", str(tmp / "never")], ("not UTF-8",)),
            Crafted(["bench", "--submission", str(path)], ("not UTF-8",)),
            Crafted(["run", "workload=charlm", f"workload.path={text}", "steps=1", *QUIET, "--out",
                     str(tmp / "never")], ("not UTF-8",)),
        ]))
    return cases


CRAFTED: dict[str, Callable[[random.Random, Path], list[Crafted]]] = {
    "alias bombs": alias_bombs, "deep nesting": deep_nesting, "special files": special_files,
    "absurd sizes": absurd_sizes, "huge ints": huge_ints, "tags": tags, "control characters in paths": control_paths,
    "names over 255 bytes": long_names, "oversized or not UTF-8": oversized_and_not_utf8,
}
GUARDED = {"alias bombs", "deep nesting", "special files", "absurd sizes"}


@pytest.mark.parametrize("name", list(CRAFTED))
def test_crafted_inputs_are_refused_in_one_line(name, tmp_path, capsys, monkeypatch, record_property):
    monkeypatch.chdir(tmp_path)
    cases = CRAFTED[name](random.Random(f"{SEED}/{name}"), tmp_path)
    outcomes = _run_guarded(cases, tmp_path) if name in GUARDED else _run_here(cases, capsys)
    _report(name, cases, outcomes, record_property)


# The machine's failures, simulated where a test cannot cause them (a full disk; and a read-only directory
# when running as root, which ignores permissions): one writer of the run directory fails at its k-th call.
# The writers of a run directory: the directory, config.yaml, metrics and trace rows, summary and events,
# checkpoints. Each fails at a call the clean run below makes (counted first: how often each writes may change).
WRITERS = [(RunDir, "create"), (RunDir, "write_config"), (RunDir, "append_metrics"), (RunDir, "append_trace"),
           (RunDir, "write_json"), (checkpoints, "atomic_write_bytes")]
MACHINE_FAILURES = {
    "disk full": [(errno.ENOSPC, "No space left"), (errno.EDQUOT, "quota"), (errno.EFBIG, "too large")],
    "read-only --out": [(errno.EACCES, "Permission denied"), (errno.EROFS, "Read-only"), (errno.EPERM, "permitted")],
}
SMALL_RUN = ["run", "workload=sparse_parity", "workload.n=10", "workload.n_train=64", "model.width=8", "steps=4",
             "eval_every=2", "checkpoint_every=2"]


def _wrap(monkeypatch, owner: object, name: str, before: Callable[[int], None]) -> None:
    """Make ``owner.name`` call ``before(n)`` (n: the calls so far, this one included) before it runs."""
    original, calls = getattr(owner, name), []

    def wrapped(*args, **kwargs):
        calls.append(1)
        before(len(calls))
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapped)


def _writer_calls(monkeypatch, capsys, out: Path) -> dict[str, int]:
    """How often each of :data:`WRITERS` is called by a clean :data:`SMALL_RUN`."""
    counts: dict[str, int] = {}
    with monkeypatch.context() as patch:
        for owner, name in WRITERS:
            _wrap(patch, owner, name, lambda n, name=name: counts.__setitem__(name, n))
        assert invoke([*SMALL_RUN, *QUIET, "--out", str(out)], capsys)[0] == 0
    return counts


@pytest.mark.parametrize("name", list(MACHINE_FAILURES))
def test_failures_of_the_machine_are_one_line(name, tmp_path, capsys, monkeypatch, record_property):
    monkeypatch.chdir(tmp_path)
    counts = _writer_calls(monkeypatch, capsys, tmp_path / "clean")
    rng = random.Random(f"{SEED}/{name}")
    cases, outcomes = [], []
    for i in range(8):
        code, words = rng.choice(MACHINE_FAILURES[name])
        owner, writer = rng.choice(WRITERS)
        k = rng.randint(1, counts[writer])
        with_name = rng.random() < 0.3  # a full disk is often reported without the file's name
        error = OSError(code, os.strerror(code), *([str(tmp_path / "x\ny")] if with_name else []))

        def fail(n: int, k: int = k, error: OSError = error) -> None:
            if n == k:
                raise error

        with monkeypatch.context() as patch:
            _wrap(patch, owner, writer, fail)
            cases.append(Crafted([*SMALL_RUN, f"name={writer}-call-{k}", *QUIET, "--out", str(tmp_path / f"r{i}")],
                                 (words,)))
            outcomes.append(invoke(cases[-1].args, capsys))
    _report(name, cases, outcomes, record_property)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permissions")
def test_a_read_only_directory_as_out_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        line = assert_refused(["run", "steps=1", "workload.p=5", *QUIET, "--out", str(locked / "run")], capsys)
    finally:
        locked.chmod(0o700)
    assert "Permission denied" in line
