"""What each layer costs in a ``.ncz`` file: weights kept, bits per weight before and after Huffman coding."""

from __future__ import annotations

import os

import torch

from netcompress.report import text_table
from netcompress.storage._header import code_width, read_records

__all__ = [
    "format_storage_table",
    "storage_table",
]


def _stream_bytes(spec: dict | None) -> int:
    return 0 if not spec else spec["blob"][1] + (spec["lengths"][1] if "lengths" in spec else 0)


def storage_table(path: str | os.PathLike) -> list[dict]:
    """Per-layer storage of an ``.ncz`` file in the format of Deep Compression's Tables 4 and 5.

    For each layer: its weights, the share kept by pruning, bits per kept weight and per
    index with fixed-width codes (P+Q) and as stored (P+Q+H), the bytes the file holds for
    the layer (codes, indices, scales, zero points, codebook and bias) and its size relative
    to float32 (Han, Mao and Dally, "Deep Compression", ICLR 2016).
    """
    _, records = read_records(path)
    layers: dict[str, dict] = {}
    for record in records:
        layer, _, field = record["name"].rpartition(".")
        entry = layers.setdefault(layer, {"bytes": 0, "params": 0, "raw_bits": 0})
        item = torch.empty((), dtype=record["dtype"]).element_size()
        values = record["values"][1] if "values" in record else 0
        stored = _stream_bytes(record.get("index")) + _stream_bytes(record.get("codes")) + values
        stored += record["blob"][1] if "blob" in record else 0
        entry["bytes"] += stored
        if record["encoding"] == "mask-of":
            continue
        if field in ("codes", "weight") and record["encoding"] != "raw":
            index = record.get("index")
            kept = record["codes"]["count"] if "codes" in record else values // item
            q = code_width(record["levels"]) if "levels" in record else 8 * item
            entry.update(weights=record["numel"], kept=kept, weight_bits_pq=q,
                         weight_bits_pqh=8 * (_stream_bytes(record.get("codes")) or values) / max(kept, 1),
                         index_bits_pq=record["index_bits"] * index["count"] / max(kept, 1) if index else None,
                         index_bits_pqh=8 * _stream_bytes(index) / max(kept, 1) if index else None)
            entry["raw_bits"] += kept * q + (index["count"] * record["index_bits"] if index else 0)
            entry["params"] += record["numel"]
        elif field == "weight":
            entry.update(weights=record["numel"], kept=record["numel"], weight_bits_pq=8 * item,
                         weight_bits_pqh=8.0 * item, index_bits_pq=None, index_bits_pqh=None)
            entry["raw_bits"] += 8 * stored
            entry["params"] += record["numel"]
        else:  # bias, scales, zero points, codebook, BatchNorm statistics: stored as they are
            entry["raw_bits"] += 8 * stored
            entry["params"] += record["numel"] if field == "bias" else 0
    rows = []
    for layer, e in layers.items():
        if "weights" not in e:
            continue
        dense_bits = 32 * e["params"]
        rows.append({"layer": layer, "weights": e["weights"], "kept_percent": 100 * e["kept"] / max(e["weights"], 1),
                     "weight_bits_pq": e["weight_bits_pq"], "weight_bits_pqh": e["weight_bits_pqh"],
                     "index_bits_pq": e["index_bits_pq"], "index_bits_pqh": e["index_bits_pqh"],
                     "rate_pq_percent": 100 * e["raw_bits"] / max(dense_bits, 1),
                     "rate_pqh_percent": 100 * 8 * e["bytes"] / max(dense_bits, 1), "bytes": e["bytes"]})
    return rows


def format_storage_table(rows: list[dict], total_bytes: int | None = None) -> str:
    """The rows of :func:`storage_table` as the seed's Tables 4/5, with the bytes each layer takes."""
    def bits(v):
        return "-" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)

    header = ["layer", "#weights", "weights% (P)", "weight bits (P+Q)", "weight bits (P+Q+H)", "index bits (P+Q)",
              "index bits (P+Q+H)", "bytes", "compress rate (P+Q)", "compress rate (P+Q+H)"]
    lines = [header]
    for r in rows:
        lines.append([r["layer"], f"{r['weights']:,}", f"{r['kept_percent']:.1f}%", bits(r["weight_bits_pq"]),
                      bits(r["weight_bits_pqh"]), bits(r["index_bits_pq"]), bits(r["index_bits_pqh"]),
                      f"{r['bytes']:,}", f"{r['rate_pq_percent']:.2f}%", f"{r['rate_pqh_percent']:.2f}%"])
    weights = sum(r["weights"] for r in rows)
    kept = sum(r["weights"] * r["kept_percent"] / 100 for r in rows)
    layer_bytes = sum(r["bytes"] for r in rows)
    lines.append(["total", f"{weights:,}", f"{100 * kept / max(weights, 1):.1f}%", "", "", "", "",
                  f"{layer_bytes:,}", "", f"{100 * 8 * layer_bytes / max(32 * weights, 1):.2f}%"])
    text = text_table(lines[0], lines[1:], rule=False, right=True)
    if total_bytes is not None:
        text += f"\nfile: {total_bytes:,} bytes (header, manifest and checksum included)"
    return text


