"""Parquet shards end to end: N workers each reading its own shard reproduce one process
(with and without --shard-memory), the streamed epoch order, and a dataset four times
a worker's memory limit trained on two workers without the driver loading it."""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from distnn.config import TrainConfig  # noqa: E402
from distnn.data.datasets import load  # noqa: E402
from distnn.data.parquet_write import table  # noqa: E402
from distnn.data.splits import Normalizer  # noqa: E402
from distnn.parallel.driver import train  # noqa: E402
from distnn.train.batches import owned_range, sharded_order  # noqa: E402
from distnn.train.stream import StreamedBatches, streamed_order, window_order  # noqa: E402


def _blobs(n, side, seed=0):
    """``n`` images of ``side``x``side`` around 4 class centres."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    centres = rng.random((4, side * side)) * 200
    x = np.clip(centres[y] + rng.standard_normal((n, side * side)) * 60, 0, 255)
    return x.astype(np.uint8).reshape(n, side, side), y


@pytest.fixture(scope="module")
def blob_parquet(tmp_path_factory):
    """2,400 images of 28x28 in row groups of 100, split by a split column."""
    x, y = _blobs(2400, 28)
    split = np.array(["train"] * 2000 + ["validation"] * 200 + ["test"] * 200)
    t = table(x, y).append_column("split", pa.array(split))
    path = tmp_path_factory.mktemp("pq") / "blobs.parquet"
    pq.write_table(t, path, row_group_size=100)
    return f"parquet:{path}"


def test_the_sharded_order_draws_each_batch_equally_from_every_shard():
    n, S, B = 1003, 4, 10
    order = sharded_order(7, 1, n, S)
    assert sorted(order) == list(range(n))
    ranges = [owned_range(n, S, r, 2) for r in range(2)]      # 2 workers, 2 shards each
    assert ranges[0][0] == 0 and ranges[0][1] == ranges[1][0] and ranges[1][1] == n
    for b in range(0, n - B, B):          # each worker holds 5 +- 1 of every 10
        g = order[b:b + B]
        assert abs(((g >= ranges[0][0]) & (g < ranges[0][1])).sum() - 5) <= 1
    order = sharded_order(7, 1, n, 2)     # a shard per worker: 5 each, exactly
    lo, hi = owned_range(n, 2, 0, 2)
    assert {int(((order[b:b + B] >= lo) & (order[b:b + B] < hi)).sum())
            for b in range(0, n - B, B)} == {5}
    np.testing.assert_array_equal(sharded_order(7, 1, n, 1), np.random.default_rng(
        [7, 1, 0x5EED]).permutation(n))   # one shard: the in-memory order itself
    assert not np.array_equal(order, sharded_order(7, 2, n, S))


def test_the_streamed_order_is_a_permutation_a_window_at_a_time():
    ends = np.cumsum(np.full(30, 100))
    starts = ends - 100
    order = window_order(starts, ends, seed=3, epoch=2, window_rows=350)
    assert sorted(order) == list(range(3000))
    blocks = order // 100
    # windows of 3 blocks (300 rows <= 350): each 300 consecutive examples cover 3 blocks
    for w in range(10):
        assert len(set(blocks[w * 300:(w + 1) * 300])) == 3
    assert not np.array_equal(order, window_order(starts, ends, 3, 3, 350))
    two = streamed_order(ends, 3, 2, 350, shards=2)       # two shards, interleaved
    assert sorted(two) == list(range(3000))
    assert set(two[0::2]) == set(range(1500)) and set(two[1::2]) == set(range(1500, 3000))


def test_a_streamed_shard_reads_each_row_group_once_an_epoch_within_its_budget(
        blob_parquet):
    s = load(blob_parquet)
    budget = 8 * 100 * 784              # 8 row groups: windows of 4
    b = StreamedBatches.of(s.train, 1000, 2000, Normalizer(255.0), None, np.float32, budget,
                           shards=2)
    held = []
    for epoch in range(2):
        order = b.order(1, epoch)
        mine = order[(order >= 1000) & (order < 2000)]
        for k in range(0, len(mine), 50):
            x, y = b.get(mine[k:k + 50], epoch)
            held.append(b._held)
            np.testing.assert_array_equal(y, b.y[mine[k:k + 50] - 1000])
    assert max(held) <= budget
    assert b.reads <= 2 * 10 + 2        # 10 row groups in the shard, about once an epoch
    whole = s.train.read(1000, 2000).x
    np.testing.assert_array_equal(b._raw(np.arange(0, 1000, 7)), whole[::7])


@pytest.mark.ray
@pytest.mark.parametrize("opts", [dict(), dict(shard_memory=1, keep_prob=0.8,
                                               augment="rotate=10", standardize=True),
                                  dict(shard_memory=1, batchnorm=True, sync_batchnorm=True,
                                       optimizer="adam", lr=0.01)])
def test_two_workers_on_their_own_shards_reproduce_one_process(ray_session, blob_parquet,
                                                               opts):
    """Each worker reads only its shard and trains on the examples of every global batch
    that it holds: with the same --data-shards, the reduced gradient is the one
    process's (--shard-memory 1: 668 examples a window, 2 windows a shard)."""
    base = dict(dataset=blob_parquet, layers=(784, 16, 4), lr=0.2, optimizer="momentum",
                batch_size=32, epochs=2, seed=5, monitor_train=False, data_shards=2)
    base.update(opts)
    two = train(TrainConfig(workers=2, **base), progress=False)
    one = train(TrainConfig(workers=1, **base), progress=False)
    np.testing.assert_allclose(two["network"].params, one["network"].params,
                               rtol=1e-4, atol=1e-5)
    assert two["test_accuracy"] == pytest.approx(one["test_accuracy"], abs=0.011)
    assert one["test_accuracy"] > 0.9


def _write_big(path, mib, side=64, rows=500):
    """``mib`` MiB of 64x64 images (4 classes, one bright quadrant each), in row groups of
    ``rows``: one generated block written again and again."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 8000)
    x = rng.integers(0, 200, (8000, side, side), dtype=np.uint8)
    h = side // 2
    for q in range(4):
        x[y == q, (q // 2) * h:(q // 2 + 1) * h, (q % 2) * h:(q % 2 + 1) * h] += 40
    t = table(x, y, n_classes=4)
    with pq.ParquetWriter(path, t.schema, compression="none") as w:
        for _ in range(-(-mib * 2 ** 20 // t.nbytes)):
            w.write_table(t, row_group_size=rows)
    return os.path.getsize(path) / 2 ** 20


@pytest.mark.ray
@pytest.mark.slow
def test_a_dataset_four_times_a_workers_memory_limit_trains_on_two_workers(tmp_path):
    """640 MiB of images; the limit: 160 MiB of memory per worker above its start.  With
    --shard-memory 16 each worker streams its 320 MiB shard (twice the limit: holding it
    would fail the check); the driver reads footers and streams one standardisation
    pass, never the dataset (it stays under a quarter of it)."""
    limit = 160
    size = _write_big(tmp_path / "big.parquet", 4 * limit)
    assert size >= 4 * limit
    temp = tempfile.mkdtemp(prefix="rb", dir="/tmp")
    out = tmp_path / "m.json"
    try:
        subprocess.run([sys.executable, "-m", "distnn.cli", "-q", "train", "--dataset",
                        f"parquet:{tmp_path / 'big.parquet'}", "--layers", "4096,4",
                        "--epochs", "1", "--lr", "0.05", "--batch-size", "200", "--split",
                        "98/1/1", "--standardize", "--workers", "2", "--shard-memory", "16",
                        "--metrics-out", str(out)],
                       env={**os.environ, "RAY_TMPDIR": temp}, check=True, timeout=600)
    finally:
        from tests.parallel.test_cluster import _kill_session
        _kill_session(temp)
        (tmp_path / "big.parquet").unlink()      # pytest keeps its last temp dirs
    m = json.loads(out.read_text())
    mem = m["memory"]
    assert len(mem["workers"]) == 2
    for w in mem["workers"]:
        assert w["peak_mib"] - w["start_mib"] < limit, mem
    assert mem["driver_peak_mib"] - mem["driver_start_mib"] < size / 4, mem
    assert m["history"][0]["valid_accuracy"] > 0.9 and m["test_accuracy"] > 0.9
