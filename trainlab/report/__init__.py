"""Reports on training runs: read run directories, plot their curves, write self-contained HTML pages.

>>> from trainlab.report import load_run, write_run_report
>>> run = load_run("runs/modular-adamw")        # doctest: +SKIP
>>> write_run_report("runs/modular-adamw")      # doctest: +SKIP  (writes plots/*.png and report.html)

Nothing here imports torch, and plotting never touches pyplot's global state.
"""

from trainlab.report.html import write_compare_report, write_run_report
from trainlab.report.plots import plot_compare, plot_run
from trainlab.report.runs import Run, load_run

__all__ = ["Run", "load_run", "plot_run", "plot_compare", "write_run_report", "write_compare_report"]
