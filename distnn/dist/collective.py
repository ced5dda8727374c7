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
          Sharded update: ``reduce_parts_`` sums only the ranges a worker asks for (its
          shard of the gradient, 1/N of it), the worker updates that shard of the
          parameters, and ``all_gather_`` publishes it through a shared row of the file
          and copies the other shards back: each worker then reads and writes O(P) per
          step instead of O(N P), and the optimizer state lives once per node, in
          further shared rows, each worker updating its own range.
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
    shared: np.ndarray | None = None   # rows of shared memory (``shm`` only)

    def allreduce_(self, step: int, buf: np.ndarray) -> None:
        """Sum ``buf`` over the group, in place."""

    def shard(self, size: int) -> tuple[int, int]:
        """The range of a size-``size`` vector this worker reduces and updates: all of
        it unless the backend shards the update."""
        return 0, size

    def reduce_parts_(self, step: int, buf: np.ndarray, parts) -> None:
        """Sum ``buf[lo:hi]`` over the group for each (lo, hi) in ``parts`` (at least;
        other entries may be left as they are or summed too)."""
        self.allreduce_(step, buf)

    def all_gather_(self, step: int, vec: np.ndarray, lo: int, hi: int) -> None:
        """Give every worker every other worker's ``vec[shard]`` (nothing to do when the
        shard is everything)."""

    def abort(self) -> None:
        pass

    def close(self) -> None:
        pass


class SharedMemoryGroup:
    """Driver side of the ``shm`` backend: creates (and finally removes) the mapped file."""

    def __init__(self, world: int, size: int, dtype, shared_rows: int = 0):
        if not SHM_DIR.is_dir():
            raise RuntimeError("the shm all-reduce needs /dev/shm; use --allreduce ring")
        sweep_stale()
        self.world, self.size, self.dtype = world, size, np.dtype(dtype).str
        self.shared_rows = shared_rows
        self.path = str(SHM_DIR / f"distnn-{os.getpid()}-{uuid.uuid4().hex[:12]}")
        header = 8 * (world + 1)
        nbytes = header + (2 * world + shared_rows) * size * np.dtype(dtype).itemsize
        with open(self.path, "wb") as f:
            f.truncate(nbytes)
        self._flags = np.memmap(self.path, np.int64, "r+", 0, (world + 1,))

    def spec(self) -> dict:
        return {"backend": "shm", "path": self.path, "world": self.world, "size": self.size,
                "dtype": self.dtype, "shared_rows": self.shared_rows}

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
                 timeout: float = 300.0, shared_rows: int = 0):
        self.rank, self.world, self.timeout = rank, world, timeout
        header = 8 * (world + 1)
        dtype = np.dtype(dtype)
        self.flags = np.memmap(path, np.int64, "r+", 0, (world + 1,))
        self.slots = np.memmap(path, dtype, "r+", header, (2, world, size))
        if shared_rows:
            self.shared = np.memmap(path, dtype, "r+", header + 2 * world * size * dtype.itemsize,
                                    (shared_rows, size))
        self.counters = self.flags[:world]

    def shard(self, size):
        # boundaries on 16-element (64-byte) multiples: no cache line written by two workers
        b = [min(size, -(-size * r // self.world) // 16 * 16) for r in range(self.world + 1)]
        b[-1] = size
        return b[self.rank], b[self.rank + 1]

    def allreduce_(self, step, buf):
        self.reduce_parts_(step, buf, [(0, buf.size)])

    def reduce_parts_(self, step, buf, parts):
        if self.world == 1:
            return
        slots = self.slots[step % 2, :, :buf.size]   # a smaller buf uses a slot's head
        np.copyto(slots[self.rank], buf)
        self._publish_and_wait(step)
        for lo, hi in parts:                      # rank order on every worker
            out = buf[lo:hi]
            np.add(slots[0, lo:hi], slots[1, lo:hi], out=out)   # world >= 2
            for j in range(2, self.world):
                out += slots[j, lo:hi]

    def all_gather_(self, step, vec, lo, hi):
        """Through shared row 0: write this worker's shard, wait, copy the rest.  The row
        is single-buffered: a worker writes it again only after the next step's
        ``reduce_parts_``, which no worker passes before every worker has copied."""
        row = self.shared[0, :vec.size]
        np.copyto(row[lo:hi], vec[lo:hi])
        self._publish_and_wait(step)
        np.copyto(vec[:lo], row[:lo])
        np.copyto(vec[hi:], row[hi:])

    def _publish_and_wait(self, step):
        """Publish this worker's counter for ``step`` (after its data) and wait for all."""
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

    def close(self):
        del self.slots, self.flags, self.counters
        self.shared = None


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
