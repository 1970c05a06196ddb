"""Reproduced tables of the seeds, one module each (run them with ``python -m experiments NAME``, or ``make demo``)."""
