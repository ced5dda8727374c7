"""A worker's shard of a Parquet split read as training visits it (``--shard-memory``).

With ``--shard-memory MB`` a worker holds its shard's labels and at most MB of its
examples, in whole row groups (least recently used dropped first), plus the working
memory of reading one (Arrow's buffers: a few row groups' worth).  So that every row
group is read about once an epoch, the epoch visits the training split *window by
window*: each data shard's row groups are shuffled, cut into windows of MB/2 worth of
examples, the examples of each window shuffled among themselves, and the shards
interleaved as ``batches.sharded_order`` does.  The order depends only on (seed, epoch,
the dataset's row groups, MB, --data-shards) — not on the number of workers, so N
workers still compute what one does; it is a different order from the one a run
without ``--shard-memory`` visits (a full shuffle), as in every streaming loader.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from ..data.splits import Split
from ..data.parquet_files import release_freed
from .batches import Batches, interleave, shard_bounds


def window_order(starts: np.ndarray, ends: np.ndarray, seed: int, epoch: int,
                 window_rows: int, stream: int = 0) -> np.ndarray:
    """A permutation of the examples of blocks starts[b]..ends[b]-1 that visits them a
    window of at most ``window_rows`` examples (one block at least) at a time: the
    blocks shuffled, cut into windows, each window's examples shuffled."""
    rng = np.random.default_rng([seed, epoch, 0x5EED, 1, stream])
    out, window, rows, w = [], [], 0, 0
    for b in rng.permutation(len(ends)):
        size = int(ends[b] - starts[b])
        if window and rows + size > window_rows:
            out.append(_shuffled(window, starts, ends, seed, epoch, stream, w))
            window, rows, w = [], 0, w + 1
        window.append(b)
        rows += size
    if window:
        out.append(_shuffled(window, starts, ends, seed, epoch, stream, w))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def _shuffled(window, starts, ends, seed, epoch, stream, w) -> np.ndarray:
    idx = np.concatenate([np.arange(starts[b], ends[b]) for b in window])
    return np.random.default_rng([seed, epoch, 0x5EED, 2, stream, w]).permutation(idx)


def streamed_order(ends: np.ndarray, seed: int, epoch: int, window_rows: int,
                   shards: int) -> np.ndarray:
    """The epoch order of a streamed split of row groups ending at ``ends``: each data
    shard (``batches.sharded_order``) visited window by window, the shards
    interleaved."""
    n = int(ends[-1]) if len(ends) else 0
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    bounds = shard_bounds(n, max(shards, 1))
    orders = []
    for s in range(len(bounds) - 1):
        lo = np.maximum(starts, bounds[s])
        hi = np.minimum(ends, bounds[s + 1])
        keep = hi > lo
        orders.append(window_order(lo[keep], hi[keep], seed, epoch, window_rows, s))
    return interleave(orders, n)


@dataclass
class StreamedBatches(Batches):
    """``Batches`` over examples ``offset``..``offset + n - 1`` of a ``ParquetSplit``,
    read a row group at a time into a cache of at most ``budget`` bytes."""

    source: object = None        # the split read on demand (``data.splits.Split``)
    budget: int = 0              # bytes of examples held at most

    def __post_init__(self):
        super().__post_init__()
        self.whole = False
        self.ends = self.source.ends
        self.starts = np.concatenate([[0], self.ends[:-1]]).astype(np.int64)
        self.window_rows = max(1, self.budget // 2 // max(self.source.row_bytes, 1))
        self._blocks: OrderedDict[int, np.ndarray] = OrderedDict()
        self._held = 0
        self._last = None        # (first global index, end, examples) of the last block
        self.reads = 0           # row groups read (a test checks it stays near one pass)

    @classmethod
    def of(cls, split, lo: int, hi: int, normalizer, augmenter, dtype, budget: int,
           shards: int = 1):
        labels = split.read(lo, hi, x=False).y
        return cls(Split(None, labels), normalizer, augmenter, dtype, cache=False,
                   offset=lo, total=len(split), shards=shards, source=split, budget=budget)

    def order(self, seed: int, epoch: int) -> np.ndarray:
        return streamed_order(self.ends, seed, epoch, self.window_rows, self.shards)

    def _block(self, b: int) -> np.ndarray:
        """Block ``b``'s examples within this shard (global offset max(start, offset))."""
        if b in self._blocks:
            self._blocks.move_to_end(b)
            return self._blocks[b]
        lo = max(int(self.starts[b]), self.offset)
        hi = min(int(self.ends[b]), self.offset + len(self.y))
        x = self.source.read(lo, hi).x
        self.reads += 1
        self._blocks[b] = x
        self._held += x.nbytes
        evicted = False
        while self._held > self.budget and len(self._blocks) > 1:
            _, old = self._blocks.popitem(last=False)
            self._held -= old.nbytes
            evicted = True
        if evicted:
            del old
            self._last = None
            release_freed()
        return x

    def _span(self, lo: int, hi: int) -> np.ndarray:
        return self._raw(np.arange(lo, hi))

    def _raw(self, rows: np.ndarray) -> np.ndarray:
        glob = rows + self.offset
        last = self._last
        if last is not None and len(glob) and glob.min() >= last[0] and glob.max() < last[1]:
            return last[2].take(glob - last[0], axis=0)   # the usual case: the same group
        blocks = np.searchsorted(self.ends, glob, side="right")
        first = int(blocks[0]) if len(blocks) else 0
        if len(blocks) and (blocks == first).all():     # one row group
            x = self._block(first)
            lo = max(int(self.starts[first]), self.offset)
            self._last = (lo, lo + len(x), x)
            return x.take(glob - lo, axis=0)
        out = np.empty((len(rows), *self.source.shape[1:]), self.source.dtype)
        for b in np.unique(blocks):
            sel = blocks == b
            x = self._block(int(b))
            out[sel] = x[glob[sel] - max(int(self.starts[b]), self.offset)]
        return out
