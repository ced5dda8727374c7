"""The user's bug reports of issue #19 about resume and checkpoint directories, each as a
test: what was lost, silently wrong, or a traceback, now an exact result or one line."""
import json
import os
import shutil
import time

import numpy as np
import pytest

from distnn import cli
from distnn.io import checkpoint as ckpt
from distnn.io.files import claim
from tests.runs import train_args

pytest.importorskip("pyarrow")


def _params(root):
    c = ckpt.load(root)
    return {**c.tensors, **c.optimizer}


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_a_resume_keeps_the_best_checkpoint_that_early_stopping_restores(blob_dir, tmp_path,
                                                                         capsys):
    """Killed once epoch 3 exists, resumed with --early-stop 4 --keep-last 1: the resumed
    run's pruning deleted the best epoch, and restoring it failed (no metrics)."""
    extra = ("--early-stop", "4", "--keep-last", "1")
    full, part = tmp_path / "full", tmp_path / "part"
    assert cli.main(["-q", *train_args(blob_dir, full, epochs=12, extra=extra),
                     "--metrics-out", str(tmp_path / "full.json")]) == 0
    assert cli.main(["-q", *train_args(blob_dir, part, epochs=3, extra=extra)]) == 0
    best = ckpt.load(part).meta["best_epoch"]
    first = json.loads((tmp_path / "full.json").read_text())
    assert first["best_epoch"] is not None and first["best_epoch"] < 3   # the case at hand
    assert cli.main(["-q", "train", "--resume", str(part), "--epochs", "12",
                     "--metrics-out", str(tmp_path / "part.json")]) == 0
    m = json.loads((tmp_path / "part.json").read_text())
    assert m["best_epoch"] == first["best_epoch"] and m["error"] is None
    assert [h["epoch"] for h in m["history"]] == [h["epoch"] for h in first["history"]]
    assert (part / f"epoch-{first['best_epoch']:04d}").is_dir() or best is None
    assert m["test_accuracy"] == first["test_accuracy"]


def test_resume_alone_continues_with_the_checkpoints_settings(blob_dir, tmp_path):
    """A bare --resume DIR used default lr 0.1, batch 10, 1 worker and the default layers;
    it now continues the run as it was, to the uninterrupted run's parameters."""
    full, part = tmp_path / "full", tmp_path / "part"
    assert cli.main(["-q", *train_args(blob_dir, full, epochs=4,
                                       extra=("--lr", "0.3", "--batch-size", "20"))]) == 0
    assert cli.main(["-q", *train_args(blob_dir, part, epochs=2,
                                       extra=("--lr", "0.3", "--batch-size", "20"))]) == 0
    assert cli.main(["-q", "train", "--resume", str(part), "--epochs", "4"]) == 0
    _same(_params(full), _params(part))
    assert ckpt.load(part).meta["config"]["lr"] == 0.3


def test_a_changed_setting_is_refused_unless_overridden_and_then_recorded(blob_dir, tmp_path,
                                                                          capsys):
    c = tmp_path / "c"
    assert cli.main(["-q", *train_args(blob_dir, c, epochs=2)]) == 0
    capsys.readouterr()
    for flag, value, shown in (("--seed", "7", "--seed: checkpoint 0, now 7"),
                               ("--lr", "0.5", "--lr: checkpoint 0.1, now 0.5"),
                               ("--momentum", "0.1", "--momentum: checkpoint 0.9, now 0.1"),
                               ("--standardize", None, "--standardize: checkpoint False, now True"),
                               ("--compress", "powersgd:2",
                                "--compress: checkpoint 'none', now 'powersgd:2'")):
        args = [flag] if value is None else [flag, value]
        assert cli.main(["-q", *train_args(blob_dir, c, epochs=3), *args, "--resume"]) == 2
        err = capsys.readouterr().err
        assert shown in err and "--override" in err
    assert ckpt.load(c).meta["epoch"] == 1                  # nothing was trained
    # with --override the new momentum is what trains (it came from the checkpoint)
    assert cli.main(["-q", *train_args(blob_dir, c, epochs=3), "--momentum", "0.1",
                     "--override", "momentum", "--resume"]) == 0
    meta = ckpt.load(c).meta
    assert meta["optimizer"]["momentum"] == 0.1 and meta["config"]["momentum"] == 0.1
    assert meta["overrides"] == [{"from_epoch": 2, "changes": {"momentum": [0.9, 0.1]}}]
    # placement settings change freely, and the record stays
    assert cli.main(["-q", "train", "--resume", str(c), "--epochs", "4",
                     "--keep-last", "5"]) == 0
    assert ckpt.load(c).meta["overrides"][0]["changes"] == {"momentum": [0.9, 0.1]}


def test_plateau_halvings_survive_a_resume(blob_dir, tmp_path):
    """The driver's plateau schedule restarted at η0 after a resume (and the checkpoint
    held its state from before the epoch's callbacks): a different result."""
    extra = ("--schedule", "plateau:1:64", "--monitor", "train_accuracy", "--lr", "2")
    full, part = tmp_path / "full", tmp_path / "part"
    assert cli.main(["-q", *train_args(blob_dir, full, epochs=8, extra=extra)]) == 0
    assert cli.main(["-q", *train_args(blob_dir, part, epochs=4, extra=extra)]) == 0
    assert ckpt.load(part).meta["schedule"]["halvings"] >= 1      # the case at hand
    assert cli.main(["-q", "train", "--resume", str(part), "--epochs", "8"]) == 0
    assert [h["lr"] for h in ckpt.load(part).meta["history"]] == \
        [h["lr"] for h in ckpt.load(full).meta["history"]]
    _same(_params(full), _params(part))


def test_one_run_per_checkpoint_directory(blob_dir, tmp_path, capsys):
    c = tmp_path / "c"
    lock = claim(c, "--checkpoint-dir", used=ckpt.used, clear=ckpt.clear, resume=False,
                 overwrite=False)                       # another run is writing here
    try:
        assert cli.main(["-q", *train_args(blob_dir, c, epochs=1)]) == 2
        assert "is in use by another run" in capsys.readouterr().err
    finally:
        lock.release()
    assert cli.main(["-q", *train_args(blob_dir, c, epochs=3)]) == 0
    capsys.readouterr()
    assert cli.main(["-q", *train_args(blob_dir, c, epochs=1)]) == 2   # a fresh run
    err = capsys.readouterr().err
    assert "already holds checkpoints epoch-0000..epoch-0002" in err and "--overwrite" in err
    (c / "notes.txt").write_text("mine")
    assert cli.main(["-q", *train_args(blob_dir, c, epochs=1), "--overwrite"]) == 0
    assert ckpt.epochs_in(c) == ["epoch-0000"] and (c / "notes.txt").exists()


def test_pruning_touches_only_epoch_directories(tmp_path):
    for e in range(4):
        ckpt.save(tmp_path, f"epoch-{e:04d}", {"w": np.ones(2)}, {},
                  {"epoch": e, "config": {}, "history": [{"epoch": i} for i in range(e + 1)],
                   "optimizer": {"name": "sgd", "t": 0}, "schedule": {"spec": "constant"}})
    inflight = tmp_path / ".tmp-epoch-0009-abcdef12"      # another writer's, in flight
    inflight.mkdir()
    outside = tmp_path.parent / "outside"
    outside.mkdir(exist_ok=True)
    (tmp_path / "epoch-0000-link").symlink_to(outside)
    ckpt.prune(tmp_path, 1)
    assert inflight.is_dir() and outside.is_dir()
    assert ckpt.epochs_in(tmp_path) == ["epoch-0003"]


def test_a_used_logdir_is_refused_and_a_resume_appends_to_it(blob_dir, tmp_path, capsys):
    pytest.importorskip("tensorboardX")
    c, logs = tmp_path / "c", tmp_path / "logs"
    assert cli.main(["-q", *train_args(blob_dir, c, epochs=2), "--logdir", str(logs)]) == 0
    capsys.readouterr()
    assert cli.main(["-q", *train_args(blob_dir, tmp_path / "d", epochs=2),
                     "--logdir", str(logs)]) == 2
    assert "TensorBoard event file" in capsys.readouterr().err
    time.sleep(1.1)   # event files are named by the second; TensorBoard reads them in order
    # a resume writes only where its own command line says: not into the logdir the
    # checkpoint recorded
    before = sorted(p.name for p in logs.iterdir())
    assert cli.main(["-q", "train", "--resume", str(c), "--epochs", "2"]) == 0
    assert sorted(p.name for p in logs.iterdir()) == before
    time.sleep(1.1)
    # resumed from epoch 0 into it: the logged epoch 1 is replayed, and shown once
    assert cli.main(["-q", "train", "--resume", str(c / "epoch-0000"), "--epochs", "3",
                     "--logdir", str(logs)]) == 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(logs))     # the run as TensorBoard shows it
    acc.Reload()
    assert [e.step for e in acc.Scalars("valid/accuracy")] == [0, 1, 2]


@pytest.mark.parametrize("damage,match", [
    ("epoch", "meta_sha256 checksum does not match"),
    # (its own name says it first: epoch-0001 holding epoch 0's meta.json)
    ("swap", "records epoch 0 but is the checkpoint epoch-0001"),
    ("outside", "must name a checkpoint directory inside"),
    ("symlink", "symbolic link"),
    ("version-str", "'version' must be a positive integer"),
    ("version-null", "'version' must be a positive integer"),
    ("epoch-str", "checksum|'epoch' must be an integer"),
])
def test_meta_json_is_checked(blob_dir, tmp_path, damage, match, capsys):
    c = tmp_path / "c"
    assert cli.main(["-q", *train_args(blob_dir, c, epochs=2)]) == 0
    meta_file = c / "epoch-0001" / "meta.json"
    meta = json.loads(meta_file.read_text())
    if damage == "epoch":
        meta["epoch"] = 100
    elif damage == "swap":          # a self-consistent meta.json of another checkpoint
        meta = json.loads((c / "epoch-0000" / "meta.json").read_text())
    elif damage == "outside":
        shutil.copytree(c / "epoch-0001", tmp_path / "outside")
        (c / "latest").write_text("../outside\n")
    elif damage == "symlink":
        shutil.copytree(c / "epoch-0001", tmp_path / "elsewhere")
        shutil.rmtree(c / "epoch-0001")
        (c / "epoch-0001").symlink_to(tmp_path / "elsewhere")
    elif damage.startswith("version"):
        meta["version"] = "2" if damage == "version-str" else None
    elif damage == "epoch-str":
        meta["epoch"] = "x"
    if damage in ("epoch", "swap") or damage.startswith(("version", "epoch-")):
        meta_file.write_text(json.dumps(meta))
    with pytest.raises(ckpt.CheckpointError, match=match):
        ckpt.load(c)
    capsys.readouterr()
    assert cli.main(["-q", "train", "--resume", str(c), "--epochs", "3"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_a_symlinked_epoch_directory_is_not_written_through(tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "epoch-0000").symlink_to(target)
    with pytest.raises(ckpt.CheckpointError, match="symbolic link"):
        ckpt.save(tmp_path / "ck", "epoch-0000", {"w": np.ones(2)}, {},
                  {"epoch": 0, "config": {}, "history": [{"epoch": 0}],
                   "optimizer": {"name": "sgd", "t": 0}, "schedule": {"spec": "constant"}})
    assert list(target.iterdir()) == [] and not list((tmp_path / "ck").glob(".tmp-*"))


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"),
                    reason="mounts a small tmpfs (root)")
def test_a_full_disk_stops_with_one_message_and_keeps_the_last_checkpoint(blob_dir, tmp_path):
    import subprocess
    import sys
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(disk)], check=True)
    try:
        p = subprocess.run([sys.executable, "-m", "distnn.cli", "-q",
                            *train_args(blob_dir, disk / "ck", epochs=30),
                            "--metrics-out", str(tmp_path / "m.json")],
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 5, p.stderr
        assert "Traceback" not in p.stderr and p.stderr.count("no space left on the device") == 1
        assert "resume with: distnn train --resume" in p.stderr
        c = ckpt.load(disk / "ck")                          # intact, hashes verified
        m = json.loads((tmp_path / "m.json").read_text())
        assert m["error"].startswith("could not write checkpoint")
        assert c.meta["epoch"] == m["history"][-1]["epoch"] - 1    # the one before
        assert not [f.name for f in (disk / "ck").iterdir() if f.name.startswith((".tmp-", ".latest."))]
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.parametrize("flag,kind", [("--checkpoint-dir", "file"), ("--logdir", "file"),
                                       ("--metrics-out", "dir")])
def test_a_file_where_a_directory_belongs_and_back_is_one_line(blob_dir, tmp_path, flag, kind,
                                                                capsys):
    p = tmp_path / "x"
    if kind == "file":
        p.write_text("")
    else:
        p.mkdir()
    args = ["-q", *train_args(blob_dir, tmp_path / "ck", epochs=1), flag, str(p)]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(p) in err and len(err.splitlines()) == 1
    assert not (tmp_path / "ck").exists() or not ckpt.epochs_in(tmp_path / "ck")


def test_no_traceback_reaches_the_user_for_path_mixups(blob_dir, tmp_path, capsys):
    c = tmp_path / "c"
    assert cli.main(["-q", *train_args(blob_dir, c, epochs=1)]) == 0
    (tmp_path / "f").write_text("")
    (tmp_path / "d").mkdir()
    for argv in (["export", str(c), str(tmp_path / "d")],
                 ["data", "preview", "digits", str(tmp_path / "d")],
                 ["import-network2", str(tmp_path / "f"), str(tmp_path / "f")],
                 ["eval", str(tmp_path / "f")]):
        capsys.readouterr()
        assert cli.main(argv) == 2, argv
        assert "Traceback" not in capsys.readouterr().err
