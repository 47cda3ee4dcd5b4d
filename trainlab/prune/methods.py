"""The pruning methods by name (``prune.method``), with their papers: a registry like the other named things.

The config's ``prune.method`` choices are these names (a test keeps them equal); each entry's factory computes the
masks of one pruning (:mod:`trainlab.prune.masks`).
"""

from __future__ import annotations

from typing import Any, Callable

from trainlab.prune.masks import ipr_unit_masks, magnitude_masks, unit_masks
from trainlab.registry import Registry

PRUNE_METHODS: Registry[Callable[..., Any] | None] = Registry("pruning method")

PRUNE_METHODS.add("none", None, summary="no pruning (with prune.from_run: that run's masks, fixed)")
PRUNE_METHODS.add("magnitude", magnitude_masks, summary="unstructured: the weights of smallest |w|, per layer or "
                                                        "global, on Zhu & Gupta's gradual schedule",
                  paper="Han et al. 2015, Learning both Weights and Connections for Efficient Neural Networks; "
                        "Zhu & Gupta 2017, To prune, or not to prune")
PRUNE_METHODS.add("neurons", unit_masks, summary="structured: hidden units / conv channels of smallest L2 (or L1) "
                                                 "weight norm, with their bias and BatchNorm entries (mlp, cnn1d, "
                                                 "cnn2d)",
                  paper="Liu et al. 2019, Rethinking the Value of Network Pruning; Li et al. 2017, Pruning Filters "
                        "for Efficient ConvNets")
PRUNE_METHODS.add("ipr", ipr_unit_masks, summary="structured: the first hidden layer's units of lowest inverse "
                                                 "participation ratio of their weights' Fourier spectrum over the "
                                                 "residues (the memorising ones), with their bias and BatchNorm "
                                                 "entries (workload=modular, model=mlp)",
                  paper="Doshi et al. 2024, To grok or not to grok: Disentangling generalization and memorization on "
                        "corrupted algorithmic datasets")
