"""A worker's shard of a Parquet split read as training visits it (``--shard-memory``).

With ``--shard-memory MB`` a worker holds its shard's labels and at most MB of its
examples, in whole row groups (least recently used dropped first), plus the working
memory of reading one (Arrow's buffers: a few row groups' worth).  So that every row
group is read about once an epoch, the epoch visits the training split *window by
window*: the row groups are shuffled, cut into windows of MB/2 worth of examples, and
the examples of each window shuffled among themselves.  The order depends only on
(seed, epoch, the dataset's row groups, MB) — not on the number of workers, so N
workers still compute what one does; it is a different order from the one a run
without ``--shard-memory`` visits (a full shuffle), as in every streaming loader.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from ..data.datasets import Split
from .batches import Batches


def window_order(ends: np.ndarray, seed: int, epoch: int, window_rows: int) -> np.ndarray:
    """A permutation of range(ends[-1]) that visits blocks (examples ends[b-1]..ends[b]-1)
    a window of at most ``window_rows`` examples at a time (one block at least)."""
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    rng = np.random.default_rng([seed, epoch, 0x5EED, 1])
    blocks = rng.permutation(len(ends))
    out, window, rows, w = [], [], 0, 0
    for b in blocks:
        size = int(ends[b] - starts[b])
        if window and rows + size > window_rows:
            out.append(_shuffled(window, starts, ends, seed, epoch, w))
            window, rows, w = [], 0, w + 1
        window.append(b)
        rows += size
    if window:
        out.append(_shuffled(window, starts, ends, seed, epoch, w))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def _shuffled(window, starts, ends, seed, epoch, w) -> np.ndarray:
    idx = np.concatenate([np.arange(starts[b], ends[b]) for b in window])
    return np.random.default_rng([seed, epoch, 0x5EED, 2, w]).permutation(idx)


@dataclass
class StreamedBatches(Batches):
    """``Batches`` over examples ``offset``..``offset + n - 1`` of a ``ParquetSplit``,
    read a row group at a time into a cache of at most ``budget`` bytes."""

    source: object = None        # the ParquetSplit
    budget: int = 0              # bytes of examples held at most

    def __post_init__(self):
        self.cache, self.x = False, None
        super().__post_init__()
        self.whole = False
        self.ends = self.source.ends
        self.starts = np.concatenate([[0], self.ends[:-1]]).astype(np.int64)
        self.window_rows = max(1, self.budget // 2 // max(self.source.row_bytes, 1))
        self._blocks: OrderedDict[int, np.ndarray] = OrderedDict()
        self._held = 0
        self.reads = 0           # row groups read (a test checks it stays near one pass)

    @classmethod
    def of(cls, split, lo: int, hi: int, normalizer, augmenter, dtype, budget: int):
        labels = split.read(lo, hi, x=False).y
        return cls(Split(None, labels), normalizer, augmenter, dtype, cache=False,
                   offset=lo, total=len(split), source=split, budget=budget)

    def order(self, seed: int, epoch: int) -> np.ndarray:
        return window_order(self.ends, seed, epoch, self.window_rows)

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
        while self._held > self.budget and len(self._blocks) > 1:
            _, old = self._blocks.popitem(last=False)
            self._held -= old.nbytes
        return x

    def _raw(self, rows: np.ndarray) -> np.ndarray:
        glob = rows + self.offset
        blocks = np.searchsorted(self.ends, glob, side="right")
        out = np.empty((len(rows), *self.source.layout.shape), self.source.layout.dtype)
        for b in np.unique(blocks):
            sel = blocks == b
            x = self._block(int(b))
            out[sel] = x[glob[sel] - max(int(self.starts[b]), self.offset)]
        return out
