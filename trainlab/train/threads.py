"""How many intra-op threads torch trains with, and a warning when the machine is oversubscribed.

The rule (:func:`choose_threads`), first match wins:

1. ``threads=N`` (N >= 1, the top-level option): N threads ("option").
2. ``OMP_NUM_THREADS`` or else ``MKL_NUM_THREADS`` set to a positive integer: that many ("env"), as torch itself
   would take them.
3. Otherwise ("auto", also ``threads=0``, the default): the most threads that fit beside the machine's load,
   ``floor(usable CPUs - 1-minute load average)``, capped at the usable CPUs, and at least 1. Usable CPUs are
   the ones this process may run on (``os.sched_getaffinity`` where there is one, else ``os.cpu_count()``;
   a container's CPU quota is not seen). Under torchrun each of the ``LOCAL_WORLD_SIZE`` processes on the node
   takes an equal share of both: ``floor((CPUs - load) / local processes)``, capped at ``CPUs // local
   processes``, at least 1 (the load is read once per process at start, before its siblings train).

Why not torch's default (one thread per core): an OpenMP intra-op thread that finds its core taken by another
job spins and waits for the others at every parallel region, so oversubscribed threads slow each other down far
more than they help. On a 2-core machine running other jobs, two torch threads were 5-9x slower per step than
one. An idle machine still gets all its cores.

:func:`oversubscription_warning` is the one line the trainer prints at start when the load average plus this
run's threads (all its processes on the node) exceed the usable CPUs, naming the count chosen and the overrides.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Mapping

import torch

ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class ThreadChoice:
    """The intra-op thread count a run trains with and how it was chosen."""

    threads: int
    source: str  # "option", "env" or "auto"
    cpus: int  # usable CPUs of this process
    load_average: float | None  # the 1-minute load average at start (None where the system has none)
    local_processes: int  # processes of this run on this node (torchrun's LOCAL_WORLD_SIZE)


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask where the system has one, else all of them."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def load_average() -> float | None:
    """The 1-minute load average, or None where the system does not report one (Windows)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def local_processes(env: Mapping[str, str]) -> int:
    """This run's processes on this node: torchrun's ``LOCAL_WORLD_SIZE``, 1 without torchrun (or unreadable)."""
    try:
        return max(1, int(env.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def env_threads(env: Mapping[str, str]) -> int | None:
    """The thread count the environment sets (``OMP_NUM_THREADS``, else ``MKL_NUM_THREADS``), or None.

    OpenMP's nested form ``4,2`` gives its first level; empty, zero or malformed values count as unset.
    """
    for var in ENV_VARS:
        value = env.get(var, "").split(",")[0].strip()
        try:
            n = int(value)
        except ValueError:
            continue
        if n >= 1:
            return n
    return None


def default_threads(cpu_count: int, load_average: float | None, env: Mapping[str, str]) -> int:
    """The automatic count (rule 3 of the module's doc): this process's share of the CPUs the load leaves free,
    at most its share of all usable CPUs, at least 1."""
    per_node = local_processes(env)
    share = max(1, cpu_count // per_node)
    free = cpu_count - max(0.0, load_average or 0.0)
    return max(1, min(share, math.floor(free / per_node)))


def choose_threads(option: int, cpu_count: int, load_average: float | None,
                   env: Mapping[str, str]) -> ThreadChoice:
    """The threads a run trains with: the ``threads`` option (0 = not set), else the environment, else
    :func:`default_threads`."""
    if option < 0:
        raise ValueError(f"threads must be >= 0 (0 = auto), got {option}")
    from_env = env_threads(env)
    if option > 0:
        threads, source = option, "option"
    elif from_env is not None:
        threads, source = from_env, "env"
    else:
        threads, source = default_threads(cpu_count, load_average, env), "auto"
    return ThreadChoice(threads, source, cpu_count, load_average, local_processes(env))


def oversubscription_warning(choice: ThreadChoice) -> str | None:
    """The start line warning that the machine looks oversubscribed (load + this run's threads > usable CPUs),
    or None when it does not (or the load is unknown)."""
    if choice.load_average is None:
        return None
    ours = choice.threads * choice.local_processes
    if choice.load_average + ours <= choice.cpus:
        return None
    per = f" per process x{choice.local_processes}" if choice.local_processes > 1 else ""
    how = {"option": "set by threads=", "env": "from OMP_NUM_THREADS/MKL_NUM_THREADS", "auto": "auto"}[choice.source]
    return (f"  warning: machine looks oversubscribed (load {choice.load_average:.2f} + {ours} torch thread(s) > "
            f"{choice.cpus} usable CPUs); training on {choice.threads} thread(s){per} ({how}); override with "
            f"threads=N or OMP_NUM_THREADS=N")


def apply_threads(option: int, env: Mapping[str, str] | None = None) -> ThreadChoice:
    """Choose the thread count for this machine now (:func:`choose_threads`) and set torch's intra-op threads."""
    choice = choose_threads(option, usable_cpus(), load_average(), os.environ if env is None else env)
    torch.set_num_threads(choice.threads)
    return choice
