"""Pruning: individual weights by magnitude (masks), and whole units or channels (layers shrink).

* :mod:`.modules`: masked layers (:class:`MaskedLinear`, :class:`MaskedConv2d`);
* :mod:`.unstructured`: magnitude pruning (Han et al., "Learning both weights and connections", NIPS 2015);
* :mod:`.obs`: SparseGPT (Frantar and Alistarh, ICML 2023), removals compensated through ``H⁻¹``;
* :mod:`.structured`: removing units/channels by their target-data response, with a least-squares
  re-fit of the next layer; :mod:`._dependency` traces which layers share a channel space;
* :mod:`.reallocate`: PEEL (Hou et al., "Network Pruning via Resource Reallocation", 2021), channels
  reallocated across layers by importance under a FLOPs target, then rebuilt by ``channel``.
"""

from netcompress.prune.family import StructuralFamily
from netcompress.prune.magnitude import Magnitude, global_threshold, magnitude, magnitude_scores
from netcompress.prune.modules import MaskedConv2d, MaskedLinear, masked_like
from netcompress.prune.sparsegpt import SparseGPT, sparsegpt
from netcompress.prune.structured import Activation, Channel, activation, channel

__all__ = ["Activation", "Channel", "Magnitude", "SparseGPT", "MaskedConv2d", "MaskedLinear", "StructuralFamily", "activation", "channel",
           "global_threshold", "magnitude", "magnitude_scores", "masked_like",
           "sparsegpt"]

