"""Local steps with logical replicas on Ray: K replicas give the same bits on any number
of workers, on every backend, through a killed worker, a shrink and a growth."""

import numpy as np
import pytest

from distnn.config import TrainConfig
from distnn.parallel.driver import train
from tests.parallel import test_driver, test_parquet_shards
from tests.parallel.test_driver import KillWorker, Squeeze, cfg

splits = test_driver.splits     # the synchronous tests' data (a fixture)
blob_parquet = test_parquet_shards.blob_parquet     # a Parquet dataset (a fixture)

pytestmark = pytest.mark.ray

#: float64 with dropout, augmentation and each synchronisation overlapped with the next
#: period; float32 with batch norm (running statistics averaged at each
#: synchronisation), a parameter average and L2; float32 synchronised in bfloat16
OPTIONS = [dict(dtype="float64", keep_prob=0.8, augment="rotate=10,shift=1",
                outer="nesterov", overlap_sync=True),
           dict(dtype="float32", batchnorm=True, ema=0.9, l2=0.5, optimizer="adam",
                lr=0.01),
           dict(dtype="float32", compress="bf16", outer="nesterov", overlap_sync=True,
                batchnorm=True)]


def local(**kw):
    return cfg(**{"local_steps": 4, "replicas": 4, "batch_size": 16, **kw})


@pytest.mark.parametrize("opts", OPTIONS)
def test_k_replicas_give_the_same_bits_on_1_and_2_workers_and_every_backend(
        ray_session, splits, opts):
    one = train(local(workers=1, **opts), splits, progress=False)["network"].params
    for backend in ("shm", "tcp", "ring"):
        two = train(local(allreduce=backend, **opts), splits)["network"].params
        np.testing.assert_array_equal(two, one, err_msg=backend)
    # 3 replicas: 2 on one worker, 1 on the other
    three = train(local(replicas=3, batch_size=15, **opts), splits)["network"].params
    np.testing.assert_array_equal(
        three, train(local(replicas=3, batch_size=15, workers=1, **opts), splits,
                     progress=False)["network"].params)


def test_a_killed_workers_replicas_are_replayed_to_the_same_bits(ray_session, splits):
    c = local(batch_size=4, replicas=2, lr=0.02, epochs=3, **OPTIONS[0])
    clean = train(c.replace(workers=1), splits, progress=False)["network"].params
    killer = KillWorker()
    faulted = train(c, splits, callbacks=[killer])
    assert killer.killed
    assert [f["epoch"] for f in faulted["faults"]] == [1]
    np.testing.assert_array_equal(faulted["network"].params, clean)


def test_a_lost_worker_not_replaced_moves_its_replicas_and_they_come_back(ray_session,
                                                                            splits):
    """Worker 1 killed after epoch 0 and its CPU taken: epoch 1 runs all 4 replicas on
    the one worker left, epoch 2 on 2 again.  Unlike the synchronous run (equal up to
    rounding), the parameters are the fault-free ones bit for bit."""
    c = local(epochs=4, batch_size=8, replace_timeout=10.0, **OPTIONS[1])
    clean = train(c, splits)

    out = train(c, splits, callbacks=[Squeeze(ray_session)])
    assert [h["workers"] for h in out["history"]] == [2, 1, 2, 2]
    np.testing.assert_array_equal(out["network"].params, clean["network"].params)


def test_a_parquet_dataset_read_a_shard_per_replica_gives_the_same_bits(
        ray_session, blob_parquet, tmp_path):
    """A dataset read on demand: each worker reads the shards of the replicas it hosts
    (--data-shards defaults to K), each replica trains on the examples of every global
    batch in its own shards; with --logdir and --checkpoint-dir, on 1 and 2 workers."""
    base = dict(dataset=blob_parquet, layers=(784, 16, 4), lr=0.1, optimizer="momentum",
                batch_size=32, epochs=2, seed=5, monitor_train=False, local_steps=3,
                replicas=4, keep_prob=0.8)
    got = {}
    for w in (1, 2):
        out = train(TrainConfig(workers=w, logdir=str(tmp_path / f"tb{w}"),
                                checkpoint_dir=str(tmp_path / f"ck{w}"), **base),
                    progress=False)
        got[w] = out["network"].params
        assert out["config"]["data_shards"] == 4
    np.testing.assert_array_equal(got[1], got[2])
    with pytest.raises(ValueError, match="--data-shards 2 is fewer than the 4 logical"):
        TrainConfig(data_shards=2, **base)
