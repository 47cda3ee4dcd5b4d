"""``mnist`` and ``cifar10``: image classification from files already on disk (trainlab never downloads).

The files are read from ``root`` in torchvision's standard layout:

- MNIST (LeCun et al. 1998, "Gradient-based learning applied to document recognition"):
  ``ROOT/MNIST/raw/{train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
  t10k-labels-idx1-ubyte}``, each optionally gzipped (``.gz``). The IDX format is parsed here with numpy
  (magic numbers 2051 for images, 2049 for labels, big-endian sizes, unsigned bytes).
- CIFAR-10 (Krizhevsky 2009, "Learning multiple layers of features from tiny images"): the python version
  ``ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch}`` (pickles, read with a restricted unpickler that
  only rebuilds numpy arrays and refuses every other global), or the binary version
  ``ROOT/cifar-10-batches-bin/{data_batch_1..5.bin, test_batch.bin}`` (records of 1 label byte + 3072 pixels).

The official test set is the validation set. Pixels are scaled to ``[0, 1]`` and normalised per channel with
the mean and standard deviation of the full training set (computed exactly from the byte histogram).
``n_train > 0`` keeps a random subset (chosen with ``seed``) of that many training examples; 0 keeps all.

Input kinds: ``image`` (``(1, 28, 28)`` / ``(3, 32, 32)``) or ``vector`` (flattened), float32; 10 classes.
Defaults: mnist — batch 128, 2000 steps, an MLP of depth 2 and width 256, threshold accuracy 0.98;
cifar10 — batch 128, 5000 steps, a 2-D CNN, threshold 0.8.
"""

from __future__ import annotations

import gzip
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainlab.config import option, seed_option
from trainlab.errors import quote_path
from trainlab.workloads.base import DataError, Dataset, DataSpec, InputKind, Workload
from trainlab.workloads.registry import register


class MissingDataError(FileNotFoundError, DataError):
    """Data files are not where they are expected; the message names the directory and the files."""


class DataFormatError(DataError):
    """A data file exists but does not have the expected format."""


# ---------------------------------------------------------------------------------------------------------
# file formats
# ---------------------------------------------------------------------------------------------------------
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049


def _open_maybe_gz(path: Path) -> bytes:
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as f:
            return f.read()
    return path.read_bytes()


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (optionally gzipped) and check its magic number."""
    try:
        raw = _open_maybe_gz(path)
    except (OSError, EOFError) as err:
        raise DataFormatError(f"{quote_path(path)}: cannot read IDX file ({err})") from None
    if len(raw) < 4:
        raise DataFormatError(f"{quote_path(path)}: too short for an IDX file ({len(raw)} bytes)")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataFormatError(
            f"{quote_path(path)}: IDX magic number {found}, expected {magic} (unsigned-byte IDX file)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFormatError(f"{quote_path(path)}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(shape)) if shape else 0
    if len(raw) - header != size:
        raise DataFormatError(
            f"{quote_path(path)}: IDX header says {shape} = {size} bytes of data, file has {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct as fn  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct as fn  # type: ignore[no-redef]
    return fn


def _frombuffer() -> Any:
    try:
        # numpy >= 2; a private helper, absent from numpy's stubs
        from numpy._core.numeric import _frombuffer as fn  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.numeric import _frombuffer as fn  # type: ignore[no-redef]
    return fn


def _codecs_encode() -> Any:
    import codecs

    return codecs.encode


#: The only globals a CIFAR pickle may name: what numpy needs to rebuild arrays (and ``codecs.encode``,
#: which Python 3 uses to pickle bytes at protocol 2).
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("codecs", "encode"): _codecs_encode,
    ("_codecs", "encode"): _codecs_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        factory = _ALLOWED_GLOBALS.get((module, name))
        if factory is None:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only numpy array reconstruction is allowed in data files"
            )
        return factory()


def restricted_load(path: Path) -> Any:
    """Load a pickle file with :class:`RestrictedUnpickler` (``encoding='bytes'`` for Python 2 pickles)."""
    with open(path, "rb") as f:
        try:
            return RestrictedUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
        except pickle.UnpicklingError as err:
            raise DataFormatError(f"{quote_path(path)}: {err}") from None
        except Exception as err:
            raise DataFormatError(
                f"{quote_path(path)}: not a CIFAR-10 python batch ({type(err).__name__}: {err})") from None


def read_cifar_py(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` from a CIFAR-10 python batch."""
    obj = restricted_load(path)
    if not isinstance(obj, dict):
        raise DataFormatError(f"{quote_path(path)}: expected a dict batch, got {type(obj).__name__}")
    batch = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    if "data" not in batch or "labels" not in batch:
        raise DataFormatError(f"{quote_path(path)}: CIFAR-10 batch without 'data' and 'labels' entries")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataFormatError(
            f"{quote_path(path)}: expected data uint8 (N, 3072) and N labels, got {data.dtype} {data.shape}, "
            f"{len(labels)} labels"
        )
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def read_cifar_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` from a CIFAR-10 binary batch."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % 3073:
        raise DataFormatError(
            f"{quote_path(path)}: size {raw.size} bytes is not a multiple of a 3073-byte CIFAR-10 record")
    records = raw.reshape(-1, 3073)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].astype(np.int64)


# ---------------------------------------------------------------------------------------------------------
# normalisation
# ---------------------------------------------------------------------------------------------------------
def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel mean and std of uint8 images ``(N, C, H, W)`` scaled to [0, 1], via histograms."""
    levels = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = np.bincount(np.ascontiguousarray(images[:, c]).ravel(), minlength=256).astype(np.float64)
        total = counts.sum()
        mean = (counts * levels).sum() / total
        var = (counts * (levels - mean) ** 2).sum() / total
        means.append(mean)
        stds.append(np.sqrt(var) if var > 0 else 1.0)
    return np.array(means), np.array(stds)


def to_tensor(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    images = np.ascontiguousarray(images)
    if not images.flags.writeable:  # e.g. parsed straight from a bytes buffer; torch wants writable memory
        images = images.copy()
    x = torch.from_numpy(images).to(torch.float32).div_(255.0)
    shape = (1, -1, 1, 1)
    x.sub_(torch.tensor(mean, dtype=torch.float32).view(shape)).div_(torch.tensor(std, dtype=torch.float32).view(shape))
    return x


# ---------------------------------------------------------------------------------------------------------
# workloads
# ---------------------------------------------------------------------------------------------------------
@dataclass
class VisionOptions:
    root: str = option("data", help="directory holding the data set in torchvision's layout (never downloaded)")
    n_train: int = option(0, help="training examples to keep, a random subset chosen by seed (0 = all)", ge=0)
    seed: int = seed_option(help="seed of the training subset (used when n_train > 0)")


MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR_PY_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
CIFAR_BIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)


class _VisionWorkload(Workload):
    """Shared loading, normalisation, subsetting and caching; subclasses implement :meth:`_load_raw`."""

    image_shape: tuple[int, int, int] = (1, 1, 1)
    input_kinds = ("image", "vector")
    metric = "acc"
    higher_is_better = True

    options: VisionOptions

    def __init__(self, options: VisionOptions) -> None:
        super().__init__(options)
        self._cache: dict[str, Dataset] = {}

    def _load_raw(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def spec(self, kind: InputKind) -> DataSpec:
        kind = self.check_kind(kind)
        shape = self.image_shape if kind == "image" else (int(np.prod(self.image_shape)),)
        return DataSpec(kind, shape, 10, "classification")

    def data(self, kind: InputKind) -> Dataset:
        kind = self.check_kind(kind)
        if kind not in self._cache:
            if self._cache:
                base = next(iter(self._cache.values()))
                xt, xv = base.x_train, base.x_val
                yt, yv = base.y_train, base.y_val
            else:
                xt, yt, xv, yv = self._build()
            shape = self.image_shape if kind == "image" else (int(np.prod(self.image_shape)),)
            self._cache[kind] = Dataset(xt.reshape(-1, *shape), yt, xv.reshape(-1, *shape), yv)
        return self._cache[kind]

    def _build(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x_train, y_train, x_val, y_val = self._load_raw()
        for labels, split in ((y_train, "training"), (y_val, "test")):
            if len(labels) and (labels.min() < 0 or labels.max() > 9):
                raise DataFormatError(f"{self.name}: {split} labels outside 0..9")
        mean, std = channel_stats(x_train)
        o = self.options
        if o.n_train:
            if o.n_train > len(x_train):
                raise DataError(f"{self.name}: n_train={o.n_train} but the training set has {len(x_train)} examples")
            gen = torch.Generator().manual_seed(o.seed)
            keep = torch.randperm(len(x_train), generator=gen)[: o.n_train].sort().values.numpy()
            x_train, y_train = x_train[keep], y_train[keep]
        return (
            to_tensor(x_train, mean, std),
            torch.from_numpy(np.array(y_train, dtype=np.int64)),
            to_tensor(x_val, mean, std),
            torch.from_numpy(np.array(y_val, dtype=np.int64)),
        )


@register("mnist", options=VisionOptions, paper="LeCun et al. 1998")
class MnistWorkload(_VisionWorkload):
    """MNIST handwritten digits from ROOT/MNIST/raw (IDX files, optionally gzipped)."""

    image_shape = (1, 28, 28)
    threshold = 0.98
    default_steps = 2000
    default_eval_every = 200
    default_batch_size = 128
    default_model = ("mlp", {"depth": 2, "width": 256})

    def _load_raw(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        raw = Path(self.options.root).expanduser() / "MNIST" / "raw"
        paths = {}
        for name in MNIST_FILES:
            for candidate in (raw / name, raw / f"{name}.gz"):
                if candidate.is_file():
                    paths[name] = candidate
                    break
        missing = [n for n in MNIST_FILES if n not in paths]
        if missing:
            raise MissingDataError(
                f"mnist: missing {', '.join(missing)} (optionally .gz) in {quote_path(raw)}; expected "
                f"{', '.join(MNIST_FILES)} there — trainlab never downloads, place the files or set root="
            )
        x_train = read_idx(paths[MNIST_FILES[0]], IDX_IMAGES_MAGIC)
        y_train = read_idx(paths[MNIST_FILES[1]], IDX_LABELS_MAGIC)
        x_val = read_idx(paths[MNIST_FILES[2]], IDX_IMAGES_MAGIC)
        y_val = read_idx(paths[MNIST_FILES[3]], IDX_LABELS_MAGIC)
        for x, y, split in ((x_train, y_train, "train"), (x_val, y_val, "t10k")):
            if x.ndim != 3 or x.shape[1:] != (28, 28):
                raise DataFormatError(f"mnist: {split} images have shape {x.shape}, expected (N, 28, 28)")
            if y.ndim != 1 or len(y) != len(x):
                raise DataFormatError(f"mnist: {split} has {len(x)} images but labels of shape {y.shape}")
        return x_train[:, None], y_train.astype(np.int64), x_val[:, None], y_val.astype(np.int64)


@register("cifar10", options=VisionOptions, paper="Krizhevsky 2009")
class Cifar10Workload(_VisionWorkload):
    """CIFAR-10 from ROOT/cifar-10-batches-py (python pickles, restricted) or ROOT/cifar-10-batches-bin."""

    image_shape = (3, 32, 32)
    threshold = 0.8
    default_steps = 5000
    default_eval_every = 250
    default_batch_size = 128
    default_model = ("cnn2d", {})

    def _load_raw(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        root = Path(self.options.root).expanduser()
        py_dir, bin_dir = root / "cifar-10-batches-py", root / "cifar-10-batches-bin"
        if all((py_dir / n).is_file() for n in CIFAR_PY_FILES):
            reader, files = read_cifar_py, [py_dir / n for n in CIFAR_PY_FILES]
        elif all((bin_dir / n).is_file() for n in CIFAR_BIN_FILES):
            reader, files = read_cifar_bin, [bin_dir / n for n in CIFAR_BIN_FILES]
        else:
            raise MissingDataError(
                f"cifar10: expected {','.join(CIFAR_PY_FILES)} in {quote_path(py_dir)} or "
                f"{','.join(CIFAR_BIN_FILES)} in {quote_path(bin_dir)} — trainlab never downloads, place the files "
                "or set root="
            )
        parts = [reader(f) for f in files]
        x_train = np.concatenate([p[0] for p in parts[:5]])
        y_train = np.concatenate([p[1] for p in parts[:5]])
        return x_train, y_train, parts[5][0], parts[5][1]
