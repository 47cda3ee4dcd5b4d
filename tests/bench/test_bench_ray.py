"""`trainlab bench --backend ray` on a local Ray instance (``ray.init(num_cpus=2)``): the trials run as Ray tasks,
each in its own process group as with the process pool, and every record scores exactly as the pool's does --
steps, best values, statuses, the leaderboard's ranking; only the clocks (seconds) may differ."""

import json

import pytest
from bench_testing import register_tiny

from trainlab import cli

ray = pytest.importorskip("ray", reason="pip install 'trainlab[ray]': the Ray backend's tests need Ray")

SUBS = ["--submission", "adamw optimizer.lr=1e-2 name=adamw", "--baseline",
        "sgd optimizer.lr=0.1 optimizer.momentum=0.9 name=sgdm"]
CLOCKS = ("time", "train_time", "cpu_time", "cpu_train_time")


def _records(out):
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return {r["id"]: {**{k: v for k, v in r.items() if k not in ("score", "seconds", "wall")},
                      "score": {k: v for k, v in r["score"].items() if k not in CLOCKS}} for r in rows}


@pytest.mark.slow
def test_ray_backend_scores_every_trial_as_the_process_pool(tmp_path):
    register_tiny()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        # ranked on steps: the other clocks (seconds, and the step costs measured after each bench) may differ
        args = ["bench", "tiny", *SUBS, "--seeds", "1", "--heldout", "--quiet", "--clock", "steps"]
        assert cli.main([*args, "--backend", "ray", "--out", str(tmp_path / "ray")]) == 0
    finally:
        ray.shutdown()
    assert cli.main([*args, "--workers", "2", "--out", str(tmp_path / "pool")]) == 0
    on_ray, in_pool = _records(tmp_path / "ray"), _records(tmp_path / "pool")
    assert len(on_ray) == 8 and on_ray == in_pool
    assert all(r.get("error") is None for r in on_ray.values())
    board = [(tmp_path / d / "leaderboard.md").read_text().split("\n| rank")[1].split("\n\n")[0] for d in ("ray", "pool")]
    assert "adamw" in board[0] and [line.split("|")[2] for line in board[0].splitlines()[2:]] == \
        [line.split("|")[2] for line in board[1].splitlines()[2:]]
