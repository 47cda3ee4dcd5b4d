"""Data diets: train on a subset of the training set chosen by per-example scores (or at random), and optionally
in a curriculum order -- the ``data`` section of a run's config (:class:`~trainlab.train.config.DataOptions`).

Paul, Ganguli & Dziugaite 2021, "Deep Learning on a Data Diet": score every training example early in training
(EL2N or GraNd; ``probes=data_diet`` writes ``RUN/data_diet/step_K.csv``, :mod:`trainlab.probes.data_diet`),
average the scores over about ten initialisations, keep the highest-scoring (hardest) examples and retrain on them
from scratch; half of CIFAR-10 can go without losing test accuracy, a random subset of the same size is the control,
and at high pruning rates dropping the very hardest examples too helps (they are often mislabelled).

Exact semantics, for a workload with ``N`` training examples (example ``i`` is row ``i`` of its training set, as
the workload builds it from its options):

- **scores**: each file of ``data.scores`` is a CSV whose header starts with ``index`` and names column
  ``data.score``; it has one row per example, and its indices are exactly ``0 .. N-1`` (in any order). The score of
  example ``i`` is the arithmetic mean over the files of its value (float64): Paul et al.'s average over runs.
  Higher means harder (EL2N and GraNd both grow with the example's error).
- **counts**: ``k = floor(keep * N + 1/2)`` examples are kept and ``s = floor(skip_hardest * N + 1/2)`` skipped:
  both are fractions of the whole training set (``keep=0.3 skip_hardest=0.1``: drop the hardest 10%, keep the
  next 30%); ``k >= 1`` and ``k + s <= N`` are required.
- **ranking**: hardest first, i.e. sorted by ``(-score, index)``: equal scores go to the lower index, in every
  choice and ordering here (so the result does not depend on the rows' order in the file). The ``s`` first of
  the ranking are skipped.
- **select**: ``hardest`` keeps the next ``k`` of the ranking; ``easiest`` keeps the ``k`` lowest by
  ``(score, index)`` among the examples not skipped; ``random`` keeps ``k`` examples drawn uniformly without
  replacement from those not skipped (``torch.randperm`` with a generator seeded ``data.seed``).
- **rows**: the training rows the run trains on are the kept indices ascending (``order=random``), sorted by
  ``(score, index)`` (``curriculum``: easy to hard) or by ``(-score, index)`` (``anti_curriculum``); a curriculum
  step draws its batch from a growing prefix of them (:class:`~trainlab.train.data.PacedSampler`).
- **record**: ``"K/N sha256:HEX"``, HEX the first 16 hex digits of the SHA-256 of the rows as little-endian
  int64; written to config.yaml and the checkpoint as ``data.selected``, and checked on resume: a scores file
  changed since the run started is refused instead of silently training on other examples.

Every problem with a scores file is a one-line :class:`~trainlab.errors.ConfigError` naming ``data.scores`` (or
``data.score``) and the file: missing or not a regular file, too large, not UTF-8, a wrong header, a malformed
row, a non-finite score, the wrong number of rows, indices that are not ``0 .. N-1``.
"""

from __future__ import annotations

import csv
import hashlib
import math
import struct
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor

from trainlab.config import read_user_bytes
from trainlab.errors import ConfigError, quote_path, shorten
from trainlab.workloads.base import Dataset

if TYPE_CHECKING:
    from trainlab.train.config import DataOptions

#: Bytes a scores file may have per training example (plus :data:`HEADER_BYTES`): a row of the data_diet probe
#: (``index,el2n,grand``, floats written by ``repr``) has about 50; this leaves room for a dozen more columns and
#: bounds the time and memory a wrong file (a dataset instead of its scores) can take.
BYTES_PER_ROW = 1024
HEADER_BYTES = 65536


def count(fraction: float, n: int) -> int:
    """``fraction`` of ``n`` examples as a count, rounded to the nearest (halves up): ``floor(fraction * n + 1/2)``."""
    return min(n, math.floor(fraction * n + 0.5))


def read_scores(path: str, column: str, n: int) -> Tensor:
    """The scores of column ``column`` of the CSV file ``path`` by example index: float64, shape ``(n,)``.

    The file must have a header starting with ``index`` and one row per example, with the indices ``0 .. n-1`` in
    any order; the columns other than ``index`` and ``column`` are not read (but every row must have all of them).
    """
    def error(message: str, key: str = "data.scores") -> ConfigError:
        return ConfigError(key, f"scores file {quote_path(path)}{message}")

    limit = HEADER_BYTES + BYTES_PER_ROW * n
    raw = read_user_bytes(path, "scores file", lambda message: ConfigError("data.scores", message), limit + 1)
    if len(raw) > limit:
        raise error(f" is larger than {limit:,} bytes, too large for the {n:,} rows of scores it should hold")
    try:
        text = raw.decode("utf-8-sig")  # (a spreadsheet's UTF-8 may start with a byte-order mark)
    except UnicodeDecodeError as err:
        raise error(f" is not UTF-8 text (invalid byte at offset {err.start})") from None
    try:
        rows = [row for row in csv.reader(text.splitlines()) if row]  # (blank lines carry nothing)
    except csv.Error as err:
        raise error(f" is not a CSV file ({shorten(str(err))})") from None
    if not rows or not rows[0] or rows[0][0].strip() != "index":
        first = shorten(",".join(rows[0])) if rows else "nothing"
        raise error(f": the first line must be a header starting with index (e.g. index,el2n,grand), got {first}")
    header = [name.strip() for name in rows[0]]
    if header.count(column) != 1:
        said = f"names column {shorten(column)} twice" if column in header else f"has no column {shorten(column)}"
        columns = ", ".join(header[1:]) or "(none)"
        columns = columns if len(columns) <= 80 and columns.isprintable() else shorten(columns)
        raise error(f" {said}; its score columns: {columns}", key="data.score")
    j, width = header.index(column), len(header)
    if len(rows) - 1 != n:
        raise error(f" has {len(rows) - 1:,} rows of scores, but the workload has {n:,} training examples (scores "
                    f"of another workload, or of other workload options?)")
    scores = torch.full((n,), math.nan, dtype=torch.float64)
    seen = torch.zeros(n, dtype=torch.bool)
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != width:
            raise error(f" line {line}: {len(row)} values, but the header names {width} columns")
        index = _parse_index(row[0])
        if index is None or not 0 <= index < n:
            raise error(f" line {line}: index {shorten(row[0].strip())} is not one of 0 .. {n - 1} (the training "
                        f"examples)")
        if seen[index]:
            raise error(f" line {line}: index {index} appears twice (each training example needs one row)")
        try:
            value = float(row[j])
        except ValueError:
            raise error(f" line {line}: {column} {shorten(row[j].strip())} is not a number") from None
        if not math.isfinite(value):
            raise error(f" line {line}: {column} is {value}; scores must be finite")
        scores[index], seen[index] = value, True
    return scores


def _parse_index(text: str) -> int | None:
    """A row's index: plain decimal digits (no sign, no exponent), or None."""
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 19 else None


def mean_scores(paths: Sequence[str], column: str, n: int) -> Tensor:
    """Column ``column`` of every file in ``paths`` (:func:`read_scores`), averaged per example (float64)."""
    total = torch.zeros(n, dtype=torch.float64)
    for path in paths:
        total += read_scores(path, column, n)
    return total / len(paths)


def hardest_first(scores: Tensor) -> Tensor:
    """Example indices sorted by ``(-score, index)``: the hardest first, equal scores by lower index."""
    # a stable sort of rows given in index order keeps equal scores in index order (descending too)
    return torch.argsort(scores, descending=True, stable=True)


def choose(n: int, keep: float, select: str, skip_hardest: float = 0.0, seed: int = 0,
           scores: Tensor | None = None) -> Tensor:
    """The kept example indices, ascending (int64), by the rules of the module docstring.

    ``scores`` (float64, ``(n,)``) are needed by ``select=hardest`` / ``easiest`` and by ``skip_hardest > 0``.
    """
    k, s = count(keep, n), count(skip_hardest, n)
    if k < 1:
        raise ConfigError("data.keep", f"keeps round({keep:g} x {n:,}) = 0 of the training examples; keep at "
                                       f"least 1 (data.keep >= {0.5 / max(n, 1):.3g})")
    if k + s > n:
        raise ConfigError("data.skip_hardest", f"skips {s:,} and keeps {k:,} of {n:,} training examples; together "
                                               f"at most {n:,}")
    if scores is None and (select != "random" or s > 0):
        raise ValueError(f"select={select} with skip_hardest={skip_hardest} needs scores")
    candidates = torch.arange(n)
    if s > 0:
        assert scores is not None
        skipped = torch.zeros(n, dtype=torch.bool)
        skipped[hardest_first(scores)[:s]] = True
        candidates = candidates[~skipped]
    if select == "random":
        gen = torch.Generator().manual_seed(seed)
        kept = candidates[torch.randperm(len(candidates), generator=gen)[:k]]
    else:
        assert scores is not None
        ranked = candidates[torch.argsort(scores[candidates], descending=select == "hardest", stable=True)]
        kept = ranked[:k]
    return kept.sort().values


def arrange(kept: Tensor, order: str, scores: Tensor | None = None) -> Tensor:
    """The training rows: ``kept`` (ascending) as is for ``order=random``; by ``(score, index)`` for
    ``curriculum``, by ``(-score, index)`` for ``anti_curriculum``."""
    if order == "random":
        return kept
    if scores is None:
        raise ValueError(f"order={order} needs scores")
    return kept[torch.argsort(scores[kept], descending=order == "anti_curriculum", stable=True)]


def record(rows: Tensor, n: int) -> str:
    """``"K/N sha256:HEX"``: how many of ``n`` examples the run trains on, and a digest of which, in order."""
    values = rows.tolist()
    data = struct.pack(f"<{len(values)}q", *values)
    return f"{len(rows)}/{n} sha256:{hashlib.sha256(data).hexdigest()[:16]}"


@dataclass(frozen=True)
class Diet:
    """What a run's ``data`` section chose: the training rows (indices into the workload's training set, in the
    order the run uses them) and their :func:`record`."""

    rows: Tensor
    n_total: int
    record: str
    options: DataOptions

    @property
    def kept(self) -> int:
        return len(self.rows)

    def apply(self, data: Dataset) -> Dataset:
        """``data`` with its training set cut down to (and ordered as) :attr:`rows`; validation is untouched."""
        rows = self.rows.to(data.x_train.device)
        return Dataset(data.x_train[rows], data.y_train[rows], data.x_val, data.y_val)

    def note(self) -> str:
        """One line for the start of a run: how many examples are kept, how chosen, in what order."""
        o = self.options
        sources = ", ".join(quote_path(p) for p in o.scores)
        by = (f" by {o.score} of {sources}" if len(o.scores) == 1 else f" by {o.score} averaged over {sources}")
        if o.keep < 1:
            chosen = {"hardest": "the hardest", "easiest": "the easiest", "random": f"at random (data.seed={o.seed})"}
            skipped = f", after skipping the hardest {o.skip_hardest:.0%}" if o.skip_hardest > 0 else ""
            how = f"{chosen[o.select]}{by if o.select != 'random' or o.skip_hardest > 0 else ''}{skipped}"
        else:
            how = "all of them"
        order = ("in random order" if o.order == "random" else
                 f"{'easy to hard' if o.order == 'curriculum' else 'hard to easy'}{by} (from {o.start:.0%} of them, "
                 f"all after {o.pace:.0%} of the steps)")
        return (f"data diet: training on {self.kept:,} of {self.n_total:,} examples (data.keep={o.keep:g}): {how}, "
                f"{order}")


def active(options: DataOptions) -> bool:
    """Whether ``options`` change what or how the run trains (the defaults do not: every example, random order)."""
    return options.keep < 1 or options.order != "random"


def refuse_for_sequences(options: DataOptions, workload: str) -> None:
    """Task sequences index their tasks by training row: a diet would cut rows from under them."""
    from trainlab.train.config import DataOptions

    defaults = DataOptions()
    changed = next((f.name for f in fields(options) if getattr(options, f.name) != getattr(defaults, f.name)), None)
    if changed is not None:
        raise ConfigError(f"data.{changed}", f"workload {workload} is a task sequence, whose tasks index its training "
                                             "rows; it trains on all of them (leave the data section at its defaults)")


def plan(options: DataOptions, n: int) -> Diet | None:
    """The :class:`Diet` of ``options`` for a training set of ``n`` examples, or None when the defaults train on
    every example in random order. Reads the scores files; checks ``data.selected`` when the config carries it."""
    if not active(options):
        return None
    scores = mean_scores(options.scores, options.score, n) if options.scores else None
    kept = choose(n, options.keep, options.select, options.skip_hardest, options.seed, scores)
    rows = arrange(kept, options.order, scores)
    made = record(rows, n)
    if options.selected is not None and options.selected != made:
        raise ConfigError("data.selected", f"the config says this run trains on {options.selected}, but its data "
                                           f"options now select {made} (a scores file changed since?); restore the "
                                           f"files, or start a new run without data.selected")
    return Diet(rows, n, made, options)
