"""Shared test set-up.

Tests use one intra-op thread: the models here are tiny, and on a 2-core machine (or under pytest-xdist with
two workers) a second thread mostly adds contention -- a 200-step loop ran 17x slower with 2 threads under load.
"""

import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("TRAINLAB_CACHE", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "trainlab"))


@pytest.fixture
def no_network(monkeypatch):
    """Fail any attempt to open a network connection (trainlab is offline by design)."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
