"""``fed.backend=ray`` on a local Ray instance: the clients' work runs as Ray tasks, and the run is the
in-process backend's bit for bit (the simulated clock decides the order; each task uses the run's threads)."""

from __future__ import annotations

import json

import pytest
import torch

from resume_testing import _weights, run_quietly  # type: ignore[import-not-found]

ray = pytest.importorskip("ray", reason="pip install 'trainlab[ray]': the Ray backend's tests need Ray")

SMALL = ["workload=mnist1d", "workload.num_samples=400", "model=mlp", "model.width=16", "model.depth=1",
         "eval_every=3", "threads=1", "steps=6", "fed.clients=12", "fed.local_steps=3"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("strategy", [["fed.strategy=fedavg", "fed.client=fedspeed"],
                                      ["fed.strategy=fedbuff", "fed.buffer=3", "fed.participation=0.5"]])
def test_ray_tasks_give_the_in_process_run_bit_for_bit(tmp_path, local_ray, strategy):
    here = run_quietly(tmp_path / "local", [*SMALL, *strategy])
    there = run_quietly(tmp_path / "ray", [*SMALL, *strategy, "fed.backend=ray"])
    for key, value in _weights(here).items():
        assert torch.equal(_weights(there)[key], value), key
    rows = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (here, there)]
    drop = ("time", "cpu_time", "wall")
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows[0]] == \
           [{k: v for k, v in r.items() if k not in drop} for r in rows[1]]
