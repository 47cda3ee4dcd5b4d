"""Reports on training runs: read run directories, plot their curves, write self-contained HTML pages.

>>> from trainlab.report import load_run, write_run_report
>>> run = load_run("runs/modular-adamw")        # doctest: +SKIP
>>> write_run_report("runs/modular-adamw")      # doctest: +SKIP  (writes plots/*.png and report.html)

A run trained with probes (``trainlab run probes=weights,hessian``) gets a Probes section: one small-multiples
figure per probe with its events, each probe's cost beside the training time, and the probes that were skipped;
a comparison overlays the probe keys that several runs recorded.

A task sequence (``trainlab run workload=split_mnist1d``) gets a Continual learning section: ACC, BWT, FWT,
forgetting, min-ACC and WC-ACC, the accuracy matrix as a table and a heat-map, each task's accuracy over the
steps and around each switch (the stability gap), and the ``stability_gap`` events; a comparison puts the runs'
metrics and matrices side by side and their ``val_acc`` on one plot.

Every page and figure is written by :mod:`trainlab.report.output`: atomically (a kill or a full disk leaves
the previous file), as valid UTF-8, and never over a run's records (``--out RUN/metrics.jsonl`` is refused).

Nothing here imports torch, and plotting never touches pyplot's global state.
"""

from trainlab.report.continual_plots import plot_compare_continual, plot_continual
from trainlab.report.html import write_compare_report, write_run_report
from trainlab.report.plots import plot_compare, plot_run
from trainlab.report.probe_plots import plot_compare_probes, plot_probes
from trainlab.report.runs import Run, load_run

__all__ = ["Run", "load_run", "plot_run", "plot_compare", "plot_probes", "plot_compare_probes", "write_run_report",
           "write_compare_report", "plot_continual", "plot_compare_continual"]
