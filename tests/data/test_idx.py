import gzip

import numpy as np
import pytest

from distnn.data import idx
from distnn.data.idx import DataError


def test_round_trip(rng):
    a = rng.integers(0, 256, (3, 5, 4), dtype=np.uint8)
    np.testing.assert_array_equal(idx.parse(idx.encode(a)), a)


def test_gzipped_files_are_read(tmp_path, rng):
    a = rng.integers(0, 256, (7,), dtype=np.uint8)
    p = tmp_path / "labels.gz"
    p.write_bytes(gzip.compress(idx.encode(a)))
    np.testing.assert_array_equal(idx.load(p), a)


@pytest.mark.parametrize("blob,match", [
    (b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00", "type code 0x0d"),
    (b"\x12\x34\x08\x01", "bad magic number 12340801"),
    (b"", "bad magic number empty"),
    (b"\x00\x00\x08\x03\x00\x00", "header with 3 dimensions is truncated"),
    (idx.encode(np.zeros((4, 3), np.uint8))[:-2], r"shape \(4, 3\) \(12 bytes of data\) but the file holds 10"),
])
def test_bad_files_name_what_is_wrong(blob, match):
    with pytest.raises(DataError, match=match):
        idx.parse(blob, "f.idx")


def test_truncated_gzip_names_the_file(tmp_path):
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(idx.encode(np.zeros((50, 8), np.uint8)))[:-20])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: truncated or corrupt gzip"):
        idx.load(p)
