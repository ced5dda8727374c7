"""``ring``: a ring all-reduce over Ray actor calls, for workers on any nodes.

Reduce-scatter, then all-gather; each worker sends 2(N-1)/N of the buffer, chunk by
chunk, to the next worker as an actor call (``deliver``), so large chunks travel through
Ray's object store.  Every replica applies the whole update.
"""
from __future__ import annotations

import threading
import time

import numpy as np

from .base import Backend, CollectiveAborted, Group


class RingBackend(Backend):
    """Driver side of ``ring``: nothing to set up; the members need each other's handles."""

    name = "ring"
    one_node = False
    needs_peers = True

    @classmethod
    def join(cls, rank, spec, *, peers=None, addresses=None, handle=None):
        return RingCollective(rank, spec["world"], peers, timeout=spec.get("timeout", 300.0))


class RingCollective(Group):
    """Ring all-reduce over Ray actor calls.  ``peers[r]`` is worker r's actor handle;
    the owning actor must route its ``deliver`` method to ``self.deliver``."""

    name = "ring"

    def __init__(self, rank: int, world: int, peers, timeout: float = 300.0):
        self.rank, self.world, self.timeout = rank, world, timeout
        self.next = peers[(rank + 1) % world]
        self.inbox: dict[tuple, np.ndarray] = {}
        self.cond = threading.Condition()
        self.aborted = False

    def set_timeout(self, seconds):
        self.timeout = seconds

    def deliver(self, key: tuple, data: np.ndarray) -> None:
        with self.cond:
            self.inbox[key] = data
            self.cond.notify_all()

    def abort(self) -> None:
        with self.cond:
            self.aborted = True
            self.cond.notify_all()

    def _receive(self, key):
        deadline = time.monotonic() + self.timeout
        with self.cond:
            while key not in self.inbox:
                if self.aborted:
                    raise CollectiveAborted("the driver aborted the all-reduce (a worker died)")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CollectiveAborted(f"no all-reduce partner for {self.timeout:g}s")
                self.cond.wait(min(left, 1.0))
            return self.inbox.pop(key)

    def allreduce_(self, step, buf):
        n, r = self.world, self.rank
        bounds = np.linspace(0, buf.size, n + 1).astype(np.int64)
        chunk = [buf[bounds[i]:bounds[i + 1]] for i in range(n)]
        for s in range(n - 1):                      # reduce-scatter
            send = (r - s) % n
            self.next.deliver.remote((step, 0, s), chunk[send])
            chunk[(r - s - 1) % n] += self._receive((step, 0, s))
        for s in range(n - 1):                      # all-gather
            send = (r + 1 - s) % n
            self.next.deliver.remote((step, 1, s), chunk[send])
            chunk[(r - s) % n][...] = self._receive((step, 1, s))
