"""A dataset's splits held in memory (``Split``, ``Splits``), splitting, and input
normalisation.

Normalisation is fitted on the training split only and stored with the model:

    scale:        x' = x / pixel_max                      into [0, 1]
    standardise:  x' = (x / pixel_max - μ) / (σ + eps)    μ, σ per pixel, from train
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

PRESETS = {"60/20/20": (0.6, 0.2, 0.2), "98/1/1": (0.98, 0.01, 0.01)}


def train_valid_test_split(x, y, fractions=(0.6, 0.2, 0.2), *, seed: int = 0):
    """Shuffle with ``np.random.default_rng(seed)`` and cut into three parts.

    ``fractions`` is a 3-tuple summing to 1 or a preset name ("60/20/20", "98/1/1").
    Returns ((x_train, y_train), (x_valid, y_valid), (x_test, y_test)).
    """
    if isinstance(fractions, str):
        if fractions not in PRESETS:
            raise ValueError(f"unknown split preset {fractions!r}; expected {list(PRESETS)}")
        fractions = PRESETS[fractions]
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != (3,) or (f < 0).any() or not np.isclose(f.sum(), 1.0):
        raise ValueError(f"split fractions must be 3 numbers >= 0 summing to 1, got {fractions!r}")
    n = len(x)
    if len(y) != n:
        raise ValueError(f"{n} inputs but {len(y)} labels")
    order = np.random.default_rng(seed).permutation(n)
    a = int(round(f[0] * n))
    b = a + int(round(f[1] * n))
    parts = (order[:a], order[a:b], order[b:])
    return tuple((x[p], y[p]) for p in parts)


def _merge(n: int, mean, m2, flat: np.ndarray):
    """Chan et al.'s update of (count, mean, summed squared deviations) with ``flat``."""
    k = len(flat)
    cm = flat.mean(axis=0)
    cm2 = ((flat - cm) ** 2).sum(axis=0)
    delta = cm - mean
    total = n + k
    return total, mean + delta * (k / total), m2 + cm2 + delta ** 2 * (n * k / total)


@dataclass
class Normalizer:
    """Maps uint8 images (N, H, W) or (N, D) to float (N, D) inputs."""

    pixel_max: float = 255.0
    mean: np.ndarray | None = None   # (D,) when standardising
    std: np.ndarray | None = None
    eps: float = 1e-3

    @classmethod
    def fit(cls, train_x, pixel_max=255.0, standardize=False, eps=1e-3) -> "Normalizer":
        norm = cls(float(pixel_max), eps=eps)
        if standardize:
            flat = np.asarray(train_x, np.float64).reshape(len(train_x), -1) / pixel_max
            norm.mean = flat.mean(axis=0).astype(np.float32)
            norm.std = flat.std(axis=0).astype(np.float32)
        return norm

    @classmethod
    def fit_stream(cls, chunks, pixel_max=255.0, standardize=False, eps=1e-3) -> "Normalizer":
        """As ``fit``, from the training split one chunk (N_i, ...) at a time (a Parquet
        dataset's row groups): per-feature count, mean and squared deviations are
        merged chunk by chunk (Chan et al.), so no more than a chunk is held."""
        norm = cls(float(pixel_max), eps=eps)
        if not standardize:
            return norm
        n, mean, m2 = 0, 0.0, 0.0
        for x in _pieces(chunks, 512):            # float64 copies of 512 rows at most
            n, mean, m2 = _merge(n, mean, m2, np.asarray(x, np.float64).reshape(
                -1, int(np.prod(x.shape[1:]))) / pixel_max)
        if n == 0:
            raise ValueError("cannot standardise: the training split is empty")
        norm.mean = np.asarray(mean, np.float32)
        norm.std = np.sqrt(m2 / n).astype(np.float32)
        return norm

    def __call__(self, x, dtype=np.float32, out=None) -> np.ndarray:
        flat = np.asarray(x).reshape(len(x), -1)
        if out is None:
            out = np.empty(flat.shape, dtype)
        np.multiply(flat, out.dtype.type(1.0 / self.pixel_max), out=out)
        if self.mean is not None:
            out -= self.mean
            out /= self.std + self.eps
        return out

    def tensors(self) -> dict[str, np.ndarray]:
        """What a checkpoint keeps: the standardisation, and a full-ink value other than
        255 (a Parquet dataset's: 1 for features and float pixels)."""
        out = {} if self.pixel_max == 255.0 else {
            "input.pixel_max": np.array([self.pixel_max], np.float32)}
        if self.mean is None:
            return out
        return {**out, "input.mean": self.mean, "input.std": self.std}


def _pieces(chunks, rows: int):
    """The examples of ``chunks`` (each a Split) in pieces of ``rows`` (the last one
    shorter) wherever the chunks end: the same pieces, and so the same sums, for the
    same rows read in row groups or blocks of any sizes."""
    carry = None
    for c in chunks:
        x = c.x
        if carry is not None:
            take = rows - len(carry)
            carry, x = np.concatenate([carry, x[:take]]), x[take:]
            if len(carry) < rows:
                continue
            yield carry
        full = len(x) - len(x) % rows
        for s in range(0, full, rows):
            yield x[s:s + rows]
        carry = x[full:] if full < len(x) else None
    if carry is not None:
        yield carry


@dataclass(frozen=True)
class Split:
    """A split held whole in memory.

    Every kind of split says what it can do, and code asks that instead of its type:
    ``held_whole`` is True for a split every worker can be handed whole (its arrays
    ``x`` and ``y``); False for one read on demand, each worker reading its part
    (``data.parquet.ParquetSplit``), which also offers what reading it in parts takes:

    - ``ends``: where each block (a unit read at once: a row group) ends, cumulative;
    - ``row_bytes`` and ``dtype``: one example's bytes and its array type;
    - ``read(lo, hi, x=True)``: examples lo..hi-1 as a ``Split`` (``x=False``: labels
      only, x None);
    - ``normalizer(standardize)``: the input normaliser fitted on it (cached);
    - ``concat(other)``, and ``where``: what to name it by in messages.

    Both have ``len``, ``shape`` (N, *example shape), ``read(lo, hi)``, ``head(n)``,
    ``describe()``, ``fingerprint(h)`` and ``chunks()``.  A new kind of dataset read on
    demand is a class with these, and a loader in ``datasets.DATASETS``."""

    x: np.ndarray  # (N, H, W) uint8
    y: np.ndarray  # (N,) int64

    #: see the class docstring
    held_whole = True

    def __len__(self) -> int:
        return len(self.y)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.x.shape

    def read(self, lo: int, hi: int) -> "Split":
        """Examples lo..hi-1 (as ``ParquetSplit.read``, for a split held in memory)."""
        return Split(self.x[lo:hi], self.y[lo:hi])

    def head(self, n: int) -> "Split":
        return self.read(0, n)

    def describe(self) -> dict:
        return {"rows": len(self)}

    def fingerprint(self, h) -> None:
        """Add the examples themselves to the hash ``h``."""
        for a in (self.x, self.y):
            a = np.ascontiguousarray(a)
            h.update(repr((a.dtype.str, a.shape)).encode())
            h.update(a.view(np.uint8).reshape(-1) if a.size else b"")

    def chunks(self):
        yield self


@dataclass(frozen=True)
class Splits:
    name: str
    train: Split
    valid: Split
    test: Split
    n_classes: int
    source: str = ""
    pixel_max: float = 255            # the value that means "full ink" (16 for digits)

    def merged(self) -> "Splits":
        """The validation split appended to the training split (and left empty): the
        data for a final model once the settings have been chosen on validation."""
        if not self.train.held_whole:     # read on demand: join the row lists
            return replace(self, train=self.train.concat(self.valid),
                           valid=self.valid.head(0))
        empty = Split(self.valid.x[:0], self.valid.y[:0])
        train = Split(np.concatenate([self.train.x, self.valid.x]),
                      np.concatenate([self.train.y, self.valid.y]))
        return replace(self, train=train, valid=empty)
