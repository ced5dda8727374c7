"""Outputs on an object store: checkpoints, TensorBoard logs and metrics on s3:// against
a real S3 API (moto's server, started on 127.0.0.1 by the fixture), read back with plain
pyarrow; the pointer-last commit; a killed two-worker run resumed from s3:// elsewhere."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

pafs = pytest.importorskip("pyarrow.fs")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("moto")

from distnn import cli  # noqa: E402
from distnn.io import checkpoint as ckpt  # noqa: E402
from distnn.io import store  # noqa: E402
from tests.runs import train_args  # noqa: E402


def _files(fs, prefix):
    return sorted(i.path[len(prefix) + 1:] for i in fs.get_file_info(
        pafs.FileSelector(prefix, recursive=True)) if i.type == pafs.FileType.File)


def _tensors(fs, path):
    t = pq.read_table(path, filesystem=fs).to_pylist()
    return {r["name"]: np.asarray(r["values"], r["dtype"]).reshape(r["shape"]) for r in t}


def test_checkpoints_logs_and_metrics_reach_the_bucket(blob_dir, tmp_path, bucket):
    b, fs = bucket
    args = train_args(blob_dir, f"s3://{b}/ck", epochs=4, extra=(
        "--logdir", f"s3://{b}/logs", "--metrics-out", f"s3://{b}/m.json", "--keep-last", "2"))
    assert cli.main(["-q", *args]) == 0
    assert cli.main(["-q", *train_args(blob_dir, tmp_path / "local", epochs=4,
                                       extra=("--keep-last", "2", "--metrics-out",
                                              str(tmp_path / "local-m.json")))]) == 0
    # the same files as the local run keeps (--keep-last 2 and the best), no others
    here = sorted(p.relative_to(tmp_path / "local").as_posix() for p in
                  (tmp_path / "local").rglob("*") if p.is_file() and p.name[0] != ".")
    assert _files(fs, f"{b}/ck") == here
    assert "epoch-0000/meta.json" in here and "epoch-0001/meta.json" not in here
    # read back with plain pyarrow from the bucket: the local run's tensors, bit for bit
    name = fs.open_input_stream(f"{b}/ck/latest").read().decode().splitlines()[0]
    assert name == "epoch-0003"
    remote = _tensors(fs, f"{b}/ck/{name}/tensors.parquet")
    local = ckpt.load(tmp_path / "local").tensors
    assert remote.keys() == local.keys()
    for k in local:
        np.testing.assert_array_equal(remote[k], local[k], err_msg=k)
    metrics = json.loads(fs.open_input_stream(f"{b}/m.json").read())
    assert [h["epoch"] for h in metrics["history"]] == [0, 1, 2, 3]
    # the event file holds every epoch's scalars
    from tensorboardX.proto import event_pb2
    events = [f for f in _files(fs, f"{b}/logs") if "tfevents" in f]
    assert len(events) == 1
    data = fs.open_input_stream(f"{b}/logs/{events[0]}").read()
    steps, pos = set(), 0
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 8], "little")
        ev = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
        steps |= {ev.step for v in ev.summary.value if v.tag == "valid/accuracy"}
        pos += n + 16
    assert steps == {0, 1, 2, 3}


def test_a_used_uri_is_refused_and_overwrite_clears_it(blob_dir, bucket, capsys):
    b, fs = bucket
    args = train_args(blob_dir, f"s3://{b}/ck", epochs=1)
    assert cli.main(["-q", *args]) == 0
    capsys.readouterr()
    assert cli.main(["-q", *args]) == 2
    assert "already holds checkpoint epoch-0000 of another run" in capsys.readouterr().err
    assert cli.main(["-q", *train_args(blob_dir, f"s3://{b}/ck", epochs=2),
                     "--overwrite"]) == 0
    assert [f for f in _files(fs, f"{b}/ck") if f.endswith("meta.json")] == [
        "epoch-0000/meta.json", "epoch-0001/meta.json"]
    assert ckpt.load(f"s3://{b}/ck").meta["history"][0]["epoch"] == 0


def test_an_upload_cut_off_before_its_pointer_never_becomes_latest(blob_dir, bucket,
                                                                  monkeypatch, capsys):
    """The pointer is the commit: epoch 1's files are uploaded, its 'latest' is not
    (the store fails); 'latest' still names epoch 0, which loads, and the run says so."""
    b, fs = bucket
    real = store.Remote.put

    def put(self, src, rel):
        if rel == "latest" and "epoch-0001" in src.read_text():
            raise store.OutputError("simulated: the connection dropped")
        return real(self, src, rel)
    monkeypatch.setattr(store.Remote, "put", put)
    assert cli.main(["-q", *train_args(blob_dir, f"s3://{b}/ck", epochs=3)]) == 5
    assert "the connection dropped" in capsys.readouterr().err
    assert "epoch-0001/tensors.parquet" in _files(fs, f"{b}/ck")     # uploaded, uncommitted
    assert fs.open_input_stream(f"{b}/ck/latest").read().decode().startswith("epoch-0000\n")
    assert ckpt.load(f"s3://{b}/ck").meta["epoch"] == 0


def test_eval_and_resume_from_a_checkpoint_uri(blob_dir, bucket, capsys):
    b, _ = bucket
    assert cli.main(["-q", *train_args(blob_dir, f"s3://{b}/ck", epochs=2)]) == 0
    capsys.readouterr()
    assert cli.main(["eval", f"s3://{b}/ck/epoch-0000", "--data-dir", str(blob_dir),
                     "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["checkpoint"] == f"s3://{b}/ck/epoch-0000"
    assert cli.main(["-q", "train", "--resume", f"s3://{b}/ck", "--epochs", "3"]) == 0
    assert ckpt.load(f"s3://{b}/ck").meta["epoch"] == 2


@pytest.mark.ray
@pytest.mark.slow
def test_killed_two_worker_run_resumes_from_s3_on_another_machine_bit_for_bit(
        blob_dir, bucket, tmp_path, s3_env):
    """Two workers, checkpoints and logs on s3://; SIGKILL the driver; resume from the
    bucket with a fresh stage (nothing of the first machine's disk): the uninterrupted
    run's parameters and optimizer state, bit for bit, read with plain pyarrow."""
    b, fs = bucket
    temp = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    extra = ("--workers", "2", "--logdir")

    def env(stage):
        return {**os.environ, **s3_env, "RAY_TMPDIR": temp, "DISTNN_STAGE": str(stage)}
    cmd = [sys.executable, "-m", "distnn.cli", "-q"]
    try:
        subprocess.run([*cmd, *train_args(blob_dir, f"s3://{b}/full", extra=(
            *extra, f"s3://{b}/full-logs"))], env=env(tmp_path / "a"), check=True, timeout=300)
        proc = subprocess.Popen([*cmd, *train_args(blob_dir, f"s3://{b}/part", extra=(
            *extra, f"s3://{b}/part-logs"))], env=env(tmp_path / "b"), start_new_session=True)
        deadline = time.time() + 180
        while not (fs.get_file_info(f"{b}/part/latest").type == pafs.FileType.File and
                   fs.open_input_stream(f"{b}/part/latest").read() >= b"epoch-0001"):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline, "no checkpoint reached the bucket"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        killed_at = ckpt.load(f"s3://{b}/part").meta["epoch"]
        assert killed_at < 5
        subprocess.run([*cmd, "train", "--resume", f"s3://{b}/part", "--logdir",
                        f"s3://{b}/part-logs"], env=env(tmp_path / "c"), check=True, timeout=300)
    finally:
        from tests.parallel.test_cluster import _kill_session
        _kill_session(temp)
    for kind in ("tensors", "optimizer"):
        a = _tensors(fs, f"{b}/full/epoch-0005/{kind}.parquet")
        c = _tensors(fs, f"{b}/part/epoch-0005/{kind}.parquet")
        assert a.keys() == c.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], c[k], err_msg=k)
    hist = json.loads(fs.open_input_stream(f"{b}/part/epoch-0005/meta.json").read())["history"]
    assert [h["epoch"] for h in hist] == list(range(6))
    assert len([f for f in _files(fs, f"{b}/part-logs") if "tfevents" in f]) == 2


def test_a_parquet_dataset_on_s3_trains_as_the_same_files_on_disk(bucket, tmp_path):
    """`distnn data convert` to the bucket, then --dataset parquet:s3://...: read through
    pyarrow's S3 filesystem, the parameters of the local copy, bit for bit."""
    from distnn.config import TrainConfig
    from distnn.parallel.driver import train
    b, fs = bucket
    assert cli.main(["data", "convert", "digits", f"s3://{b}/digits"]) == 0
    assert cli.main(["data", "convert", "digits", str(tmp_path / "digits")]) == 0
    assert _files(fs, f"{b}/digits") == ["test.parquet", "train.parquet", "validation.parquet"]
    kw = dict(layers=(64, 20, 10), epochs=2, lr=0.5, standardize=True)
    remote = train(TrainConfig(dataset=f"parquet:s3://{b}/digits", **kw), progress=False)
    local = train(TrainConfig(dataset=f"parquet:{tmp_path / 'digits'}", **kw), progress=False)
    np.testing.assert_array_equal(remote["network"].params, local["network"].params)


@pytest.mark.ray
@pytest.mark.slow
def test_a_search_on_s3_data_writes_its_results_to_s3(bucket, tmp_path, s3_env):
    """Tune's trials read the dataset from the bucket; the results table, best.toml and
    summary reach --out s3://..., which names the best config by its URI."""
    b, fs = bucket
    assert cli.main(["data", "convert", "digits", f"s3://{b}/digits"]) == 0
    temp = tempfile.mkdtemp(prefix="rq", dir="/tmp")
    try:
        subprocess.run([sys.executable, "-m", "distnn.cli", "-q", "search", "--dataset",
                        f"parquet:s3://{b}/digits", "--layers", "64,8,10", "--epochs", "2",
                        "--grid", "lr=0.1,0.5", "--out", f"s3://{b}/search"],
                       env={**os.environ, **s3_env, "RAY_TMPDIR": temp,
                            "DISTNN_STAGE": str(tmp_path / "stage")}, check=True, timeout=300)
    finally:
        from tests.parallel.test_cluster import _kill_session
        _kill_session(temp)
    names = _files(fs, f"{b}/search")
    assert {"results.csv", "best.toml", "summary.json"} <= set(names)
    summary = json.loads(fs.open_input_stream(f"{b}/search/summary.json").read())
    assert summary["trials"] == 2 and summary["best_config"] == f"s3://{b}/search/best.toml"
    assert 0.5 < summary["test_accuracy"] <= 1
