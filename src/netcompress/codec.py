"""Entropy coding of weight streams: canonical Huffman codes and relative sparse indices.

* :func:`huffman_encode` / :func:`huffman_decode`: a canonical Huffman code over a small
  alphabet (codes of at most :data:`MAX_CODE_LENGTH` bits). The decoder needs only the
  code length of each symbol. Both directions are vectorised with NumPy: decoding looks
  up every bit offset in one table and then follows the chain of code words by pointer
  doubling, so no Python loop runs per symbol.
* :func:`relative_indices` / :func:`absolute_positions`: Deep Compression's sparse format
  (seed 003, Figure 2): each kept weight stores the number of zeros before it in
  ``index_bits`` bits; a longer run is bridged by a *filler* entry.
"""

from __future__ import annotations

import heapq

import numpy as np

__all__ = [
    "MAX_CODE_LENGTH",
    "absolute_positions",
    "code_lengths",
    "huffman_decode",
    "huffman_encode",
    "pack_fixed",
    "relative_indices",
    "unpack_fixed",
]

MAX_CODE_LENGTH = 16


def code_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code lengths (uint8) for symbol ``counts``, at most :data:`MAX_CODE_LENGTH` bits.

    Unused symbols get length 0. When the optimal code is too deep, counts are halved
    (keeping every used symbol at least 1) until it fits, a standard length limit.
    """
    counts = np.asarray(counts, dtype=np.int64)
    used = np.flatnonzero(counts)
    lengths = np.zeros(len(counts), dtype=np.uint8)
    if len(used) == 1:
        lengths[used] = 1
        return lengths
    weights = counts[used].copy()
    while True:
        heap = [(int(w), i, (int(s),)) for i, (w, s) in enumerate(zip(weights, used, strict=True))]
        heapq.heapify(heap)
        depth = dict.fromkeys(used.tolist(), 0)
        tie = len(heap)
        while len(heap) > 1:
            w1, _, s1 = heapq.heappop(heap)
            w2, _, s2 = heapq.heappop(heap)
            for s in s1 + s2:
                depth[s] += 1
            heapq.heappush(heap, (w1 + w2, tie, s1 + s2))
            tie += 1
        if max(depth.values()) <= MAX_CODE_LENGTH:
            for s, d in depth.items():
                lengths[s] = d
            return lengths
        weights = np.maximum(weights // 2, 1)


def _canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code words (uint32) for the given lengths: shorter first, then by symbol."""
    codes = np.zeros(len(lengths), dtype=np.uint32)
    code, previous = 0, 0
    for symbol in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[symbol]) - previous
        previous = int(lengths[symbol])
        codes[symbol] = code
        code += 1
    return codes


def _write_bits(words: np.ndarray, widths: np.ndarray, width_max: int) -> tuple[bytes, int]:
    """Concatenate each ``words[i]``'s ``widths[i]`` low bits, most significant first."""
    if len(words) == 0:
        return b"", 0
    shifts = np.arange(width_max - 1, -1, -1, dtype=np.uint32)
    aligned = words.astype(np.uint32) << (width_max - widths.astype(np.uint32))
    bits = ((aligned[:, None] >> shifts) & 1).astype(np.uint8)
    bits = bits[np.arange(width_max) < widths[:, None]]
    return np.packbits(bits).tobytes(), len(bits)


def huffman_encode(symbols: np.ndarray, lengths: np.ndarray) -> tuple[bytes, int]:
    """The bit stream (bytes, number of bits) of ``symbols`` under the code of ``lengths``."""
    symbols = np.asarray(symbols, dtype=np.int64)
    if len(symbols) and lengths[symbols].min() == 0:
        raise ValueError("a symbol to encode has no code; build the lengths from these symbols' counts")
    codes = _canonical_codes(lengths)
    return _write_bits(codes[symbols], lengths[symbols].astype(np.uint32), MAX_CODE_LENGTH)


def huffman_decode(payload: bytes, bit_count: int, count: int, lengths: np.ndarray) -> np.ndarray:
    """The ``count`` symbols coded in the first ``bit_count`` bits of ``payload``.

    Raises ``ValueError`` when the bits do not decode to exactly ``count`` symbols.
    """
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.max(initial=0) > MAX_CODE_LENGTH or bit_count > 8 * len(payload):
        raise ValueError("the Huffman stream's header does not fit its data")
    codes = _canonical_codes(lengths.astype(np.uint8))
    table_symbol = np.full(1 << MAX_CODE_LENGTH, -1, dtype=np.int64)
    table_length = np.zeros(1 << MAX_CODE_LENGTH, dtype=np.int64)
    for symbol in np.flatnonzero(lengths):
        spare = MAX_CODE_LENGTH - lengths[symbol]
        start = int(codes[symbol]) << spare
        table_symbol[start:start + (1 << spare)] = symbol
        table_length[start:start + (1 << spare)] = lengths[symbol]
    bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8))[:bit_count]
    bits = np.concatenate([bits, np.zeros(MAX_CODE_LENGTH, dtype=np.uint8)])
    weights = 1 << np.arange(MAX_CODE_LENGTH - 1, -1, -1, dtype=np.int64)
    windows = np.lib.stride_tricks.sliding_window_view(bits, MAX_CODE_LENGTH)[:bit_count] @ weights
    step = table_length[windows]
    # next[p]: where the code word starting at bit p ends; bit_count is the terminal sentinel.
    following = np.minimum(np.arange(bit_count) + np.where(step > 0, step, bit_count), bit_count)
    following = np.append(following, bit_count)
    chain, jump = np.zeros(1, dtype=np.int64), following
    while len(chain) < count:  # pointer doubling: the next len(chain) starts are jump[chain]
        chain = np.concatenate([chain, jump[chain]])
        jump = jump[jump]
    chain = chain[:count]
    if chain[-1] >= bit_count or following[chain[-1]] != bit_count or (table_symbol[windows[chain]] < 0).any():
        raise ValueError("the Huffman stream is corrupt: its bits do not decode to the recorded symbols")
    return table_symbol[windows[chain]]


def pack_fixed(values: np.ndarray, bits: int) -> bytes:
    """``values`` (each < 2**bits) packed in ``bits`` bits each."""
    values = np.asarray(values, dtype=np.uint32)
    return _write_bits(values, np.full(len(values), bits, dtype=np.uint32), bits)[0]


def unpack_fixed(payload: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_fixed`."""
    if count * bits > 8 * len(payload):
        raise ValueError("the packed stream is shorter than its recorded length")
    flat = np.unpackbits(np.frombuffer(payload, dtype=np.uint8))[: count * bits].reshape(count, bits)
    return flat.astype(np.int64) @ (1 << np.arange(bits - 1, -1, -1, dtype=np.int64))


def relative_indices(positions: np.ndarray, index_bits: int) -> np.ndarray:
    """Deep Compression's relative index stream for sorted kept ``positions``.

    Symbol ``g < 2**index_bits`` places the next kept entry ``g + 1`` places after the
    previous one (the first after position -1). A longer run of zeros is bridged by the
    *skip* symbol ``2**index_bits``, which advances ``2**index_bits`` places and stores no
    weight (the seed's filler zero, without the filler's weight).
    """
    positions = np.asarray(positions, dtype=np.int64)
    span = 1 << index_bits
    gaps = np.diff(positions, prepend=-1) - 1
    skips = gaps // span
    symbols = np.full(len(positions) + int(skips.sum()), span, dtype=np.int64)
    kept_at = np.arange(len(positions)) + np.cumsum(skips)
    symbols[kept_at] = gaps - skips * span
    return symbols


def absolute_positions(symbols: np.ndarray, index_bits: int) -> np.ndarray:
    """The kept positions coded by :func:`relative_indices`."""
    symbols = np.asarray(symbols, dtype=np.int64)
    span = 1 << index_bits
    skip = symbols == span
    ends = np.cumsum(np.where(skip, span, symbols + 1)) - 1
    return ends[~skip]
