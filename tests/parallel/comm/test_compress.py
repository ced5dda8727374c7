"""Gradient compression on every backend, members as threads (no Ray): bf16 and
PowerSGD against its written algorithm, and N members = one process."""
import numpy as np
import pytest

from distnn.parallel.comm import SharedMemoryCollective, SharedMemoryFile, compress, tcp
from distnn.parallel.comm.base import Group
from distnn.parallel.comm.compress import (BF16Compressor, CompressedGroup, PowerSGD,
                                           compressible, orthonormalize_)
from distnn.parallel.comm.ring import RingCollective
from distnn.train.state import PluginState
from tests.parallel.comm.test_collective import _Handle
from tests.parallel.comm.test_tcp import make_groups
from tests.runs import run_threads

# a network's gradient buffer: a 40x30 matrix (compressed at rank 2), its 30 biases, a
# 30x3 matrix (too small to gain: exact), 3 biases, and the batch's cost
LAYOUT = [("dense0.weight", slice(0, 1200), (40, 30)), ("dense1.weight", slice(1200, 1290),
                                                         (30, 3)),
          ("dense0.bias", slice(1290, 1320), (30,)), ("dense1.bias", slice(1320, 1323), (3,))]
P = 1323


def test_orthonormalize_is_gram_schmidt_in_column_order(rng):
    p = rng.standard_normal((50, 4))
    want, _ = np.linalg.qr(p)
    got = p.copy()
    orthonormalize_(got)
    np.testing.assert_allclose(got.T @ got, np.eye(4), atol=1e-12)
    # the same columns up to sign as the QR factor: column i spans what columns <= i span
    np.testing.assert_allclose(np.abs(got), np.abs(want), atol=1e-10)
    p[:, 2] = p[:, 0] * 2    # dependent: nothing left of it
    p[:, 3] = 0
    orthonormalize_(p)
    assert np.abs(p[:, 2]).max() < 1e-7 and not p[:, 3].any()


def test_which_matrices_are_compressed():
    assert compressible((784, 800), 4) and compressible((800, 10), 4)
    assert not compressible((800, 10), 8)      # P and Q would be more than half of it
    assert not compressible((30,), 1) and not compressible((3, 2), 2)
    c = PowerSGD("2", LAYOUT, np.float64, 0)
    assert [k for k, _, _ in c.mats] == ["dense0.weight"]
    assert c.exact == [(1200, P + 1)]          # everything else and the cost: exact
    for bad in ("0", "65", "x", "2.5", " 2"):
        with pytest.raises(ValueError, match="integer 1..64"):
            PowerSGD(bad, LAYOUT, np.float64, 0)
    with pytest.raises(ValueError, match="must be one of"):
        compress.check("topk:3", "float32")
    with pytest.raises(ValueError, match="needs :ARG"):
        compress.check("powersgd", "float32")
    with pytest.raises(ValueError, match="takes no argument"):
        compress.check("bf16:2", "float32")
    with pytest.raises(ValueError, match="float32"):
        compress.check("bf16", "float64")


def reference_powersgd(grads, steps, rank, seed):
    """PowerSGD for one process, written out from the paper: M = g + e, P = M Q,
    P orthonormal, Q = M^T P, G = P Q^T, e = M - G, Q kept for the next step."""
    q = np.random.default_rng([seed, 0xC0, 0]).standard_normal((30, rank))
    orthonormalize_(q)
    e = np.zeros((40, 30))
    out = []
    for g in grads[:steps]:
        m = g[:1200].reshape(40, 30) + e
        p = m @ q
        orthonormalize_(p)
        q = m.T @ p
        G = p @ q.T
        e = m - G
        out.append(np.concatenate([G.reshape(-1), g[1200:]]))
    return out, e, q


def _local(world):
    """Members of an exact group of ``world`` on shared memory (or the group of one)."""
    if world == 1:
        return [Group()], lambda: None
    f = SharedMemoryFile(world, P + 1, np.float64)
    members = [SharedMemoryCollective(r, f.path, world, P + 1, np.dtype(np.float64).str,
                                      timeout=20) for r in range(world)]
    return members, lambda: ([m.close() for m in members], f.close())


def _ring(world):
    handles = [_Handle() for _ in range(world)]
    members = [RingCollective(r, world, handles, timeout=20) for r in range(world)]
    for h, m in zip(handles, members):
        h.target = m
    return members, lambda: None


def _net(name, nodes):
    members = make_groups(name, nodes, P + 1, np.float64, timeout=20)
    return members, lambda: [m.close() for m in members]


PLACES = {"one": lambda: _local(1), "shm2": lambda: _local(2), "shm3": lambda: _local(3),
          "ring3": lambda: _ring(3), "tcp2": lambda: _net("tcp", [[0], [1]]),
          "tcp3": lambda: _net("tcp", [[0, 1], [2]]),
          "hier4": lambda: _net("hier", [[0, 1], [2, 3]])}


def _split(total, world, rng):
    """``world`` random gradients that sum to ``total``."""
    parts = [rng.standard_normal(total.size) for _ in range(world - 1)]
    return parts + [total - sum(parts)] if parts else [total.copy()]


def _run(place, totals, rng, steps, rank=2, collapse_at=None, scale=1.0):
    """Every member's reduced buffer and compressor after ``steps`` steps of gradients
    summing to ``totals[k]``; with ``collapse_at`` the members' errors are merged (the
    pool's end of an epoch) before that step."""
    groups, close = PLACES[place]()
    world = len(groups)
    comps = [PowerSGD(str(rank), LAYOUT, np.float64, 7) for _ in range(world)]
    wrapped = [CompressedGroup(g, c, world) for g, c in zip(groups, comps)]
    outs = []
    try:
        for k in range(steps):
            if k == collapse_at:
                merged = PluginState.merge([c.state() for c in comps])
                for r, c in enumerate(comps):
                    c.load_state(merged.share(first=r == 0))
            bufs = [np.append(g, 0.5) for g in _split(totals[k], world, rng)]
            run_threads([lambda w=w, b=b: w.reduce_parts_(10 * k, b, None, scale)
                         for w, b in zip(wrapped, bufs)])
            for b in bufs:
                np.testing.assert_array_equal(b, bufs[0])      # the same bits everywhere
            assert bufs[0][-1] == pytest.approx(0.5 * world, abs=1e-12)   # cost: exact
            outs.append(bufs[0][:-1].copy())
    finally:
        close()
    return outs, comps


def test_powersgd_for_one_process_is_the_written_algorithm(rng):
    totals = [rng.standard_normal(P) for _ in range(4)]
    got, (c,) = _run("one", totals, rng, 4)
    want, e, q = reference_powersgd(totals, 4, 2, seed=7)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(c.errors[0], e, atol=1e-12)
    np.testing.assert_allclose(c.q[0], q, atol=1e-12)
    # rank 2 of a 40x30 gradient: the error is what the rank-2 product leaves out
    assert np.linalg.matrix_rank(got[-1][:1200].reshape(40, 30)) == 2
    assert np.abs(e).max() > 0.1
    # the -lr of a prescaled update is applied to what comes out, not to the errors
    scaled, (c2,) = _run("one", totals, rng, 4, scale=-0.1)
    for g, w in zip(scaled, want):
        np.testing.assert_allclose(g, -0.1 * w, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(c2.errors[0], e, atol=1e-12)


@pytest.fixture(params=["whole buffers", "reduce-scatter"])
def tcp_path(request, monkeypatch):
    """Small all-reduces pass whole buffers round a TCP ring; large ones reduce-scatter
    and all-gather: both, whatever the size."""
    if request.param == "reduce-scatter":
        monkeypatch.setattr(tcp, "small", lambda n, nbytes: False)    # (hier's too)
    return request.param


@pytest.mark.parametrize("place", ["shm2", "shm3", "ring3", "tcp2", "tcp3", "hier4"])
def test_n_members_give_the_one_process_result(place, rng, tcp_path):
    """Gradients split any way among N members reduce to one process's G, step after
    step (float64, 1e-9), and the members' errors sum to the one process's error, also
    across an epoch's end that gives the summed errors to the first member."""
    totals = [rng.standard_normal(P) for _ in range(6)]
    one, (c1,) = _run("one", totals, rng, 6)
    got, comps = _run(place, totals, rng, 6, collapse_at=3)
    for a, b in zip(got, one):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(sum(c.errors[0] for c in comps), c1.errors[0], atol=1e-9)
    assert all(np.abs(c.errors[0]).max() > 1e-3 for c in comps)   # each holds a share


def test_collapsed_errors_go_to_the_first_member_and_zeros_to_the_others(rng):
    comps = [PowerSGD("2", LAYOUT, np.float64, 7) for _ in range(3)]
    for c in comps:
        c.errors[0][...] = rng.standard_normal((40, 30))
    merged = PluginState.merge([c.state() for c in comps])
    total = (comps[0].errors[0] + comps[1].errors[0]) + comps[2].errors[0]
    np.testing.assert_array_equal(merged.arrays["errors"]["dense0.weight"], total)
    for r, c in enumerate(comps):
        c.load_state(merged.share(first=r == 0))
    np.testing.assert_array_equal(comps[0].errors[0], total)
    assert not comps[1].errors[0].any() and not comps[2].errors[0].any()
    comps[1].load_state(None)      # a fresh start: the initial Q
    np.testing.assert_array_equal(comps[1].q[0], PowerSGD("2", LAYOUT, np.float64, 7).q[0])
    with pytest.raises(ValueError, match="powersgd:2, not powersgd:3"):
        PowerSGD("3", LAYOUT, np.float64, 7).load_state(merged)


def test_bytes_per_step_at_rank_4_are_a_sixtieth_of_the_main_jobs_gradient():
    layout = [("dense0.weight", slice(0, 627200), (784, 800)),
              ("dense1.weight", slice(627200, 635200), (800, 10)),
              ("dense0.bias", slice(635200, 636000), (800,)),
              ("dense1.bias", slice(636000, 636010), (10,))]
    c = PowerSGD("4", layout, np.float32, 0)
    sent = c.pbuf.size + c.qbuf.size
    assert sent == 784 * 4 + 800 * 4 + 800 * 4 + 10 * 4 + 810 + 1
    assert 636011 / sent > 50


@pytest.mark.parametrize("place", ["shm2", "tcp2", "tcp3", "hier4", "ring3"])
def test_bf16_members_agree_and_stay_within_bfloat16_of_the_sum(place, rng, tcp_path):
    groups, close = {"shm2": lambda: _local32(2), "tcp2": lambda: _net32("tcp", [[0], [1]]),
                     "tcp3": lambda: _net32("tcp", [[0], [1], [2]]),
                     "hier4": lambda: _net32("hier", [[0, 1], [2, 3]]),
                     "ring3": lambda: _ring(3)}[place]()
    world = len(groups)
    wrapped = [CompressedGroup(g, BF16Compressor(None, LAYOUT, np.float32, 0), world)
               for g in groups]
    try:
        results = []
        for key in range(2):                                  # deterministic: twice
            r2 = np.random.default_rng(3)
            bufs = [np.append(r2.standard_normal(P), 0.1 + r).astype(np.float32)
                    for r in range(world)]
            exact = np.sum([b.astype(np.float64) for b in bufs], axis=0)
            before = [dict(g.stats) for g in groups]
            run_threads([lambda w=w, b=b: w.reduce_parts_(key, b, None)
                         for w, b in zip(wrapped, bufs)])
            for b in bufs:
                np.testing.assert_array_equal(b, bufs[0])
            # the cost travels exactly: float32 rounding, not bfloat16's 2^-8
            assert bufs[0][-1] == pytest.approx(sum(0.1 + r for r in range(world)), rel=1e-6)
            err = np.abs(bufs[0][:-1] - exact[:-1])
            assert err.max() <= world * 2 ** -8 * np.abs(exact[:-1]).max() + 1e-6
            assert err.max() > 0                              # it did round
            results.append(bufs[0].copy())
            sent = groups[0].stats["bytes_sent"] - before[0]["bytes_sent"]
            if place.startswith("tcp"):    # half of what float32 costs on the ring
                raw = 2 * (world - 1) / world * P * 4
                assert 0.45 * raw < sent < 0.55 * raw + 2000
        np.testing.assert_array_equal(results[0], results[1])
    finally:
        close()


def _local32(world):
    f = SharedMemoryFile(world, P + 1, np.float32)
    members = [SharedMemoryCollective(r, f.path, world, P + 1, np.dtype(np.float32).str,
                                      timeout=20) for r in range(world)]
    return members, lambda: ([m.close() for m in members], f.close())


def _net32(name, nodes):
    members = make_groups(name, nodes, P + 1, np.float32, timeout=20)
    return members, lambda: [m.close() for m in members]


def test_shm_reductions_that_skip_keys_never_overwrite_a_slower_members_sums(rng):
    """A compressed step without a gather makes one reduction per step and its keys
    step by 2 (0, 2, 4, ...): the two slot sets must still alternate call by call, or a
    member racing into the next step writes where the other is still reading."""
    import time
    groups, close = _local32(2)
    wrapped = [CompressedGroup(g, BF16Compressor(None, LAYOUT, np.float32, 0), 2)
               for g in groups]
    data = [[rng.standard_normal(P + 1).astype(np.float32) for _ in range(2)]
            for _ in range(40)]
    out = [[None] * 40 for _ in range(2)]

    def member(r):
        for k in range(40):
            b = data[k][r].copy()
            if r == 1 and k % 3 == 0:
                time.sleep(0.002)            # the slow one
            wrapped[r].reduce_parts_(2 * k, b, None)
            out[r][k] = b
    try:
        run_threads([lambda r=r: member(r) for r in range(2)])
    finally:
        close()
    for k in range(40):
        np.testing.assert_array_equal(out[0][k], out[1][k])
        a, b = data[k]
        assert (np.abs(out[0][k] - (a + b)) <= 2 ** -8 * (np.abs(a) + np.abs(b))).all()
