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
from .wire import RAW


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

    def allreduce_(self, step, buf, wire=RAW, tail=0):
        """Reduce-scatter then all-gather of ``buf[:-tail]`` in ``wire`` (each chunk
        encoded as it is sent; the owner keeps its chunk as the others receive it); the
        tail is then summed exactly, once around the ring and back."""
        n, r = self.world, self.rank
        head = buf[:buf.size - tail]
        bounds = np.linspace(0, head.size, n + 1).astype(np.int64)
        chunk = [head[bounds[i]:bounds[i + 1]] for i in range(n)]
        enc = (lambda a: a) if wire.exact else (lambda a: self._encode(wire, a))
        for s in range(n - 1):                      # reduce-scatter
            send = (r - s) % n
            self.next.deliver.remote((step, 0, s), enc(chunk[send]))
            wire.add_(chunk[(r - s - 1) % n], self._receive((step, 0, s)))
        own = chunk[(r + 1) % n]
        wire.round_(own)
        for s in range(n - 1):                      # all-gather
            send = (r + 1 - s) % n
            self.next.deliver.remote((step, 1, s), enc(chunk[send]))
            wire.decode(self._receive((step, 1, s)), chunk[(r - s) % n])
        if tail:
            self._tail_(step, buf[buf.size - tail:])

    @staticmethod
    def _encode(wire, a):
        w = np.empty(a.size, wire.dtype(a.dtype))
        wire.encode(a, w)
        return w

    def _tail_(self, step, tail):
        """Every member's ``tail`` summed in rank order: rank 0's travels round the ring
        gathering the others', then the total goes round once more."""
        n, r = self.world, self.rank
        if r == 0:
            self.next.deliver.remote((step, 2, 0), tail.copy())
            total = self._receive((step, 2, 0))
            self.next.deliver.remote((step, 3, 0), total)
        else:
            total = self._receive((step, 2, 0)) + tail
            self.next.deliver.remote((step, 2, 0), total)
            total = self._receive((step, 3, 0))
            if r < n - 1:
                self.next.deliver.remote((step, 3, 0), total)
        tail[...] = total
