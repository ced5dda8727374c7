"""All-reduce backends and the distributed gradient contract, without Ray (threads)."""
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import distnn
from distnn.parallel.comm import (CollectiveAborted, RingCollective, SharedMemoryFile,
                                  SharedMemoryCollective)
from tests.runs import run_threads


@contextmanager
def shm_members(world, size, dtype=np.float32):
    """The ``world`` members of a fresh group file of ``size``-number slots."""
    group = SharedMemoryFile(world, size, dtype)
    members = [SharedMemoryCollective(r, group.path, world, size, np.dtype(dtype).str,
                                      timeout=10) for r in range(world)]
    try:
        yield members
    finally:
        for m in members:
            m.close()
        group.close()


@pytest.fixture
def shm3():
    group = SharedMemoryFile(3, 1001, np.float32)
    members = [SharedMemoryCollective(r, group.path, 3, 1001, np.dtype(np.float32).str,
                                      timeout=10) for r in range(3)]
    yield group, members
    for m in members:
        m.close()
    group.close()


def test_shm_allreduce_sums_identically_over_many_steps(shm3, rng):
    _, members = shm3
    for step in range(6):   # exercises both parity buffers
        bufs = [rng.standard_normal(1001).astype(np.float32) for _ in range(3)]
        expect = bufs[0] + bufs[1] + bufs[2]
        run_threads([lambda m=m, b=b: m.allreduce_(step, b) for m, b in zip(members, bufs)])
        for b in bufs:
            np.testing.assert_array_equal(b, bufs[0])
        np.testing.assert_allclose(bufs[0], expect, rtol=1e-6)


def test_shm_sharded_step_equals_allreduce_then_full_update(rng):
    """reduce_parts_ over each worker's shard, an update of that shard, all_gather_: every
    worker ends each step with exactly the vector a full all-reduce and a full update give
    (shards aligned to 64 bytes, disjoint, covering everything)."""
    world, size = 3, 1001
    group = SharedMemoryFile(world, size + 1, np.float32)
    members = [SharedMemoryCollective(r, group.path, world, size + 1, np.dtype(np.float32).str,
                                      timeout=10) for r in range(world)]
    try:
        shards = [m.shard(size) for m in members]
        assert shards[0][0] == 0 and shards[-1][1] == size
        assert all(a[1] == b[0] and a[1] % 16 == 0 for a, b in zip(shards, shards[1:]))
        params = [np.ones(size, np.float32) for _ in range(world)]
        expect = np.ones(size, np.float32)
        for step in range(4):
            bufs = [rng.standard_normal(size + 1).astype(np.float32) for _ in range(world)]
            total = (bufs[0] + bufs[1]) + bufs[2]
            expect -= 0.1 * total[:size]

            def work(r):
                lo, hi = shards[r]
                members[r].reduce_parts_(2 * step, bufs[r], [(lo, hi), (size, size + 1)])
                assert bufs[r][size] == total[size]
                params[r][lo:hi] -= 0.1 * bufs[r][lo:hi]
                members[r].all_gather_(2 * step + 1, params[r], lo, hi)
            run_threads([lambda r=r: work(r) for r in range(world)])
            for p in params:
                np.testing.assert_array_equal(p, expect)
    finally:
        for m in members:
            m.close()
        group.close()


@pytest.mark.parametrize("world", [2, 3])
def test_shm_in_place_gradient_reduces_as_a_copied_one(world, rng):
    """A gradient built in the member's own slot (``gradient_buffer``) and reduced
    there: over steps whose slots are rewritten each time, each member's shard and the
    cost are the sums a copied buffer gets, bit for bit, and the gathered parameters
    match; members racing into the next step never disturb a slower one's sums."""
    size = 1001
    with shm_members(world, size + 1) as members:
        shards = [m.shard(size) for m in members]
        held = [m.gradient_buffer(size + 1) for m in members]
        assert all(not h.any() and h.size == size + 1 for h in held)
        params = [np.ones(size, np.float32) for _ in range(world)]
        expect = np.ones(size, np.float32)
        for step in range(5):
            bufs = [rng.standard_normal(size + 1).astype(np.float32) for _ in range(world)]
            total = bufs[0] + bufs[1]
            for b in bufs[2:]:
                total += b
            expect -= 0.1 * total[:size]

            def work(r):
                lo, hi = shards[r]
                if r == step % world:      # a slow member: the others race ahead
                    threading.Event().wait(0.05)
                held[r][:] = bufs[r]       # "backprop" writes into the slot
                members[r].reduce_parts_(2 * step, held[r], [(lo, hi), (size, size + 1)])
                assert held[r][size] == total[size]
                np.testing.assert_array_equal(held[r][lo:hi], total[lo:hi])
                params[r][lo:hi] -= 0.1 * held[r][lo:hi]
                members[r].all_gather_(2 * step + 1, params[r], lo, hi)
            run_threads([lambda r=r: work(r) for r in range(world)])
            for p in params:
                np.testing.assert_array_equal(p, expect)
        with pytest.raises(ValueError, match="shard first"):
            members[0].reduce_parts_(99, held[0], [(0, size + 1)])
        with pytest.raises(RuntimeError, match="bug"):
            members[0].allreduce_(99, np.ones(size + 1, np.float32))


def test_shm_shared_parameters_are_updated_shard_by_shard(rng):
    """Parameters held in the group's row: each member updates its shard where it lies
    and the all-gather only waits, after which every member sees every shard; a gather
    of any other vector while the row is held is refused as a bug."""
    world, size = 3, 1001
    with shm_members(world, size + 1) as members:
        shared = [m.parameter_buffer(size) for m in members]
        shared[0][:] = 1.0
        assert all((s == 1.0).all() and s.size == size for s in shared)   # one memory
        expect = np.ones(size, np.float32)
        for step in range(3):
            deltas = rng.standard_normal(size).astype(np.float32)
            expect += deltas
            seen = [None] * world

            def work(r):
                lo, hi = members[r].shard(size)
                shared[r][lo:hi] += deltas[lo:hi]
                members[r].all_gather_(2 * step, shared[r], lo, hi)
                seen[r] = shared[r].copy()
                members[r].all_gather_(2 * step + 1, shared[r], lo, hi)   # all have read
            run_threads([lambda r=r: work(r) for r in range(world)])
            for v in seen:
                np.testing.assert_array_equal(v, expect)
        with pytest.raises(RuntimeError, match="bug"):
            members[0].all_gather_(999, np.ones(size, np.float32), 0, 10)


def test_a_group_of_one_offers_no_gradient_buffer():
    group = SharedMemoryFile(1, 11, np.float32)
    member = SharedMemoryCollective(0, group.path, 1, 11, np.dtype(np.float32).str)
    assert member.gradient_buffer(11) is None
    member.close()
    group.close()


def test_shm_abort_releases_a_waiting_worker(shm3):
    """An abort reaching any member (the driver calls every live worker's) releases the
    others: the flag is in the node's file."""
    group, members = shm3
    threading.Timer(0.2, members[1].abort).start()
    with pytest.raises(CollectiveAborted, match="a worker died"):
        members[0].allreduce_(0, np.ones(1001, np.float32))


class _Handle:
    """Stands in for a Ray actor handle: h.deliver.remote(key, data) -> target.deliver."""

    def __init__(self):
        self.target = None
        self.deliver = self

    def remote(self, key, data):
        self.target.deliver(key, np.array(data))  # a copy, as serialisation makes


def test_ring_allreduce_sums_identically(rng):
    n = 4
    handles = [_Handle() for _ in range(n)]
    members = [RingCollective(r, n, handles, timeout=10) for r in range(n)]
    for h, m in zip(handles, members):
        h.target = m
    for step in range(3):
        bufs = [rng.standard_normal(103) for _ in range(n)]
        expect = sum(bufs)
        run_threads([lambda m=m, b=b: m.allreduce_(step, b) for m, b in zip(members, bufs)])
        for b in bufs:
            np.testing.assert_array_equal(b, bufs[0])
        np.testing.assert_allclose(bufs[0], expect, rtol=1e-12)


def test_ring_abort(rng):
    handles = [_Handle(), _Handle()]
    members = [RingCollective(r, 2, handles, timeout=10) for r in range(2)]
    for h, m in zip(handles, members):
        h.target = m
    threading.Timer(0.2, members[0].abort).start()
    with pytest.raises(CollectiveAborted):
        members[0].allreduce_(0, np.ones(10))


@pytest.mark.parametrize("opts", [dict(), dict(keep_prob=0.7, keep_prob_input=0.9)])
def test_n_workers_reduce_to_the_one_process_gradient(opts, rng):
    """Each worker sums its slice scaled by 1/B; the all-reduced result is the mean
    gradient of the whole batch (dropout masks keyed by example index)."""
    x = rng.standard_normal((12, 9))
    y = rng.integers(0, 4, 12)
    idx = np.arange(100, 112)
    ref = distnn.Network([9, 7, 4], dtype="float64", seed=3, **opts)
    _, want = ref.loss_and_grad(x, y, epoch=2, indices=idx)
    world = 3
    group = SharedMemoryFile(world, ref.params.size, np.float64)
    try:
        nets = [distnn.Network([9, 7, 4], dtype="float64", seed=3, **opts) for _ in range(world)]
        coll = [SharedMemoryCollective(r, group.path, world, ref.params.size,
                                       np.dtype(np.float64).str) for r in range(world)]

        def work(r):
            s = slice(r * 12 // world, (r + 1) * 12 // world)
            nets[r].loss_and_grad_sum_(x[s], y[s], epoch=2, indices=idx[s], scale=1 / 12)
            coll[r].allreduce_(0, nets[r].grads)
            return nets[r].grads.copy()
        got = run_threads([lambda r=r: work(r) for r in range(world)])
        [c.close() for c in coll]
    finally:
        group.close()
    for g in got:
        np.testing.assert_allclose(g, want, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("world,backend", [(2, "shm"), (3, "shm"), (4, "shm"), (3, "ring")])
def test_synchronised_batchnorm_reduces_to_the_one_process_gradient(world, backend, rng):
    """With batch statistics all-reduced, N workers' slices give the one-process
    gradient and running statistics of the whole batch (per-worker statistics do not)."""
    x = rng.standard_normal((12, 9)) * 3 + 1
    y = rng.integers(0, 4, 12)
    make = lambda: distnn.Network([9, 7, 6, 4], dtype="float64", seed=3,  # noqa: E731
                                  batchnorm=True, keep_prob=0.8)
    ref = make()
    _, want = ref.loss_and_grad(x, y)
    want_buffers = ref.named_buffers()

    def run(sync):
        group = SharedMemoryFile(world, ref.params.size, np.float64)
        nets = [make() for _ in range(world)]
        if backend == "shm":
            coll = [SharedMemoryCollective(r, group.path, world, ref.params.size,
                                           np.dtype(np.float64).str, timeout=10)
                    for r in range(world)]
        else:
            handles = [_Handle() for _ in range(world)]
            coll = [RingCollective(r, world, handles, timeout=10) for r in range(world)]
            for h, c in zip(handles, coll):
                h.target = c
        keys = [0] * world

        def work(r):
            def allreduce(a):
                coll[r].allreduce_(keys[r], a)
                keys[r] += 1
            if sync:
                nets[r].sync_batchnorm(allreduce)
            s = slice(r * 12 // world, (r + 1) * 12 // world)
            nets[r].loss_and_grad_sum_(x[s], y[s], indices=np.arange(12)[s], scale=1 / 12)
            allreduce(nets[r].grads)
            return nets[r].grads.copy(), keys[r]
        try:
            return run_threads([lambda r=r: work(r) for r in range(world)]), nets
        finally:
            [c.close() for c in coll]
            group.close()

    got, nets = run(sync=True)
    for g, calls in got:
        np.testing.assert_allclose(g, want, rtol=1e-10, atol=1e-13)
        assert calls == 1 + nets[0].syncs_per_step == 7
    for net in nets:
        for k, v in net.named_buffers().items():
            np.testing.assert_allclose(v, want_buffers[k], rtol=1e-12)
    unsynced, _ = run(sync=False)
    assert not np.allclose(unsynced[0][0], want, rtol=1e-6)


def test_a_worker_without_rows_still_takes_part_in_batchnorm_syncs(rng):
    world = 3
    group = SharedMemoryFile(world, 500, np.float32)
    nets = [distnn.Network([5, 6, 3], batchnorm=True, seed=1) for _ in range(world)]
    coll = [SharedMemoryCollective(r, group.path, world, 500, np.dtype(np.float32).str,
                                   timeout=10) for r in range(world)]
    keys = [0] * world
    x, y = rng.standard_normal((2, 5)).astype(np.float32), np.array([0, 2])

    def work(r):
        def allreduce(a):
            coll[r].allreduce_(keys[r], a)
            keys[r] += 1
        nets[r].sync_batchnorm(allreduce)
        if r < 2:   # a batch of 2 over 3 workers: rank 2 has nothing
            nets[r].loss_and_grad_sum_(x[r:r + 1], y[r:r + 1], scale=0.5)
        else:
            nets[r].grads[:] = 0
            nets[r].sync_idle()
        allreduce(nets[r].grads)
        return nets[r].grads.copy()
    try:
        got = run_threads([lambda r=r: work(r) for r in range(world)])
    finally:
        [c.close() for c in coll]
        group.close()
    ref = distnn.Network([5, 6, 3], batchnorm=True, seed=1)
    _, want = ref.loss_and_grad(x, y)
    for g in got:
        np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-6)


def test_files_of_killed_drivers_are_swept(tmp_path):
    import subprocess
    import sys
    from distnn.parallel.comm import shm as collective
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = collective.SHM_DIR / f"distnn-{dead}-feedbeef"
    stale.write_bytes(b"x")
    mine = SharedMemoryFile(2, 10, np.float32)
    try:
        assert not stale.exists() and Path(mine.path).exists()
    finally:
        mine.close()


def test_reduce_parts_scales_the_shard_and_never_the_cost(rng):
    """The declared protocol: ``reduce_parts_(step, buf, parts, scale)`` sums, then
    multiplies this member's shard of the gradient by ``scale``; the cost stays a sum."""
    size = 40
    with shm_members(2, size + 1, np.float64) as members:
        bufs = [rng.standard_normal(size + 1) for _ in members]
        total = bufs[0] + bufs[1]
        shards = [m.shard(size) for m in members]
        run_threads([lambda m=m, b=b, s=s: m.reduce_parts_(0, b, [s, (size, size + 1)], -0.5)
                     for m, b, s in zip(members, bufs, shards)])
        for b, (lo, hi) in zip(bufs, shards):
            np.testing.assert_allclose(b[lo:hi], -0.5 * total[lo:hi], rtol=1e-15)
            assert b[size] == total[size]
