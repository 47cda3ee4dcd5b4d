"""torch's intra-op thread count: the option, the environment, the automatic share of the free CPUs, the warning."""

import json

import pytest
import torch

import trainlab
from trainlab.config import ConfigError
from trainlab.train.config import from_cli
from trainlab.train.threads import (ThreadChoice, choose_threads, default_threads, env_threads,
                                    oversubscription_warning)

TINY = ["workload.p=23", "steps=20", "eval_every=10", "model.width=32", "optimizer.lr=1e-2"]
TORCHRUN2 = {"LOCAL_WORLD_SIZE": "2"}


@pytest.mark.parametrize("cpus, load, env, option, expected", [
    # auto: the CPUs the load leaves free (floored), capped at the CPUs, at least 1
    (2, 0.0, {}, 0, (2, "auto")),
    (2, None, {}, 0, (2, "auto")),  # no load average (Windows): all usable CPUs
    (2, 0.3, {}, 0, (1, "auto")),  # another job's fraction of a core already costs the second thread
    (2, 1.0, {}, 0, (1, "auto")),  # the case: one other job on a 2-core machine
    (2, 5.0, {}, 0, (1, "auto")),  # fully loaded: still one
    (8, 2.5, {}, 0, (5, "auto")),
    (8, -1.0, {}, 0, (8, "auto")),  # a nonsensical load counts as none
    (1, 0.0, {}, 0, (1, "auto")),
    # torchrun: each local process takes its share
    (8, 0.0, TORCHRUN2, 0, (4, "auto")),
    (8, 3.0, TORCHRUN2, 0, (2, "auto")),
    (2, 0.0, {"LOCAL_WORLD_SIZE": "4"}, 0, (1, "auto")),
    (8, 0.0, {"LOCAL_WORLD_SIZE": "x"}, 0, (8, "auto")),  # unreadable: one process
    # the environment wins over auto
    (2, 0.0, {"OMP_NUM_THREADS": "1"}, 0, (1, "env")),
    (2, 3.0, {"OMP_NUM_THREADS": "4"}, 0, (4, "env")),  # taken as asked, even on a loaded machine
    (8, 0.0, {"MKL_NUM_THREADS": "3"}, 0, (3, "env")),
    (8, 0.0, {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "3"}, 0, (2, "env")),
    (8, 0.0, {"OMP_NUM_THREADS": "3,1"}, 0, (3, "env")),  # OpenMP's nested form: its first level
    (8, 0.0, {"OMP_NUM_THREADS": ""}, 0, (8, "auto")),  # empty, zero or malformed: unset
    (8, 0.0, {"OMP_NUM_THREADS": "0"}, 0, (8, "auto")),
    (8, 6.0, {"OMP_NUM_THREADS": "many"}, 0, (2, "auto")),
    # the option wins over auto and over the environment
    (2, 0.0, {}, 1, (1, "option")),
    (2, 1.5, {}, 3, (3, "option")),
    (8, 0.0, {"OMP_NUM_THREADS": "1"}, 2, (2, "option")),
])
def test_the_rule(cpus, load, env, option, expected):
    choice = choose_threads(option, cpus, load, env)
    assert (choice.threads, choice.source) == expected
    if choice.source == "auto":
        assert choice.threads == default_threads(cpus, load, env)


def test_env_threads_reads_omp_then_mkl():
    assert env_threads({}) is None
    assert env_threads({"MKL_NUM_THREADS": "5"}) == 5
    assert env_threads({"OMP_NUM_THREADS": "bad", "MKL_NUM_THREADS": "5"}) == 5


def test_a_negative_option_is_refused():
    with pytest.raises(ConfigError, match="threads"):
        from_cli(None, ["threads=-1"])
    assert from_cli(None, ["threads=3"]).train.threads == 3
    assert from_cli(None, []).train.threads == 0  # auto by default
    with pytest.raises(ValueError, match="threads"):
        choose_threads(-1, 2, 0.0, {})


@pytest.mark.parametrize("threads, load, processes, warned", [
    (1, 0.0, 1, False),
    (2, 0.0, 1, False),  # 0 + 2 <= 2: exactly full is fine
    (1, 1.0, 1, False),
    (2, 0.5, 1, True),
    (1, 1.2, 1, True),
    (1, 0.5, 2, True),  # two processes of one thread each beside a load of 0.5 exceed 2 CPUs
    (1, 0.0, 2, False),
    (1, 0.1, 2, True),
    (2, None, 1, False),  # no load average: no verdict
])
def test_the_warning_appears_exactly_when_oversubscribed(threads, load, processes, warned):
    choice = ThreadChoice(threads, "auto", cpus=2, load_average=load, local_processes=processes)
    text = oversubscription_warning(choice)
    assert (text is not None) == warned
    if text is not None:
        assert "\n" not in text and "oversubscribed" in text
        assert f"training on {threads} thread(s)" in text
        assert "threads=N" in text and "OMP_NUM_THREADS" in text


def test_the_warning_says_how_the_count_was_chosen():
    for source, said in (("option", "threads="), ("env", "OMP_NUM_THREADS/MKL_NUM_THREADS"), ("auto", "(auto)")):
        text = oversubscription_warning(ThreadChoice(4, source, cpus=2, load_average=0.0, local_processes=1))
        assert text is not None and said in text


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("env, overrides, expected", [
    ({"OMP_NUM_THREADS": "1"}, [], (1, "env")),
    ({}, ["threads=1"], (1, "option")),
])
def test_a_run_records_its_threads_and_their_source(tmp_path, monkeypatch, torch_threads, env, overrides, expected):
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    torch.set_num_threads(2)
    run_dir = trainlab.run(None, TINY + overrides, out=tmp_path / "run", quiet=True, report=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["threads"], summary["threads_source"]) == expected
    assert torch.get_num_threads() == 2  # the caller's setting is back


def test_an_auto_run_records_the_automatic_count(tmp_path, monkeypatch, torch_threads):
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("trainlab.train.threads.usable_cpus", lambda: 4)
    monkeypatch.setattr("trainlab.train.threads.load_average", lambda: 1.5)
    run_dir = trainlab.run(None, TINY, out=tmp_path / "run", quiet=True, report=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["threads"], summary["threads_source"]) == (2, "auto")  # floor(4 - 1.5)


def test_a_resumed_auto_run_keeps_the_thread_count_its_checkpoint_ran_with(tmp_path, monkeypatch, torch_threads):
    """A step's floating-point results depend on the thread count: the automatic choice made when resuming (here
    under more load) gives way to the count the checkpointed steps ran with."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("trainlab.train.threads.usable_cpus", lambda: 4)
    monkeypatch.setattr("trainlab.train.threads.load_average", lambda: 1.5)  # auto: 2 threads
    run_dir = trainlab.run(None, [*TINY, "checkpoint_every=1"], out=tmp_path / "run", quiet=True, report=False)
    monkeypatch.setattr("trainlab.train.threads.load_average", lambda: 3.0)  # auto now: 1 thread
    trainlab.run(None, ["steps=30"], resume=run_dir, quiet=True, report=False)  # 10 more steps
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["threads"], summary["threads_source"]) == (2, "auto (the checkpoint's)")


def test_the_warning_is_printed_at_start_and_not_when_quiet(tmp_path, monkeypatch, capsys, torch_threads):
    monkeypatch.setattr("trainlab.train.threads.usable_cpus", lambda: 2)
    monkeypatch.setattr("trainlab.train.threads.load_average", lambda: 1.5)
    trainlab.run(None, TINY + ["threads=2"], out=tmp_path / "loud", report=False)
    out = capsys.readouterr()
    assert "oversubscribed" in out.out + out.err and "training on 2 thread(s) (set by threads=)" in out.out + out.err
    trainlab.run(None, TINY + ["threads=2"], out=tmp_path / "quiet", quiet=True, report=False)
    out = capsys.readouterr()
    assert "oversubscribed" not in out.out + out.err
