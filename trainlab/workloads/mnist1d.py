"""``mnist1d``: the MNIST-1D benchmark, generated offline.

Greydanus & Kobak (2024), "Scaling down deep learning with MNIST-1D" (ICML 2024, arXiv:2011.14439). Ten
1-D templates (one per digit) are padded, sheared, scaled, translated and corrupted with correlated and iid
noise into signals of length 40. The data are generated procedurally with the ``mnist1d`` package
(``mnist1d.data.make_dataset``; never the download path ``get_dataset``), then standardised by the package
(zero mean, unit standard deviation over the whole data set).

Generation of the default 5000 examples takes about 3 s, so by default (``cache=True``) the arrays are stored
as an ``.npz`` file (no pickle) under ``$TRAINLAB_CACHE`` or ``~/.cache/trainlab``, in ``mnist1d/``, named by
a hash of the generator's arguments. ``make_dataset`` seeds Python's and NumPy's global generators; their
states are saved and restored around the call so the caller's random streams are untouched.

Input kinds: ``signal`` of shape ``(1, 40)`` and ``vector`` of shape ``(40,)``, float32; 10 classes.
Defaults: 5000 examples (4000 train, 1000 validation), ``seed=42`` (MNIST-1D's own), batch 100, 4000 steps,
a 1-D CNN; metric accuracy, threshold 0.9.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainlab.config import ConfigError, option, seed_option
from trainlab.workloads.base import Dataset, DataSpec, InputKind, Workload
from trainlab.workloads.registry import register

LENGTH = 40  # MNIST-1D's final_seq_length
CACHE_FORMAT = 1


@dataclass
class Mnist1dOptions:
    # the generator is a Python loop (3 s for the default 5000 on a laptop): a million take over ten minutes,
    # more is a mistake rather than a data set
    num_samples: int = option(5000, help="examples generated in all (rounded down to a multiple of 10)", ge=10,
                              le=1_000_000)
    train_split: float = option(0.8, help="fraction of the examples used for training", gt=0, lt=1)
    seed: int = seed_option(42, help="seed of the MNIST-1D generator (42 reproduces the published data)")
    cache: bool = option(True, help="store generated arrays as .npz under $TRAINLAB_CACHE or ~/.cache/trainlab")

    def validate(self) -> None:
        total = (self.num_samples // 10) * 10
        split = int(total * self.train_split)
        if not 1 <= split < total:
            raise ConfigError(
                "train_split",
                f"{self.train_split} of {total} examples leaves an empty training or validation set",
            )


def cache_dir() -> Path:
    """``$TRAINLAB_CACHE`` if set, else ``~/.cache/trainlab``."""
    env = os.environ.get("TRAINLAB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "trainlab"


def generator_args(options: Mnist1dOptions) -> dict[str, Any]:
    """The arguments handed to ``mnist1d.data.make_dataset`` (MNIST-1D defaults plus our options)."""
    from mnist1d.data import get_dataset_args

    args = get_dataset_args(as_dict=True)
    args.pop("url", None)
    args.update(num_samples=options.num_samples, train_split=options.train_split, seed=options.seed)
    return args


def cache_key(args: dict[str, Any]) -> str:
    try:
        from importlib.metadata import version

        pkg = version("mnist1d")
    except Exception:  # pragma: no cover - metadata missing in odd installs
        pkg = "unknown"
    text = json.dumps({"args": args, "mnist1d": pkg, "format": CACHE_FORMAT}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def generate(args: dict[str, Any]) -> dict[str, np.ndarray]:
    """Run MNIST-1D's generator, restoring the global Python/NumPy RNG states it reseeds."""
    from mnist1d.data import get_dataset_args, make_dataset

    view = get_dataset_args()  # an ObjectView; make_dataset reads attributes
    for key, value in args.items():
        setattr(view, key, value)
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(view)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {
        "x": np.asarray(d["x"], dtype=np.float32),
        "y": np.asarray(d["y"], dtype=np.int64),
        "x_test": np.asarray(d["x_test"], dtype=np.float32),
        "y_test": np.asarray(d["y_test"], dtype=np.int64),
    }


def _load_cached(path: Path, key: str) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["key"]) != key:
                return None
            return {name: f[name] for name in ("x", "y", "x_test", "y_test")}
    except FileNotFoundError:
        return None
    except Exception as err:  # a truncated or foreign file: regenerate and overwrite
        warnings.warn(f"mnist1d: ignoring unreadable cache file {path} ({err}); regenerating", stacklevel=3)
        return None


def _store(path: Path, key: str, arrays: dict[str, np.ndarray]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                # numpy types savez(..., allow_pickle: bool, **arrays): mypy cannot rule out that key in **arrays
                np.savez(f, key=np.array(key), **arrays)  # type: ignore[arg-type]
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as err:
        warnings.warn(f"mnist1d: could not write cache file {path} ({err}); continuing without cache", stacklevel=3)


def load_arrays(options: Mnist1dOptions) -> dict[str, np.ndarray]:
    """The MNIST-1D arrays for ``options``, from the cache when enabled and present."""
    args = generator_args(options)
    if not options.cache:
        return generate(args)
    key = cache_key(args)
    path = cache_dir() / "mnist1d" / f"{key}.npz"
    arrays = _load_cached(path, key)
    if arrays is None:
        arrays = generate(args)
        _store(path, key, arrays)
    return arrays


@register("mnist1d", options=Mnist1dOptions, paper="Greydanus & Kobak 2024, arXiv:2011.14439")
class Mnist1dWorkload(Workload):
    """MNIST-1D: 10-class classification of length-40 procedurally generated signals (Greydanus & Kobak)."""

    metric = "acc"
    higher_is_better = True
    threshold = 0.9
    default_steps = 4000
    default_eval_every = 200
    default_batch_size = 100
    default_model = ("cnn1d", {})
    input_kinds = ("signal", "vector")

    options: Mnist1dOptions

    def __init__(self, options: Mnist1dOptions) -> None:
        super().__init__(options)
        options.validate()
        self._cache: dict[str, Dataset] = {}

    def spec(self, kind: InputKind) -> DataSpec:
        kind = self.check_kind(kind)
        shape = (1, LENGTH) if kind == "signal" else (LENGTH,)
        return DataSpec(kind, shape, 10, "classification")

    def data(self, kind: InputKind) -> Dataset:
        kind = self.check_kind(kind)
        if kind not in self._cache:
            if self._cache:  # the other kind is a view of the same arrays
                base = next(iter(self._cache.values()))
                xt, xv = base.x_train.reshape(len(base.x_train), -1), base.x_val.reshape(len(base.x_val), -1)
                yt, yv = base.y_train, base.y_val
            else:
                a = load_arrays(self.options)
                xt, xv = torch.from_numpy(a["x"]), torch.from_numpy(a["x_test"])
                yt, yv = torch.from_numpy(a["y"]), torch.from_numpy(a["y_test"])
            if kind == "signal":
                xt, xv = xt.reshape(-1, 1, LENGTH), xv.reshape(-1, 1, LENGTH)
            self._cache[kind] = Dataset(xt, yt, xv, yv)
        return self._cache[kind]
