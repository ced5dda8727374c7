"""Where a replica's epoch goes (``Clock``) and the digest replicas compare
(``digest``): shared by the synchronous engine and the local steps (``train.local``)."""
from __future__ import annotations

import hashlib
import time

import numpy as np


def digest(a: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(a).view(np.uint8), digest_size=16).hexdigest()


class Clock:
    """Where one replica's epoch goes: building batches (``data``), forward and backward
    (``compute``), collectives inside them (``sync``: synchronised batch norm), the
    gradient reduction and parameter gather (``comm``: the time the replica waited for
    them, its exposed communication), the reduction that ran while backprop computed
    (``overlapped``: --bucket-mb's communication thread, hidden), and the optimizer step
    (``update``); the group's own counters say how much of ``comm`` was waiting for
    the others, local compression work, and the bytes sent.  A step's communication
    is ``comm`` + ``overlapped``."""

    def __init__(self, group=None):
        self.data = self.compute = self.sync = self.comm = self.update = 0.0
        self.overlapped = 0.0
        self.group = group
        self._start = dict(group.stats) if group is not None else {}

    def timed(self, batches):
        """``batches``, with the time spent waiting for each counted as ``data``."""
        it = iter(batches)
        while True:
            t0 = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            self.data += time.perf_counter() - t0
            yield item

    def record(self, rank: int, steps: int, seconds: float) -> dict:
        """This epoch's figures (seconds, bytes) for the metrics and TensorBoard."""
        now = dict(self.group.stats) if self.group is not None else {}
        delta = {k: now[k] - self._start.get(k, 0) for k in now}
        compress = delta.get("compress_seconds", 0.0)
        comm = self.comm + self.sync - compress
        return {"rank": rank, "steps": steps, "seconds": seconds,
                "data_seconds": self.data, "compute_seconds": self.compute - self.sync,
                "compress_seconds": compress, "comm_seconds": comm,
                "overlapped_seconds": self.overlapped,
                "wait_seconds": min(delta.get("wait_seconds", 0.0), comm),
                "update_seconds": self.update,
                "bytes_sent": int(delta.get("bytes_sent", 0))}
