"""Transitional: the old home of the matrix factorizations, now split by method.

:mod:`.factorization` (``Factorization``, ``layer_matrix``), :mod:`.ridge` (``DEFAULT_LAM`` and the
shrinkage helpers), :mod:`.svd` (``svd``, ``svd-bc``) and :mod:`.dalr` (``dalr``, ``dalr-bc``).
Only ``netcompress.lowrank.family`` still imports ``Factorization`` from here; once it reads
``from netcompress.lowrank.factorization import Factorization``, delete this module.
"""

from netcompress.lowrank.factorization import Factorization

__all__ = ["Factorization"]
