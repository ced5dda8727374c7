import gzip
import os
import pickle

import numpy as np
import pytest

from distnn.data import safe_pickle
from distnn.data.datasets import idx_from_pickle
from distnn.data.idx import DataError, parse


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_arrays_load(rng):
    obj = ((rng.random((3, 4)).astype(np.float32), np.arange(3)),)
    back = safe_pickle.loads(pickle.dumps(obj, protocol=2))
    np.testing.assert_array_equal(back[0][0], obj[0][0])


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    target = tmp_path / "pwned"
    blob = pickle.dumps((np.zeros(2), _Evil(target)), protocol=2)
    with pytest.raises(safe_pickle.UnsafePickleError, match="refusing to load .*system"):
        safe_pickle.loads(blob)
    assert not target.exists()
    # the same payload really would run under plain pickle: the test has teeth
    pickle.loads(blob)
    assert target.exists()


def _nielsen_pickle(rng, n=(5, 2, 3)):
    parts = []
    for k in n:
        x = (rng.integers(0, 256, (k, 16)) / 256.0).astype(np.float32)
        parts.append((x, rng.integers(0, 10, k)))
    return gzip.compress(pickle.dumps(tuple(parts), protocol=2)), parts


def test_nielsen_pickle_becomes_exact_idx(rng):
    blob, parts = _nielsen_pickle(rng)
    raw = idx_from_pickle(blob, "p")
    train = parse(raw["train-images-idx3-ubyte"])
    assert train.shape == (7, 4, 4)
    np.testing.assert_array_equal(train[:5].reshape(5, 16) / 256.0, parts[0][0])
    np.testing.assert_array_equal(parse(raw["t10k-labels-idx1-ubyte"]), parts[2][1])


def test_wrong_pickle_structure_is_a_data_error(rng):
    with pytest.raises(DataError, match="expected three"):
        idx_from_pickle(gzip.compress(pickle.dumps((np.zeros(3),), protocol=2)), "p")
    with pytest.raises(DataError, match="truncated or corrupt gzip"):
        idx_from_pickle(_nielsen_pickle(rng)[0][:-10], "p")
