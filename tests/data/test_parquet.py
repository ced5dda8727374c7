"""Parquet datasets: the layouts read, the splits, the errors, and each worker reading
only its shard."""
import io
import json

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from distnn import cli  # noqa: E402
from distnn.config import TrainConfig  # noqa: E402
from distnn.data import parquet  # noqa: E402
from distnn.data.datasets import load  # noqa: E402
from distnn.data.idx import DataError  # noqa: E402
from distnn.data.parquet import Options  # noqa: E402
from distnn.data.parquet_write import table  # noqa: E402
from distnn.data.splits import Normalizer  # noqa: E402
from distnn.parallel.driver import train  # noqa: E402


def _images(n, side=8, seed=0):
    """Images whose label is the brightest quadrant: learnable, 4 classes."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 60, (n, side, side), dtype=np.uint8)
    y = rng.integers(0, 4, n)
    h = side // 2
    for i, k in enumerate(y):
        x[i, (k // 2) * h:(k // 2 + 1) * h, (k % 2) * h:(k % 2 + 1) * h] += 150
    return x, y


def _run(dataset, **kw):
    cfg = TrainConfig(dataset=dataset, epochs=2, lr=0.5, batch_size=10, **kw)
    return train(cfg, progress=False)


def test_digits_as_parquet_train_to_the_builtin_loaders_parameters(tmp_path, capsys):
    """`distnn data convert` then --dataset parquet: bit for bit what the built-in
    loader trains, for an image column and for 64 feature columns alike."""
    assert cli.main(["data", "convert", "digits", str(tmp_path / "d")]) == 0
    assert cli.main(["data", "convert", "digits", str(tmp_path / "t.parquet"),
                     "--tabular", "--row-group", "100"]) == 0
    assert "--dataset parquet:" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [
        "test.parquet", "train.parquet", "validation.parquet"]
    kw = dict(layers=(64, 20, 10), standardize=True)
    ref = _run("digits", **kw)
    for ds in (f"parquet:{tmp_path / 'd'}", f"parquet:{tmp_path / 't.parquet'}"):
        got = _run(ds, **kw)
        np.testing.assert_array_equal(got["network"].params, ref["network"].params, err_msg=ds)
        assert got["test_accuracy"] == ref["test_accuracy"]
        assert got["normalizer"].pixel_max == 16.0


def test_tabular_dataset_trains_and_evaluates_from_its_checkpoint(tmp_path, capsys):
    """Feature columns of mixed numeric types, a split column, a column left out."""
    x, y = _images(1500, side=4)
    cols = {f"f{j}": x.reshape(len(x), -1)[:, j].astype(np.float64 if j % 2 else np.int32)
            for j in range(16)}
    split = np.where(np.arange(1500) < 1100, "train", np.where(np.arange(1500) < 1300,
                                                                "validation", "test"))
    t = pa.table({**cols, "noise": np.zeros(1500), "label": y, "part": split})
    pq.write_table(t, tmp_path / "tab.parquet", row_group_size=256)
    feats = ",".join(f"f{j}" for j in range(16))
    ck = tmp_path / "ck"
    assert cli.main(["-q", "train", "--dataset", f"parquet:{tmp_path / 'tab.parquet'}",
                     "--feature-columns", feats, "--split-column", "part",
                     "--layers", "16,20,4", "--epochs", "6", "--lr", "0.3", "--standardize",
                     "--checkpoint-dir", str(ck), "--metrics-out",
                     str(tmp_path / "m.json")]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["test_accuracy"] > 0.9
    capsys.readouterr()
    assert cli.main(["eval", str(ck), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["examples"] == 200 and res["accuracy"] == m["test_accuracy"]


def test_hugging_face_layout_png_bytes_split_files(tmp_path):
    """data/train-*.parquet and data/test-*.parquet with {"bytes": PNG}: the test split
    from its file, a validation split cut from the training files by --split."""
    pytest.importorskip("PIL")
    from distnn.io.png import encode_png
    x, y = _images(300)
    (tmp_path / "data").mkdir()
    img = pa.StructArray.from_arrays([pa.array([encode_png(a) for a in x], pa.binary()),
                                      pa.array([None] * 300, pa.string())], ["bytes", "path"])
    t = pa.table({"image": img, "label": pa.array(y)})
    pq.write_table(t.slice(0, 250), tmp_path / "data" / "train-00000-of-00001.parquet",
                   row_group_size=64)
    pq.write_table(t.slice(250), tmp_path / "data" / "test-00000-of-00001.parquet")
    s = load(f"parquet:{tmp_path}", options=Options(fractions=(0.8, 0.2, 0.0)))
    assert (len(s.train) + len(s.valid), len(s.test)) == (250, 50)
    assert 30 < len(s.valid) < 70 and s.n_classes == 4 and s.pixel_max == 255
    test = s.test.read(0, 50)
    np.testing.assert_array_equal(test.x, x[250:])
    np.testing.assert_array_equal(test.y, y[250:])
    rows = np.concatenate([s.train.read(0, len(s.train)).x, s.valid.read(0, len(s.valid)).x])
    assert sorted(map(bytes, rows)) == sorted(map(bytes, x[:250]))


def test_fraction_split_is_fixed_disjoint_and_complete(tmp_path):
    x, y = _images(2000)
    pq.write_table(table(x, y), tmp_path / "all.parquet", row_group_size=300)
    s = load(f"parquet:{tmp_path / 'all.parquet'}", options=Options(fractions=(0.6, 0.3, 0.1)))
    parts = [getattr(s, k).read(0, len(getattr(s, k))) for k in ("train", "valid", "test")]
    assert sum(len(p) for p in parts) == 2000
    assert [abs(len(p) / 2000 - f) < 0.04 for p, f in zip(parts, (0.6, 0.3, 0.1))] == [True] * 3
    seen = np.concatenate([p.x.reshape(len(p), -1) for p in parts])
    assert len({bytes(r) for r in seen}) == len({bytes(r) for r in x.reshape(2000, -1)})
    again = load(f"parquet:{tmp_path / 'all.parquet'}",
                 options=Options(fractions=(0.6, 0.3, 0.1)))
    np.testing.assert_array_equal(again.valid.read(0, len(again.valid)).y, parts[1].y)


def test_streamed_standardisation_equals_the_in_memory_one(tmp_path):
    x, y = _images(1000)
    pq.write_table(table(x, y), tmp_path / "a.parquet", row_group_size=77)
    s = load(f"parquet:{tmp_path / 'a.parquet'}")
    whole = s.train.read(0, len(s.train))
    a = Normalizer.fit(whole.x, 255, True)
    b = Normalizer.fit_stream(s.train.chunks(), 255, True)
    np.testing.assert_allclose(b.mean, a.mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(b.std, a.std, rtol=1e-5, atol=1e-7)


def test_the_standardisation_pass_is_made_once_and_reused(tmp_path, data_home, monkeypatch):
    """A second run (a search's next trial) on the same data reads no pixels for it; a
    changed file is a new pass."""
    from distnn.train.data import prepare
    x, y = _images(600)
    pq.write_table(table(x, y), tmp_path / "a.parquet", row_group_size=100)
    cfg = TrainConfig(dataset=f"parquet:{tmp_path / 'a.parquet'}", layers=(64, 4),
                      standardize=True)
    reads = []
    real = parquet.read_part
    monkeypatch.setattr(parquet, "read_part", lambda lay, p, *a, with_x=True, **k: (
        reads.append(with_x), real(lay, p, *a, with_x=with_x, **k))[1])
    first = prepare(cfg, load(cfg.dataset, options=cfg.data_options())).normalizer
    assert reads.count(True) == 6        # each row group holds training rows (by hash)
    reads.clear()
    again = prepare(cfg, load(cfg.dataset, options=cfg.data_options())).normalizer
    assert reads.count(True) == 0
    np.testing.assert_array_equal(again.mean, first.mean)
    np.testing.assert_array_equal(again.std, first.std)
    pq.write_table(table(x[::-1].copy(), y[::-1].copy()), tmp_path / "a.parquet",
                   row_group_size=100)
    changed = prepare(cfg, load(cfg.dataset, options=cfg.data_options())).normalizer
    assert reads.count(True) > 0 and not np.array_equal(changed.mean, first.mean)


@pytest.mark.parametrize("change, expect", [
    ("no_label", "no label column 'label'"),
    ("text_feature", "feature column 'name' is string, not numeric"),
    ("label_range", "labels go from 0 to 5, expected 0..2"),
    ("mixed_sizes", "images of mixed sizes"),
    ("string_label", "expected integers 0..K-1"),
])
def test_bad_tables_are_refused_with_the_reason(tmp_path, change, expect):
    x, y = _images(40)
    flat = x.reshape(40, -1)
    if change == "no_label":
        t = pa.table({"image": pa.array(list(flat)), "target": y})
    elif change == "text_feature":
        t = pa.table({"a": np.ones(40), "name": ["x"] * 40, "label": y})
    elif change == "label_range":
        t = table(x, np.where(y == 3, 5, y % 3), n_classes=3)
    elif change == "mixed_sizes":
        t = pa.table({"image": pa.array([r[:64 - (i % 2)] for i, r in enumerate(flat)]),
                      "label": y})
    else:
        t = pa.table({"image": pa.array(list(flat)), "label": [str(v) for v in y]})
    pq.write_table(t, tmp_path / "bad.parquet")
    opts = Options(features=("a", "name")) if change == "text_feature" else Options()
    with pytest.raises(DataError, match=expect.replace("(", r"\(")):
        s = load(f"parquet:{tmp_path / 'bad.parquet'}", options=opts)
        s.train.read(0, len(s.train))
        s.test.read(0, len(s.test))


def test_missing_location_and_empty_directory(tmp_path):
    with pytest.raises(DataError, match="no such file or directory"):
        load(f"parquet:{tmp_path / 'nope'}")
    with pytest.raises(DataError, match="no .parquet files"):
        load(f"parquet:{tmp_path}")


def test_each_worker_reads_only_the_row_groups_of_its_shard(tmp_path, monkeypatch):
    from distnn.parallel.worker import Worker
    x, y = _images(1000)
    pq.write_table(table(x, y), tmp_path / "a.parquet", row_group_size=100)
    s = load(f"parquet:{tmp_path / 'a.parquet'}", options=Options(fractions=(1, 0, 0)))
    read = []
    real = parquet.read_part
    monkeypatch.setattr(parquet, "read_part", lambda lay, p, *a, **k: (
        read.append(p.group), real(lay, p, *a, **k))[1])
    cfg = TrainConfig(dataset="parquet:x", layers=(64, 4), workers=2)
    w = Worker(1, 2, cfg, Normalizer(255.0), s.train, s.valid)
    assert sorted(read) == [5, 6, 7, 8, 9]
    np.testing.assert_array_equal(w.engine.train.split.x, x[500:])
    assert w.engine.n_train == 1000
    read.clear()
    w.set_place(0, 1)          # elastic: the last one left reads the whole split
    assert sorted(read) == list(range(10)) and len(w.engine.train.y) == 1000


@pytest.mark.data
def test_mnist_as_parquet_trains_to_the_builtin_loaders_parameters(tmp_path):
    """The issue's check on the real thing (MNIST from the cache, or fetched)."""
    assert cli.main(["-q", "data", "convert", "mnist", str(tmp_path / "m")]) == 0
    kw = dict(layers=(784, 16, 10), train_size=3000, epochs=1)
    ref = train(TrainConfig(dataset="mnist", **kw), progress=False)
    got = train(TrainConfig(dataset=f"parquet:{tmp_path / 'm'}", **kw), progress=False)
    np.testing.assert_array_equal(got["network"].params, ref["network"].params)
    assert got["test_accuracy"] == ref["test_accuracy"] > 0.7


def test_png_decode_needs_pillow_says_how_to_get_it(tmp_path, monkeypatch):
    import builtins
    real = builtins.__import__

    def no_pil(name, *a, **k):
        if name == "PIL":
            raise ImportError("no PIL")
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_pil)
    with pytest.raises(DataError, match=r"pip install 'distnn\[images\]'"):
        parquet.decode_image(io.BytesIO(b"x").getvalue(), "f.parquet", None)
