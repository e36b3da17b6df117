"""trainer.data.rtd_format: RTD rows encoded as bytes decode to the same rows, whole or sliced,
with 2-byte and 4-byte tokens.
"""

from __future__ import annotations

import numpy as np
import pytest

from trainer.data.rtd_format import decode_rtd_table, encode_rtd_rows, token_dtype


@pytest.mark.parametrize("vocab", [600, 70_000])
def test_rtd_encoding_round_trips(vocab):
    rng = np.random.default_rng(0)
    lengths = [1, 7, 8, 9, 64, 3]
    ids = [rng.integers(0, vocab, n) for n in lengths]
    labels = [rng.integers(0, 2, n).astype(np.uint8) for n in lengths]
    dtype = token_dtype(vocab)
    assert dtype == ("<u2" if vocab <= 65536 else "<i4")
    table = encode_rtd_rows(np.arange(6), np.arange(6)[::-1], ids, labels,
                            np.linspace(2, 1, 6), dtype)
    for sliced, lo in [(table, 0), (table.slice(2, 3), 2)]:
        got = decode_rtd_table(sliced, dtype)
        for i, r in enumerate(got.rows()):
            assert r.position == lo + i and r.seq_id == 5 - lo - i
            assert np.array_equal(r.input_ids, ids[lo + i]) and r.input_ids.dtype == np.int32
            assert np.array_equal(r.labels, labels[lo + i]) and r.labels.dtype == np.uint8
