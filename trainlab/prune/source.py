"""Another run's masks and weights (``prune.from_run=RUN_DIR``), and the rewind point every pruning run keeps.

``prune.from_run`` takes the masks of the source run's newest checkpoint (a pruning run's checkpoints hold its
masks; they are read like every checkpoint: checksum verified, ``weights_only``, never unpickled) and, by
``prune.reset``, the weights the new run starts from:

- ``finetune``: the source's final weights -- the newest checkpoint's, loaded by
  :func:`trainlab.train.load.load_initial_weights` exactly as ``init_from`` loads them (Han et al. 2015's
  retraining; Liu et al. 2019's fine-tuning baseline).
- ``rewind``: the weights the source kept in ``RUN/prune/rewind.safetensors``: its weights after
  ``prune.rewind_step`` = k steps (k = 0: its initial weights theta_0, the lottery ticket of Frankle & Carbin 2019;
  k > 0: Frankle et al. 2020's rewinding). The new run's ``prune.rewind_step`` must equal the source's. A run that
  was itself rewound copies its source's file, so every round of iterative pruning rewinds to the first run's
  theta_k, as Frankle et al. do.
- ``scratch``: the new run's own fresh initialisation (its ``seed``): Liu et al. 2019's "training from scratch".

Every pruning run (``prune.method`` or ``prune.from_run`` set) keeps its rewind point: the full state dict after
``prune.rewind_step`` steps, as safetensors (no pickle), metadata ``step``. The file is written when the run
reaches that step (or, for a rewound run, before its first step), so a source must have got past it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from trainlab.config import ConfigError
from trainlab.rundir import printable

REWIND_FILE = Path("prune") / "rewind.safetensors"


@dataclass
class Source:
    """What a ``prune.from_run`` run takes from its source."""

    path: str
    masks: dict[str, Any]  # as the source's newest checkpoint holds them (checked against the model later)
    step: int  # the step of that checkpoint


def read_source(path: str, device: torch.device) -> Source:
    """The masks of the newest checkpoint of the pruning run in ``path``; a one-line :class:`ConfigError` on
    ``prune.from_run`` when there is no such run, checkpoint or masks."""
    from trainlab.errors import CheckpointError, RunDirError
    from trainlab.train.load import _newest_checkpoint

    try:
        _, _, payload = _newest_checkpoint(path, device)
    except (RunDirError, CheckpointError) as err:
        raise ConfigError("prune.from_run", str(err)) from None
    state = payload.get("prune")
    if not isinstance(state, dict) or "masks" not in state:
        raise ConfigError("prune.from_run", f"{printable(path)} is not a pruning run: its checkpoint holds no masks "
                                            f"(train it with prune.method=magnitude or neurons)")
    return Source(path, state["masks"], int(payload["step"]))


def load_start_weights(model: nn.Module, source: str, reset: str, rewind_step: int) -> bytes | None:
    """Give ``model`` the weights ``reset`` starts from (module doc); for ``rewind``, return the source's rewind
    file, which the new run keeps as its own."""
    if reset == "finetune":
        from trainlab.train.load import load_initial_weights

        try:
            load_initial_weights(model, source)
        except ConfigError as err:
            raise ConfigError("prune.from_run", err.message) from None
        return None
    if reset == "scratch":
        return None
    data, step, tensors = read_rewind(Path(source))
    if step != rewind_step:
        raise ConfigError("prune.rewind_step", f"{printable(source)} kept its weights after {step} steps for "
                                               f"rewinding (its prune.rewind_step), not {rewind_step}; rewind to "
                                               f"{step}, or train the source again with prune.rewind_step="
                                               f"{rewind_step}")
    try:
        model.load_state_dict(tensors)
    except RuntimeError as err:
        from trainlab.train.state import mismatch

        raise ConfigError("prune.from_run", f"the rewind weights of {printable(source)} do not fit this run's "
                                            f"model: {mismatch(err)}") from None
    return data


def read_rewind(run_dir: Path) -> tuple[bytes, int, dict[str, Tensor]]:
    """(the bytes, the step, the tensors) of ``run_dir``'s rewind file; a :class:`ConfigError` if unreadable."""
    from safetensors.torch import load

    path = run_dir / REWIND_FILE
    if not path.is_file():
        raise ConfigError("prune.from_run", f"{printable(str(run_dir))} kept no weights to rewind to (no "
                                            f"{REWIND_FILE}): it stopped before its prune.rewind_step, or is not a "
                                            f"pruning run")
    try:
        data = path.read_bytes()
        tensors = load(data)
        step = int(_metadata(data)["step"])
    except Exception as err:  # a damaged file: safetensors' own errors, a header without the step
        raise ConfigError("prune.from_run", f"{printable(str(path))} cannot be read as rewind weights "
                                            f"({type(err).__name__})") from None
    return data, step, tensors


def _metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's header (8 bytes of length, then JSON)."""
    n = int.from_bytes(data[:8], "little")
    return dict(json.loads(data[8:8 + n]).get("__metadata__") or {})


def write_rewind(run_dir: Path, state: dict[str, Tensor], step: int) -> None:
    """Write ``state`` (a model's state dict) as ``run_dir``'s rewind point after ``step`` steps."""
    from safetensors.torch import save

    # clones: safetensors refuses tensors that share memory (a transformer's tied head and embedding)
    tensors = {k: v.detach().cpu().clone() for k, v in state.items()}
    write_rewind_bytes(run_dir, save(tensors, metadata={"format": "pt", "step": str(step)}))


def write_rewind_bytes(run_dir: Path, data: bytes) -> None:
    from trainlab.rundir.atomic import atomic_write_bytes

    path = run_dir / REWIND_FILE
    path.parent.mkdir(exist_ok=True)
    atomic_write_bytes(path, data)
