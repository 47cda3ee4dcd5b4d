"""Shared test set-up.

Tests use one intra-op thread: the models here are tiny, and on a 2-core machine (or under pytest-xdist with
two workers) a second thread mostly adds contention -- a 200-step loop ran 17x slower with 2 threads under load.
``OMP_NUM_THREADS=1`` makes every run take one thread too (trainlab's automatic choice follows the load average,
and runs compared bit for bit must train with the same count); tests of the automatic choice unset it.
"""

import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRAINLAB_CACHE", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "trainlab"))


@pytest.fixture
def no_network(monkeypatch):
    """Fail any attempt to open a network connection (trainlab is offline by design)."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def pytest_terminal_summary(terminalreporter):
    """The fuzz's counts per group (tests/test_fuzz_cli.py records them as the user property "fuzz"): attempts,
    and how many were refused in one line (or, for tampered run directories, refused or unaffected). Read from
    the test reports, so it works under pytest-xdist."""
    groups: dict[str, list[int]] = {}
    for report in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", []):
        if report.when != "call":
            continue
        for key, value in report.user_properties:
            if key == "fuzz":
                group, attempts, handled = value
                total = groups.setdefault(group, [0, 0, 0])
                total[0] += attempts
                total[1] += handled if report.passed else 0
                total[2] += 0 if report.passed else 1
    if groups:
        terminalreporter.section("fuzz: attempts, handled in one line, failing tests")
        for group, (attempts, handled, failed) in sorted(groups.items()):
            terminalreporter.write_line(f"{group:<70} {attempts:>5} {handled:>5} {failed:>3}")
        total = [sum(v[i] for v in groups.values()) for i in range(3)]
        terminalreporter.write_line(f"{'total':<70} {total[0]:>5} {total[1]:>5} {total[2]:>3}")
