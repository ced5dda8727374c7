"""Turning example indices into network-ready batches: the epoch order, the batch
builder (normalisation, augmentation) and a prefetcher that overlaps augmentation with
the gradient computation."""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import numpy as np

from ..data.augment import Augmenter
from ..data.datasets import Split
from ..data.splits import Normalizer


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The global visiting order of epoch ``epoch``: a permutation of range(n) that
    depends only on (seed, epoch)."""
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)


@dataclass
class Batches:
    """Turns example indices into network-ready float batches (N, D).

    Without augmentation the whole split may be normalised once up front (``cache``);
    with it, or without the cache, each batch is built from the uint8 images on the fly
    (no float copy of the dataset: what workers sharing one copy of it use).

    ``split`` is the whole split, or a worker's shard of it: examples ``offset`` ..
    ``offset + len(split) - 1`` of ``total`` (a dataset read a shard per worker).
    Indices given to ``get`` are always the split's global example indices.
    """

    split: Split
    normalizer: Normalizer
    augmenter: Augmenter | None
    dtype: np.dtype
    cache: bool = True
    offset: int = 0
    total: int | None = None

    def __post_init__(self):
        if self.total is None:
            self.total = len(self.split)
        self.whole = self.offset == 0 and self.total == len(self.split)
        self.active = self.augmenter is not None and self.augmenter.spec.active
        self.x = self.normalizer(self.split.x, self.dtype) if self.cache and not self.active \
            else None
        self.y = np.ascontiguousarray(self.split.y, dtype=np.intp)

    def get(self, idx: np.ndarray, epoch: int):
        """(x, y) of examples ``idx`` as trained on in ``epoch`` (augmented if asked)."""
        rows = idx - self.offset if self.offset else idx
        if self.x is not None:
            return self.x.take(rows, axis=0), self.y.take(rows)
        if not self.active:
            return self.normalizer(self._raw(rows), self.dtype), self.y.take(rows)
        imgs = self.augmenter(self._raw(rows), idx, epoch)
        x = imgs.reshape(len(idx), -1)
        if self.normalizer.mean is not None:
            x -= self.normalizer.mean
            x /= self.normalizer.std + self.normalizer.eps
        return x.astype(self.dtype, copy=False), self.y.take(rows)

    def part(self, rank: int, world: int) -> tuple[int, int]:
        """The local rows replica ``rank`` of ``world`` evaluates: its slice of a whole
        split, or all of its shard."""
        n = len(self.y)
        return (rank * n // world, (rank + 1) * n // world) if self.whole else (0, n)

    def owned(self, batch: np.ndarray, rank: int, world: int) -> np.ndarray:
        """This replica's examples of a global batch (global indices): a contiguous
        slice of it from a whole split, or the examples its shard holds."""
        if self.whole:
            b = len(batch)
            return batch if world == 1 else batch[rank * b // world:(rank + 1) * b // world]
        lo = self.offset
        return batch[(batch >= lo) & (batch < lo + len(self.y))]

    def _raw(self, rows: np.ndarray) -> np.ndarray:
        """The stored examples at local ``rows`` (uint8 images or float features)."""
        return self.split.x.take(rows, axis=0)

    def order(self, seed: int, epoch: int) -> np.ndarray:
        """The global visiting order of ``epoch`` (``epoch_order``)."""
        return epoch_order(seed, epoch, self.total)

    def rows(self, lo: int, hi: int) -> np.ndarray:
        """Examples lo..hi-1 unaugmented (for evaluation)."""
        if self.x is not None:
            return self.x[lo:hi]
        return self.normalizer(self._raw(np.arange(lo, hi)), self.dtype)


def prefetch(batches: Batches, items, epoch: int, threaded: bool = False, depth: int = 3):
    """Yield (item, x, y) for each (b, idx) in ``items`` (x, y None for an empty idx).
    ``threaded``: build batches that need work (augmentation, no cache) in a background
    thread (NumPy releases the GIL), overlapping it with the gradient computation."""
    def build(item):
        idx = item[1]
        return (item, *batches.get(idx, epoch)) if len(idx) else (item, None, None)

    if not threaded or (not batches.active and batches.x is not None):
        for item in items:
            yield build(item)
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work():
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put(build(item))
            q.put(None)
        except BaseException as e:  # handed to the consumer, re-raised there
            q.put(e)

    t = threading.Thread(target=work, name="distnn-augment", daemon=True)
    t.start()
    try:
        while (got := q.get()) is not None:
            if isinstance(got, BaseException):
                raise got
            yield got
    finally:
        stop.set()
        while t.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(0.01)
