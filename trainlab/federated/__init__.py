"""Federated and asynchronous training on a simulated clock (``fed.*``; issue 14).

Clients hold non-IID shares of a workload's training set (:mod:`~trainlab.federated.partition`), train locally
by a client rule (:mod:`~trainlab.federated.client`: plain SGD, FedProx, FedSpeed) and take simulated time from
their speed (:mod:`~trainlab.federated.clock`); a server strategy (:mod:`~trainlab.federated.strategies`:
FedAvg, asynchronous FedAvg, FedBuff, FedFix, FedCompass) decides whom to dispatch and when to aggregate; the
run's own optimizer and schedule take the aggregate as a pseudo-gradient (FedAdam-style: ``optimizer=sgd lr=1``
is plain averaging). :mod:`~trainlab.federated.simulator` holds it together and is what the training loop calls.
"""
