"""The communication group: the one thing the training loop knows about the other
replicas, and the interface every backend implements.

A backend has two halves.  Its ``Backend`` class lives on the driver: it plans the group
for ``world`` workers placed on nodes (``nodes``: the ranks on each node, in node
order), hands every member what it needs to join (``spec``), and can release members
blocked in a collective.  Its ``Group`` lives in each worker and does the collectives.
A worker joins in two phases, so that members can find each other: ``listen`` (open
what others connect to — a socket, a shared-memory file — and return its address), then,
once the driver has every member's address, ``join``.

``allreduce_(step, buf, wire=RAW, tail=0)``  buf <- the elementwise sum of every
                            member's buf, identically on every member (the same additions
                            in the same order), so replicas that apply the same update stay
                            bit-identical.  ``buf[:-tail]`` travels in the wire format
                            ``wire`` (``wire.BF16``: rounded to bfloat16 whenever it is
                            sent, accumulated in float32); the last ``tail`` numbers always
                            travel as they are.
``wire(name)``              the wire format named "raw" or "bf16", for ``allreduce_``.
``shard(size)``             the range [lo, hi) of a size-``size`` vector this member
                            reduces and updates (all of it unless the backend shards).
``reduce_parts_(step, buf, parts, scale=1.0)``  parts = [(lo, hi) = shard(P), (P, len(buf))]:
                            the sum of buf[lo:hi], times ``scale``, and of the tail
                            buf[P:] (the batch's cost, never scaled).  A backend sums
                            (``sum_parts_``); a group whose reduction is not linear
                            (``takes_scaled`` False: a compressor with error feedback)
                            applies ``scale`` itself.
``all_gather_(step, vec, lo, hi)``   every member's vec[its shard] into every vec.
``gradient_buffer(size)``   where the group offers one (shm), a buffer in its own memory
                            to compute the gradient in: its reduction copies nothing in.
``parameter_buffer(size)``  where the group offers one (shm), memory every member shares
                            to hold the parameters in: the all-gather copies nothing.

``step`` numbers a group's calls in the same increasing order on every member.  A member
blocked in a collective raises ``CollectiveAborted`` when the group is aborted (a peer
died) or after its timeout.

``stats`` counts, since the group was made, ``wait_seconds`` (time a member spent waiting
for the others to arrive at a collective) and ``bytes_sent`` (bytes it sent over network
links; shared memory counts none).
"""
from __future__ import annotations

import numpy as np

from .wire import RAW, WIRES


class CollectiveAborted(RuntimeError):
    """The group was aborted (a peer died or stalled); the epoch must be replayed."""


class Group:
    """Worker side of a backend.  The defaults are those of a group of one."""

    name = "local"
    #: the reduction is linear and keeps no state: its input may be pre-multiplied by
    #: -lr.  A group for which it is False (a compressor with error feedback) is given
    #: the mean gradient and ``reduce_parts_(..., scale=s)``: the result times s.
    #: (Who folds -lr where is decided in one place: ``train.update.Update``.)
    takes_scaled = True
    #: reducing the gradient span by span while backprop still computes the rest
    #: (``reduce_span_``) can hide communication: the group crosses links
    overlaps = False

    @property
    def stats(self) -> dict:
        """{"wait_seconds", "bytes_sent"} so far (see the module's docstring)."""
        return self.__dict__.setdefault("_stats", {"wait_seconds": 0.0, "bytes_sent": 0})

    def allreduce_(self, step: int, buf: np.ndarray, wire=RAW, tail: int = 0) -> None:
        """Sum ``buf`` over the group, in place (a group of one: nothing travels)."""

    def wire(self, name: str):
        """The wire format ``name`` ("raw", "bf16") for ``allreduce_``: how code that
        does not import the backends (train/) names one."""
        return WIRES[name]

    def shard(self, size: int) -> tuple[int, int]:
        return 0, size

    def reduce_parts_(self, step: int, buf: np.ndarray, parts, scale: float = 1.0) -> None:
        """Sum ``buf[lo:hi]`` over the group for each (lo, hi) in ``parts`` (at least;
        other entries may be left as they are or summed too), then multiply the first
        part (this member's shard of the gradient) by ``scale``."""
        self.sum_parts_(step, buf, parts)
        if scale != 1.0:
            lo, hi = parts[0]
            buf[lo:hi] *= buf.dtype.type(scale)

    def sum_parts_(self, step: int, buf: np.ndarray, parts) -> None:
        """What a backend implements of ``reduce_parts_``: the sums alone."""
        self.allreduce_(step, buf)

    def reduce_span_(self, step: int, buf: np.ndarray, lo: int, hi: int,
                     tail: bool) -> None:
        """Where ``overlaps``: ``buf[lo:hi]`` (and with ``tail``, the cost ``buf[hi]``,
        hi being the gradient's end) summed over the group on every member, collective
        ``step`` of several (one per span) that together reduce the whole gradient."""
        self.allreduce_(step, buf[lo:hi + tail], tail=int(tail))

    def gradient_buffer(self, size: int) -> np.ndarray | None:
        """A buffer of ``size`` numbers in the group's own memory to compute the gradient
        in, which ``reduce_parts_`` then reduces without copying it in; the caller passes
        it, shard first, to every ``reduce_parts_`` and makes no other reduction.  None
        (the default): the group has none, reduce a buffer of your own."""
        return None

    def parameter_buffer(self, size: int) -> np.ndarray | None:
        """Memory every member shares (shm: one node's), to hold the parameters in: each
        member updates its shard there and ``all_gather_`` of it only waits for the
        others.  Every member takes it or none does; a member writes there only its
        shard, and what every member writes alike.  None (the default): none shared."""
        return None

    def all_gather_(self, step: int, vec: np.ndarray, lo: int, hi: int) -> None:
        """Give every member every other member's ``vec[shard]`` (nothing to do when
        the shard is everything)."""

    def set_timeout(self, seconds: float) -> None:
        """How long a collective may wait for the other members from now on."""

    def plugin_states(self) -> dict:
        """{setting: ``train.state.PluginState``} of what the group keeps between
        steps (a compressor's run state); none by default."""
        return {}

    def load_plugin_states(self, state, rank: int) -> None:
        """Take this member's part (``state.plugin_for(setting, rank)``) of a whole
        ``train.state.ReplicaState``."""

    def deliver(self, key, data) -> None:
        raise RuntimeError(f"the {self.name} backend receives no messages")

    def abort(self) -> None:
        """Release this member if it is blocked in a collective (a peer died)."""

    def close(self) -> None:
        pass


class Backend:
    """Driver side of a backend: one instance per wiring of the workers.

    Subclasses declare ``name``, whether every member must share a node
    (``one_node``) and whether the members need each other's actor handles
    (``needs_peers``), and implement ``join`` (and ``listen`` if members connect to
    each other)."""

    name = "local"
    one_node = True
    needs_peers = False

    def __init__(self, world: int, size: int, dtype, nodes=None, options=None):
        self.world, self.size, self.dtype = world, size, np.dtype(dtype).str
        self.nodes = [list(n) for n in nodes] if nodes else [list(range(world))]
        self.options = dict(options or {})

    def spec(self) -> dict:
        """What a member needs to join (sent to every worker; picklable)."""
        return {"world": self.world, "size": self.size, "dtype": self.dtype,
                "nodes": self.nodes, **self.options}

    @classmethod
    def listen(cls, rank: int, spec: dict, host: str):
        """Phase one: open what the others connect to on ``host`` (this member's node
        address).  Returns (a handle for ``join``, this member's address or None)."""
        return None, None

    @classmethod
    def join(cls, rank: int, spec: dict, *, peers=None, addresses=None,
             handle=None) -> Group:
        """Phase two: the worker-side ``Group`` of member ``rank``; ``addresses[r]`` is
        what member r's ``listen`` returned, ``peers[r]`` its actor handle."""
        return Group()

    def abort(self) -> None:
        """Release members blocked in a collective, from the driver, where the backend
        can (the workers' own ``Group.abort`` is called as well)."""

    def close(self) -> None:
        """Remove whatever the driver side set up."""


class LocalBackend(Backend):
    """A group of one, in this process: the in-process run.  No Ray, nothing to do."""


def node_of(rank: int, nodes) -> tuple[int, int]:
    """(node index, local rank) of ``rank`` in the plan ``nodes``."""
    for m, ranks in enumerate(nodes):
        if rank in ranks:
            return m, ranks.index(rank)
    raise ValueError(f"rank {rank} is on no node of {nodes}")


def aligned_bounds(size: int, parts: int, lo: int = 0) -> list[int]:
    """``parts`` + 1 boundaries cutting [lo, lo + size) into near-equal ranges on
    16-element (64-byte) multiples of lo, so no cache line is written by two workers."""
    b = [lo + min(size, -(-size * r // parts) // 16 * 16) for r in range(parts + 1)]
    b[-1] = lo + size
    return b
