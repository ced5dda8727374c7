"""The tcp and hier backends on this machine's loopback, members as threads (no Ray):
sums, the sharded step, membership proofs, aborts.  Across simulated hosts:
tests/parallel/test_multihost.py."""
import socket
import threading

import numpy as np
import pytest

from distnn.parallel.comm import BACKENDS, CollectiveAborted
from distnn.parallel.comm import links, tcp
from tests.runs import run_threads


def make_groups(name, nodes, size, dtype=np.float32, timeout=10.0):
    """Members of a group of backend ``name`` placed as ``nodes``, wired as the driver
    does: listen on 127.0.0.1, then join with everyone's address."""
    cls = BACKENDS[name]
    world = sum(len(n) for n in nodes)
    spec = cls(world, size, dtype, nodes, {"ports": None, "timeout": timeout}).spec()
    listened = [cls.listen(r, spec, "127.0.0.1") for r in range(world)]
    addresses = [a for _, a in listened]
    return run_threads([lambda r=r: cls.join(r, spec, addresses=addresses, handle=listened[r][0])
                 for r in range(world)])


PLACEMENTS = [("tcp", [[0], [1]]), ("tcp", [[0, 1, 2]]), ("tcp", [[0, 2], [1, 3]]),
              ("hier", [[0, 1], [2, 3]]), ("hier", [[0], [1], [2]])]


@pytest.mark.parametrize("name,nodes", PLACEMENTS)
def test_allreduce_sums_identically_on_every_member(name, nodes, rng, monkeypatch):
    monkeypatch.setattr(tcp, "PIECE", 4096)          # many pieces in flight
    size = 30011
    groups = make_groups(name, nodes, size)
    try:
        for step in range(3):
            bufs = [rng.standard_normal(size).astype(np.float32) for _ in groups]
            want = np.sum(np.array(bufs, np.float64), axis=0)
            run_threads([lambda g=g, b=b: g.allreduce_(step, b) for g, b in zip(groups, bufs)])
            for b in bufs:
                np.testing.assert_array_equal(b, bufs[0])
            np.testing.assert_allclose(bufs[0], want, rtol=1e-5, atol=1e-5)
    finally:
        [g.close() for g in groups]


@pytest.mark.parametrize("name,nodes", PLACEMENTS)
def test_sharded_step_equals_allreduce_then_full_update(name, nodes, rng):
    """reduce_parts_ of each member's shard (the batch's cost riding along), an update
    of that shard, all_gather_: every member ends with what a full all-reduce and a
    full update give, and the shards are disjoint and cover everything."""
    P = 5003
    groups = make_groups(name, nodes, P + 1)
    try:
        shards = [g.shard(P) for g in groups]
        cover = np.zeros(P, int)
        for lo, hi in shards:
            cover[lo:hi] += 1
        assert (cover == 1).all()
        params = rng.standard_normal(P).astype(np.float32)
        bufs = [rng.standard_normal(P + 1).astype(np.float32) for _ in groups]
        total = np.sum(np.array(bufs, np.float64), axis=0)
        vecs = [params.copy() for _ in groups]

        def step(g, buf, vec, lo, hi):
            g.reduce_parts_(0, buf, [(lo, hi), (P, P + 1)])
            vec[lo:hi] -= 0.5 * buf[lo:hi]
            g.all_gather_(1, vec, lo, hi)
            return float(buf[P])
        costs = run_threads([lambda i=i: step(groups[i], bufs[i], vecs[i], *shards[i])
                      for i in range(len(groups))])
        assert len(set(costs)) == 1 and costs[0] == pytest.approx(total[P], rel=1e-5)
        want = params - 0.5 * total[:P].astype(np.float32)
        for v in vecs:
            np.testing.assert_array_equal(v, vecs[0])
            np.testing.assert_allclose(v, want, rtol=1e-4, atol=1e-4)
    finally:
        [g.close() for g in groups]


def test_a_peer_without_the_runs_secret_is_refused():
    """A connection that cannot answer the challenge is closed before any of its bytes
    is read as data, and the real member still joins."""
    cls = BACKENDS["tcp"]
    spec = cls(2, 100, np.float32, [[0], [1]], {"ports": None, "timeout": 10}).spec()
    listened = [cls.listen(r, spec, "127.0.0.1") for r in range(2)]
    addresses = [a for _, a in listened]
    intruder = socket.create_connection(addresses[1])     # member 1 expects member 0
    intruder.settimeout(10)
    seen = []

    def intrude():
        seen.append(len(intruder.recv(32)))               # the challenge
        intruder.sendall(b"\0" * 8 + b"x" * 64)           # claims rank 0, wrong MAC
        seen.append(intruder.recv(1))                     # refused: closed on it
    t = threading.Thread(target=intrude)
    t.start()
    groups = run_threads([lambda r=r: cls.join(r, spec, addresses=addresses, handle=listened[r][0])
                   for r in range(2)])
    t.join(10)
    try:
        assert seen == [32, b""]
        bufs = [np.ones(100, np.float32), np.full(100, 2, np.float32)]
        run_threads([lambda g=g, b=b: g.allreduce_(0, b) for g, b in zip(groups, bufs)])
        np.testing.assert_array_equal(bufs[0], np.full(100, 3, np.float32))
    finally:
        intruder.close()
        [g.close() for g in groups]
    wrong = {**spec, "secret": "00" * 32}
    listener, address = cls.listen(0, spec, "127.0.0.1")
    with pytest.raises(CollectiveAborted, match="did not connect in time|prove"):
        run_threads([lambda: links.accept_member(listener, bytes.fromhex(spec["secret"]), 1,
                                        tcp.time.monotonic() + 2),
              lambda: links.connect_member(address, bytes.fromhex(wrong["secret"]), 1,
                                         tcp.time.monotonic() + 2)])
    listener.close()


def test_abort_releases_a_member_waiting_for_its_peer():
    groups = make_groups("tcp", [[0], [1]], 1000)
    try:
        threading.Timer(0.2, groups[0].abort).start()
        with pytest.raises(CollectiveAborted, match="aborted|lost"):
            groups[0].allreduce_(0, np.ones(1000, np.float32))   # member 1 never comes
    finally:
        [g.close() for g in groups]


def test_a_port_range_is_honoured():
    s = tcp.socket.socket()
    s.bind(("127.0.0.1", 0))
    free = s.getsockname()[1]
    s.close()
    listener = links.open_listener("127.0.0.1", (free, free))
    assert listener.getsockname()[1] == free
    # a user's mistake (ValueError: one line from inside a Ray worker, not a traceback)
    with pytest.raises(ValueError, match=f"every port of --comm-ports {free}-{free} on "
                                         "127.0.0.1 is taken"):
        links.open_listener("127.0.0.1", (free, free))
    listener.close()


@pytest.mark.parametrize("name,nodes", [("tcp", [[0], [1]]), ("tcp", [[0], [1], [2]]),
                                        ("tcp", [[0, 1], [2, 3]]), ("hier", [[0], [1], [2]])])
def test_a_gradient_reduced_span_by_span_is_the_whole_sum_on_every_member(name, nodes, rng,
                                                                         monkeypatch):
    """reduce_span_ over spans that tile the gradient, in the order backprop finishes
    them (last first) and at odd places: every member ends with the same bits, the sum
    of the whole reduction at once (bit for bit with two members, whose sums are the
    same two numbers; to rounding with more), the cost riding with the last span."""
    monkeypatch.setattr(tcp, "PIECE", 4096)
    P = 20011
    groups = make_groups(name, nodes, P + 1)
    assert all(g.overlaps for g in groups)
    try:
        for step, cuts in enumerate([[0, 7, 9000, 9001, 15000, P], [0, P], [0, 1, P]]):
            bufs = [rng.standard_normal(P + 1).astype(np.float32) for _ in groups]
            whole = [b.copy() for b in bufs]
            run_threads([lambda g=g, b=b: g.allreduce_(2 * step, b) for g, b in zip(groups, whole)])
            spans = list(zip(cuts[:-1], cuts[1:]))[::-1]

            def by_spans(g, b):
                for lo, hi in spans:
                    g.reduce_span_(2 * step + 1, b, lo, hi, tail=hi == P)
            run_threads([lambda g=g, b=b: by_spans(g, b) for g, b in zip(groups, bufs)])
            for b in bufs:
                np.testing.assert_array_equal(b, bufs[0])
            if len(groups) == 2:
                np.testing.assert_array_equal(bufs[0], whole[0])
            else:
                np.testing.assert_allclose(bufs[0], whole[0], rtol=1e-5, atol=1e-5)
    finally:
        [g.close() for g in groups]


def test_hier_with_several_workers_a_node_does_not_overlap():
    groups = make_groups("hier", [[0, 1], [2, 3]], 101)
    try:
        assert not any(g.overlaps for g in groups)
    finally:
        [g.close() for g in groups]
