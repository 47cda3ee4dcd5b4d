"""Tiny bench workloads (a second or two each) with explicit targets, shared by the bench tests."""

from trainlab.bench import suite
from trainlab.bench.suite import BenchWorkload

TINY_PARITY = BenchWorkload(
    name="tiny_parity", summary="parity of 2 bits among 16, MLP 1x32",
    overrides=("workload=sparse_parity", "workload.n=16", "workload.k=2", "workload.n_train=500", "workload.n_val=200",
               "model=mlp", "model.depth=1", "model.width=32", "batch_size=32", "eval_every=20"),
    steps=300, metric="val_acc", higher_is_better=True,
    heldout=("model.width=48",), heldout_summary="the same, width 48",
    target=0.95, time_budget=60.0, heldout_target=0.95, heldout_time_budget=60.0,
)
TINY_TEACHER = BenchWorkload(
    name="tiny_teacher", summary="teacher-student regression, d_in 8, MLP 1x32 (tanh)",
    overrides=("workload=teacher_student", "workload.d_in=8", "workload.n_train=256", "workload.n_val=256",
               "workload.teacher_width=16", "model=mlp", "model.depth=1", "model.width=32",
               "model.activation=tanh", "batch_size=32",
               "eval_every=20"),
    steps=200, metric="val_mse", higher_is_better=False,
    heldout=("model.activation=relu",), heldout_summary="the same with ReLU",
    target=0.1, time_budget=60.0, heldout_target=0.1, heldout_time_budget=60.0,
)


def register_tiny() -> None:
    """Add the tiny workloads and the ``tiny`` suite to the bench registry (idempotent)."""
    for workload in (TINY_PARITY, TINY_TEACHER):
        if workload.name not in suite.WORKLOADS:
            suite.add(workload)
    suite.SUITES["tiny"] = (TINY_PARITY.name, TINY_TEACHER.name)
