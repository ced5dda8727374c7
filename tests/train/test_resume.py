"""Checkpoints end to end: exact resume after SIGKILL, eval from Parquet alone, an
architecture that does not fit, the parameter average in a checkpoint."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from distnn import cli
from distnn.data import idx
from distnn.io import checkpoint as ckpt
from tests.runs import train_args

pytest.importorskip("pyarrow")


def _final(ckpt_dir):
    c = ckpt.load(ckpt_dir)
    return {**c.tensors, **c.optimizer}     # parameters, buffers and optimizer state


def _kill_when(ckpt_dir, name, proc, timeout=120):
    deadline = time.time() + timeout
    latest = Path(ckpt_dir) / "latest"
    while time.time() < deadline:
        if latest.exists() and latest.read_text().splitlines()[0] >= name:
            time.sleep(0.01)     # into the next epoch (one takes a few 10 ms here)
            # the whole process group: with Ray, the driver's raylet and agents too
            # (a killed driver's agents outlive it otherwise)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        if proc.poll() is not None:
            pytest.fail("the run ended before it could be killed")
        time.sleep(0.02)
    pytest.fail("no checkpoint appeared")


def _run_killed_and_resumed(blob_dir, tmp_path, extra=(), env=None):
    full = tmp_path / "full"
    assert cli.main(["-q", *train_args(blob_dir, full, extra=extra)]) == 0 if not env else True
    if env:
        subprocess.run([sys.executable, "-m", "distnn.cli", "-q",
                        *train_args(blob_dir, full, extra=extra)], env=env, check=True, timeout=300)
    part = tmp_path / "part"
    proc = subprocess.Popen([sys.executable, "-m", "distnn.cli", "-q",
                             *train_args(blob_dir, part, extra=extra)], env=env,
                            start_new_session=True)
    _kill_when(part, "epoch-0001", proc)
    killed_at = ckpt.load(part).meta["epoch"]
    assert killed_at < 5
    subprocess.run([sys.executable, "-m", "distnn.cli", "-q",
                    *train_args(blob_dir, part, extra=extra), "--resume"], env=env, check=True,
                   timeout=300)
    a, b = _final(full), _final(part)
    assert ckpt.load(part).meta["epoch"] == 5
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    hist = ckpt.load(part).meta["history"]
    assert [h["epoch"] for h in hist] == list(range(6))


def test_sigkill_mid_epoch_then_resume_is_bit_identical(blob_dir, tmp_path):
    _run_killed_and_resumed(blob_dir, tmp_path)


def test_a_conv_net_killed_mid_epoch_resumes_bit_identically(blob_dir, tmp_path):
    _run_killed_and_resumed(blob_dir, tmp_path, extra=(
        "--layers", "conv:4:3,pool:2,conv:6:3:same,16,4", "--activation", "relu",
        "--batchnorm"))


def test_a_compressed_run_resumes_bit_identical_with_its_q_and_errors(blob_dir, tmp_path):
    """PowerSGD's state (each matrix's Q and error feedback) is checkpointed beside the
    optimizer's slots and restored, so the resumed run continues exactly."""
    _run_killed_and_resumed(blob_dir, tmp_path, extra=("--compress", "powersgd:2"))
    c = ckpt.load(tmp_path / "part")
    assert {"compress.q.dense0.weight", "compress.errors.dense0.weight"} <= set(c.optimizer)
    assert c.optimizer["compress.q.dense0.weight"].shape == (24, 2)
    assert np.abs(c.optimizer["compress.errors.dense0.weight"]).max() > 0
    assert c.meta["compress"] == {"name": "powersgd", "rank": 2}
    assert "compress.q.dense1.weight" not in c.optimizer      # 24x4: reduced exactly


@pytest.mark.ray
@pytest.mark.slow
# with a parameter average: a sharded optimizer slot, checkpointed and restored; with
# PowerSGD: the workers' errors, summed into worker 0 at every epoch's end as in the
# checkpoint, so the uninterrupted and the resumed run hold the same state
@pytest.mark.parametrize("extra", [("--ema", "0.9"), ("--compress", "powersgd:2")])
def test_sigkill_then_resume_with_two_workers(blob_dir, tmp_path, extra):
    pytest.importorskip("ray")
    temp = tempfile.mkdtemp(prefix="rr", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": temp}
    try:
        _run_killed_and_resumed(blob_dir, tmp_path, extra=("--workers", "2", *extra),
                                env=env)
    finally:
        from tests.parallel.test_cluster import _kill_session
        _kill_session(temp)


def test_checkpoint_read_with_pandas_alone_matches_distnn_eval(blob_dir, tmp_path, capsys):
    pd = pytest.importorskip("pandas")
    assert cli.main(["-q", *train_args(blob_dir, tmp_path / "c", epochs=2)]) == 0
    capsys.readouterr()
    assert cli.main(["eval", str(tmp_path / "c"), "--data-dir", str(blob_dir), "--json"]) == 0
    reported = json.loads(capsys.readouterr().out)["accuracy"]
    # --- a reader that knows only pandas, NumPy and the documented layout ---
    ck = tmp_path / "c" / (tmp_path / "c" / "latest").read_text().splitlines()[0]
    df = pd.read_parquet(ck / "tensors.parquet")
    t = {r["name"]: np.asarray(r["values"], r["dtype"]).reshape(r["shape"])
         for _, r in df.iterrows()}
    x = idx.load(blob_dir / "t10k-images-idx3-ubyte").reshape(400, -1) / 255.0
    y = idx.load(blob_dir / "t10k-labels-idx1-ubyte")
    h = 1 / (1 + np.exp(-(x @ t["dense0.weight"] + t["dense0.bias"])))
    z = h @ t["dense1.weight"] + t["dense1.bias"]
    assert np.mean(z.argmax(1) == y) == pytest.approx(reported, abs=1e-9)
    assert 0.5 < reported <= 1.0


def test_architecture_mismatch_shows_both(blob_dir, tmp_path, capsys):
    assert cli.main(["-q", *train_args(blob_dir, tmp_path / "c", epochs=1)]) == 0
    rc = cli.main(["-q", *train_args(blob_dir, tmp_path / "c", epochs=2),
                   "--layers", "64,30,4", "--resume"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "layers: checkpoint [64, 24, 4] vs requested [64, 30, 4]" in err


def test_eval_of_an_ema_run_uses_the_average_and_last_the_parameters(blob_dir, tmp_path,
                                                                      capsys):
    c = tmp_path / "c"
    assert cli.main(["-q", *train_args(blob_dir, c, epochs=2), "--ema", "0.99",
                     "--metrics-out", str(tmp_path / "m.json")]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    capsys.readouterr()
    res = {}
    for extra in ((), ("--last",)):
        assert cli.main(["eval", str(c), "--data-dir", str(blob_dir), "--json", *extra]) == 0
        res[extra] = json.loads(capsys.readouterr().out)
    avg, last = res[()], res[("--last",)]
    assert (avg["parameters"], last["parameters"]) == ("average", "last")
    assert avg["accuracy"] == m["test_accuracy"]            # what training reported
    assert abs(avg["cost"] - last["cost"]) > 1e-3 * last["cost"]
    t = ckpt.load(c)
    assert set(t.optimizer) == {f"{s}.{k}" for s in ("velocity", "average")
                                for k in ("dense0.weight", "dense0.bias", "dense1.weight",
                                          "dense1.bias")}
    capsys.readouterr()   # resuming without --ema keeps the checkpoint's; --ema 0 is refused
    assert cli.main(["-q", *train_args(blob_dir, c, epochs=3), "--ema", "0", "--resume"]) == 2
    assert "--ema: checkpoint 0.99, now 0.0" in capsys.readouterr().err
    assert cli.main(["-q", *train_args(blob_dir, c, epochs=3), "--resume"]) == 0
    assert ckpt.load(c).meta["config"]["ema"] == 0.99


def test_a_resume_reads_the_checkpoint_once(blob_dir, tmp_path, monkeypatch):
    """The command line takes the resumed run's settings from the same reading of the
    checkpoint that the run restores (#38): meta.json read once, each Parquet file once,
    and the resumed run equals the uninterrupted one."""
    full, part = tmp_path / "full", tmp_path / "part"
    assert cli.main(["-q", *train_args(blob_dir, full, epochs=3)]) == 0
    assert cli.main(["-q", *train_args(blob_dir, part, epochs=2)]) == 0
    reads = []          # the checkpoint directory of each file read
    read_meta, read_table = ckpt.read_meta, ckpt._read_table

    def counted_meta(path, *a, **k):
        p, meta = read_meta(path, *a, **k)
        reads.append((p.name, "meta.json"))
        return p, meta

    def counted_table(path, *a, **k):
        reads.append((path.parent.name, path.name))
        return read_table(path, *a, **k)
    monkeypatch.setattr(ckpt, "read_meta", counted_meta)
    monkeypatch.setattr(ckpt, "_read_table", counted_table)
    assert cli.main(["-q", "train", "--resume", str(part), "--epochs", "3"]) == 0
    # (after training, the command measures the best checkpoint: epoch-0000 here)
    assert sorted(r for r in reads if r[0] == "epoch-0001") == [
        ("epoch-0001", "meta.json"), ("epoch-0001", "optimizer.parquet"),
        ("epoch-0001", "tensors.parquet")]
    monkeypatch.undo()
    a, b = _final(full), _final(part)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
