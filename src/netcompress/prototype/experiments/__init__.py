"""Reproduced tables of the seeds, one module each (they back ``netcompress demo``)."""
