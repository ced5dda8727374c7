"""``tcp``: a ring all-reduce over persistent TCP connections, for workers on any nodes.

Each member of a ring keeps two connections open for the whole run, opened once when
the group is wired: one to the next member (it only sends there) and one from the
previous member (it only receives from there).  Before any byte from a connection is
summed, the peer proves that it belongs to this run: both ends answer a random challenge
with an HMAC-SHA256 over the run's secret, which the driver hands to the workers through
Ray.  Sockets bind to the node's own address (never 0.0.0.0), on a port from
``--comm-ports`` when the cluster is firewalled.

A reduce-scatter then an all-gather, each n − 1 steps; every member sends 2(n − 1)/n of
the buffer.  Chunks go out in pieces of ``PIECE`` bytes from a sender thread
(``sendall`` of NumPy memory, no pickling), while the receiving thread ``recv_into``s a
preallocated buffer and adds: the add of piece k overlaps the transfer of piece k + 1,
and a piece is forwarded to the next member as soon as it is summed.  A small "tail" of
the buffer (the batch's cost) rides along with the reduce-scatter, so every member
knows it, summed in ring order, when the reduce-scatter ends.
"""
from __future__ import annotations

import queue
import secrets
import socket
import struct
import threading
import time

import numpy as np

from .base import Backend, CollectiveAborted, Group, aligned_bounds
from .links import accept_member, connect_member, open_listener, tune_link
from .wire import RAW

PIECE = 1 << 18                     # bytes per piece in flight
INLINE_BYTES = 1 << 16              # smaller messages are sent by the calling thread when
#                                     nothing is queued (the kernel's buffers take them)
_HEADER = struct.Struct("!qqq")     # collective key, vector length, tail length


class TcpRing:
    """Member ``pos`` of a ring of ``n`` over TCP: ``reduce_scatter_`` and
    ``all_gather_`` of any contiguous vector (chunk c is owned, fully reduced, by member
    (c − 1) mod n after the reduce-scatter)."""

    def __init__(self, pos: int, n: int, listener, next_address, secret: bytes,
                 timeout: float = 300.0):
        self.pos, self.n, self.timeout = pos, n, timeout
        self.rx = self.tx = None
        self._error, self._aborted = None, False
        if n > 1:
            self._connect(listener, next_address, secret)
        if listener is not None:
            listener.close()
        self._scratch = np.empty(0, np.uint8)
        self._wbuf = np.empty(0, np.uint16)
        self.stats = {"wait_seconds": 0.0, "bytes_sent": 0}
        self._queue: queue.Queue = queue.Queue()
        self._pending = 0
        self._cond = threading.Condition()
        if n > 1:
            threading.Thread(target=self._sender, name="distnn-tcp-send", daemon=True).start()

    def _connect(self, listener, next_address, secret):
        deadline = time.monotonic() + min(self.timeout, 120.0)
        got: dict = {}

        def accept():
            try:
                got["rx"] = accept_member(listener, secret, (self.pos - 1) % self.n, deadline)
            except BaseException as e:   # re-raised below, in the joining thread
                got["error"] = e
        t = threading.Thread(target=accept, daemon=True)
        t.start()
        self.tx = connect_member(next_address, secret, self.pos, deadline)
        t.join(max(0.0, deadline - time.monotonic()) + 1.0)
        if "rx" not in got:
            self.tx.close()
            raise got.get("error") or CollectiveAborted("no connection from the previous member")
        self.rx = got["rx"]
        for s in (self.rx, self.tx):
            tune_link(s)
            s.settimeout(self.timeout)

    # -- the sender thread ---------------------------------------------------------------
    def _sender(self):
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                if self._error is None:
                    self.tx.sendall(item)
            except OSError as e:
                self._error = e
            with self._cond:
                self._pending -= 1
                self._cond.notify_all()

    def _send(self, data) -> None:
        if isinstance(data, np.ndarray):
            if data.nbytes == 0:
                return
            data = memoryview(data.reshape(-1).view(np.uint8))
        nbytes = len(data) if isinstance(data, bytes) else data.nbytes
        self.stats["bytes_sent"] += nbytes
        with self._cond:
            inline = self._pending == 0 and nbytes <= INLINE_BYTES
            if not inline:
                self._pending += 1
        if not inline:
            self._queue.put(data)
            return
        try:        # a small message with nothing queued: no hand-off to the thread
            if self._error is None:
                self.tx.sendall(data)
        except OSError as e:
            self._error = e

    def _drain(self) -> None:
        """Wait until everything queued has been handed to the kernel: the memory it was
        sent from may change once a collective returns."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._pending == 0, self.timeout):
                raise CollectiveAborted(f"could not send to the next member for {self.timeout:g}s")
        self._check()

    def _check(self):
        if self._aborted:
            raise CollectiveAborted("the all-reduce was aborted (a worker died)")
        if self._error is not None:
            raise CollectiveAborted(f"lost the connection to the next member: {self._error}")

    def _recv_into(self, arr: np.ndarray) -> None:
        if arr.nbytes == 0:
            return
        view = memoryview(arr.reshape(-1).view(np.uint8))
        got, n = 0, view.nbytes
        try:
            while got < n:
                k = self.rx.recv_into(view[got:], n - got)
                if k == 0:
                    raise ConnectionError("the previous member closed the connection")
                got += k
        except (OSError, ConnectionError) as e:
            self._check()
            raise CollectiveAborted(f"lost the previous member: {e}") from None

    def _handshake(self, key: int, size: int, tail: int) -> None:
        """Both ends of a link are at the same collective with the same sizes.  The wait
        for the previous member's header is this member's wait for the others."""
        self._send(_HEADER.pack(key, size, tail))
        head = np.empty(_HEADER.size, np.uint8)
        t0 = time.perf_counter()
        try:
            self._recv_into(head)
        finally:
            self.stats["wait_seconds"] += time.perf_counter() - t0
        if _HEADER.unpack(head.tobytes()) != (key, size, tail):
            raise CollectiveAborted(f"members out of step: expected collective {key} of "
                                    f"{size}+{tail}, got {_HEADER.unpack(head.tobytes())}")

    # -- collectives ---------------------------------------------------------------------
    def bounds(self, size: int) -> list[int]:
        return aligned_bounds(size, self.n)

    def owned(self, size: int) -> tuple[int, int]:
        """The chunk this member holds fully reduced after a reduce-scatter."""
        b, c = self.bounds(size), (self.pos + 1) % self.n
        return b[c], b[c + 1]

    def _wire_buffer(self, v: np.ndarray, wire) -> np.ndarray:
        """What ``v`` is sent from: ``v`` itself, or its encoding (each piece written
        once per collective, so nothing is overwritten while the sender still reads it)."""
        if wire.exact:
            return v
        dt = wire.dtype(v.dtype)
        if self._wbuf.dtype != dt or self._wbuf.size < v.size:
            self._wbuf = np.empty(v.size, dt)
        return self._wbuf[:v.size]

    def _send_encoded(self, v, w, lo, hi, wire) -> None:
        if not wire.exact:
            wire.encode(v[lo:hi], w[lo:hi])
        self._send(w[lo:hi])

    def reduce_scatter_(self, key: int, v: np.ndarray, tail: np.ndarray | None = None,
                        wire=RAW):
        """Sum ``v`` over the ring into each member's owned chunk (the rest of ``v`` is
        left partly summed); ``tail``, if given, is summed in full on every member.
        ``v``'s pieces travel in ``wire`` (each partial sum encoded as it is sent on)."""
        n, p = self.n, self.pos
        tail = np.zeros(0) if tail is None else tail
        if n == 1:
            return
        b = self.bounds(v.size)
        known = np.zeros((n, tail.size))
        known[p] = tail
        w = self._wire_buffer(v, wire)
        piece = max(1, PIECE // w.itemsize)
        if self._scratch.nbytes < PIECE:
            self._scratch = np.empty(PIECE, np.uint8)
        self._handshake(key, v.size, tail.size)
        self._send_encoded(v, w, b[p], b[p + 1], wire)
        self._send(known.copy())
        for s in range(n - 1):
            c = (p - s - 1) % n
            forward = s + 1 < n - 1
            for lo in range(b[c], b[c + 1], piece):
                hi = min(lo + piece, b[c + 1])
                got = self._scratch[:(hi - lo) * w.itemsize].view(w.dtype)
                self._recv_into(got)
                wire.add_(v[lo:hi], got)
                if forward:
                    self._send_encoded(v, w, lo, hi, wire)
            theirs = np.empty_like(known)
            self._recv_into(theirs)
            for t in range(s + 1):    # what the previous member knew: itself and s before
                known[(p - 1 - t) % n] = theirs[(p - 1 - t) % n]
            if forward:
                self._send(known.copy())
        tail[...] = known.sum(axis=0)   # the same matrix, the same sum, on every member
        self._drain()

    def all_gather_(self, key: int, v: np.ndarray, wire=RAW) -> None:
        """Every member's owned chunk of ``v`` into every member's ``v`` (in ``wire``: the
        owner keeps its chunk as the others receive it, so every member ends the same)."""
        n, p = self.n, self.pos
        if n == 1:
            return
        b = self.bounds(v.size)
        w = self._wire_buffer(v, wire)
        piece = max(1, PIECE // w.itemsize)
        self._handshake(key, v.size, -1)
        c = (p + 1) % n
        if not wire.exact:
            wire.encode(v[b[c]:b[c + 1]], w[b[c]:b[c + 1]])
            wire.decode(w[b[c]:b[c + 1]], v[b[c]:b[c + 1]])
        self._send(w[b[c]:b[c + 1]])
        for s in range(n - 1):
            c = (p - s) % n
            for lo in range(b[c], b[c + 1], piece):
                hi = min(lo + piece, b[c + 1])
                self._recv_into(w[lo:hi])
                if not wire.exact:
                    wire.decode(w[lo:hi], v[lo:hi])
                if s + 1 < n - 1:
                    self._send(w[lo:hi])
        self._drain()

    def gather_sum_(self, key: int, v: np.ndarray, tail: np.ndarray, wire=RAW) -> None:
        """``v`` and ``tail`` summed over the ring by passing every member's whole
        buffer once around it (n - 1 hops where a reduce-scatter and an all-gather make
        2(n - 1)): for buffers too small for bandwidth to matter.  Every member adds all
        n buffers in rank order, so all end with the same bits."""
        n, p = self.n, self.pos
        if n == 1:
            return
        dt = wire.dtype(v.dtype)
        held = [None] * n
        mine = np.empty(v.size * dt.itemsize + tail.nbytes, np.uint8)
        wire.encode(v, mine[:v.size * dt.itemsize].view(dt))
        mine[v.size * dt.itemsize:] = tail.reshape(-1).view(np.uint8)
        held[p] = mine
        self._handshake(key, v.size, -2 - tail.size)
        self._send(mine)
        for s in range(n - 1):
            got = np.empty_like(mine)
            self._recv_into(got)
            held[(p - 1 - s) % n] = got
            if s + 1 < n - 1:
                self._send(got)
        cut = v.size * dt.itemsize
        wire.decode(held[0][:cut].view(dt), v)
        tail[...] = held[0][cut:].view(tail.dtype)
        for h in held[1:]:                         # rank order on every member
            wire.add_(v, h[:cut].view(dt))
            tail += h[cut:].view(tail.dtype)
        self._drain()

    def set_timeout(self, seconds: float) -> None:
        self.timeout = seconds
        for s in (self.rx, self.tx):
            if s is not None:
                s.settimeout(seconds)

    def abort(self) -> None:
        self._aborted = True
        for s in (self.rx, self.tx):
            if s is not None:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._queue.put(None)
        for s in (self.rx, self.tx):
            if s is not None:
                s.close()


#: an all-reduce whose every member would send at most this many bytes by passing whole
#: buffers round the ring (n - 1 of them) does so: half the hops of a reduce-scatter and
#: an all-gather; with 2 members always (the same bytes either way); with more, only
#: where the buffer is too small for bytes to matter (n - 1 buffers, not 2(n - 1)/n)
SMALL_BYTES = 1 << 14


def small(n: int, nbytes: int) -> bool:
    return n == 2 or (n - 1) * nbytes <= SMALL_BYTES


def ring_allreduce_(ring: TcpRing, step: int, v, tail, wire=RAW,
                    pipelined: bool = False) -> None:
    """``v`` and ``tail`` summed over ``ring`` on every member: whole buffers passed
    round it when small (``small``), else a reduce-scatter and an all-gather, whose
    pieces' sums overlap their transfer (``pipelined``: so whatever the members, unless
    the buffer is too small for bytes to matter)."""
    nbytes = v.nbytes + tail.nbytes
    if nbytes <= SMALL_BYTES if pipelined else small(ring.n, nbytes):
        ring.gather_sum_(step, v, tail, wire)
    else:
        ring.reduce_scatter_(step, v, tail, wire)
        ring.all_gather_(step, v, wire)


def ring_order(nodes) -> list[int]:
    """Ranks in ring order: node by node, so a flat ring crosses each link once."""
    return [r for ranks in nodes for r in ranks]


class TcpGroup(Group):
    """A flat ring over every worker, ordered by node; the update is sharded: each
    worker updates the chunk it owns after the reduce-scatter (1/N of the parameters)
    and keeps the optimizer state of that chunk only.  Overlapped with backprop, each
    span of the gradient is all-reduced on its own (``reduce_span_``)."""

    name = "tcp"
    overlaps = True

    def reduce_span_(self, step, buf, lo, hi, tail):
        ring_allreduce_(self.ring, step, buf[lo:hi], buf[hi:hi + tail], pipelined=True)

    def __init__(self, ring: TcpRing):
        self.ring = ring

    def shard(self, size):
        return self.ring.owned(size)

    @property
    def stats(self):
        return self.ring.stats

    def allreduce_(self, step, buf, wire=RAW, tail=0):
        n = buf.size - tail
        ring_allreduce_(self.ring, step, buf[:n], buf[n:], wire)

    def sum_parts_(self, step, buf, parts):
        (lo, hi), (P, _) = parts
        if (lo, hi) != self.shard(P):
            raise ValueError(f"tcp reduces this member's shard {self.shard(P)}, not {(lo, hi)}")
        self.ring.reduce_scatter_(step, buf[:P], buf[P:])

    def all_gather_(self, step, vec, lo, hi):
        self.ring.all_gather_(step, vec)

    def set_timeout(self, seconds):
        self.ring.set_timeout(seconds)

    def abort(self):
        self.ring.abort()

    def close(self):
        self.ring.close()


class TcpBackend(Backend):
    """Driver side of ``tcp``: a fresh secret for every wiring of the group."""

    name = "tcp"
    one_node = False

    def spec(self) -> dict:
        if not hasattr(self, "_secret"):
            self._secret = secrets.token_hex(32)
        return {**super().spec(), "secret": self._secret}

    @classmethod
    def listen(cls, rank, spec, host):
        s = open_listener(host, spec.get("ports"))
        return s, s.getsockname()[:2]

    @classmethod
    def join(cls, rank, spec, *, peers=None, addresses=None, handle=None):
        order = ring_order(spec["nodes"])
        pos, n = order.index(rank), len(order)
        ring = TcpRing(pos, n, handle, addresses[order[(pos + 1) % n]],
                       bytes.fromhex(spec["secret"]), spec.get("timeout", 300.0))
        return TcpGroup(ring)
