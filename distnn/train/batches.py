"""Turning example indices into network-ready batches: the epoch order, the batch
builder (normalisation, augmentation) and a prefetcher that overlaps augmentation with
the gradient computation."""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import numpy as np

from ..data.augment import Augmenter
from ..data.splits import Split
from ..data.splits import Normalizer


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Global mini-batches of an epoch of ``n`` examples (the last may be short)."""
    return -(-n // batch_size)


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The global visiting order of epoch ``epoch``: a permutation of range(n) that
    depends only on (seed, epoch)."""
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)


def shard_bounds(n: int, shards: int) -> np.ndarray:
    """Where each of ``shards`` contiguous data shards of ``n`` examples starts (and,
    last, n): shard s holds len(range(s, n, shards)) examples, so ``interleave`` fills
    every position."""
    sizes = [len(range(s, n, shards)) for s in range(shards)]
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def interleave(orders: list[np.ndarray], n: int) -> np.ndarray:
    """One epoch order from each shard's own (global indices): position t takes the
    next example of shard t mod S, so every global batch of B examples draws B/S (one
    more or less) from each shard."""
    out = np.empty(n, np.int64)
    for s, o in enumerate(orders):
        out[s::len(orders)] = o
    return out


def sharded_order(seed: int, epoch: int, n: int, shards: int) -> np.ndarray:
    """``epoch_order`` for data kept in ``shards`` contiguous shards (one or more per
    worker, each worker reading only its own): each shard shuffled on its own, the
    shards interleaved.  Depends on (seed, epoch, n, shards), not on the number of
    workers; one shard is ``epoch_order`` itself."""
    if shards <= 1:
        return epoch_order(seed, epoch, n)
    b = shard_bounds(n, shards)
    return interleave([b[s] + np.random.default_rng([seed, epoch, 0x5EED, 3, s]).permutation(
        int(b[s + 1] - b[s])) for s in range(shards)], n)


def owned_range(n: int, shards: int, rank: int, world: int) -> tuple[int, int]:
    """The examples (lo, hi) of the shards worker ``rank`` of ``world`` reads: shards
    rank*S/world .. (rank+1)*S/world - 1 (S >= world), or its 1/world of them."""
    if shards < world:
        return rank * n // world, (rank + 1) * n // world
    b = shard_bounds(n, shards)
    return int(b[rank * shards // world]), int(b[(rank + 1) * shards // world])


@dataclass
class Batches:
    """Turns example indices into network-ready float batches (N, D).

    Without augmentation the whole split may be normalised once up front (``cache``);
    with it, or without the cache, each batch is built from the uint8 images on the fly
    (no float copy of the dataset: what workers sharing one copy of it use).

    ``split`` is the whole split, or a worker's shard of it: examples ``offset`` ..
    ``offset + len(split) - 1`` of ``total`` (a dataset read a shard per worker, kept
    in ``shards`` shards: see ``sharded_order``).  Indices given to ``get`` are always
    the split's global example indices.
    """

    split: Split
    normalizer: Normalizer
    augmenter: Augmenter | None
    dtype: np.dtype
    cache: bool = True
    offset: int = 0
    total: int | None = None
    shards: int = 1

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

    def owned(self, batch: np.ndarray, rank: int, world: int, start: int = 0) -> np.ndarray:
        """This replica's examples of a global batch (global indices) that begins at
        position ``start`` of the epoch: a contiguous slice of it from a whole split, or
        the examples its shard holds (with one data shard per worker, every
        ``shards``-th one: ``interleave`` put them there)."""
        if self.whole:
            b = len(batch)
            return batch if world == 1 else batch[rank * b // world:(rank + 1) * b // world]
        if self.shards == world:
            return batch[(rank - start) % world::world]
        lo = self.offset
        return batch[(batch >= lo) & (batch < lo + len(self.y))]

    def _raw(self, rows: np.ndarray) -> np.ndarray:
        """The stored examples at local ``rows`` (uint8 images or float features)."""
        return self.split.x.take(rows, axis=0)

    def _span(self, lo: int, hi: int) -> np.ndarray:
        """The stored examples lo..hi-1 (local): a view where they are in memory."""
        return self.split.x[lo:hi]

    def order(self, seed: int, epoch: int) -> np.ndarray:
        """The global visiting order of ``epoch`` (``sharded_order``)."""
        return sharded_order(seed, epoch, self.total, self.shards)

    def rows(self, lo: int, hi: int) -> np.ndarray:
        """Examples lo..hi-1 unaugmented (for evaluation)."""
        if self.x is not None:
            return self.x[lo:hi]
        return self.normalizer(self._span(lo, hi), self.dtype)


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
