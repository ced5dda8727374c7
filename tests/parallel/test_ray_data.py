"""A Ray Dataset as training data (``distnn.fit(config, datasets=...)``): the same rows
train bit for bit as they do from Parquet, on 1 and 2 workers, whatever the Dataset's
blocks; tensor columns from a ``map_batches`` pipeline; the split settings; a resume
checks the rows; mistakes are one clear message."""
import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("ray.data")

import distnn  # noqa: E402
from distnn.data.idx import DataError  # noqa: E402
from distnn.data.parquet_write import table  # noqa: E402

pytestmark = pytest.mark.ray

BASE = dict(layers=(784, 16, 4), lr=0.2, optimizer="momentum", batch_size=32, epochs=2,
            seed=5, monitor_train=False)


def _blobs(n, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    centres = rng.random((4, 784)) * 200
    x = np.clip(centres[y] + rng.standard_normal((n, 784)) * 60, 0, 255)
    return x.astype(np.uint8).reshape(n, 28, 28), y


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    """1,600 images in row groups of 100 with a split column, and the same rows in
    files named by split (train, validation, test)."""
    x, y = _blobs(1600)
    split = np.array(["train"] * 1200 + ["validation"] * 200 + ["test"] * 200)
    d = tmp_path_factory.mktemp("rd")
    pq.write_table(table(x, y).append_column("split", pa.array(split)), d / "one.parquet",
                   row_group_size=100)
    (d / "named").mkdir()
    for name, lo, hi in (("train", 0, 1200), ("validation", 1200, 1400),
                         ("test", 1400, 1600)):
        pq.write_table(table(x[lo:hi], y[lo:hi]), d / "named" / f"{name}.parquet",
                       row_group_size=150)
    return d, x, y


def _same(a, b):
    np.testing.assert_array_equal(a.network.params, b.network.params)
    assert a.test_accuracy == b.test_accuracy and a.test_accuracy > 0.9


@pytest.mark.parametrize("workers", [1, 2])
def test_a_ray_dataset_trains_bit_for_bit_as_the_same_rows_from_parquet(
        ray_session, blobs, workers):
    d, _, _ = blobs
    ds = ray_session.data.read_parquet(str(d / "one.parquet")).repartition(7)
    via_ray = distnn.fit(datasets=ds, workers=workers, standardize=True, **BASE)
    via_parquet = distnn.fit(dataset=f"parquet:{d / 'one.parquet'}", workers=workers,
                             standardize=True, **BASE)
    _same(via_ray, via_parquet)
    assert via_ray.config.dataset == "ray-dataset"
    assert via_ray.config.data_shards == via_parquet.config.data_shards == workers


def test_splits_given_as_a_dict_are_those_of_files_named_by_split(ray_session, blobs):
    d, _, _ = blobs
    named = {s: ray_session.data.read_parquet(str(d / "named" / f"{f}.parquet"))
             for s, f in (("train", "train"), ("validation", "validation"),
                          ("test", "test"))}
    _same(distnn.fit(datasets=named, **BASE),
          distnn.fit(dataset=f"parquet:{d / 'named'}", **BASE))
    # no validation Dataset: cut from train by the fractions, as for a directory without
    # a validation file
    (d / "noval").mkdir(exist_ok=True)
    for f in ("train", "test"):
        (d / "noval" / f"{f}.parquet").write_bytes((d / "named" / f"{f}.parquet").read_bytes())
    del named["validation"]
    a = distnn.fit(datasets=named, split="90/10/0", **BASE)
    b = distnn.fit(dataset=f"parquet:{d / 'noval'}", split="90/10/0", **BASE)
    _same(a, b)
    assert len(a.history) == 2 and a.history[-1]["valid_accuracy"] is not None


def test_tensor_columns_from_a_pipeline_train_as_raw_pixels(ray_session, blobs, tmp_path):
    """A map_batches pipeline yielding NumPy images (Ray's tensor column) and labels:
    the same result as those rows written to Parquet (split by --split fractions)."""
    _, x, y = blobs
    ds = ray_session.data.range(len(y), override_num_blocks=5).map_batches(
        lambda b: {"label": y[b["id"]], "image": x[b["id"]]})
    pq.write_table(table(x, y), tmp_path / "all.parquet", row_group_size=400)
    _same(distnn.fit(datasets=ds, workers=2, **BASE),
          distnn.fit(dataset=f"parquet:{tmp_path / 'all.parquet'}", workers=2, **BASE))


def test_a_resume_is_given_the_same_rows_and_refuses_others(ray_session, blobs, tmp_path):
    d, x, y = blobs
    ds = ray_session.data.read_parquet(str(d / "one.parquet"))
    ck = tmp_path / "ck"
    whole = distnn.fit(datasets=ds, **BASE)
    distnn.fit(datasets=ds, checkpoint_dir=str(ck), **{**BASE, "epochs": 1})
    # the same rows in other blocks resume; the result is the uninterrupted run's
    again = distnn.fit(datasets=ds.repartition(3), checkpoint_dir=str(ck), resume="latest",
                       **BASE)
    _same(again, whole)
    other = x.copy()
    other[5, 3, 3] ^= 1                                   # one pixel of one row
    split = np.array(["train"] * 1200 + ["validation"] * 200 + ["test"] * 200)
    t = table(other, y).append_column("split", pa.array(split))
    with pytest.raises(Exception, match="not what this run was trained on"):
        distnn.fit(datasets=ray_session.data.from_arrow(t), checkpoint_dir=str(ck),
                   resume="latest", **BASE)


def test_mistakes_are_one_clear_message(ray_session, blobs):
    d, x, y = blobs
    ds = ray_session.data.read_parquet(str(d / "one.parquet"))
    with pytest.raises(ValueError, match="unknown split name"):
        distnn.fit(datasets={"training-set": ds}, **BASE)
    with pytest.raises(ValueError, match="no 'train' Dataset"):
        distnn.fit(datasets={"test": ds}, **BASE)
    with pytest.raises(ValueError, match="not a ray.data.Dataset"):
        distnn.fit(datasets={"train": [1, 2]}, **BASE)
    with pytest.raises(DataError, match="no label column 'digit'"):
        distnn.fit(datasets=ds, label_column="digit", **BASE)
    bad = ray_session.data.from_items([{"image": [0] * 784, "label": -1}] * 10)
    with pytest.raises(DataError, match="negative labels"):
        distnn.fit(datasets={"train": ds, "test": bad}, **BASE)
    with pytest.raises(DataError, match="ray-dataset is a Ray Dataset given from Python"):
        distnn.fit(dataset="ray-dataset", **BASE)
