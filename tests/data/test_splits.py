import numpy as np
import pytest

from distnn.data.digits import parse_csv
from distnn.data.idx import DataError
from distnn.data.splits import Normalizer, train_valid_test_split


def test_split_is_a_seeded_partition(rng):
    x = np.arange(100)[:, None]
    y = np.arange(100)
    (a, ya), (b, yb), (c, yc) = train_valid_test_split(x, y, "60/20/20", seed=3)
    assert (len(a), len(b), len(c)) == (60, 20, 20)
    assert sorted(np.concatenate([ya, yb, yc]).tolist()) == list(range(100))
    np.testing.assert_array_equal(a[:, 0], ya)
    again = train_valid_test_split(x, y, (0.6, 0.2, 0.2), seed=3)
    np.testing.assert_array_equal(again[0][1], ya)
    assert not np.array_equal(train_valid_test_split(x, y, seed=4)[0][1], ya)
    (a, _), (b, _), (c, _) = train_valid_test_split(x, y, "98/1/1")
    assert (len(a), len(b), len(c)) == (98, 1, 1)


@pytest.mark.parametrize("fr", [(0.5, 0.5), (0.7, 0.2, 0.2), "50/50", (1.2, -0.1, -0.1)])
def test_bad_fractions(fr):
    with pytest.raises(ValueError):
        train_valid_test_split(np.zeros((10, 1)), np.zeros(10), fr)


def test_normalizer_scales_and_standardises_from_train_only(rng):
    train = rng.integers(0, 256, (50, 3, 3), dtype=np.uint8)
    test = rng.integers(0, 256, (5, 3, 3), dtype=np.uint8)
    plain = Normalizer.fit(train)
    np.testing.assert_allclose(plain(test), test.reshape(5, 9) / 255.0, rtol=1e-6)
    std = Normalizer.fit(train, standardize=True)
    z = std(train)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-2)
    expect = (test.reshape(5, 9) / 255.0 - std.mean) / (std.std + std.eps)
    np.testing.assert_allclose(std(test), expect, rtol=1e-5)
    assert set(std.tensors()) == {"input.mean", "input.std"}


def test_digits_csv_parser():
    rows = ["0," * 64 + "3", ",".join(["16"] * 64) + ",9"]
    x, y = parse_csv("\n".join(rows).encode(), "d.csv")
    assert x.shape == (2, 8, 8) and x.dtype == np.uint8 and x.max() == 16
    assert y.tolist() == [3, 9]
    with pytest.raises(DataError, match="65 columns"):
        parse_csv(b"1,2,3\n4,5,6", "d.csv")
    with pytest.raises(DataError, match="0..16"):
        parse_csv((",".join(["17"] * 64) + ",1").encode(), "d.csv")


def test_a_split_says_whether_it_is_held_whole():
    """Code asks a split what it can do, not its type: held whole in memory, or read on
    demand a part per worker (a Parquet dataset's)."""
    from distnn.data.parquet import ParquetSplit
    from distnn.data.splits import Split
    assert Split(np.zeros((2, 2, 2), np.uint8), np.zeros(2, np.int64)).held_whole
    assert ParquetSplit.held_whole is False
