"""Counter-based random numbers keyed by (seed, stream, epoch, example index).

Dropout masks and augmentation must depend only on (seed, epoch, example index), not on
which batch, shard or worker an example lands in; that is what lets N workers reproduce
a one-worker run exactly.  A stateful ``np.random.Generator`` cannot give that cheaply,
so these values come from a vectorised integer hash (the SplitMix64 finaliser, which
passes BigCrush as a generator) of the key and the element's position.

``keyed_uniform(key, index, n)[i, j]`` depends only on ``key``, ``index[i]`` and ``j``.
"""
from __future__ import annotations

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_MASK64 = (1 << 64) - 1


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser, in place on a uint64 array (wrap-around is intended)."""
    x ^= x >> _S30
    x *= _M1
    x ^= x >> _S27
    x *= _M2
    x ^= x >> _S31
    return x


def fold_key(*parts: int) -> int:
    """Fold integers (seed, stream id, epoch, ...) into one 64-bit key."""
    h = np.zeros(1, np.uint64)
    for p in parts:
        if p < 0:
            raise ValueError(f"random key parts must be >= 0, got {parts!r}")
        h ^= np.uint64(p & _MASK64)
        h += _GOLDEN
        _mix(h)
    return int(h[0])


def keyed_bits(key: int, index: np.ndarray, n: int) -> np.ndarray:
    """(len(index), n) uint64 hashes of (key, index[i], j)."""
    idx = np.asarray(index, dtype=np.uint64).reshape(-1, 1)
    x = idx * np.uint64(n) + np.arange(n, dtype=np.uint64)
    x *= _GOLDEN
    x ^= np.uint64(key)
    return _mix(x)


def keyed_uniform(key: int, index: np.ndarray, n: int, dtype=np.float32,
                  low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """(len(index), n) uniforms in [low, high) keyed by (key, index[i], j).

    float32: each 64-bit hash gives two values (its little-endian 32-bit halves, top
    24 bits each); float64: one value per hash (top 53 bits).  Every value of the
    unit interval is exactly representable, and strictly below 1.
    """
    if np.dtype(dtype) == np.float32:
        half = (n + 1) // 2
        bits = keyed_bits(key, index, half).astype("<u8", copy=False)
        words = bits.view("<u4")[:, :n] >> np.uint32(8)
        scale = np.float32((high - low) * 2.0 ** -24)
        out = words.astype(np.float32)
        out *= scale
    else:
        bits = keyed_bits(key, index, n)
        out = (bits >> np.uint64(11)).astype(np.float64)
        out *= (high - low) * 2.0 ** -53
    if low:
        out += out.dtype.type(low)
    return out
