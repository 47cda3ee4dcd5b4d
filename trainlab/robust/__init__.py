"""Adversarial robustness: attacks as plain functions (:mod:`trainlab.robust.attacks`: FGSM, PGD L∞/L2) and
the certified side beside them (interval bound propagation and certified accuracy)."""
