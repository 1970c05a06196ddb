"""Writing and reading compressed models, all or nothing.

* :mod:`.io`: ``save`` / ``load`` (safetensors + a JSON manifest of the rebuilt layers);
* the layers themselves say how they are described and built back (:mod:`netcompress._core.description`);
* :mod:`.container`: the ``.ncz`` file (Deep Compression: pruned, quantized, Huffman coded),
  with :mod:`._header` reading its header as hostile input and :mod:`.codec` the entropy coding;
* :mod:`.tables`: what each layer costs in a ``.ncz`` file.
"""

from netcompress.storage.container import load_compressed, save_compressed
from netcompress.storage.io import load, read_report, save
from netcompress.storage.tables import format_storage_table, storage_table

__all__ = ["format_storage_table", "load", "load_compressed", "read_report", "save", "save_compressed",
           "storage_table"]
