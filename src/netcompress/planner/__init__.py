"""Planning to a target: every candidate of every family priced per layer, one chosen per layer, checked whole.

* :mod:`.target`: :class:`Target` (size, bytes, flops, latency, max_error);
* :mod:`.candidates`: the candidates of one layer and their prices (bytes, MACs, held-out error);
* :mod:`.latency`: per-layer timings, measured on this machine and cached;
* :mod:`.sensitivity`: each layer's effect on the whole model's held-out output;
* :mod:`.allocate`: one candidate per layer, least predicted error within a budget;
* :mod:`.search`: the steps that ``compress(model, data, target=...)`` runs.
"""
