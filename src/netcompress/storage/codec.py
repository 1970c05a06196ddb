"""Entropy coding of weight streams: canonical Huffman codes and relative sparse indices.

* :func:`huffman_encode` / :func:`huffman_decode`: a canonical Huffman code over a small
  alphabet (codes of at most :data:`MAX_CODE_LENGTH` bits). The decoder needs only the
  code length of each symbol. Both directions are vectorised with NumPy: decoding looks
  up every bit offset in one table and then follows the chain of code words by pointer
  doubling, so no Python loop runs per symbol.
* :func:`relative_indices` / :func:`absolute_positions`: Deep Compression's sparse format
  (Han, Mao and Dally, "Deep Compression", ICLR 2016, Figure 2): each kept weight stores the number of zeros before it in
  ``index_bits`` bits; a longer run is bridged by a *filler* entry.

Decoders read hostile data: they check lengths before allocating and work in chunks of
:data:`CHUNK_BITS`, so their memory is the output plus one chunk.
"""

from __future__ import annotations

import heapq

import numpy as np

__all__ = [
    "CHUNK_BITS",
    "MAX_CODE_LENGTH",
    "absolute_positions",
    "code_lengths",
    "huffman_decode",
    "huffman_encode",
    "index_mask",
    "pack_fixed",
    "relative_indices",
    "unpack_fixed",
]

MAX_CODE_LENGTH = 16
CHUNK_BITS = 1 << 20  # bits decoded per step: bounds the decoders' working memory


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
    """Concatenate each ``words[i]``'s ``widths[i]`` low bits, most significant first (a chunk at a time)."""
    if len(words) == 0:
        return b"", 0
    shifts = np.arange(width_max - 1, -1, -1, dtype=np.uint32)
    pieces = []
    for start in range(0, len(words), CHUNK_BITS // 8):
        w = widths[start:start + CHUNK_BITS // 8].astype(np.uint32)
        aligned = words[start:start + CHUNK_BITS // 8].astype(np.uint32) << (width_max - w)
        bits = ((aligned[:, None] >> shifts) & 1).astype(np.uint8)
        pieces.append(bits[np.arange(width_max) < w[:, None]])
    bits = np.concatenate(pieces)
    return np.packbits(bits).tobytes(), len(bits)


def huffman_encode(symbols: np.ndarray, lengths: np.ndarray) -> tuple[bytes, int]:
    """The bit stream (bytes, number of bits) of ``symbols`` under the code of ``lengths``."""
    symbols = np.asarray(symbols, dtype=np.int64)
    if len(symbols) and lengths[symbols].min() == 0:
        raise ValueError("a symbol to encode has no code; build the lengths from these symbols' counts")
    codes = _canonical_codes(lengths)
    return _write_bits(codes[symbols], lengths[symbols].astype(np.uint32), MAX_CODE_LENGTH)


def _kraft_ok(lengths: np.ndarray) -> bool:
    """Whether code lengths fit a prefix code (Kraft: Σ 2^−l ≤ 1), so canonical codes stay in range."""
    used = lengths[lengths > 0].astype(np.int64)
    return bool(((1 << (MAX_CODE_LENGTH - used)).sum()) <= 1 << MAX_CODE_LENGTH)


def _smallest_unsigned(alphabet: int) -> type:
    return np.uint8 if alphabet <= 1 << 8 else np.uint16 if alphabet <= 1 << 16 else np.uint32


def huffman_decode(payload: bytes, bit_count: int, count: int, lengths: np.ndarray) -> np.ndarray:
    """The ``count`` symbols coded in the first ``bit_count`` bits of ``payload``.

    Decodes :data:`CHUNK_BITS` bits at a time, so the working memory is a few arrays of one
    chunk plus the output (uint8 or uint16), whatever the stream's length. Raises
    ``ValueError`` when the lengths are not a prefix code or the bits do not decode to
    exactly ``count`` symbols.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if count < 0 or bit_count < 0 or bit_count > 8 * len(payload) or (count and count > bit_count):
        raise ValueError("the Huffman stream's header does not fit its data")
    if lengths.min(initial=0) < 0 or lengths.max(initial=0) > MAX_CODE_LENGTH or not _kraft_ok(lengths):
        raise ValueError("the Huffman stream's code lengths do not form a prefix code")
    out = np.empty(count, dtype=_smallest_unsigned(len(lengths)))
    if count == 0:
        return out
    codes = _canonical_codes(lengths.astype(np.uint8))
    table_symbol = np.zeros(1 << MAX_CODE_LENGTH, dtype=np.int64)
    table_length = np.zeros(1 << MAX_CODE_LENGTH, dtype=np.int64)  # 0: no code word starts with these bits
    for symbol in np.flatnonzero(lengths):
        spare = MAX_CODE_LENGTH - lengths[symbol]
        start = int(codes[symbol]) << spare
        table_symbol[start:start + (1 << spare)] = symbol
        table_length[start:start + (1 << spare)] = lengths[symbol]
    data = np.frombuffer(payload, dtype=np.uint8)
    weights = 1 << np.arange(MAX_CODE_LENGTH - 1, -1, -1, dtype=np.int64)
    position, done = 0, 0
    while done < count:
        if position >= bit_count:
            raise ValueError("the Huffman stream is corrupt: it ends before its recorded symbols")
        span = min(CHUNK_BITS, bit_count - position)
        first = position // 8
        bits = np.unpackbits(data[first:(position + span + MAX_CODE_LENGTH + 7) // 8])[position - 8 * first:]
        bits[max(bit_count - position, 0):] = 0  # bits past the stream's end are padding
        bits = np.concatenate([bits, np.zeros(MAX_CODE_LENGTH, dtype=np.uint8)])
        windows = np.lib.stride_tricks.sliding_window_view(bits, MAX_CODE_LENGTH)[:span] @ weights
        step = table_length[windows]
        # following[p]: where the code word starting at local bit p ends; span is the exit sentinel.
        jump = np.append(np.minimum(np.arange(span) + np.where(step > 0, step, span), span), span)
        chain = np.zeros(1, dtype=np.int64)
        while len(chain) < count - done and chain[-1] != span:  # pointer doubling
            chain = np.concatenate([chain, jump[chain]])
            jump = jump[jump]
        starts = chain[chain < span][: count - done]
        if (step[starts] == 0).any():
            raise ValueError("the Huffman stream is corrupt: its bits do not decode to the recorded symbols")
        out[done:done + len(starts)] = table_symbol[windows[starts]]
        done += len(starts)
        position += int(starts[-1] + step[starts[-1]])
    if position != bit_count:
        raise ValueError("the Huffman stream is corrupt: its bits do not decode to the recorded symbols")
    return out


def pack_fixed(values: np.ndarray, bits: int) -> bytes:
    """``values`` (each < 2**bits) packed in ``bits`` bits each."""
    values = np.asarray(values, dtype=np.uint32)
    return _write_bits(values, np.full(len(values), bits, dtype=np.uint32), bits)[0]


def unpack_fixed(payload: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_fixed`, as uint8 (``bits`` ≤ 8) or uint16, decoded a chunk at a time."""
    if not 1 <= bits <= 16 or count < 0 or count * bits > 8 * len(payload):
        raise ValueError("the packed stream is shorter than its recorded length")
    data = np.frombuffer(payload, dtype=np.uint8)
    if bits == 8:
        return data[:count].copy()
    out = np.empty(count, dtype=np.uint8 if bits <= 8 else np.uint16)
    weights = (1 << np.arange(bits - 1, -1, -1)).astype(np.uint32)
    chunk = CHUNK_BITS // 8  # symbols per chunk, a multiple of 8 so every chunk starts on a byte
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        flat = np.unpackbits(data[start * bits // 8:-(-(start + n) * bits // 8)])[: n * bits].reshape(n, bits)
        out[start:start + n] = flat.astype(np.uint32) @ weights
    return out


def relative_indices(positions: np.ndarray, index_bits: int, length: int | None = None) -> np.ndarray:
    """Deep Compression's relative index stream for sorted kept ``positions``.

    Symbol ``g < 2**index_bits`` places the next kept entry ``g + 1`` places after the
    previous one (the first after position -1). A longer run of zeros is bridged by the
    *skip* symbol ``2**index_bits``, which advances ``2**index_bits`` places and stores no
    weight (the seed's filler zero, without the filler's weight). With ``length``, skips are
    appended until fewer than ``2**index_bits`` entries are left uncovered, so that a reader
    can bound ``length`` by the stream (see :func:`index_mask`).
    """
    positions = np.asarray(positions, dtype=np.int64)
    span = 1 << index_bits
    gaps = np.diff(positions, prepend=-1) - 1
    skips = gaps // span
    tail = 0 if length is None else (length - (int(positions[-1]) + 1 if len(positions) else 0)) // span
    symbols = np.full(len(positions) + int(skips.sum()) + tail, span, dtype=np.int64)
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


def index_mask(symbols: np.ndarray, index_bits: int, length: int) -> np.ndarray:
    """The boolean mask of ``length`` entries whose kept positions ``symbols`` code (with a tail, see above).

    Raises ``ValueError`` when a position falls outside ``length`` or the stream leaves
    ``2**index_bits`` or more entries uncovered (a forged length). Works a chunk at a time.
    """
    span = 1 << index_bits
    mask = np.zeros(length, dtype=bool)
    advance = 0
    for start in range(0, len(symbols), CHUNK_BITS):
        chunk = np.asarray(symbols[start:start + CHUNK_BITS], dtype=np.int64)
        skip = chunk == span
        ends = advance + np.cumsum(np.where(skip, span, chunk + 1))
        advance = int(ends[-1])
        if advance > length:
            raise ValueError(f"its indices run past its {length} entries")
        mask[ends[~skip] - 1] = True
    if length - advance >= span:
        raise ValueError(f"its index stream covers {advance} of {length} entries")
    return mask
