"""The byte meter: totals, per-kind sums, per-step deltas, resume."""

import torch

from trainlab.distributed.comm import CommMeter, ring_allreduce_wire_bytes, tensor_bytes


def test_tensor_bytes_counts_element_size():
    assert tensor_bytes(torch.zeros(10, dtype=torch.float32)) == 40
    assert tensor_bytes([torch.zeros(3, dtype=torch.float64), torch.zeros(5, dtype=torch.uint8)]) == 29


def test_meter_steps_kinds_and_resume():
    m = CommMeter()
    m.add(100, "allreduce")
    m.add(20, "allgather")
    assert m.end_step() == 120 and m.end_step() == 0
    m.add(5, "allreduce")
    assert m.summary() == {"bytes_total": 125, "bytes_by_kind": {"allreduce": 105, "allgather": 20}}
    again = CommMeter()
    again.load_state_dict(m.state_dict())
    assert again.summary() == m.summary() and again.end_step() == 0


def test_ring_allreduce_wire_bytes():
    assert ring_allreduce_wire_bytes(1000, 1) == 0
    assert ring_allreduce_wire_bytes(1000, 2) == 1000
    assert ring_allreduce_wire_bytes(1000, 4) == 1500


def test_list_strategies_names_every_registered_strategy_and_its_options(capsys):
    from trainlab.cli import main
    from trainlab.distributed.strategy import STRATEGIES

    assert main(["list", "strategies", "--options"]) == 0
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines() if line and not line.startswith((" ", "options"))]
    assert listed == [e.name for e in STRATEGIES] == ["ddp", "zero1", "fsdp", "diloco", "streaming_diloco",
                                                      "gradient_coding", "gossip"]
    assert "    dist.inner_steps = 50  (int)" in out and "dist.compression" in out
