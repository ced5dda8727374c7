"""``shm``: all-reduce through a file in /dev/shm, for the workers of one node.

The file is mapped by every worker and double-buffered by step parity; each worker
publishes its buffer then a per-worker step counter (single writer, so no atomics),
waits for the others' counters, and sums all slots in rank order.  Cost: one copy in
plus N reads, no serialisation.

Sharded update: ``reduce_parts_`` sums only the ranges a worker asks for (its shard of
the gradient, 1/N of it), the worker updates that shard of the parameters, and
``all_gather_`` publishes it through a shared row of the file and copies the other
shards back: each worker then reads and writes O(P) per step instead of O(N P), and the
optimizer state lives once per node, in further shared rows, each worker updating its
own range.
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import numpy as np

from .base import Backend, CollectiveAborted, Group

SHM_DIR = Path("/dev/shm")


class SharedMemoryBackend(Backend):
    """Driver side of ``shm``: creates (and finally removes) the mapped file."""

    name = "shm"
    one_node = True

    def __init__(self, world: int, size: int, dtype, shared_rows: int = 0):
        if not SHM_DIR.is_dir():
            raise RuntimeError("the shm all-reduce needs /dev/shm; use --allreduce ring")
        sweep_stale()
        super().__init__(world, size, dtype, shared_rows)
        self.path = str(SHM_DIR / f"distnn-{os.getpid()}-{uuid.uuid4().hex[:12]}")
        header = 8 * (world + 1)
        nbytes = header + (2 * world + shared_rows) * size * np.dtype(dtype).itemsize
        with open(self.path, "wb") as f:
            f.truncate(nbytes)
        self._flags = np.memmap(self.path, np.int64, "r+", 0, (world + 1,))

    def spec(self) -> dict:
        return {**super().spec(), "path": self.path}

    @classmethod
    def join(cls, rank, spec, peers=None) -> "SharedMemoryCollective":
        return SharedMemoryCollective(rank, spec["path"], spec["world"], spec["size"],
                                      spec["dtype"], shared_rows=spec["shared_rows"])

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


class SharedMemoryCollective(Group):
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
