"""``shm``: all-reduce through a file in /dev/shm, for the workers of one node.

The file is mapped by every worker and double-buffered (reductions alternate); each worker
publishes its buffer then a per-worker step counter (single writer, so no atomics),
waits for the others' counters, and sums all slots in rank order.  Cost: one copy in
plus N reads, no serialisation.

Sharded update: ``reduce_parts_`` sums only the ranges a worker asks for (its shard of
the gradient, 1/N of it), the worker updates that shard of the parameters, and
``all_gather_`` publishes it through a shared row of the file and copies the other
shards back: each worker then reads and writes O(P) per step instead of O(N P), and
keeps the optimizer state of its shard only.

In place: ``gradient_buffer`` hands a member its own slot of the file to compute its
gradient in, so that ``reduce_parts_`` of that buffer copies nothing in and sums its
shard where it lies (the other members read that slot only in their own shards); and
``parameter_buffer`` hands every member the same row for the parameters, which each then
updates a shard of where they lie: ``all_gather_`` of it is a barrier, and copies
nothing.
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import numpy as np

from .base import Backend, CollectiveAborted, Group, aligned_bounds
from .wire import RAW

SHM_DIR = Path("/dev/shm")


class SharedMemoryFile:
    """A node's group file: ``world`` slots of ``size`` numbers for each step parity, a
    row for the all-gather, and a header of step counters and the abort flag.  It is
    created on the node whose workers map it (by one of them), and removed on ``close``
    or, after a crash, by ``sweep_stale`` (its creator's PID is in its name)."""

    def __init__(self, world: int, size: int, dtype):
        if not SHM_DIR.is_dir():
            raise RuntimeError("the shm all-reduce needs /dev/shm on every node; use "
                               "--allreduce tcp")
        sweep_stale()
        self.path = str(SHM_DIR / f"distnn-{os.getpid()}-{uuid.uuid4().hex[:12]}")
        nbytes = 8 * (world + 1) + (2 * world + 1) * size * np.dtype(dtype).itemsize
        with open(self.path, "wb") as f:
            f.truncate(nbytes)

    def close(self) -> None:
        Path(self.path).unlink(missing_ok=True)


class SharedMemoryBackend(Backend):
    """Driver side of ``shm``: one node; the first member creates the file there."""

    name = "shm"
    one_node = True

    @classmethod
    def listen(cls, rank, spec, host):
        if rank != spec["nodes"][0][0]:
            return None, None
        f = SharedMemoryFile(len(spec["nodes"][0]), spec["size"], spec["dtype"])
        return f, f.path

    @classmethod
    def join(cls, rank, spec, *, peers=None, addresses=None, handle=None):
        ranks = spec["nodes"][0]
        return SharedMemoryCollective(ranks.index(rank), addresses[ranks[0]], len(ranks),
                                      spec["size"], spec["dtype"], owner=handle,
                                      timeout=spec.get("timeout", 300.0))


def sweep_stale() -> None:
    """Remove group files whose creator was killed (its PID, in the name, is gone), so
    SIGKILLed runs do not slowly fill /dev/shm."""
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

    """Member ``rank`` (its place among the node's ``world`` members) of the group in
    the file at ``path``; ``owner``: the ``SharedMemoryFile``, for its creator, who
    removes it on ``close``."""

    def __init__(self, rank: int, path: str, world: int, size: int, dtype: str,
                 timeout: float = 300.0, owner: SharedMemoryFile | None = None):
        self.rank, self.world, self.timeout, self.owner = rank, world, timeout, owner
        self._unlinked = False
        header = 8 * (world + 1)
        dtype = np.dtype(dtype)
        self.flags = np.memmap(path, np.int64, "r+", 0, (world + 1,))
        self.slots = np.memmap(path, dtype, "r+", header, (2, world, size))
        self.row = np.memmap(path, dtype, "r+", header + 2 * world * size * dtype.itemsize,
                             (size,))
        self.counters = self.flags[:world]
        self._inplace = None      # the buffer ``gradient_buffer`` handed out, if any
        self._shared = None       # the row ``parameter_buffer`` handed out, if any

    def shard(self, size):
        b = aligned_bounds(size, self.world)
        return b[self.rank], b[self.rank + 1]

    def allreduce_(self, step, buf, wire=RAW, tail=0):
        if wire.exact:
            self.reduce_parts_(step, buf, [(0, buf.size)])
        elif self.world > 1:
            self._reduce_wire(step, buf, wire, tail)

    def _reduce_wire(self, step, buf, wire, tail):
        """Each member's head encoded at the start of its slot, its raw tail at the slot's
        end; every member decodes and sums all slots in rank order."""
        n = buf.size - tail
        slots = self._slots()
        wdt = wire.dtype(buf.dtype)
        heads = slots.view(np.uint8)[:, :n * wdt.itemsize].view(wdt)
        tails = slots[:, slots.shape[1] - tail:]
        if n * wdt.itemsize > (slots.shape[1] - tail) * slots.itemsize:
            raise ValueError(f"a {buf.size}-number buffer does not fit the group's slots")
        wire.encode(buf[:n], heads[self.rank])
        np.copyto(tails[self.rank], buf[n:])
        self._publish_and_wait(step)
        wire.decode(heads[0], buf[:n])
        for j in range(1, self.world):           # rank order on every worker
            wire.add_(buf[:n], heads[j])
        if tail:
            np.copyto(buf[n:], tails[0])
            for j in range(1, self.world):
                buf[n:] += tails[j]

    def gradient_buffer(self, size):
        """This member's slot of the file (``size`` numbers, zeroed), for the caller to
        build its gradient in, to hand to every ``reduce_parts_`` with the shard first
        and to make no other reduction with while it holds it (None for a group of one,
        where nothing is reduced)."""
        if self.world == 1:
            return None
        if size > self.slots.shape[2]:
            raise ValueError(f"a {size}-number buffer does not fit the group's slots")
        self._inplace = np.asarray(self.slots[0, self.rank, :size])   # (not a memmap)
        self._inplace[:] = 0
        return self._inplace

    def parameter_buffer(self, size):
        """The all-gather's row (``size`` numbers), the same memory for every member, to
        hold the parameters in: a member updates its shard there and ``all_gather_`` of
        it only waits for the others (None for a group of one).  Every member must take
        it, and write there nothing but its shard (and what all write alike)."""
        if self.world == 1:
            return None
        self._shared = np.asarray(self.row[:size])
        return self._shared

    def sum_parts_(self, step, buf, parts):
        if self.world == 1:
            return
        if buf is self._inplace:
            return self._reduce_in_place(step, buf, parts)
        slots = self._slots()[:, :buf.size]       # a smaller buf uses a slot's head
        np.copyto(slots[self.rank], buf)
        self._publish_and_wait(step)
        for lo, hi in parts:                      # rank order on every worker
            out = buf[lo:hi]
            np.add(slots[0, lo:hi], slots[1, lo:hi], out=out)   # world >= 2
            for j in range(2, self.world):
                out += slots[j, lo:hi]

    def _reduce_in_place(self, step, buf, parts):
        """``buf`` is this member's slot of set 0: its shard ``parts[0]`` is summed where
        it lies, which no other member reads (each reads only its own shard of the
        others' slots); the other parts (the cost), which every member reads, go to the
        member's slot of set 1 first and are summed from there.  The slot is written
        again only in the next step, after the gather, which no member passes before
        it has read its sums."""
        (lo, hi), rest = parts[0], parts[1:]
        if (lo, hi) != self.shard(rest[0][0] if rest else buf.size):
            raise ValueError(f"an in-place reduction sums this member's shard first, "
                             f"not {lo, hi}")
        n = buf.size
        stage = self.slots[1, :, :n]
        for a, b in rest:
            np.copyto(stage[self.rank, a:b], buf[a:b])
        self._publish_and_wait(step)
        slots = self.slots[0, :, :n]
        own = [slots[j, lo:hi] for j in range(self.world)]
        if self.rank >= 2:       # the sum of the first two would overwrite this one's
            own[self.rank] = own[self.rank].copy()
        for terms, (a, b) in [(own, (lo, hi))] + [
                ([stage[j, a:b] for j in range(self.world)], (a, b)) for a, b in rest]:
            out = buf[a:b]                            # rank order on every worker
            np.add(terms[0], terms[1], out=out)       # world >= 2
            for t in terms[2:]:
                out += t

    def _slots(self):
        """This reduction's slots: the two sets alternate, call by call (every member
        makes the same calls), so a member that races ahead into the next reduction
        never writes where a slower one is still reading this one's sums; it can reach
        the set after only through the next reduction's barrier, which the slower one
        passes once it has read."""
        if self._inplace is not None:
            raise RuntimeError("a reduction through the slots while the gradient is "
                               "held in one; this is a bug, please report it")
        self._calls = getattr(self, "_calls", -1) + 1
        return self.slots[self._calls % 2]

    def all_gather_(self, step, vec, lo, hi):
        """Through shared row 0: write this worker's shard, wait, copy the rest.  The row
        is single-buffered: a worker writes it again only after the next step's
        ``reduce_parts_``, which no worker passes before every worker has copied."""
        if self._shared is not None:
            if vec is not self._shared:
                raise RuntimeError("an all-gather through the row that holds the "
                                   "parameters; this is a bug, please report it")
            self._publish_and_wait(step)   # every shard is in place once all are here
            return
        row = self.row[:vec.size]
        np.copyto(row[lo:hi], vec[lo:hi])
        self._publish_and_wait(step)
        np.copyto(vec[:lo], row[:lo])
        np.copyto(vec[hi:], row[hi:])

    def _publish_and_wait(self, step):
        """Publish this worker's counter for ``step`` (after its data) and wait for all."""
        self.counters[self.rank] = step + 1        # publish after the data is written
        t0 = time.perf_counter()
        try:
            self._wait(step)
        finally:
            self.stats["wait_seconds"] += time.perf_counter() - t0
        if self.owner is not None and not self._unlinked:
            # every member has mapped the file by now (each is in this collective): its
            # name can go, and the memory goes with the last mapping, however the
            # workers end (SIGKILL included): nothing is ever left in /dev/shm
            self.owner.close()
            self._unlinked = True

    def _wait(self, step):
        deadline, spins = None, 0
        while self.counters.min() < step + 1:
            if self.flags[self.world]:
                raise CollectiveAborted("the all-reduce was aborted (a worker died)")
            spins += 1
            if spins > 200:                         # back off once the wait is not short
                time.sleep(0.0002)
                if deadline is None:
                    deadline = time.monotonic() + self.timeout
                elif time.monotonic() > deadline:
                    raise CollectiveAborted(f"no all-reduce partner for {self.timeout:g}s")

    def set_timeout(self, seconds):
        self.timeout = seconds

    def abort(self):
        self.flags[self.world] = 1

    def close(self):
        """Leave the group: a member still waiting in it (a run being stopped) is released
        by the abort flag; the mapping goes with the last reference to it."""
        self.abort()
        if self.owner is not None:
            self.owner.close()
