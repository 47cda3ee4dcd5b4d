"""When to prune and how much: the gradual schedule of Zhu & Gupta 2017, "To prune, or not to prune".

Their equation (1), with steps counted as optimizer steps taken::

    s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3      for t in {t0, t0 + dt, ..., t0 + n dt}

prunes fast at first, while there are many redundant weights, and slowly near the end. Here ``t0`` is
``prune.start``, ``t0 + n dt`` is ``prune.end`` and ``dt`` is ``prune.every``; when ``end - start`` is not a multiple
of ``every`` the last pruning happens at ``end`` anyway, so the run always reaches ``s_f``. ``start == end`` is
one-shot pruning at that step (Han et al. 2015's "train, prune, retrain" is one-shot at the end of a dense run,
then a fine-tuning run). ``s_i`` is the fraction already pruned when the run starts: 0, or that of the masks a
``prune.from_run`` run inherits. Pure functions: no torch.
"""

from __future__ import annotations


def target_sparsity(step: int, initial: float, final: float, start: int, end: int) -> float:
    """Zhu & Gupta's s_t: the fraction (0 to 1) to be pruned after ``step`` optimizer steps.

    ``initial`` before ``start``, ``final`` from ``end`` on, the cubic in between."""
    if step < start:
        return initial
    if step >= end:
        return final
    remaining = 1.0 - (step - start) / (end - start)
    return final + (initial - final) * remaining**3


def is_pruning_step(step: int, start: int, end: int, every: int) -> bool:
    """Whether the masks are recomputed after ``step`` optimizer steps: ``start``, every ``every`` steps after it,
    and ``end``."""
    return start <= step <= end and ((step - start) % every == 0 or step == end)


def pruning_steps(start: int, end: int, every: int) -> list[int]:
    """Every step :func:`is_pruning_step` accepts, in order (for messages and tests)."""
    return [*range(start, end, every), end]
