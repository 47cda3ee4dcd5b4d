"""A finished (or interrupted) run, back in Python: ``trainlab.load_run(run_dir)``.

    run = trainlab.load_run("runs/modular-adamw-20261206-120000")
    run.model(x)                  # the model with the weights of the run's newest checkpoint, in eval mode
    run.config, run.metrics, run.summary, run.step
    run.export("model.safetensors")   # those weights as safetensors, the resolved config in its metadata

The model is rebuilt from the run's ``config.yaml`` exactly as the trainer builds it (workload, model, ``param.*``
options), then given the checkpoint's weights, loaded with ``weights_only=True`` after the checksum is verified.
No optimizer, process group or data loader is made. Checkpoints of sharded strategies hold full tensors and load
the same way; a DiLoCo checkpoint holds each worker's weights between outer steps, and this loads worker 0's.
A run that diverged wrote no checkpoint after its last finite state, so a diverged run loads finite weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainlab import models, workloads
from trainlab.errors import CheckpointError, RunDirError
from trainlab.models.setup import apply_param_options
from trainlab.rundir import RunDir, check_output_path, checkpoints, printable
from trainlab.train.config import RunConfig, from_cli
from trainlab.train.state import check_config, check_payload, mismatch
from trainlab.train.training import input_kind_for

__all__ = ["LoadedRun", "load_run"]


@dataclass
class LoadedRun:
    """A run directory's config, final model and logs."""

    path: Path
    config: RunConfig
    model: nn.Module  # in eval mode, on the device asked for
    step: int  # optimizer steps behind the weights
    metrics: list[dict[str, Any]]
    summary: dict[str, Any] | None

    def export(self, path: str | Path) -> Path:
        """Write the weights as a safetensors file (no pickle), atomically; its metadata holds the config and the
        step. A path that is one of a run directory's records (config, logs, checkpoints) is refused."""
        from safetensors.torch import save

        from trainlab.rundir.atomic import atomic_write_bytes

        path = Path(path)
        check_output_path(path)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        metadata = {"format": "pt", "trainlab_config": json.dumps(self.config.to_plain()), "step": str(self.step),
                    "run": printable(str(self.path))}
        atomic_write_bytes(path, save(tensors, metadata=metadata))
        return path


def load_run(path: str | Path, *, device: str | torch.device = "cpu") -> LoadedRun:
    """Rebuild the model of the run in ``path`` with the weights of its newest checkpoint.

    Raises :class:`~trainlab.errors.RunDirError` when ``path`` holds no run and
    :class:`~trainlab.errors.CheckpointError` when it has no checkpoint that loads safely.
    """
    rd, cfg, payload = _newest_checkpoint(path, device)
    model = build_model(cfg, torch.device(device))
    try:
        model.load_state_dict(_model_state(payload))
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {payload.path} does not fit the model of config.yaml: "
                              f"{mismatch(err)}") from None
    return LoadedRun(rd.path, cfg, model.eval(), payload["step"], rd.metrics(), rd.summary())


def load_initial_weights(model: nn.Module, path: str | Path) -> int:
    """Give ``model`` the weights of the newest checkpoint of the run in ``path`` (``init_from``); returns that
    checkpoint's step. Any model whose parameter names and shapes match fits: fine-tuning may change the
    workload, the loss or the optimizer. A mismatch is a :class:`~trainlab.config.ConfigError` on ``init_from``
    naming the first differing parameter; so is a ``path`` that holds no run or no checkpoint (named as
    ``init_from``: on ``--resume`` of a fine-tuning run, a bare "not a run directory" would not say which)."""
    from trainlab.config import ConfigError

    try:
        _, _, payload = _newest_checkpoint(path, next(model.parameters()).device)
    except (RunDirError, CheckpointError) as err:
        raise ConfigError("init_from", str(err)) from None
    try:
        model.load_state_dict(_model_state(payload))
    except RuntimeError as err:
        raise ConfigError("init_from", f"the weights of {printable(str(path))} do not fit this run's model: "
                                       f"{mismatch(err)}") from None
    return int(payload["step"])


def _newest_checkpoint(path: str | Path, device: str | torch.device) -> tuple[RunDir, RunConfig, Any]:
    """The run directory, its config and its newest checkpoint, checked (checksum, keys, config unchanged)."""
    rd = RunDir.open(path)
    if not rd.config_path.is_file():
        raise RunDirError(f"{rd.path} holds no config.yaml: the model cannot be rebuilt")
    cfg = from_cli(str(rd.config_path), [])
    payload = checkpoints.load(rd.checkpoints, map_location=device)
    check_payload(payload)  # a file that hashes right may still lack a key or hold the wrong type
    check_config(payload.get("config"), cfg)  # config.yaml edited after training: the weights are another model's
    return rd, cfg, payload


def _model_state(payload: Any) -> dict[str, Any]:
    """The model's state dict in a checkpoint (worker 0's for a DiLoCo checkpoint)."""
    return payload["ranks"][0]["model"] if "ranks" in payload else payload["model"]


def build_model(cfg: RunConfig, device: torch.device) -> nn.Module:
    """The model of ``cfg`` as the trainer builds it (seeded initialisation, ``param.*`` options applied)."""
    dtype = torch.float64 if cfg.train.dtype == "float64" else torch.float32
    torch.manual_seed(cfg.train.seed)
    workload = workloads.build(cfg.workload.name, **cfg.workload.kwargs())
    kind = input_kind_for(workload, cfg.model.name)
    spec = workload.spec(kind)  # type: ignore[arg-type]
    model = models.build(cfg.model.name, spec, **cfg.model.kwargs()).to(device, dtype)
    sample = None
    if cfg.param.init == "data_dependent":  # the only option that reads data (its values are then overwritten)
        sample = workload.data(kind).x_train[:1024].to(device, dtype)  # type: ignore[arg-type]
    return apply_param_options(model, cfg.param, sample)  # type: ignore[arg-type]
