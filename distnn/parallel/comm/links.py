"""The links of a TCP ring: a listener bound to a node's own address (on a port from
``--comm-ports``), and connections whose two ends prove, before any byte is summed, that
they belong to the same run (an HMAC-SHA256 over the run's secret of each other's random
challenge); connections are tuned so that a peer whose host is lost or cut off is
noticed in ``UNREACHABLE_SECONDS``."""
from __future__ import annotations

import hashlib
import hmac
import secrets
import socket
import struct
import time

from .base import CollectiveAborted

SOCKET_BUFFER = 4 << 20


def _mac(secret: bytes, label: bytes, nonce: bytes) -> bytes:
    return hmac.new(secret, label + nonce, hashlib.sha256).digest()


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ConnectionError("the peer closed the connection")
        got += k
    return bytes(buf)


UNREACHABLE_SECONDS = 4


def tune_link(sock: socket.socket) -> None:
    """No Nagle delay, large buffers; and a peer that becomes unreachable (its host lost
    or cut off) fails the connection after ``UNREACHABLE_SECONDS``: keepalive probes
    (which a live peer's kernel answers even while its process is busy) and a user
    timeout on unacknowledged data (which also decides when failed probes close it)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 1), ("TCP_KEEPINTVL", 1), ("TCP_KEEPCNT", 3),
                        ("TCP_USER_TIMEOUT", UNREACHABLE_SECONDS * 1000)):
        if hasattr(socket, name):   # Linux; elsewhere the collective timeout alone
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def open_listener(host: str, ports: tuple[int, int] | None) -> socket.socket:
    """A listening socket on ``host`` (a port from ``ports``, inclusive, or any)."""
    candidates = range(ports[0], ports[1] + 1) if ports else [0]
    for port in candidates:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((host, port))
        except OSError:
            s.close()
            continue
        s.listen(16)
        return s
    raise ValueError(f"every port of --comm-ports {ports[0]}-{ports[1]} on {host} is taken "
                     "(by another run or program): give a wider or another range, or leave "
                     "--comm-ports out (any free port)")


def accept_member(listener: socket.socket, secret: bytes, expect: int,
                  deadline: float) -> socket.socket:
    """The connection from member ``expect``, once it has proved it holds ``secret``;
    anyone else is refused (closed) and waited past."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise CollectiveAborted(f"member {expect} did not connect in time")
        listener.settimeout(left)
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            continue
        try:
            conn.settimeout(max(1.0, min(10.0, left)))
            nonce = secrets.token_bytes(32)
            conn.sendall(nonce)
            who, mac, theirs = struct.unpack("!q32s32s", _recv_exact(conn, 72))
            if who != expect or not hmac.compare_digest(mac, _mac(secret, b"c%d" % who, nonce)):
                raise PermissionError("refused")
            conn.sendall(_mac(secret, b"s", theirs))
            conn.settimeout(None)
            return conn
        except (OSError, PermissionError, struct.error):
            conn.close()   # a stranger, or a member of another run: not summed, not kept


def connect_member(address, secret: bytes, me: int, deadline: float) -> socket.socket:
    """Connect to the member at ``address`` and prove membership (and check its)."""
    while True:
        try:
            conn = socket.create_connection(tuple(address),
                                            timeout=max(0.5, deadline - time.monotonic()))
            break
        except OSError:
            if time.monotonic() > deadline:
                raise CollectiveAborted(f"cannot connect to the member at {address}") from None
            time.sleep(0.05)
    try:
        nonce = _recv_exact(conn, 32)
        mine = secrets.token_bytes(32)
        conn.sendall(struct.pack("!q32s32s", me, _mac(secret, b"c%d" % me, nonce), mine))
        proved = hmac.compare_digest(_recv_exact(conn, 32), _mac(secret, b"s", mine))
    except OSError as e:   # ConnectionError included: it closed on us
        proved = False
        why = f" ({e})"
    else:
        why = ""
    if not proved:
        conn.close()
        raise CollectiveAborted(f"the peer at {tuple(address)} did not prove that it belongs "
                                f"to this run, or refused this member's proof{why}")
    conn.settimeout(None)
    return conn
