"""Submissions: the training algorithm under test, and nothing about the workload.

A submission is an optimizer with its options, a schedule with its options, the trainer options an
algorithm may choose (``grad_clip``, ``batch_size``), regularisers (``loss.z_loss``, ``loss.grokalign``,
``loss.elr``; never the loss function, which is the workload's), and optionally a search space for external
tuning: a mapping of keys to dimensions (sampled quasi-randomly), or a list of points (fixed configurations,
AlgoPerf's current rules: trial ``i`` of every study takes point ``i``; see :mod:`trainlab.bench.tuning`).
Three ways to write one:

- **Command-line words**: ``adamw``; ``optimizer=lion optimizer.lr=3e-4 schedule=cosine
  schedule.warmup_frac=0.02``; a value ``loguniform(1e-4,1e-2)``, ``uniform(a,b)`` or ``choice(a,b,...)``
  makes that key a search-space dimension; ``name=LABEL`` names it in the leaderboard.
  ``schedule.warmup_frac`` is turned into ``schedule.warmup`` steps from the workload's step budget.
- **A YAML file** (plain values, read within limits: :func:`trainlab.config.load_yaml_file`) with the same keys::

      name: lion-tuned
      optimizer: {name: lion, weight_decay: 0.1}
      schedule: {name: cosine, warmup_frac: 0.02}
      grad_clip: 1.0
      search_space: {optimizer.lr: loguniform(1e-5, 1e-3)}

  or, as a list of points (every point with the same keys; the keys as a dimension's; plain values)::

      search_space:
        - {optimizer.lr: 1.0e-4, optimizer.weight_decay: 0.1}
        - {optimizer.lr: 3.0e-4, optimizer.weight_decay: 0.01}

- **A Python file** defining (see ``examples`` in README, "bench")::

      HYPERPARAMETERS = {"lr": 1e-3}                 # defaults (self-tuning uses these); optional
      SEARCH_SPACE = {"lr": "loguniform(1e-4, 1e-2)"}  # optional, for external tuning; or a list of
                                                     # points: [{"lr": 1e-3}, {"lr": 3e-3}]
      BATCH_SIZE = 64                                # optional (default: the workload's)
      def make_optimizer(params, hyperparameters) -> torch.optim.Optimizer: ...
      def make_schedule(total_steps, hyperparameters) -> Callable[[int], float]: ...   # optional

  ``make_optimizer`` holds the algorithm's state and its ``step()`` is the update; an optimizer with
  ``eval()``/``train()`` methods is switched around every evaluation (weight averaging: prepare for eval).
  ``make_schedule`` may also take ``total_steps`` alone. The file is registered at run time, in the
  process that trains, as an optimizer (and schedule) under a name derived from its content, so the
  trainer builds it like any registry entry. Before any trial, :func:`check_file` imports and tries it in
  a fresh process: the bench's own process never imports it, and a mistake is one line naming the file.

**The boundary.** ``make_optimizer`` receives the list of parameter tensors (shapes and dtypes; no names,
no module) and its hyperparameters; ``make_schedule`` the step budget and the hyperparameters. Neither is
given the model, the workload's name or options, the data or the target, and trials run with a neutral
``sys.argv`` in a directory named by a hash. This is an interface boundary, not a sandbox: Python code can
always walk interpreter frames or the heap, which the rules forbid (AlgoPerf enforces the same by review).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import inspect
import math
import numbers
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from trainlab.bench.tuning import Dim, Points, SearchSpace, make_points, parse_dim, plain_value
from trainlab.config import ConfigError, load_yaml_file, option
from trainlab.errors import UserError, one_line, quote_path

TRAINER_KEYS = ("grad_clip", "batch_size")
# Regularisers belong to the algorithm (AlgoPerf: the workload's loss carries none); the loss function does not.
REGULARISER_KEYS = ("loss.z_loss", "loss.grokalign", "loss.grokalign_projections", "loss.elr", "loss.elr_beta")
WARMUP_FRAC = "warmup_frac"

# Named submissions. The baseline is AlgoPerf's: NAdamW, linear warm-up over 2% of the steps, cosine decay
# to 0; fixed values are what self-tuning uses, the search space what external tuning samples.
PRESETS: dict[str, dict[str, Any]] = {
    "nadamw": {
        "name": "nadamw",
        "optimizer": {"name": "nadam", "decoupled_weight_decay": True, "lr": 3e-3, "weight_decay": 0.01},
        "schedule": {"name": "cosine", WARMUP_FRAC: 0.02},
        # A fixed list of points (AlgoPerf's current rules), holding every small-suite workload's target-setting
        # configuration (trainlab/bench/suite.py: each workload's `baseline`), so that every target was set with a
        # point the baseline tries (issue 12; tests/bench/test_bench_targets.py checks it). Before: Halton samples
        # of loguniform(1e-3, 3e-2) x loguniform(1e-3, 1), which rarely reached the configurations that set targets.
        "search_space": [
            {"optimizer.lr": 1e-2, "optimizer.weight_decay": 0.01},
            {"optimizer.lr": 3e-2, "optimizer.weight_decay": 0.01},
            {"optimizer.lr": 3e-3, "optimizer.weight_decay": 0.01},
            {"optimizer.lr": 3e-2, "optimizer.weight_decay": 1.0},
            {"optimizer.lr": 1e-3, "optimizer.weight_decay": 0.1},
        ],
    },
}
PRESETS["baseline"] = PRESETS["nadamw"]
BASELINE = "nadamw"


@dataclass(frozen=True)
class Submission:
    """A training algorithm. ``search_space`` keys are dotted (``optimizer.lr``, ``schedule.warmup_frac``,
    ``grad_clip``, ``batch_size``); it maps them to dimensions, or is a tuple of points (dicts of those keys to
    values). ``file`` is set for a Python-file submission (registered at run time)."""

    name: str
    optimizer: str
    optimizer_options: dict[str, Any] = field(default_factory=dict)
    schedule: str = "constant"
    schedule_options: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)
    search_space: SearchSpace = field(default_factory=dict)
    file: str | None = None
    spec: str = ""

    def overrides(self, hyperparameters: Mapping[str, Any], steps: int) -> list[str]:
        """``trainlab run`` overrides of this algorithm with ``hyperparameters`` (dotted keys) applied."""
        opt, sched, trainer = dict(self.optimizer_options), dict(self.schedule_options), dict(self.trainer)
        for key, value in hyperparameters.items():
            section, _, name = key.partition(".")
            if section == "optimizer" and name:
                opt[name] = value
                if self.file is not None and self.schedule == self.optimizer:  # the file's make_schedule
                    sched[name] = value  # sees the same hyperparameters (both are registered as submission_<hash>)
            elif section == "schedule" and name:
                sched[name] = value
            else:
                check_key(key)
                trainer[key] = value
        if WARMUP_FRAC in sched:
            frac = float(sched.pop(WARMUP_FRAC))
            if not 0 <= frac < 1:
                raise ConfigError(f"schedule.{WARMUP_FRAC}", f"must be in [0, 1), got {frac}")
            sched["warmup"] = round(frac * steps)
        words = [f"optimizer={self.optimizer}", *(f"optimizer.{k}={fmt(v)}" for k, v in opt.items()),
                 f"schedule={self.schedule}", *(f"schedule.{k}={fmt(v)}" for k, v in sched.items()),
                 *(f"{k}={fmt(v)}" for k, v in trainer.items())]
        return words

    def describe(self) -> str:
        parts = [self.optimizer if self.file is None else f"file {self.file}"]
        parts += [f"{k}={fmt(v)}" for k, v in self.optimizer_options.items()]
        parts.append(f"schedule={self.schedule}")
        parts += [f"{k}={fmt(v)}" for k, v in self.schedule_options.items()]
        parts += [f"{k}={fmt(v)}" for k, v in self.trainer.items()]
        if isinstance(self.search_space, dict):
            parts += [f"{k}~{d}" for k, d in self.search_space.items()]
        else:
            points = " | ".join(" ".join(f"{k}={fmt(v)}" for k, v in p.items()) for p in self.search_space)
            parts.append(f"search_space~[{points}]")
        return " ".join(parts)


def check_key(key: str) -> None:
    """Refuse a hyperparameter key that is not the algorithm's: allowed are ``optimizer.KEY``, ``schedule.KEY``,
    the trainer keys and the regularisers."""
    section, _, name = key.partition(".")
    if not ((section in ("optimizer", "schedule") and name) or key in TRAINER_KEYS or key in REGULARISER_KEYS):
        raise ConfigError(key, "not a submission key; allowed: optimizer.KEY, schedule.KEY, "
                               + ", ".join((*TRAINER_KEYS, *REGULARISER_KEYS)))


def fmt(value: Any) -> str:
    """A value as a ``key=value`` string the config parser reads back to the same value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return ",".join(fmt(v) for v in value)
    if value is None:
        return "none"
    return str(value)


# ---------------------------------------------------------------------------------------------------------
# Parsing


def parse(spec: str) -> Submission:
    """A submission from a ``--submission`` argument: a preset, CLI words, a ``.yaml`` or a ``.py`` file."""
    text = spec.strip()
    if not text:
        raise ConfigError("submission", "empty submission")
    if text.endswith(".py"):
        return from_file(text)
    if text.endswith((".yaml", ".yml")):
        return from_yaml(text)
    words = shlex.split(text)
    if len(words) == 1 and words[0].lower() in PRESETS:
        return from_mapping(PRESETS[words[0].lower()], spec=text)
    tree: dict[str, Any] = {}
    for i, word in enumerate(words):
        key, eq, value = word.partition("=")
        if not eq:
            if i:
                raise ConfigError(word, "expected key=value after the optimizer name (e.g. optimizer.lr=1e-3)")
            tree.setdefault("optimizer", {})["name"] = word
            continue
        _set(tree, key.strip(), value.strip())
    return from_mapping(tree, spec=text)


def _set(tree: dict[str, Any], key: str, value: Any) -> None:
    head, _, rest = key.partition(".")
    if head in ("optimizer", "schedule"):
        tree.setdefault(head, {})["name" if not rest else rest] = value
    elif (head in (*TRAINER_KEYS, "name") and not rest) or key in REGULARISER_KEYS:
        tree[key] = value
    else:
        raise ConfigError(key, "not a submission key; allowed: name, optimizer, optimizer.KEY, schedule, "
                               "schedule.KEY, " + ", ".join((*TRAINER_KEYS, *REGULARISER_KEYS)))


def from_yaml(path: str) -> Submission:
    """A submission from a YAML file, read within the limits of :func:`trainlab.config.load_yaml_file`."""
    file = Path(path)
    raw = load_yaml_file(file, "file", lambda message: ConfigError("submission", message))
    if not isinstance(raw, Mapping):
        raise ConfigError("submission", f"{quote_path(path)}: expected a mapping (optimizer, schedule, search_space, "
                                        "...)")
    tree: dict[str, Any] = {}
    for key, value in raw.items():
        if key in ("optimizer", "schedule") and isinstance(value, Mapping):
            tree.setdefault(key, {}).update(value)
        elif key == "loss" and isinstance(value, Mapping):
            for sub_key, sub_value in value.items():
                _set(tree, f"loss.{sub_key}", sub_value)
        elif key == "search_space":
            if isinstance(value, list):
                tree["search_space"] = value  # a list of points
            elif not isinstance(value, Mapping):
                raise ConfigError("search_space", "expected a mapping of dotted keys to dimensions, or a list of "
                                                  "points (mappings of dotted keys to values)")
            else:
                tree["search_space"] = dict(value)
        else:
            _set(tree, str(key), value)
    tree.setdefault("name", file.stem)
    return from_mapping(tree, spec=path)


def from_mapping(tree: Mapping[str, Any], spec: str = "") -> Submission:
    """A submission from ``{name, optimizer: {name, ...}, schedule: {...}, grad_clip, batch_size, search_space}``;
    ``search_space`` a mapping of dotted keys to dimensions, or a list of points (mappings of dotted keys to
    values: :func:`trainlab.bench.tuning.make_points`)."""
    opt = dict(tree.get("optimizer") or {})
    sched = dict(tree.get("schedule") or {"name": "constant"})
    name = opt.pop("name", None)
    if not name:
        raise ConfigError("submission", "no optimizer named (e.g. `adamw` or optimizer=lion)")
    raw_space = tree.get("search_space")
    points: Points | None = None
    if isinstance(raw_space, (list, tuple)):
        points = make_points(raw_space)
        for key in points[0]:  # every point has point 0's keys
            try:
                check_key(key)
            except ConfigError as err:
                raise ConfigError(err.key, f"{err.message} (a key of search_space's points)") from None
        raw_space = None
    space: dict[str, Dim] = {}
    for key, value in dict(raw_space or {}).items():
        dim = parse_dim(str(key), value)
        if dim is None:
            raise ConfigError(str(key), f"expected loguniform(lo, hi), uniform(lo, hi) or choice(...), got {value!r}")
        space[str(key)] = dim
    for section, options in (("optimizer", opt), ("schedule", sched)):
        for key in list(options):
            dim = parse_dim(f"{section}.{key}", options[key])
            if dim is not None:
                space[f"{section}.{key}"] = dim
                del options[key]
    trainer = {k: tree[k] for k in (*TRAINER_KEYS, *REGULARISER_KEYS) if k in tree}
    for key in list(trainer):
        dim = parse_dim(key, trainer[key])
        if dim is not None:
            space[key] = dim
            del trainer[key]
    sched_name = sched.pop("name", "constant")
    label = str(tree.get("name") or _label(spec or str(name)))
    if points is not None:
        if space:  # a dimension written among the options (optimizer.lr=loguniform(...)) beside a list of points
            key = next(iter(space))
            raise ConfigError(key, f"a dimension ({space[key]}) beside a search space that is a list of points; "
                                   "give this key's values in the points instead")
        return Submission(label, str(name), opt, str(sched_name), sched, trainer, points, spec=spec)
    return Submission(label, str(name), opt, str(sched_name), sched, trainer, space, spec=spec)


def _label(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+=-]+", "_", spec).strip("_")[:60] or "submission"


# ---------------------------------------------------------------------------------------------------------
# Python-file submissions
#
# The file is imported only in processes that train (a trial's process) and, before any trial, in one fresh
# process that checks it (:func:`check_file`): a file that calls sys.exit, hangs or crashes at import must not
# take the bench's driver with it.

CHECK_LIMIT = 300.0  # seconds for the check: importing torch on a loaded machine, the file, one optimizer
PROBE_STEPS = 100  # the step budget the check builds the schedule for
_VALUE_TYPES = "a number, a string, true/false, None or a list of numbers or strings"
_plain_value = plain_value  # a value the config can hold as an option: a scalar, or a list of numbers or strings


@dataclass(frozen=True)
class FileSpec:
    """What the bench plans with, read from a Python-file submission: its hyperparameter defaults (trainer keys
    such as ``batch_size`` included), search space (the file's own keys: dimensions, or a tuple of points),
    ``BATCH_SIZE`` and whether it defines ``make_schedule``."""

    hyperparameters: dict[str, Any]
    search_space: SearchSpace
    batch_size: int | None
    schedule: bool


def _refuse(path: str | Path, detail: str) -> ConfigError:
    return ConfigError("submission", f"{path}: {detail}")


def _shown(value: Any) -> str:
    """``value`` and its type, short enough for a one-line message."""
    import reprlib

    return f"{reprlib.repr(value)} ({type(value).__name__})"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:10]


def registry_name(path: str | Path) -> str:
    """The optimizer (and schedule) name the file is registered under: ``submission_<content hash>``."""
    return f"submission_{_digest(Path(path))}"


def _load_module(path: str | Path) -> Any:
    """The file as a module (imported once per process); a failing import, ``sys.exit`` included, is one line."""
    file = Path(path).resolve()
    name = f"trainlab_{registry_name(file)}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise _refuse(path, "cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except KeyboardInterrupt:
        del sys.modules[name]
        raise
    except (Exception, SystemExit) as err:  # noqa: BLE001 -- the user's file: its error in one line
        del sys.modules[name]
        raise _refuse(path, f"importing it raised {_error(err)}") from None
    return module


def _error(err: BaseException) -> str:
    line = one_line(err)
    return type(err).__name__ if line == type(err).__name__ else f"{type(err).__name__}: {line}"


def _call(path: str | Path, what: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, the submission's code: anything it raises (``SystemExit`` too) becomes one line naming it."""
    try:
        return fn(*args)
    except (Exception, SystemExit) as err:  # noqa: BLE001
        raise _refuse(path, f"{what} raised {_error(err)}") from None


def read_file(path: str | Path) -> tuple[Any, FileSpec]:
    """Import the file and check what it defines; every mistake is a one-line :class:`ConfigError` naming it."""
    module = _load_module(path)
    if not callable(getattr(module, "make_optimizer", None)):
        raise _refuse(path, "defines no make_optimizer(params, hyperparameters)")
    make_schedule = getattr(module, "make_schedule", None)
    if make_schedule is not None and not callable(make_schedule):
        raise _refuse(path, f"make_schedule is {_shown(make_schedule)}, not a function (total_steps, hyperparameters)")
    hyperparameters = _named_dict(module, "HYPERPARAMETERS", path)
    for key, value in hyperparameters.items():
        if not _plain_value(value):
            raise _refuse(path, f"HYPERPARAMETERS[{key!r}] is {_shown(value)}; expected {_VALUE_TYPES}")
    space: SearchSpace
    if isinstance(getattr(module, "SEARCH_SPACE", None), (list, tuple)):
        space = _points(path, module.SEARCH_SPACE)
    else:
        space = {key: _dim(path, key, value) for key, value in _named_dict(module, "SEARCH_SPACE", path).items()}
    batch_size = getattr(module, "BATCH_SIZE", None)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise _refuse(path, f"BATCH_SIZE is {_shown(batch_size)}; expected None or a positive int")
    return module, FileSpec(hyperparameters, space, batch_size, make_schedule is not None)


def _named_dict(module: Any, attribute: str, path: str | Path) -> dict[str, Any]:
    """The module's dict ``attribute`` (absent or None: empty), keyed by Python identifiers."""
    value = getattr(module, attribute, None)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _refuse(path, f"{attribute} is {_shown(value)}; expected a dict of name -> value")
    for key in value:
        if not (isinstance(key, str) and key.isidentifier()):
            raise _refuse(path, f"{attribute} key {key!r} is not a Python identifier")
    return dict(value)


def _dim(path: str | Path, key: str, value: Any) -> Dim:
    try:
        dim = parse_dim(key, value)
    except ConfigError as err:
        raise _refuse(path, f"SEARCH_SPACE[{key!r}]: {err.message}") from None
    if dim is None:
        raise _refuse(path, f"SEARCH_SPACE[{key!r}] is {_shown(value)}; expected 'loguniform(lo, hi)', "
                            "'uniform(lo, hi)' or 'choice(a, b, ...)'")
    return dim


def _points(path: str | Path, value: Any) -> Points:
    """``SEARCH_SPACE`` given as a list of points: dicts with the same keys (Python identifiers) and plain values."""
    try:
        points = make_points(value, "SEARCH_SPACE")
    except ConfigError as err:
        raise _refuse(path, str(err)) from None
    for key in points[0]:  # every point has point 0's keys
        if not key.isidentifier():
            raise _refuse(path, f"SEARCH_SPACE[0] key {key!r} is not a Python identifier")
    return points


def _field_type(value: Any) -> Any:
    if value is None:
        return Any
    if isinstance(value, bool):
        return bool
    if isinstance(value, int):
        return int
    if isinstance(value, float):
        return float
    if isinstance(value, (list, tuple)):
        return tuple[float, ...] if all(isinstance(v, (int, float)) for v in value) else tuple[str, ...]
    return str


def _options_class(spec: FileSpec, digest: str) -> type:
    """A frozen options dataclass of the file's hyperparameters (defaults, plus search-space keys)."""
    defaults = {k: v for k, v in spec.hyperparameters.items() if k not in TRAINER_KEYS}
    if not isinstance(spec.search_space, dict):
        return _points_options_class(defaults, spec.search_space, digest)
    space = {k: d for k, d in spec.search_space.items() if k not in TRAINER_KEYS}
    fields = []
    for key in sorted({*defaults, *space}):
        dim = space.get(key)
        if key in defaults:
            default = defaults[key]
        elif dim is not None and dim.kind == "choice":
            default = dim.values[0]
        else:
            default = float(dim.values[0]) if dim is not None else None
        tp = _field_type(default)
        fields.append((key, tp, option(tuple(default) if isinstance(default, list) else default, help="submission hyperparameter")))
    return dataclasses.make_dataclass(f"Submission{digest}Options", fields, frozen=True)


def _points_options_class(defaults: dict[str, Any], points: Points, digest: str) -> type:
    """:func:`_options_class` for a list of points: a key's default is its default, or else point 0's value; a
    number's field is a float when any point (or the default) gives that key a float."""
    fields = []
    for key in sorted({*defaults, *(k for k in points[0] if k not in TRAINER_KEYS)}):
        values = [p[key] for p in points if key in p]
        default = defaults[key] if key in defaults else values[0]
        numbers_ = [default, *values]
        if (isinstance(default, int) and not isinstance(default, bool) and any(isinstance(v, float) for v in numbers_)
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers_)):
            default = float(default)
        fields.append((key, _field_type(default),
                       option(tuple(default) if isinstance(default, list) else default, help="submission hyperparameter")))
    return dataclasses.make_dataclass(f"Submission{digest}Options", fields, frozen=True)


def _optimizer_factory(path: str | Path, make_optimizer: Callable[..., Any]) -> Callable[..., Any]:
    """The registry factory around the file's ``make_optimizer``: parameter tensors only, an Optimizer back."""
    def factory(params: Any, **hyperparameters: Any) -> Any:
        import torch

        tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
        optimizer = _call(path, "make_optimizer(params, hyperparameters)", make_optimizer, tensors,
                          dict(hyperparameters))
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise _refuse(path, f"make_optimizer returned {_shown(optimizer)}, not a torch.optim.Optimizer")
        return optimizer

    return factory


def _schedule_factory(path: str | Path, make_schedule: Callable[..., Any]) -> Callable[..., Any]:
    """The registry factory around the file's ``make_schedule`` (which may take ``total_steps`` alone)."""
    takes_hp = len(inspect.signature(make_schedule).parameters) >= 2

    def factory(opts: Any, total: int) -> Callable[[int], float]:
        hp = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)}
        multiplier = _call(path, "make_schedule(total_steps, hyperparameters)", make_schedule,
                           *((total, hp) if takes_hp else (total,)))
        if not callable(multiplier):
            raise _refuse(path, f"make_schedule returned {_shown(multiplier)}, not a function step -> lr multiplier")
        return _checked_multiplier(path, multiplier)

    return factory


def _checked_multiplier(path: str | Path, multiplier: Callable[[int], Any]) -> Callable[[int], float]:
    """``multiplier`` refusing, at the step it happens, a value that is not a finite number: a NaN or a string
    would otherwise train on as a diverged run or end in a traceback."""
    def checked(step: int) -> float:
        value = _call(path, f"make_schedule's function (step {step})", multiplier, step)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise _refuse(path, f"make_schedule's function returned {_shown(value)} at step {step}; expected a "
                                "finite number (the lr multiplier)")
        return float(value)

    return checked


def register_file(path: str | Path) -> tuple[str, str | None]:
    """Register the file's factories as an optimizer (and schedule); returns their registry names.

    Idempotent within a process (names are ``submission_<content hash>``). Call it in the process that trains:
    it imports the file.
    """
    from trainlab import optim, schedules

    module, spec = read_file(path)
    name = registry_name(path)
    options = _options_class(spec, name.removeprefix("submission_"))
    summary = f"submission file {Path(path).name}"
    if name not in optim.OPTIMIZERS:
        optim.OPTIMIZERS.add(name, _optimizer_factory(path, module.make_optimizer), options=options,
                             summary=summary, source="submission", own=False)
    if not spec.schedule:
        return name, None
    if name not in schedules.SCHEDULES:
        schedules.SCHEDULES.add(name, _schedule_factory(path, module.make_schedule), options=options, summary=summary)
    return name, name


def probe(path: str | Path) -> FileSpec:
    """Register the file here and try it once with its defaults: ``make_optimizer`` on a small MLP's parameters
    (must give a torch.optim.Optimizer) and ``make_schedule`` for :data:`PROBE_STEPS` steps (must give a function
    with finite values over them). Imports the file: run it in a process of its own (:func:`check_file`)."""
    import torch

    from trainlab import optim, schedules

    opt_name, sched_name = register_file(path)
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optim.build(opt_name, mlp.parameters())
    if sched_name is not None:
        multiplier = schedules.build(sched_name, PROBE_STEPS)
        for step in (0, 1, PROBE_STEPS // 2, PROBE_STEPS - 1):
            multiplier(step)
    return read_file(path)[1]


def _check(path: str, configs: Sequence[Sequence[str]]) -> dict[str, Any]:
    """The body of :func:`check_file`'s process: ``{"spec": FileSpec}``, or ``{"refused": one line}``."""
    from trainlab.train.config import from_cli

    try:
        spec = probe(path)
        for words in configs:
            from_cli(None, list(words))
    except UserError as err:
        if isinstance(err, ConfigError) and err.key == "submission":  # it names the file already
            return {"refused": err.message}
        return {"refused": f"{path}: {one_line(err)}"}
    return {"spec": spec}


def check_file(path: str, configs: Sequence[Sequence[str]] = ()) -> FileSpec:
    """Check the Python-file submission ``path`` in a fresh process (:func:`probe`), and resolve the ``trainlab
    run`` overrides ``configs`` there too; a one-line :class:`ConfigError` naming the file on any mistake,
    including an import that exits, and a check that runs past :data:`CHECK_LIMIT` seconds."""
    from trainlab.bench.runner import call_in_process

    outcome = call_in_process(_check, (path, [list(c) for c in configs]), limit=CHECK_LIMIT)
    if "spec" in outcome:
        return outcome["spec"]
    if "refused" in outcome:
        raise ConfigError("submission", outcome["refused"])
    raise _refuse(path, f"checking it (import, make_optimizer, make_schedule) failed: {outcome['error']}")


def from_file(path: str) -> Submission:
    """A submission from a Python file, checked in a fresh process (this one never imports the file)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError("submission", f"{path} not found")
    spec = check_file(path)
    name = registry_name(file)
    defaults = dict(spec.hyperparameters)
    trainer = {k: defaults.pop(k) for k in TRAINER_KEYS if k in defaults}
    if spec.batch_size is not None:
        trainer["batch_size"] = spec.batch_size
    space: SearchSpace
    if isinstance(spec.search_space, dict):
        space = {key if key in TRAINER_KEYS else f"optimizer.{key}": dim for key, dim in spec.search_space.items()}
    else:
        space = tuple({key if key in TRAINER_KEYS else f"optimizer.{key}": value for key, value in point.items()}
                      for point in spec.search_space)
    return Submission(
        name=file.stem, optimizer=name, optimizer_options=defaults,
        schedule=name if spec.schedule else "constant", schedule_options=dict(defaults) if spec.schedule else {},
        trainer=trainer, search_space=space, file=str(file.resolve()), spec=path,
    )
