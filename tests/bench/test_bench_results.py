"""Records -> per-repetition times: study best, the held-out gate, the standings built on them, and the
leaderboard and page written from them (user text escaped)."""

import json
import math
import re

import pytest

from trainlab.bench.results import cells, standings


def rec(sub, workload, study, trial, time, variant="base", step=None):
    return {"kind": "bench", "submission": sub, "workload": workload, "variant": variant, "study": study,
            "trial": trial, "seed": study, "hyperparameters": {"optimizer.lr": 0.1 * (trial + 1)},
            "score": {"time": time, "step": step if time is not None else None}}


RECORDS = [
    # submission "s": study 0 has trials at 5 s, miss, 3 s -> best 3 s (trial 2); study 1: all miss
    rec("s", "w", 0, 0, 5.0), rec("s", "w", 0, 1, None), rec("s", "w", 0, 2, 3.0, step=30),
    rec("s", "w", 1, 0, None), rec("s", "w", 1, 1, None), rec("s", "w", 1, 2, None),
    rec("s", "w", 0, 2, 9.0, variant="heldout"),
    # baseline "b": one trial per study; study 1's held-out variant misses, study 2's never ran
    rec("b", "w", 0, 0, 4.0, step=40), rec("b", "w", 1, 0, 2.0), rec("b", "w", 2, 0, 6.0),
    rec("b", "w", 0, 0, 1.0, variant="heldout"), rec("b", "w", 1, 0, None, variant="heldout"),
]


def test_study_best_and_held_out_gate():
    table = cells(RECORDS, heldout=True)
    s, b = table["s"]["w"], table["b"]["w"]
    assert s.reps == [3.0, math.inf] and s.steps == [30, None] and s.gated == 0 and s.trials == 6
    assert s.best_trials[0] == {"optimizer.lr": 0.30000000000000004}
    assert b.reps == [4.0, math.inf, math.inf] and b.gated == 2  # held-out miss, held-out missing
    assert b.time == math.inf and s.time == math.inf  # medians: half or more missed
    ungated = cells(RECORDS, heldout=False)["b"]["w"]
    assert ungated.reps == [4.0, 2.0, 6.0] and ungated.time == 4.0 and ungated.gated == 0


def test_standings_rank_by_benchmark_score_and_call_nothing_without_evidence():
    records = [rec("b", w, r, 0, 10.0) for w in ("w1", "w2") for r in range(3)]
    records += [rec("fast", w, r, 0, 5.0) for w in ("w1", "w2") for r in range(3)]
    records += [rec("lucky", "w1", 0, 0, 9.0), rec("lucky", "w1", 1, 0, 11.0), rec("lucky", "w1", 2, 0, 9.5)]
    records += [rec("lucky", "w2", r, 0, None) for r in range(3)]
    st = standings(records, ["w1", "w2"], ["b", "fast", "lucky"], "b", heldout=False)
    assert [r.name for r in st.rows] == ["fast", "b", "lucky"]
    fast, base, lucky = st.rows
    # ratios: fast 1, 1; b 2, 2 -> (4 - 2) / 3 each; lucky 9.5 / 5 = 1.9 on w1 (median of 9, 11, 9.5), never on w2
    assert fast.score == 1.0 and base.score == pytest.approx(2 / 3) and lucky.score == pytest.approx(2.1 / 3 / 2)
    assert fast.speedup == 2.0 and fast.wins == 6 and fast.verdict == "faster"  # 6-0: p = 1/64
    assert base.verdict == "baseline"
    assert lucky.wins == 2 and lucky.losses == 4 and lucky.verdict == "not distinguishable"


# ------------------------------------------------------------------------------------------ the outputs

EVIL = "<script>alert(1)</script> | x\ny"


def bench_dir(tmp_path, names=("base", EVIL)):
    """A finished bench's results directory (bench.json, results.jsonl) without training: two submissions."""
    out = tmp_path / "bench"
    out.mkdir()
    info = {"suite": "tiny", "workloads": ["w"], "baseline": names[0], "heldout": False, "ruleset": "external",
            "seeds": 1, "studies": 1, "trials": 1, "workers": 1, "threads": 1, "machine": "m", "date": "d",
            "submissions": [{"name": n, "spec": f"adamw name={n}", "describe": n} for n in names],
            "targets": {"w": {"metric": "acc", "target": 0.9, "higher_is_better": True}},
            "targets_source": {"file": "targets.json", "commit": "abc", "date": "d", "procedure": EVIL},
            "command": f"trainlab bench --submission 'adamw name={EVIL}' `x`"}
    (out / "bench.json").write_text(json.dumps(info))
    records = [{**rec(n, "w", 0, 0, 5.0 + i, step=10), "score": {"time": 5.0 + i, "step": 10, "status": "reached",
                                                                 "best": 0.95}}
               for i, n in enumerate(names)]
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return out


def test_leaderboard_and_page_escape_submission_names(tmp_path):
    from trainlab.bench.report import write_report

    out = bench_dir(tmp_path)
    write_report(out)
    board = (out / "leaderboard.md").read_text()
    # The command is a code span (shown as it is, inert); everywhere else the tag is text, the row one row.
    command = "Command: `` trainlab bench --submission 'adamw name=<script>alert(1)</script> | x y' `x` ``\n"
    assert command in board and "<script" not in board.replace(command, "")
    assert "| &lt;script>alert(1)&lt;/script> \\| x y |" in board and "w (acc >= 0.9)" in board
    standings = board.split("| rank |")[1].split("\n\n")[0].splitlines()[2:]
    assert len(standings) == 2 and all(len(re.findall(r"(?<!\\)\|", row)) == 11 for row in standings)  # 10 cells
    page = (out / "report.html").read_text()
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_markdown_escaping():
    from trainlab.bench.report import md, md_code

    assert md("a|b\\|c") == "a\\|b\\\\\\|c"  # a pipe never ends the cell, whatever precedes it
    assert md("<b>&amp;\r\n\x1b[2J <= 1") == "&lt;b>&amp;amp; [2J <= 1"  # no HTML, line break or terminal escape
    assert md("caf\udce9") == "caf\\\\xe9"  # not UTF-8: escaped, then its backslash too
    assert md_code("a `b` c") == "``a `b` c``" and md_code("`x`") == "`` `x` ``"


def test_algoperf_speedup_charges_a_miss_the_budget_and_the_row_carries_it():
    """Hand computation: w1 both solve, 10 s vs 5 s (2x); w2 the baseline misses (charged its 40 s budget) and the
    submission takes 20 s (2x): AlgoPerf's geometric mean 2x over both; the both-solved speedup uses w1 alone."""
    from trainlab.bench.scoring import algoperf_speedup

    assert algoperf_speedup({"w1": 10.0, "w2": math.inf}, {"w1": 5.0, "w2": 20.0}, {"w1": 100.0, "w2": 40.0}) == 2.0
    # a submission's miss against the baseline's 10 s on a 40 s budget: 10/40 = 0.25 -> sqrt(2 * 0.25)
    assert algoperf_speedup({"w1": 10.0, "w2": 10.0}, {"w1": 5.0, "w2": math.inf},
                            {"w1": 100.0, "w2": 40.0}) == pytest.approx(math.sqrt(0.5))
    assert algoperf_speedup({"w": math.inf}, {"w": math.inf}, {"w": 10.0}) == 1.0  # both miss: a tie
    assert math.isnan(algoperf_speedup({"w": 1.0}, {"w": 2.0}, {}))  # no budget known
    records = [{**rec("b", "w", r, 0, 10.0), "time_budget": 40.0} for r in range(3)]
    records += [{**rec("s", "w", r, 0, None), "time_budget": 40.0} for r in range(3)]
    row = next(r for r in standings(records, ["w"], ["b", "s"], "b", heldout=False).rows if r.name == "s")
    assert row.speedup_algoperf == 0.25 and math.isnan(row.speedup)  # both-solved: nothing to compare


def test_detectable_speedup_against_the_normal_approximation_and_when_nothing_can_be_detected():
    from statistics import NormalDist, stdev

    from trainlab.bench.scoring import detectable_speedup, sign_test_can_reject

    base = {"w": [10.0, 12.0, 9.0, 11.0, 10.5, 9.5]}
    sub = {"w": [5.0, 7.0, 5.5, 4.0, 6.0, 5.0]}
    d = [math.log(b / s) for b, s in zip(base["w"], sub["w"])]
    z = NormalDist().inv_cdf(0.95) + NormalDist().inv_cdf(0.8)  # 1.645 + 0.842
    assert detectable_speedup(base, sub) == pytest.approx(math.exp(z * stdev(d) / math.sqrt(6)))
    # the sign test reaches p < 0.05 one-sided only from 5 untied pairs on (0.5^4 = 0.0625, 0.5^5 = 0.031)
    assert [sign_test_can_reject(n) for n in (1, 4, 5)] == [False, False, True]
    assert detectable_speedup({"w": base["w"][:4]}, {"w": sub["w"][:4]}) == math.inf
    assert detectable_speedup({"w": [1.0] * 6}, {"w": [math.inf] * 5 + [1.0]}) == math.inf  # 1 pair both solved


def test_the_leaderboard_says_what_a_not_distinguishable_run_could_have_detected(tmp_path):
    from trainlab.bench.report import _standings_table

    records = [rec("b", w, r, 0, 10.0 + r) for w in ("w1", "w2") for r in range(3)]
    records += [rec("c", w, r, 0, 10.5 - r) for w in ("w1", "w2") for r in range(3)]
    st = standings(records, ["w1", "w2"], ["b", "c"], "b", heldout=False)
    headers, rows = _standings_table(st)
    verdict = rows[[r[1] for r in rows].index("c")][headers.index("verdict")]
    assert verdict.startswith("not distinguishable (could detect >= ") and verdict.endswith("x)")
    few = standings(records[:2] + records[6:8], ["w1"], ["b", "c"], "b", heldout=False)
    _, rows = _standings_table(few)
    assert "too few repetitions" in rows[[r[1] for r in rows].index("c")][headers.index("verdict")]


def test_the_clock_chooses_what_a_time_to_target_counts_and_old_records_refuse_the_cpu_clock():
    def scored(sub, study, wall, cpu, step):
        return {**rec(sub, "w", study, 0, wall, step=step), "score": {"time": wall, "cpu_time": cpu, "step": step,
                                                                      "reached": wall is not None}}

    # b is faster in wall seconds (a neighbour slowed s), s in CPU seconds and in steps
    records = [scored("b", r, 10.0, 8.0, 100) for r in range(3)] + [scored("s", r, 12.0, 4.0, 50) for r in range(3)]
    on = {clock: standings(records, ["w"], ["b", "s"], "b", heldout=False, clock=clock) for clock in
          ("wall", "cpu", "steps")}
    assert [on[c].cell("s", "w").time for c in on] == [12.0, 4.0, 50.0]
    assert on["wall"].rows[-1].speedup == pytest.approx(10 / 12) and on["cpu"].rows[0].speedup == 2.0
    assert on["steps"].rows[0].name == "s" and on["steps"].rows[0].speedup == 2.0
    old = [{**r, "score": {"time": r["score"]["time"], "step": r["score"]["step"], "reached": True}} for r in records]
    with pytest.raises(ValueError, match="--clock wall or steps"):
        standings(old, ["w"], ["b", "s"], "b", heldout=False, clock="cpu")
    assert standings(old, ["w"], ["b", "s"], "b", heldout=False, clock="wall").cell("s", "w").time == 12.0


def test_a_bench_written_before_the_clock_was_recorded_is_scored_on_wall_seconds():
    from trainlab.bench.report import _meta_text, bench_clock

    assert bench_clock({}) == "wall" and bench_clock({"clock": "cpu"}) == "cpu"
    info = {"ruleset": "external", "seeds": 3, "studies": 3, "trials": 5, "clock": "cpu"}
    assert "clock: CPU seconds to target" in _meta_text(info)
