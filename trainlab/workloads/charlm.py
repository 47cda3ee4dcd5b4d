"""``charlm``: character-level language modelling on a UTF-8 text file.

Next-character prediction in the style of Karpathy's char-rnn / nanoGPT "shakespeare_char". The text is the
file named by ``path``; when none is named, a default corpus is built at run time from the Python standard
library installed with the running interpreter: the docstrings (module, class and function docstrings, read
with :mod:`ast`, in source order) of a fixed list of stdlib modules, joined by blank lines. Nothing is
downloaded and no text is stored in this repository; the default corpus therefore depends on the Python
version (it is deterministic for a given interpreter).

The text is capped at ``max_chars`` characters (0 = no cap). The vocabulary is the sorted set of distinct
characters of the (capped) text. The last ``val_frac`` of the text, contiguous, is the validation text, the
rest the training text. Each is cut into non-overlapping chunks of ``block_size + 1`` characters; an example
is ``x = chunk[:-1]``, ``y = chunk[1:]`` (int64 ids, shape ``(block_size,)``). ``seed`` picks the offset
(``0..block_size``) at which the training text starts being cut and the order of the training examples;
the validation examples do not depend on it.

Task ``lm``, input kind ``tokens``; the metric is per-character accuracy, threshold 0.6. Defaults: block
size 64, batch 32, 2000 steps, a 2-layer transformer (4 heads, width 128).
"""

from __future__ import annotations

import ast
import codecs
import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor

from trainlab.config import ConfigError, option, read_user_bytes, seed_option
from trainlab.errors import quote_path
from trainlab.workloads.base import DataError, Dataset, DataSpec, InputKind, Workload
from trainlab.workloads.registry import register

#: Standard-library modules whose docstrings form the default corpus, in this order (missing ones are skipped).
CORPUS_MODULES: tuple[str, ...] = (
    "textwrap", "string", "heapq", "bisect", "functools", "collections", "argparse", "json", "json.decoder",
    "json.encoder", "fractions", "statistics", "random", "calendar", "difflib", "dataclasses", "enum",
    "contextlib", "abc", "copy", "fnmatch", "glob", "shutil", "tempfile", "pathlib", "typing", "inspect",
    "pprint", "csv", "configparser", "optparse", "gettext", "queue", "threading", "logging", "unittest.case",
    "zipfile", "tarfile", "subprocess", "urllib.parse", "http.client", "email.message", "datetime",
    "_pydatetime", "decimal", "_pydecimal", "ast", "tokenize", "shlex", "sched", "weakref", "operator",
    "numbers", "colorsys", "locale", "codecs", "io", "_pyio", "os", "posixpath", "pickle", "selectors",
    "socketserver", "smtplib", "imaplib", "ftplib", "mailbox", "doctest", "pdb", "trace", "timeit", "cmd",
    "code", "traceback", "warnings", "types", "uuid", "base64", "hashlib", "hmac", "secrets", "ipaddress",
)  # fmt: skip


def _docstrings(source: str) -> list[str]:
    """The docstrings of a module's source, module first, then classes and functions in source order."""
    tree = ast.parse(source)
    out = []
    nodes = [tree] + sorted(
        (n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))),
        key=lambda n: (n.lineno, n.col_offset),
    )
    for node in nodes:
        doc = ast.get_docstring(node, clean=True)
        if doc and doc.strip():
            out.append(doc.strip())
    return out


@functools.lru_cache(maxsize=4)
def default_corpus(max_chars: int = 0) -> str:
    """The default text: docstrings of :data:`CORPUS_MODULES` joined by blank lines, capped at ``max_chars``."""
    parts: list[str] = []
    total = 0
    for name in CORPUS_MODULES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        origin = getattr(spec, "origin", None) if spec is not None else None
        if not origin or not origin.endswith(".py") or not Path(origin).is_file():
            continue
        try:
            source = Path(origin).read_text(encoding="utf-8")
            docs = _docstrings(source)
        except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
            continue
        for doc in docs:
            parts.append(doc)
            total += len(doc) + 2
        if max_chars and total >= max_chars:
            break
    text = "\n\n".join(parts)
    if not text:
        raise DataError(
            "charlm: no standard-library sources found for the default corpus; pass path=FILE (a UTF-8 text file)"
        )
    return text[:max_chars] if max_chars else text


def read_text(path: str, max_chars: int = 0) -> str:
    """The first ``max_chars`` characters (0: all) of a UTF-8 text file, with one-line errors for the usual
    mistakes (missing, a directory, a FIFO or device, not UTF-8).

    Only what the cap needs is read: UTF-8 spends at most 4 bytes a character, so ``4 * max_chars`` bytes
    hold at least ``max_chars`` whole characters, however the cut falls. What lies past the first ``max_chars``
    characters is not checked for UTF-8.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"charlm: text file {quote_path(p)} does not exist (path= must name a UTF-8 text file)")
    at_most = 4 * max_chars if max_chars else None
    raw = read_user_bytes(p, "charlm: text file", DataError, at_most)
    cut = at_most is not None and len(raw) == at_most  # the read may have stopped inside a character
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(raw, final=not cut)
    except UnicodeDecodeError as err:
        text = raw[: err.start].decode("utf-8")  # what comes before the bad byte may be all the cap takes
        if not max_chars or len(text) < max_chars:
            raise DataError(
                f"charlm: {quote_path(p)} is not UTF-8 text (invalid byte at offset {err.start}); convert it to UTF-8"
            ) from None
    return text[: max_chars or None]


@dataclass
class CharLMOptions:
    path: Optional[str] = option(
        None, help="UTF-8 text file; none = docstrings of Python's own standard library (built at run time)"
    )
    block_size: int = option(64, help="characters per example (context length)", ge=1)
    val_frac: float = option(0.1, help="fraction of the text, at its end, used for validation", gt=0, lt=1)
    max_chars: int = option(200_000, help="use at most this many characters of the text (0 = all)", ge=0)
    seed: int = seed_option(help="seed of the training chunk offset and the training example order")

    def validate(self) -> None:
        if self.max_chars and self.max_chars < 2 * (self.block_size + 1):
            raise ConfigError(
                "max_chars",
                f"must be 0 or at least 2*(block_size+1)={2 * (self.block_size + 1)} "
                f"(one training and one validation example), got {self.max_chars}",
            )


def _chunks(ids: Tensor, size: int) -> Tensor:
    n = len(ids) // size
    return ids[: n * size].reshape(n, size)


@register("charlm", options=CharLMOptions, paper="Karpathy 2015, char-rnn")
class CharLMWorkload(Workload):
    """Character-level language modelling on a text file (default: Python stdlib docstrings)."""

    metric = "acc"
    higher_is_better = True
    threshold = 0.6
    default_steps = 2000
    default_eval_every = 100
    default_batch_size = 32
    default_model = ("transformer", {"n_layer": 2, "n_head": 4, "d_model": 128})
    input_kinds = ("tokens",)

    options: CharLMOptions

    def __init__(self, options: CharLMOptions) -> None:
        super().__init__(options)
        options.validate()
        self._text: str | None = None
        self._vocab: str | None = None
        self._index: dict[str, int] = {}
        self._data: Dataset | None = None

    # --- text and vocabulary --------------------------------------------------------------------------
    @property
    def text(self) -> str:
        """The (capped) text the examples are cut from."""
        if self._text is None:
            o = self.options
            text = default_corpus(o.max_chars) if o.path is None else read_text(o.path, o.max_chars)
            self._text = text
            self._vocab = "".join(sorted(set(text)))
            self._index = {c: i for i, c in enumerate(self._vocab)}
        return self._text

    @property
    def vocab(self) -> str:
        """The vocabulary: the sorted distinct characters of the text; id ``i`` is ``vocab[i]``."""
        self.text
        assert self._vocab is not None
        return self._vocab

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> Tensor:
        """Character ids (int64) of ``text``; every character must be in the vocabulary."""
        vocab = self.vocab
        try:
            return torch.tensor([self._index[c] for c in text], dtype=torch.int64)
        except KeyError as err:
            raise ValueError(
                f"charlm: character {err.args[0]!r} is not in the vocabulary ({len(vocab)} characters of the text)"
            ) from None

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """The text of character ids ``ids``."""
        vocab = self.vocab
        values = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        return "".join(vocab[int(i)] for i in values)

    # --- workload interface ---------------------------------------------------------------------------
    def spec(self, kind: InputKind) -> DataSpec:
        self.check_kind(kind)
        v = self.vocab_size
        return DataSpec("tokens", (self.options.block_size,), v, "lm", vocab_size=v)

    def data(self, kind: InputKind) -> Dataset:
        self.check_kind(kind)
        if self._data is None:
            self._data = self._build()
        return self._data

    def _build(self) -> Dataset:
        o = self.options
        text = self.text
        size = o.block_size + 1
        n_val = int(round(len(text) * o.val_frac))
        n_train = len(text) - n_val
        if n_train < size or n_val < size:
            source = "the default corpus" if o.path is None else quote_path(o.path)
            raise DataError(
                f"charlm: text of {source} is too short: {len(text)} characters give {n_train} training and "
                f"{n_val} validation characters, each needs at least block_size+1={size}"
            )
        ids = self.encode(text)
        gen = torch.Generator().manual_seed(o.seed)
        max_offset = min(o.block_size, n_train - size)
        offset = int(torch.randint(0, max_offset + 1, (1,), generator=gen))
        train = _chunks(ids[offset:n_train], size)
        train = train[torch.randperm(len(train), generator=gen)]
        val = _chunks(ids[n_train:], size)
        return Dataset(
            train[:, :-1].contiguous(), train[:, 1:].contiguous(), val[:, :-1].contiguous(), val[:, 1:].contiguous()
        )
