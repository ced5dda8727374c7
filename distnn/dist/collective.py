"""All-reduce backends behind one small interface.

``allreduce_(step, buf)`` replaces ``buf`` (a flat float array) by the elementwise sum of
every worker's ``buf`` for that step, identically on every worker (the same additions in
the same order), so replicas that apply the same update stay bit-identical.  ``step``
numbers the group's calls 0, 1, 2, ... (consecutive: ``shm`` alternates its two buffers
by parity); every worker makes the same calls with the same sizes, which may vary from
call to call up to the group's size (synchronised batch norm reduces small vectors
between the gradient all-reduces).

Backends
--------
``shm``   same node only: a file in /dev/shm mapped by every worker, double-buffered by
          step parity; each worker publishes its buffer then a per-worker step counter
          (single writer, so no atomics), waits for the others' counters, and sums all
          slots in rank order.  Cost: one copy in plus N reads, no serialisation.
``ring``  any nodes, Ray only: a ring all-reduce (reduce-scatter, then all-gather; each
          worker sends 2(N-1)/N of the buffer) with chunks sent worker to worker as
          actor calls, so large chunks travel through Ray's object store.
``local`` one worker: nothing to do.

A worker blocked in ``allreduce_`` gives up with ``CollectiveAborted`` when the driver
aborts the group (a peer died) or after ``timeout`` seconds.
"""
from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import numpy as np

SHM_DIR = Path("/dev/shm")


class CollectiveAborted(RuntimeError):
    """The group was aborted (a peer died or stalled); the epoch must be replayed."""


class Collective:
    name = "local"

    def allreduce_(self, step: int, buf: np.ndarray) -> None:
        """Sum ``buf`` over the group, in place."""

    def abort(self) -> None:
        pass

    def close(self) -> None:
        pass


class SharedMemoryGroup:
    """Driver side of the ``shm`` backend: creates (and finally removes) the mapped file."""

    def __init__(self, world: int, size: int, dtype):
        if not SHM_DIR.is_dir():
            raise RuntimeError("the shm all-reduce needs /dev/shm; use --allreduce ring")
        sweep_stale()
        self.world, self.size, self.dtype = world, size, np.dtype(dtype).str
        self.path = str(SHM_DIR / f"distnn-{os.getpid()}-{uuid.uuid4().hex[:12]}")
        header = 8 * (world + 1)
        nbytes = header + 2 * world * size * np.dtype(dtype).itemsize
        with open(self.path, "wb") as f:
            f.truncate(nbytes)
        self._flags = np.memmap(self.path, np.int64, "r+", 0, (world + 1,))

    def spec(self) -> dict:
        return {"backend": "shm", "path": self.path, "world": self.world, "size": self.size,
                "dtype": self.dtype}

    def reset(self) -> None:
        """Zero the step counters and the abort flag (before an epoch is replayed)."""
        self._flags[:] = 0
        self._flags.flush()

    def abort(self) -> None:
        self._flags[self.world] = 1
        self._flags.flush()

    def close(self) -> None:
        del self._flags
        Path(self.path).unlink(missing_ok=True)


def sweep_stale() -> None:
    """Remove group files left by drivers that were killed (their PID, in the name, is
    gone), so SIGKILLed runs do not slowly fill /dev/shm."""
    for f in SHM_DIR.glob("distnn-*-*"):
        try:
            pid = int(f.name.split("-")[1])
            os.kill(pid, 0)
        except ValueError:
            continue
        except ProcessLookupError:
            f.unlink(missing_ok=True)
        except PermissionError:  # someone else's live process
            continue


class SharedMemoryCollective(Collective):
    name = "shm"

    def __init__(self, rank: int, path: str, world: int, size: int, dtype: str,
                 timeout: float = 300.0):
        self.rank, self.world, self.timeout = rank, world, timeout
        header = 8 * (world + 1)
        self.flags = np.memmap(path, np.int64, "r+", 0, (world + 1,))
        self.slots = np.memmap(path, np.dtype(dtype), "r+", header, (2, world, size))
        self.counters = self.flags[:world]

    def allreduce_(self, step, buf):
        slots = self.slots[step % 2, :, :buf.size]   # a smaller buf uses a slot's head
        np.copyto(slots[self.rank], buf)
        self.counters[self.rank] = step + 1        # publish after the data is written
        deadline = None
        spins = 0
        while self.counters.min() < step + 1:
            if self.flags[self.world]:
                raise CollectiveAborted("the driver aborted the all-reduce (a worker died)")
            spins += 1
            if spins > 200:                         # back off once the wait is not short
                time.sleep(0.0002)
                if deadline is None:
                    deadline = time.monotonic() + self.timeout
                elif time.monotonic() > deadline:
                    raise CollectiveAborted(f"no all-reduce partner for {self.timeout:g}s")
        np.add(slots[0], slots[1], out=buf)      # world >= 2; rank order on every worker
        for j in range(2, self.world):
            buf += slots[j]

    def close(self):
        del self.slots, self.flags, self.counters


class RingCollective(Collective):
    """Ring all-reduce over Ray actor calls.  ``peers[r]`` is worker r's actor handle;
    the owning actor must route its ``deliver`` method to ``self.deliver``."""

    name = "ring"

    def __init__(self, rank: int, world: int, peers, timeout: float = 300.0):
        self.rank, self.world, self.timeout = rank, world, timeout
        self.next = peers[(rank + 1) % world]
        self.inbox: dict[tuple, np.ndarray] = {}
        self.cond = threading.Condition()
        self.aborted = False

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
