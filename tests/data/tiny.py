"""A tiny IDX dataset (6 train / 2 test images of 4x4) and its spec, for source tests."""
import gzip
import hashlib

import numpy as np

from distnn.data import idx
from distnn.data.datasets import IDX_NAMES, IdxSpec


def arrays():
    rng = np.random.default_rng(0)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (6, 4, 4), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.array([0, 1, 2, 0, 1, 2], np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (2, 4, 4), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([2, 1], np.uint8),
    }


def raw():
    return {n: idx.encode(a) for n, a in arrays().items()}


def spec(mirrors=(), r=None, **kw):
    r = r or raw()
    return IdxSpec("tiny", {n: hashlib.sha256(r[n]).hexdigest() for n in IDX_NAMES}, {},
                   tuple(mirrors), n_valid=2, n_classes=3, **kw)


def write(directory, compress=False, override=None):
    directory.mkdir(parents=True, exist_ok=True)
    for n, data in {**raw(), **(override or {})}.items():
        if compress:
            (directory / f"{n}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / n).write_bytes(data)
    return directory


def write_blobs(directory, n_train, n_test, classes=4, side=8, seed=0, low=40, high=200):
    """Separable generated IDX files: class k lights up pixels p with p % classes == k."""
    rng = np.random.default_rng(seed)
    d = side * side
    for pre, n in (("train", n_train), ("t10k", n_test)):
        y = np.arange(n) % classes
        x = rng.integers(0, low, (n, d)) + (np.arange(d)[None, :] % classes == y[:, None]) * high
        (directory / f"{pre}-images-idx3-ubyte").write_bytes(idx.encode(x.reshape(n, side, side)))
        (directory / f"{pre}-labels-idx1-ubyte").write_bytes(idx.encode(y))
    return directory
