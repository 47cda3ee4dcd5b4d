"""Data diets (the ``data`` section, trainlab.train.diet): the subset is exactly the examples the rules choose, the
curriculum follows its pacing, resume stays exact, every mistake is one line, and a run can be pruned by the scores
another run's data_diet probe wrote (Paul, Ganguli & Dziugaite 2021)."""

from __future__ import annotations

import csv
import os
import random
import subprocess
import sys

import pytest
import torch

from resume_testing import assert_resume_exact, run_quietly
from trainlab.cli import main
from trainlab.distributed.env import DistEnv
from trainlab.errors import ConfigError
from trainlab.train import diet
from trainlab.train.config import DataOptions, for_resume, from_cli
from trainlab.train.data import BatchSampler, PacedSampler
from trainlab.train.training import build_training

# 10 examples with ties: 1, 2 and 5 share the highest score; 7 and 8 share 0.3
TIED = [0.5, 0.9, 0.9, 0.1, 0.7, 0.9, 0.2, 0.3, 0.3, 0.0]
# a tiny workload for runs: 256 training examples, an MLP of width 16 (as tests/train/test_resume_matrix.py)
SMALL = ["workload=sparse_parity", "workload.n=10", "workload.k=2", "workload.n_train=256", "workload.n_val=128",
         "model=mlp", "model.width=16", "model.depth=1", "steps=24", "eval_every=6", "batch_size=16",
         "checkpoint_every=6"]


def write_csv(path, rows, header=("index", "el2n", "grand")):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def scores_file(path, scores, seed=0):
    """A data_diet-style file of ``scores`` (el2n; grand = -el2n), its rows shuffled: order must not matter."""
    rows = [[i, repr(float(s)), repr(-float(s))] for i, s in enumerate(scores)]
    random.Random(seed).shuffle(rows)
    return write_csv(path, rows)


def by_rule(scores, k, hardest=True):
    """The k hardest (or easiest) by brute force: sort by (-score, index) or (score, index)."""
    sign = -1 if hardest else 1
    return sorted(sorted(range(len(scores)), key=lambda i: (sign * scores[i], i))[:k])


# ------------------------------------------------------------------------------------------------ selection


@pytest.mark.parametrize("keep, select, skip, expected", [
    (0.3, "hardest", 0.0, [1, 2, 5]),
    (0.2, "hardest", 0.0, [1, 2]),  # the tie at 0.9 goes to the lower indices
    (0.4, "easiest", 0.0, [3, 6, 7, 9]),  # the tie at 0.3 goes to 7, not 8
    (0.3, "hardest", 0.2, [0, 4, 5]),  # 1 and 2 skipped as the two hardest; then 5, 4, 0
    (0.2, "easiest", 0.7, [3, 9]),  # skipping the hardest 7 leaves 3, 6, 9: easiest two
    (1.0, "hardest", 0.0, list(range(10))),
])
def test_scores_choose_exactly_the_rule_s_examples(keep, select, skip, expected):
    kept = diet.choose(10, keep, select, skip, scores=torch.tensor(TIED, dtype=torch.float64))
    assert kept.tolist() == expected


def test_several_files_are_averaged_per_example(tmp_path):
    gen = torch.Generator().manual_seed(0)
    runs = [torch.rand(40, generator=gen, dtype=torch.float64) for _ in range(3)]
    paths = [str(scores_file(tmp_path / f"s{i}.csv", r.tolist(), seed=i)) for i, r in enumerate(runs)]
    mean = diet.mean_scores(paths, "el2n", 40)
    assert torch.allclose(mean, sum(runs) / 3, rtol=0, atol=1e-15)
    options = DataOptions(keep=0.25, scores=tuple(paths))
    planned = diet.plan(options, 40)
    assert planned.rows.tolist() == by_rule(mean.tolist(), 10)
    # the average ranks differently from any single run (else averaging would not be tested)
    assert all(by_rule(r.tolist(), 10) != planned.rows.tolist() for r in runs)
    easiest = diet.plan(DataOptions(keep=0.25, select="easiest", score="grand", scores=tuple(paths)), 40)
    assert easiest.rows.tolist() == by_rule((-mean).tolist(), 10, hardest=False)  # grand = -el2n: easiest by it


def test_rounding_of_counts():
    assert [diet.count(f, 10) for f in (0.05, 0.15, 0.25, 0.3, 0.5)] == [1, 2, 3, 3, 5]  # halves round up
    with pytest.raises(ConfigError, match="data.keep: keeps round"):
        diet.choose(10, 0.04, "random")
    with pytest.raises(ConfigError, match="data.skip_hardest: skips 4 and keeps 7 of 10"):
        diet.choose(10, 0.65, "hardest", 0.35, scores=torch.tensor(TIED, dtype=torch.float64))


def test_random_is_seeded_reproducible_and_ignores_scores():
    a = diet.choose(100, 0.3, "random", seed=7)
    assert len(a) == 30 and len(set(a.tolist())) == 30 and a.tolist() == sorted(a.tolist())
    assert torch.equal(a, diet.choose(100, 0.3, "random", seed=7))
    assert torch.equal(a, diet.choose(100, 0.3, "random", seed=7, scores=torch.rand(100, dtype=torch.float64)))
    assert not torch.equal(a, diet.choose(100, 0.3, "random", seed=8))
    scores = torch.arange(100, dtype=torch.float64)  # example i has score i: the hardest are the last
    skipping = diet.choose(100, 0.3, "random", 0.5, seed=7, scores=scores)
    assert len(skipping) == 30 and max(skipping.tolist()) < 50  # drawn from the 50 not skipped


# ------------------------------------------------------------------------------------------------ curriculum


def test_curriculum_rows_are_sorted_by_score_then_index():
    scores = torch.tensor(TIED, dtype=torch.float64)
    kept = torch.arange(10)
    assert diet.arrange(kept, "curriculum", scores).tolist() == [9, 3, 6, 7, 8, 0, 4, 1, 2, 5]
    assert diet.arrange(kept, "anti_curriculum", scores).tolist() == [1, 2, 5, 4, 0, 7, 8, 6, 3, 9]
    assert diet.arrange(kept, "random").tolist() == list(range(10))


def test_paced_sampler_draws_from_its_growing_prefix():
    n, steps, start, pace = 200, 50, 0.2, 0.8
    sampler = PacedSampler(n, 16, seed=3, steps=steps, start=start, pace=pace)
    sizes = [sampler.available(t) for t in range(steps)]
    assert sizes[0] == 40 and sizes[20] == 120 and sizes[39] == 196 and sizes[40:] == [200] * 10  # n(t) by formula
    assert sizes == sorted(sizes)
    for t in range(steps):
        batch = sampler.indices(t)
        assert len(batch) == 16 and len(set(batch.tolist())) == 16 and int(batch.max()) < sizes[t]
    # the later rows (harder, in a curriculum) are reached only once the prefix covers them
    early = torch.cat([sampler.indices(t) for t in range(10)])
    assert int(early.max()) < sampler.available(9)
    # a pure function of (seed, step): any order of asking, any fresh sampler; another seed differs
    again = PacedSampler(n, 16, seed=3, steps=steps, start=start, pace=pace)
    assert all(torch.equal(again.indices(t), sampler.indices(t)) for t in reversed(range(steps)))
    assert not torch.equal(PacedSampler(n, 16, seed=4, steps=steps, start=start, pace=pace).indices(0),
                           sampler.indices(0))
    # DDP: the processes' shares partition the global batch
    shares = [PacedSampler(n, 16, 3, steps, start, pace, rank=r, world_size=2).indices(7) for r in range(2)]
    assert torch.equal(torch.cat(shares), sampler.indices(7))


def test_paced_sampler_full_batch_and_small_prefix():
    full = PacedSampler(100, 0, seed=0, steps=10, start=0.1, pace=0.5)
    assert full.full_batch and torch.equal(full.indices(0), torch.arange(10)) and len(full.indices(9)) == 100
    big_batch = PacedSampler(100, 30, seed=0, steps=10, start=0.1, pace=0.5)
    assert big_batch.available(0) == 30 and len(big_batch.indices(0)) == 30  # never less than one batch


# ------------------------------------------------------------------------------------------------ in a run


def test_defaults_change_nothing():
    cfg = from_cli(None, SMALL)
    assert cfg.data == DataOptions() and diet.plan(cfg.data, 256) is None
    t = build_training(cfg, DistEnv())
    assert t.diet is None and t.cfg.data.selected is None and t.data.n_train == 256
    assert type(t.sampler) is BatchSampler


def test_build_training_trains_on_exactly_the_chosen_rows(tmp_path):
    scores = torch.rand(256, generator=torch.Generator().manual_seed(1), dtype=torch.float64).tolist()
    path = scores_file(tmp_path / "s.csv", scores)
    full = build_training(from_cli(None, SMALL), DistEnv()).data
    t = build_training(from_cli(None, SMALL + [f"data.scores={path}", "data=0.25"]), DistEnv())
    chosen = by_rule(scores, 64)
    assert t.diet.rows.tolist() == chosen and t.diet.kept == 64 and t.sampler.n == 64
    assert torch.equal(t.data.x_train, full.x_train[chosen]) and torch.equal(t.data.y_train, full.y_train[chosen])
    assert torch.equal(t.data.x_val, full.x_val)  # validation is untouched
    assert t.cfg.data.selected == diet.record(torch.tensor(chosen), 256) and t.cfg.data.selected.startswith("64/256 ")
    assert "training on 64 of 256 examples" in t.diet.note() and "the hardest by el2n" in t.diet.note()

    curriculum = build_training(from_cli(None, SMALL + [f"data.scores={path}", "data.order=curriculum"]), DistEnv())
    order = sorted(range(256), key=lambda i: (scores[i], i))
    assert curriculum.diet.rows.tolist() == order and isinstance(curriculum.sampler, PacedSampler)
    assert torch.equal(curriculum.data.x_train, full.x_train[order])


@pytest.mark.parametrize("extra", [["data.keep=0.5", "data.select=hardest"],
                                   ["data.keep=0.5", "data.select=random", "data.order=anti_curriculum"]])
def test_resume_with_a_diet_is_exact(tmp_path, monkeypatch, extra):
    scores = torch.rand(256, generator=torch.Generator().manual_seed(2), dtype=torch.float64).tolist()
    path = scores_file(tmp_path / "s.csv", scores)
    assert_resume_exact(tmp_path, SMALL + [f"data.scores={path}", *extra], monkeypatch, kills=(8, 17))


def test_resume_refuses_changed_scores(tmp_path, capsys):
    path = scores_file(tmp_path / "s.csv", [float(i % 7) for i in range(256)])
    run = run_quietly(tmp_path / "r", SMALL + [f"data.scores={path}", "data.keep=0.5"])
    scores_file(path, [float(-i) for i in range(256)])  # other scores: another half
    with pytest.raises(ConfigError, match="data.selected: the config says this run trains on 128/256"):
        build_training(for_resume(run / "config.yaml", []), DistEnv(), resuming=True)
    assert main(["run", "--resume", str(run), "--quiet", "--no-report"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_end_to_end_scores_of_a_probe_prune_the_next_run(tmp_path):
    base = ["workload.p=11", "steps=30", "eval_every=30"]
    first = run_quietly(tmp_path / "scored", base + ["probes=data_diet"])
    path = first / "data_diet" / "step_30.csv"
    with open(path, newline="") as f:
        table = list(csv.DictReader(f))
    el2n = {int(r["index"]): float(r["el2n"]) for r in table}
    n = len(table)
    second = run_quietly(tmp_path / "pruned", base + [f"data.scores={path}", "data.keep=0.5",
                                                      "data.select=hardest"])
    saved = for_resume(second / "config.yaml", [])
    assert saved.data.selected.startswith(f"{round(n / 2)}/{n} sha256:")
    t = build_training(saved, DistEnv())  # the run's training set, rebuilt from its config
    hardest = by_rule([el2n[i] for i in range(n)], round(n / 2))
    assert t.diet.rows.tolist() == hardest and t.data.n_train == n // 2
    assert all(int(t.sampler.indices(s).max()) < n // 2 for s in range(30))
    # scores taken during the diet run name the workload's rows, not positions in the subset
    third = run_quietly(tmp_path / "rescored", base + [f"data.scores={path}", "data.keep=0.5",
                                                       "data.select=hardest", "probes=data_diet"])
    with open(third / "data_diet" / "step_30.csv", newline="") as f:
        assert sorted(int(r["index"]) for r in csv.DictReader(f)) == sorted(hardest)


# ------------------------------------------------------------------------------------------------ mistakes


def refused(args, capsys) -> str:
    """``trainlab run ARGS`` in this process: exit 2 and one line on stderr, which is returned."""
    capsys.readouterr()
    code = main(["run", *args, "--quiet", "--no-report"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("trainlab:"), (args, code, err)
    return err[0]


BAD_FILES = {  # name: (file content, or None for a missing file; the words of the refusal)
    "missing": (None, "data.scores: scores file"),
    "empty": (b"", "the first line must be a header starting with index"),
    "wrong header": (b"id,el2n\n0,1\n", "the first line must be a header starting with index"),
    "no such column": (b"index,grand\n" + b"".join(b"%d,1\n" % i for i in range(48)), "data.score: "),
    "too few rows": (b"index,el2n\n0,1\n1,2\n", "has 2 rows of scores, but the workload has 48 training examples"),
    "duplicate index": (b"index,el2n\n" + b"".join(b"%d,1\n" % min(i, 46) for i in range(48)), "appears twice"),
    "index out of range": (b"index,el2n\n" + b"".join(b"%d,1\n" % (i + 1) for i in range(48)), "is not one of 0 .. 47"),
    "index not a number": (b"index,el2n\nzero,1\n" + b"".join(b"%d,1\n" % i for i in range(1, 48)), "is not one of"),
    "nan score": (b"index,el2n\n0,nan\n" + b"".join(b"%d,1\n" % i for i in range(1, 48)), "el2n is nan; scores must"),
    "inf score": (b"index,el2n\n" + b"".join(b"%d,1\n" % i for i in range(47)) + b"47,-inf\n", "must be finite"),
    "text score": (b"index,el2n\n0,high\n" + b"".join(b"%d,1\n" % i for i in range(1, 48)), "is not a number"),
    "short row": (b"index,el2n,grand\n0,1\n" + b"".join(b"%d,1,2\n" % i for i in range(1, 48)), "line 2: 2 values"),
    "not UTF-8": (b"index,el2n\n\xff\xfe,1\n", "is not UTF-8"),
    "too large": (b"index,el2n\n" + b"0," + b"1" * 200_000 + b"\n", "is larger than"),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_scores_files_are_one_line(name, tmp_path, capsys):
    content, words = BAD_FILES[name]
    path = tmp_path / "scores.csv"
    if content is not None:
        path.write_bytes(content)
    line = refused(["workload.p=11", "steps=2", f"data.scores={path}", "data.keep=0.5",
                    "--out", str(tmp_path / "never")], capsys)
    assert words in line, line
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("args, words", [
    (["data.keep=0.5"], "data.scores: data.select=hardest needs per-example scores"),
    (["data.keep=0"], "data.keep: must be > 0"),
    (["data.keep=1.5"], "data.keep: must be <= 1"),
    (["data=half"], "data.keep: expected float"),
    (["data.select=best", "data.keep=0.5"], "data.select: expected one of hardest, easiest, random"),
    (["data.order=curriculum"], "data.scores: data.order=curriculum needs per-example scores"),
    (["data.scores=s.csv"], "data.scores: nothing reads them"),
    (["data.keep=0.5", "data.select=random", "data.scores=s.csv"], "data.scores: nothing reads them"),
    (["data.select=random"], "data.select: chooses which examples data.keep < 1 keeps"),
    (["data.seed=3"], "data.seed: seeds data.select=random"),
    (["data.pace=0.5"], "data.pace: applies to data.order=curriculum"),
    (["data.score=grand"], "data.score: names a column of data.scores"),
    (["data.keep=0.7", "data.skip_hardest=0.4", "data.scores=s.csv"], "data.skip_hardest: data.keep + data"),
    (["data.selected=24/48 sha256:0123456789abcdef"], "data.selected: records a diet's choice"),
    (["data.keep=0.5", "data.select=random", "data.selected=half"], "data.selected: is written by the trainer"),
    (["data.keep=0.5", "data.select=random", "data.selected=24/48 sha256:0123456789abcdef"],
     "data.selected: the config says this run trains on 24/48"),
    (["data.keep=0.01", "data.select=random"], "data.keep: keeps round(0.01 x 48) = 0"),
    (["data.keep=0.1", "data.select=random", "batch_size=16"], "batch_size=16 exceeds the 5 training examples that "
                                                                "data.keep=0.1 keeps"),
    (["workload=split_mnist1d", "data.keep=0.5", "data.select=random"], "data.keep: workload split_mnist1d is a "
                                                                         "task sequence"),
    (["data.keep.x=1"], "data options are flat"),
])
def test_config_mistakes_are_one_line(args, words, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = [] if args[0].startswith("workload=") else ["workload.p=11", "steps=2"]
    line = refused([*base, *args, "--out", str(tmp_path / "never")], capsys)
    assert words in line, line
    assert not (tmp_path / "never").exists()


def test_cli_exits_2_with_one_line(tmp_path):
    """The same, as a user's shell sees it: a subprocess, exit status 2, one line, no traceback."""
    out = subprocess.run([sys.executable, "-m", "trainlab", "run", "workload.p=11", "data.keep=0.5",
                          "data.scores=missing.csv"], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip() == "trainlab: config error: data.scores: scores file 'missing.csv' not found"
