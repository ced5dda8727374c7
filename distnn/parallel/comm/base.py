"""The communication group: the one thing the training loop knows about the other
replicas, and the interface every backend implements.

A backend has two halves.  Its ``Backend`` class lives on the driver: it sets the group
up for ``world`` workers (a shared-memory file, nothing at all, ...), hands each worker
what it needs to join (``spec``), can abort a group whose member died, and cleans up.
Its ``Group`` lives in each worker (``Backend.join``) and does the collectives:

``allreduce_(step, buf)``   buf <- the elementwise sum of every member's buf, identically
                            on every member (the same additions in the same order), so
                            replicas that apply the same update stay bit-identical.
``shard(size)``             the range [lo, hi) of a size-``size`` vector this member
                            reduces and updates (all of it unless the backend shards).
``reduce_parts_(step, buf, parts)``  the sum of buf[lo:hi] for each (lo, hi) in parts.
``all_gather_(step, vec, lo, hi)``   every member's vec[its shard] into every vec.
``shared``                  rows of memory shared by the members of one node, or None.

``step`` numbers a group's calls 0, 1, 2, ... in the same order on every member.  A
member blocked in a collective raises ``CollectiveAborted`` when the group is aborted
(a peer died) or after its timeout.
"""
from __future__ import annotations

import numpy as np


class CollectiveAborted(RuntimeError):
    """The group was aborted (a peer died or stalled); the epoch must be replayed."""


class Group:
    """Worker side of a backend.  The defaults are those of a group of one."""

    name = "local"
    shared: np.ndarray | None = None

    def allreduce_(self, step: int, buf: np.ndarray) -> None:
        """Sum ``buf`` over the group, in place."""

    def shard(self, size: int) -> tuple[int, int]:
        return 0, size

    def reduce_parts_(self, step: int, buf: np.ndarray, parts) -> None:
        """Sum ``buf[lo:hi]`` over the group for each (lo, hi) in ``parts`` (at least;
        other entries may be left as they are or summed too)."""
        self.allreduce_(step, buf)

    def all_gather_(self, step: int, vec: np.ndarray, lo: int, hi: int) -> None:
        """Give every member every other member's ``vec[shard]`` (nothing to do when
        the shard is everything)."""

    def deliver(self, key, data) -> None:
        raise RuntimeError(f"the {self.name} backend receives no messages")

    def abort(self) -> None:
        pass

    def close(self) -> None:
        pass


class Backend:
    """Driver side of a backend: one instance per wiring of the workers.

    Subclasses declare ``name``, whether every member must share a node
    (``one_node``) and whether the members need each other's actor handles
    (``needs_peers``), and implement ``join``."""

    name = "local"
    one_node = True
    needs_peers = False

    def __init__(self, world: int, size: int, dtype, shared_rows: int = 0):
        self.world, self.size, self.dtype = world, size, np.dtype(dtype).str
        self.shared_rows = shared_rows

    def spec(self) -> dict:
        """What a member needs to join (sent to every worker; picklable)."""
        return {"world": self.world, "size": self.size, "dtype": self.dtype,
                "shared_rows": self.shared_rows}

    @classmethod
    def join(cls, rank: int, spec: dict, peers=None) -> Group:
        """The worker-side ``Group`` of member ``rank``."""
        return Group()

    def abort(self) -> None:
        """Release every member blocked in a collective (a peer died)."""

    def close(self) -> None:
        """Remove whatever the group set up."""


class LocalBackend(Backend):
    """A group of one, in this process: the in-process run.  No Ray, nothing to do."""
