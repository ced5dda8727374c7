"""``hier``: hierarchical all-reduce for several workers on each of several nodes
(Horovod's hierarchical all-reduce; Sergeev & Del Balso 2018).

With M nodes of L workers each, the worker with local rank l on node m:

1. sums its local shard (1/L of the gradient) over the node's workers through the
   node's shared-memory file (``shm``);
2. reduce-scatters that shard over a TCP ring of the M workers with local rank l, one
   per node, and so ends with 1/(L M) = 1/N of the gradient summed over the cluster:
   the part of the parameters it updates, with the optimizer state of that part only;
3. after the update, all-gathers the shard over the same ring, then the node's shards
   through shared memory.

Each node sends 2(M − 1)/M of the gradient over its link per step, however many workers
it holds, and no byte crosses the network twice.
"""
from __future__ import annotations

from .base import Group, node_of
from .shm import SharedMemoryCollective, SharedMemoryFile
from .links import open_listener
from .tcp import TcpBackend, TcpRing, ring_allreduce_
from .wire import RAW


class HierarchicalGroup(Group):
    """Collective ``k`` is local (shared-memory) step 2k for the node's reduction and
    2k + 1 for its gather, so every collective has both and the steps keep increasing."""

    name = "hier"

    def __init__(self, local: SharedMemoryCollective, ring: TcpRing):
        self.local, self.ring = local, ring
        # one worker per node: the ring is everything, and goes span by span as tcp's
        # does (with more, the node's shared-memory sums would need a key per span)
        self.overlaps = local.world == 1

    @property
    def stats(self):
        return {k: self.local.stats[k] + self.ring.stats[k] for k in self.ring.stats}

    def _local_shard(self, size):
        return self.local.shard(size)

    def shard(self, size):
        a, b = self._local_shard(size)
        lo, hi = self.ring.owned(b - a)
        return a + lo, a + hi

    def allreduce_(self, step, buf, wire=RAW, tail=0):
        """The node's shard of ``buf[:-tail]`` summed in the node, then over the ring of
        its local rank (in ``wire``), then gathered in the node: each node sends
        2(M - 1)/M of the buffer over its link, whatever its number of workers."""
        n = buf.size - tail
        a, b = self._local_shard(n)
        self.local.reduce_parts_(2 * step, buf, [(a, b), (n, buf.size)])
        ring_allreduce_(self.ring, step, buf[a:b], buf[n:], wire)
        self.local.all_gather_(2 * step + 1, buf[:n], a, b)

    def sum_parts_(self, step, buf, parts):
        (lo, hi), (P, end) = parts
        a, b = self._local_shard(P)
        self.local.reduce_parts_(2 * step, buf, [(a, b), (P, end)])
        self.ring.reduce_scatter_(step, buf[a:b], buf[P:end])

    def gradient_buffer(self, size):
        """The node's shared-memory slot (its reduction copies nothing in); the ring
        then reduces the node's shard of it where it lies."""
        return None if self.overlaps else self.local.gradient_buffer(size)

    def reduce_span_(self, step, buf, lo, hi, tail):
        if not self.overlaps:
            raise NotImplementedError("hier reduces spans with one worker per node only")
        ring_allreduce_(self.ring, step, buf[lo:hi], buf[hi:hi + tail], pipelined=True)

    def all_gather_(self, step, vec, lo, hi):
        a, b = self._local_shard(vec.size)
        self.ring.all_gather_(step, vec[a:b])
        self.local.all_gather_(2 * step + 1, vec, a, b)

    def set_timeout(self, seconds):
        self.local.set_timeout(seconds)
        self.ring.set_timeout(seconds)

    def abort(self):
        self.local.abort()
        self.ring.abort()

    def close(self):
        self.ring.close()
        self.local.close()


class HierarchicalBackend(TcpBackend):
    """Driver side of ``hier``: every node must hold the same number of workers."""

    name = "hier"
    one_node = False

    def __init__(self, world, size, dtype, nodes=None, options=None):
        super().__init__(world, size, dtype, nodes, options)
        if len({len(n) for n in self.nodes}) != 1:
            raise ValueError(f"--allreduce hier needs the same number of workers on every "
                             f"node, got {[len(n) for n in self.nodes]}; use tcp")

    @classmethod
    def listen(cls, rank, spec, host):
        m, l = node_of(rank, spec["nodes"])
        f = SharedMemoryFile(len(spec["nodes"][m]), spec["size"], spec["dtype"]) \
            if l == 0 else None
        s = open_listener(host, spec.get("ports"))
        return (s, f), {"tcp": s.getsockname()[:2], "shm": f.path if f else None}

    @classmethod
    def join(cls, rank, spec, *, peers=None, addresses=None, handle=None):
        nodes, timeout = spec["nodes"], spec.get("timeout", 300.0)
        m, l = node_of(rank, nodes)
        listener, f = handle
        local = SharedMemoryCollective(l, addresses[nodes[m][0]]["shm"], len(nodes[m]),
                                       spec["size"], spec["dtype"], timeout=timeout, owner=f)
        M = len(nodes)
        ring = TcpRing(m, M, listener, addresses[nodes[(m + 1) % M][l]]["tcp"],
                       bytes.fromhex(spec["secret"]), timeout)
        return HierarchicalGroup(local, ring)
