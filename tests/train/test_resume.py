"""Checkpoints end to end: exact resume after SIGKILL, eval from Parquet alone,
TensorBoard event files, network2 interop, plots."""
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

pytest.importorskip("pyarrow")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from tests.data import tiny
    return tiny.write_blobs(tmp_path_factory.mktemp("idxdata"), 3600, 400, low=120, high=120)


def _args(data_dir, ckpt_dir, epochs=6, extra=()):
    return ["train", "--dataset", "idx", "--data-dir", str(data_dir), "--layers", "64,24,4",
            "--epochs", str(epochs), "--batch-size", "10", "--lr", "0.1",
            "--optimizer", "momentum", "--keep-prob", "0.8", "--l2", "0.5",
            "--checkpoint-dir", str(ckpt_dir), *extra]


def _final(ckpt_dir):
    c = ckpt.load(ckpt_dir)
    return {**c.tensors, **c.optimizer}     # parameters, buffers and optimizer state


def _kill_when(ckpt_dir, name, proc, timeout=120):
    deadline = time.time() + timeout
    latest = Path(ckpt_dir) / "latest"
    while time.time() < deadline:
        if latest.exists() and latest.read_text().strip() >= name:
            time.sleep(0.15)     # into the next epoch
            # the whole process group: with Ray, the driver's raylet and agents too
            # (a killed driver's agents outlive it otherwise)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        if proc.poll() is not None:
            pytest.fail("the run ended before it could be killed")
        time.sleep(0.02)
    pytest.fail("no checkpoint appeared")


def _run_killed_and_resumed(data_dir, tmp_path, extra=(), env=None):
    full = tmp_path / "full"
    assert cli.main(["-q", *_args(data_dir, full, extra=extra)]) == 0 if not env else True
    if env:
        subprocess.run([sys.executable, "-m", "distnn.cli", "-q",
                        *_args(data_dir, full, extra=extra)], env=env, check=True, timeout=300)
    part = tmp_path / "part"
    proc = subprocess.Popen([sys.executable, "-m", "distnn.cli", "-q",
                             *_args(data_dir, part, extra=extra)], env=env,
                            start_new_session=True)
    _kill_when(part, "epoch-0001", proc)
    killed_at = ckpt.load(part).meta["epoch"]
    assert killed_at < 5
    subprocess.run([sys.executable, "-m", "distnn.cli", "-q",
                    *_args(data_dir, part, extra=extra), "--resume"], env=env, check=True,
                   timeout=300)
    a, b = _final(full), _final(part)
    assert ckpt.load(part).meta["epoch"] == 5
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    hist = ckpt.load(part).meta["history"]
    assert [h["epoch"] for h in hist] == list(range(6))


def test_sigkill_mid_epoch_then_resume_is_bit_identical(data_dir, tmp_path):
    _run_killed_and_resumed(data_dir, tmp_path)


@pytest.mark.ray
@pytest.mark.slow
def test_sigkill_then_resume_with_two_workers(data_dir, tmp_path):
    pytest.importorskip("ray")
    temp = tempfile.mkdtemp(prefix="rr", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": temp}
    try:
        # with a parameter average: a sharded optimizer slot, checkpointed and restored
        _run_killed_and_resumed(data_dir, tmp_path, extra=("--workers", "2", "--ema", "0.9"),
                                env=env)
    finally:
        from tests.dist.test_cluster import _kill_session
        _kill_session(temp)


def test_checkpoint_read_with_pandas_alone_matches_distnn_eval(data_dir, tmp_path, capsys):
    pd = pytest.importorskip("pandas")
    assert cli.main(["-q", *_args(data_dir, tmp_path / "c", epochs=2)]) == 0
    capsys.readouterr()
    assert cli.main(["eval", str(tmp_path / "c"), "--data-dir", str(data_dir), "--json"]) == 0
    reported = json.loads(capsys.readouterr().out)["accuracy"]
    # --- a reader that knows only pandas, NumPy and the documented layout ---
    ck = tmp_path / "c" / (tmp_path / "c" / "latest").read_text().strip()
    df = pd.read_parquet(ck / "tensors.parquet")
    t = {r["name"]: np.asarray(r["values"], r["dtype"]).reshape(r["shape"])
         for _, r in df.iterrows()}
    x = idx.load(data_dir / "t10k-images-idx3-ubyte").reshape(400, -1) / 255.0
    y = idx.load(data_dir / "t10k-labels-idx1-ubyte")
    h = 1 / (1 + np.exp(-(x @ t["dense0.weight"] + t["dense0.bias"])))
    z = h @ t["dense1.weight"] + t["dense1.bias"]
    assert np.mean(z.argmax(1) == y) == pytest.approx(reported, abs=1e-9)
    assert 0.5 < reported <= 1.0


def test_architecture_mismatch_shows_both(data_dir, tmp_path, capsys):
    assert cli.main(["-q", *_args(data_dir, tmp_path / "c", epochs=1)]) == 0
    rc = cli.main(["-q", *_args(data_dir, tmp_path / "c", epochs=2),
                   "--layers", "64,30,4", "--resume"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "layers: checkpoint [64, 24, 4] vs requested [64, 30, 4]" in err


def test_tensorboard_events_have_every_scalar_for_every_epoch(data_dir, tmp_path):
    ea_mod = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    logdir = tmp_path / "tb"
    assert cli.main(["-q", *_args(data_dir, tmp_path / "c", epochs=3), "--logdir",
                     str(logdir), "--augment", "rotate=10"]) == 0
    ea = ea_mod.EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0})
    ea.Reload()
    tags = ea.Tags()
    for tag in ("train/batch_cost", "train/cost", "train/accuracy", "valid/cost", "valid/accuracy", "lr",
                "throughput/examples_per_second", "time/train_seconds", "saturated/act0"):
        assert [e.step for e in ea.Scalars(tag)] == [0, 1, 2], tag
    assert "weights/dense0.weight" in tags["histograms"]
    assert "grads/dense1.weight" in tags["histograms"]
    assert "augmented_samples" in tags["images"] and "config/text_summary" in tags["tensors"]
    assert ea.PluginTagToContent("hparams")          # the hparams view has this run
    assert [e.step for e in ea.Scalars("hparam/best_valid_accuracy")] == [2]


def test_network2_export_import_round_trip(data_dir, tmp_path, capsys):
    args = _args(data_dir, tmp_path / "c", epochs=1)
    args[args.index("--keep-prob") + 1] = "1.0"
    assert cli.main(["-q", *args, "--output", "sigmoid", "--cost", "cross-entropy"]) == 0
    out = tmp_path / "net.json"
    assert cli.main(["export", str(tmp_path / "c"), str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["sizes"] == [64, 24, 4] and doc["cost"] == "CrossEntropyCost"
    assert np.array(doc["weights"][0]).shape == (24, 64) and np.array(doc["biases"][1]).shape == (4, 1)
    assert cli.main(["import-network2", str(out), str(tmp_path / "imp"), "--dataset", "idx"]) == 0
    capsys.readouterr()
    accs = []
    for c in (tmp_path / "c", tmp_path / "imp"):
        assert cli.main(["eval", str(c), "--data-dir", str(data_dir), "--json"]) == 0
        accs.append(json.loads(capsys.readouterr().out)["accuracy"])
    assert accs[0] == pytest.approx(accs[1], abs=1e-9)
    with pytest.raises(SystemExit):
        cli.main(["export", str(tmp_path / "c"), str(out), "--format", "onnx"])


def test_export_refuses_what_network2_cannot_run(data_dir, tmp_path, capsys):
    assert cli.main(["-q", *_args(data_dir, tmp_path / "c", epochs=1)]) == 0  # softmax output
    assert cli.main(["export", str(tmp_path / "c"), str(tmp_path / "x.json")]) == 2
    assert "output is 'softmax'" in capsys.readouterr().err


def _png_width(path) -> int:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big")


def test_plot_writes_a_png(data_dir, tmp_path):
    pytest.importorskip("matplotlib")
    m = tmp_path / "m.json"
    assert cli.main(["-q", *_args(data_dir, tmp_path / "c", epochs=2), "--metrics-out",
                     str(m)]) == 0
    for src in (m, tmp_path / "c"):
        out = tmp_path / f"{src.name}.png"
        assert cli.main(["plot", str(src), str(out)]) == 0
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
        assert _png_width(out) == 1000   # cost and accuracy panels


def test_plot_of_a_run_that_monitored_nothing(data_dir, tmp_path, capsys):
    """--merge-valid --no-monitor-train: the mini-batch cost is the one curve; a history
    without even that is refused with the reason, not drawn as empty axes."""
    pytest.importorskip("matplotlib")
    from distnn.io.plot import plot_history
    m = tmp_path / "m.json"
    assert cli.main(["-q", *_args(data_dir, tmp_path / "c", epochs=2), "--merge-valid",
                     "--no-monitor-train", "--metrics-out", str(m)]) == 0
    h = json.loads(m.read_text())["history"]
    assert [e["valid_cost"] for e in h] == [None, None] and h[1]["batch_cost"] > 0
    assert f"last epoch mini-batch cost {h[1]['batch_cost']:.4f}" in capsys.readouterr().out
    assert cli.main(["plot", str(m), str(tmp_path / "a.png")]) == 0
    assert _png_width(tmp_path / "a.png") == 550   # no accuracy measured: the cost panel only
    old = [{k: v for k, v in e.items() if k != "batch_cost"} for e in h]
    with pytest.raises(ValueError, match="recorded no cost or accuracy per epoch"):
        plot_history(old, tmp_path / "b.png")


def test_eval_of_an_ema_run_uses_the_average_and_last_the_parameters(data_dir, tmp_path,
                                                                      capsys):
    c = tmp_path / "c"
    assert cli.main(["-q", *_args(data_dir, c, epochs=2), "--ema", "0.99",
                     "--metrics-out", str(tmp_path / "m.json")]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    capsys.readouterr()
    res = {}
    for extra in ((), ("--last",)):
        assert cli.main(["eval", str(c), "--data-dir", str(data_dir), "--json", *extra]) == 0
        res[extra] = json.loads(capsys.readouterr().out)
    avg, last = res[()], res[("--last",)]
    assert (avg["parameters"], last["parameters"]) == ("average", "last")
    assert avg["accuracy"] == m["test_accuracy"]            # what training reported
    assert abs(avg["cost"] - last["cost"]) > 1e-3 * last["cost"]
    t = ckpt.load(c)
    assert set(t.optimizer) == {f"{s}.{k}" for s in ("velocity", "average")
                                for k in ("dense0.weight", "dense0.bias", "dense1.weight",
                                          "dense1.bias")}
    capsys.readouterr()   # resuming without --ema would drop the average: refused
    assert cli.main(["-q", *_args(data_dir, c, epochs=3), "--resume"]) == 2
    assert "give --ema" in capsys.readouterr().err
