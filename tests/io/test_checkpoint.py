import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from distnn.io import checkpoint as ckpt

pa = pytest.importorskip("pyarrow")


def _save(root, name="epoch-0000", rng=None):
    rng = rng or np.random.default_rng(0)
    tensors = {"dense0.weight": rng.standard_normal((4, 3)).astype(np.float32),
               "dense0.bias": np.arange(3, dtype=np.float32)}
    opt = {"velocity.dense0.weight": np.ones((4, 3), np.float32)}
    meta = {"epoch": 0, "config": {}, "history": [{"epoch": 0}],
            "optimizer": {"name": "momentum", "t": 0}, "schedule": {"spec": "constant"}}
    return ckpt.save(root, name, tensors, opt, meta), tensors


def test_round_trip_and_latest(tmp_path):
    path, tensors = _save(tmp_path)
    c = ckpt.load(tmp_path)
    assert c.path == path and (tmp_path / "latest").read_text().splitlines()[0] == "epoch-0000"
    for k, v in tensors.items():
        np.testing.assert_array_equal(c.tensors[k], v)
        assert c.tensors[k].dtype == v.dtype
    assert c.optimizer["velocity.dense0.weight"].shape == (4, 3)
    meta = json.loads((path / "meta.json").read_text())
    assert meta["format"] == "distnn-checkpoint" and set(meta["sha256"]) == set(ckpt.FILES)


def test_readable_with_pyarrow_alone(tmp_path):
    import pyarrow.parquet as pq
    path, tensors = _save(tmp_path)
    t = pq.read_table(path / "tensors.parquet").to_pylist()
    row = next(r for r in t if r["name"] == "dense0.weight")
    assert row["shape"] == [4, 3] and row["dtype"] == "float32"
    np.testing.assert_allclose(np.array(row["values"]).reshape(4, 3), tensors["dense0.weight"])


@pytest.mark.parametrize("damage,match", [
    ("truncate", "sha256|not a readable Parquet"),
    ("edit", "does not match meta.json"),
    ("missing", "optimizer.parquet is missing"),
    ("version", "format version 99 is newer"),
    ("latest", "not a complete checkpoint"),
])
def test_damaged_checkpoints_are_refused(tmp_path, damage, match):
    path, _ = _save(tmp_path)
    f = path / "tensors.parquet"
    if damage == "truncate":
        f.write_bytes(f.read_bytes()[:-50])
    elif damage == "edit":
        import pyarrow.parquet as pq
        t = pq.read_table(f)
        vals = t.column("values").to_pylist()
        vals[0][0] += 1.0
        t = t.set_column(3, "values", pa.array(vals, t.schema.field("values").type))
        pq.write_table(t, f)
    elif damage == "missing":
        (path / "optimizer.parquet").unlink()
    elif damage == "version":
        meta = json.loads((path / "meta.json").read_text())
        meta["version"] = 99
        (path / "meta.json").write_text(json.dumps(meta))
    elif damage == "latest":
        (tmp_path / "latest").write_text("epoch-0042\n")
    with pytest.raises(ckpt.CheckpointError, match=match):
        ckpt.load(tmp_path)


def test_prune_keeps_last_and_best(tmp_path):
    for e in range(6):
        _save(tmp_path, f"epoch-{e:04d}")
    ckpt.prune(tmp_path, 2, {"epoch-0001"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0001", "epoch-0004",
                                                          "epoch-0005", "latest"]


WRITER = """
import sys, numpy as np
from distnn.io import checkpoint as ckpt
root = sys.argv[1]
rng = np.random.default_rng(0)
big = {f"t{i}": rng.standard_normal(400_000).astype(np.float32) for i in range(4)}
for e in range(1000):
    ckpt.save(root, f"epoch-{e:04d}", big, big, {"epoch": e, "config": {},
              "history": [{"epoch": i} for i in range(e + 1)],
              "optimizer": {"name": "sgd", "t": 0}, "schedule": {"spec": "constant"}})
    ckpt.prune(root, 2)
    print(e, flush=True)
"""


@pytest.mark.parametrize("delay", [0.9, 1.3, 1.7])
def test_sigkill_while_writing_leaves_a_loadable_latest(tmp_path, delay):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline()        # one checkpoint is complete
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    c = ckpt.load(tmp_path)              # verifies every hash
    assert c.meta["epoch"] >= 0 and len(c.tensors) == 4


def test_an_edited_meta_with_recomputed_hashes_must_still_agree_with_itself(tmp_path):
    """meta_sha256 detects damage, not a deliberate edit (anyone can recompute it): the
    recorded values must also agree with each other and with the checkpoint's name."""
    rng = np.random.default_rng(0)
    tensors = {"dense0.weight": rng.standard_normal((4, 3)).astype(np.float32)}
    meta = {"epoch": 3, "config": {}, "history": [{"epoch": e} for e in range(4)],
            "optimizer": {"name": "sgd", "t": 0}, "schedule": {"spec": "constant"}}
    path = ckpt.save(tmp_path, "epoch-0003", tensors, {}, meta)

    def edit(**changes):
        m = json.loads((path / "meta.json").read_text())
        m.update(changes)
        m["meta_sha256"] = ckpt.meta_checksum(m)
        (path / "meta.json").write_text(json.dumps(m))
    edit(epoch=1, history=[{"epoch": 0}, {"epoch": 1}])        # a rewound epoch
    with pytest.raises(ckpt.CheckpointError, match="records epoch 1 but is the checkpoint "
                                                   "epoch-0003"):
        ckpt.load(path)
    edit(epoch=3, history=[{"epoch": 0}, {"epoch": 2}, {"epoch": 3}])
    with pytest.raises(ckpt.CheckpointError, match="does not hold consecutive epochs"):
        ckpt.load(path)
