import numpy as np
import pytest

from netcompress.storage.codec import (
    MAX_CODE_LENGTH,
    absolute_positions,
    code_lengths,
    huffman_decode,
    huffman_encode,
    pack_fixed,
    relative_indices,
    unpack_fixed,
)


def _entropy_bits(symbols):
    p = np.bincount(symbols) / len(symbols)
    p = p[p > 0]
    return -(p * np.log2(p)).sum() * len(symbols)


@pytest.mark.parametrize("alphabet, skew", [(2, 1.0), (33, 1.5), (257, 0.7)])
def test_huffman_round_trip_within_one_bit_of_the_entropy(alphabet, skew):
    rng = np.random.default_rng(alphabet)
    p = 1.0 / np.arange(1, alphabet + 1) ** skew
    symbols = rng.choice(alphabet, size=20000, p=p / p.sum())
    lengths = code_lengths(np.bincount(symbols, minlength=alphabet))
    # Kraft equality: a complete prefix code.
    assert sum(2.0 ** -int(n) for n in lengths if n) == pytest.approx(1.0)
    payload, bits = huffman_encode(symbols, lengths)
    assert np.array_equal(huffman_decode(payload, bits, len(symbols), lengths), symbols)
    entropy = _entropy_bits(symbols)
    assert entropy <= bits <= entropy + len(symbols)


def test_code_lengths_are_limited_and_single_symbols_get_one_bit():
    fibonacci = [1, 1]
    while len(fibonacci) < 40:
        fibonacci.append(fibonacci[-1] + fibonacci[-2])
    lengths = code_lengths(np.array(fibonacci))
    assert lengths.max() <= MAX_CODE_LENGTH
    assert sum(2.0 ** -int(n) for n in lengths) <= 1.0
    one = code_lengths(np.array([0, 5, 0]))
    assert one.tolist() == [0, 1, 0]
    payload, bits = huffman_encode(np.array([1, 1, 1]), one)
    assert huffman_decode(payload, bits, 3, one).tolist() == [1, 1, 1]


def test_corrupt_huffman_bits_are_detected():
    symbols = np.array([0, 1, 2, 3] * 50)
    lengths = code_lengths(np.bincount(symbols))
    payload, bits = huffman_encode(symbols, lengths)
    with pytest.raises(ValueError, match="corrupt"):
        huffman_decode(payload, bits - 3, len(symbols), lengths)
    with pytest.raises(ValueError):
        huffman_decode(payload, bits, len(symbols) + 5, lengths)


def test_fixed_width_packing_round_trip():
    values = np.random.default_rng(0).integers(0, 32, 1001)
    payload = pack_fixed(values, 5)
    assert len(payload) == -(-1001 * 5 // 8)
    assert np.array_equal(unpack_fixed(payload, 5, 1001), values)


def test_relative_indices_follow_the_papers_figure_2():
    # Figure 2 of Deep Compression: 3-bit indices; a gap of 8 or more needs a filler.
    positions = np.array([1, 4, 15])
    symbols = relative_indices(positions, 3)
    assert symbols.tolist() == [1, 2, 8, 2]  # the run of 10 zeros becomes a skip of 8 and a gap of 2
    assert absolute_positions(symbols, 3).tolist() == positions.tolist()
    rng = np.random.default_rng(1)
    for bits in (1, 4, 8):
        kept = np.sort(rng.choice(10000, 700, replace=False))
        assert np.array_equal(absolute_positions(relative_indices(kept, bits), bits), kept)


def test_decoders_work_across_chunks_and_refuse_lying_streams(monkeypatch):
    import netcompress.storage.codec as codec

    monkeypatch.setattr(codec, "CHUNK_BITS", 64)  # many chunks, code words straddling their borders
    rng = np.random.default_rng(2)
    symbols = rng.choice(9, size=3001, p=[0.4, 0.2, 0.1, 0.1, 0.05, 0.05, 0.04, 0.03, 0.03])
    lengths = code_lengths(np.bincount(symbols, minlength=9))
    payload, bits = huffman_encode(symbols, lengths)
    assert np.array_equal(codec.huffman_decode(payload, bits, len(symbols), lengths), symbols)
    values = rng.integers(0, 2 ** 11, 1001)
    assert np.array_equal(codec.unpack_fixed(pack_fixed(values, 11), 11, 1001), values)
    kept = np.sort(rng.choice(5000, 300, replace=False))
    stream = relative_indices(kept, 3, 5000)
    assert np.array_equal(np.flatnonzero(codec.index_mask(stream, 3, 5000)), kept)
    with pytest.raises(ValueError, match="covers"):
        codec.index_mask(stream, 3, 5000 + 8)  # a length the stream does not reach
    with pytest.raises(ValueError, match="run past"):
        codec.index_mask(stream, 3, 4000)
    with pytest.raises(ValueError, match="prefix code"):
        codec.huffman_decode(payload, bits, len(symbols), np.ones(9, dtype=np.uint8))  # Kraft sum 9/2 > 1
    with pytest.raises(ValueError, match="header"):
        codec.huffman_decode(payload, bits, bits + 1, lengths)  # more symbols than bits
    with pytest.raises(ValueError, match="shorter"):
        codec.unpack_fixed(b"\x00" * 10, 11, 8)
