"""Target-domain statistics: one streaming pass over the data, the moments of each layer, the Hessian, FLOPs."""

from netcompress.stats.collect import LayerStats, collect

__all__ = ["LayerStats", "collect"]
