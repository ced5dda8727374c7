"""The features a user combines, each dataset kind with the outputs and options around
it: built-in, IDX, Parquet images, Parquet features, Hugging Face PNG x {1, 2 workers}
x {--logdir, --checkpoint-dir, --metrics-out, --augment, --standardize, --resume};
and outputs on S3.  Each run is one short epoch: it must finish, write what it promises
and read back.  (A Parquet dataset with --logdir crashed after its first epoch.)"""
import io
import json
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from distnn import cli  # noqa: E402
from distnn.io import checkpoint as ckpt  # noqa: E402

pytestmark = pytest.mark.ray


def _hf_png(root: Path) -> Path:
    """A Hugging Face layout: train and test files with {"bytes": PNG} images."""
    from PIL import Image
    rng = np.random.default_rng(0)
    d = root / "hf" / "data"
    d.mkdir(parents=True)
    for name, n in (("train-00000-of-00001.parquet", 240), ("test-00000-of-00001.parquet", 60)):
        y = rng.integers(0, 3, n)
        rows = []
        for k in y:
            a = rng.integers(0, 50, (8, 8), dtype=np.uint8)
            a[:, k * 2:k * 2 + 3] += 180
            b = io.BytesIO()
            Image.fromarray(a).save(b, format="PNG")
            rows.append({"bytes": b.getvalue(), "path": None})
        pq.write_table(pa.table({"image": rows, "label": y}), d / name)
    return root / "hf"


@pytest.fixture(scope="module")
def kinds(tmp_path_factory, blob_dir):
    """dataset kind -> (the --dataset flags, --layers, augmentable)."""
    root = tmp_path_factory.mktemp("kinds")
    assert cli.main(["-q", "data", "convert", "digits", str(root / "img")]) == 0
    assert cli.main(["-q", "data", "convert", "digits", str(root / "tab.parquet"),
                     "--tabular"]) == 0
    return {"built-in": (["--dataset", "digits"], "64,16,10", True),
            "idx": (["--dataset", "idx", "--data-dir", str(blob_dir)], "64,16,4", True),
            "parquet-image": (["--dataset", f"parquet:{root / 'img'}"], "64,16,10", True),
            "parquet-tabular": (["--dataset", f"parquet:{root / 'tab.parquet'}"], "64,16,10",
                                False),
            "hf-png": (["--dataset", f"parquet:{_hf_png(root)}"], "64,16,3", True)}


def _event_scalars(logdir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return set(acc.Tags()["scalars"])


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("kind", ["built-in", "idx", "parquet-image", "parquet-tabular",
                                  "hf-png"])
def test_every_dataset_kind_with_every_output_then_resumed(kind, workers, kinds, tmp_path,
                                                           ray_session, capsys):
    flags, layers, augmentable = kinds[kind]
    ck, logs, m = tmp_path / "ck", tmp_path / "tb", tmp_path / "m.json"
    run = ["-q", "train", *flags, "--layers", layers, "--batch-size", "16", "--lr", "0.3",
           "--workers", str(workers), "--standardize", "--checkpoint-dir", str(ck),
           "--logdir", str(logs), "--metrics-out", str(m),
           *(["--augment", "rotate=5,shift=1"] if augmentable else [])]
    assert cli.main([*run, "--epochs", "1"]) == 0, capsys.readouterr().err
    first = json.loads(m.read_text())
    assert len(first["history"]) == 1 and 0 <= first["test_accuracy"] <= 1
    assert ckpt.load(ck).meta["epoch"] == 0
    tags = _event_scalars(logs)
    assert {"train/batch_cost", "valid/accuracy", "ranks/0/compute_seconds"} <= tags
    assert any(t.startswith("saturated/") for t in tags)      # the probe batch was read
    # resumed for a second epoch, into the same outputs
    assert cli.main(["-q", "train", "--resume", str(ck), "--epochs", "2", "--logdir",
                     str(logs), "--metrics-out", str(m)]) == 0, capsys.readouterr().err
    second = json.loads(m.read_text())
    assert [h["epoch"] for h in second["history"]] == [0, 1]
    assert ckpt.load(ck).meta["epoch"] == 1
    capsys.readouterr()
    assert cli.main(["eval", str(ck), "--json", "--which", "latest"]) == 0
    back = json.loads(capsys.readouterr().out)
    assert back["epoch"] == 1 and back["accuracy"] == pytest.approx(second["test_accuracy"])


def test_outputs_on_s3_with_a_parquet_dataset_on_two_workers(kinds, bucket, tmp_path,
                                                             ray_session, capsys):
    name, fs = bucket
    flags, layers, _ = kinds["parquet-image"]
    uri = f"s3://{name}/run"
    assert cli.main(["-q", "train", *flags, "--layers", layers, "--batch-size", "16",
                     "--workers", "2", "--epochs", "1", "--checkpoint-dir", f"{uri}/ck",
                     "--logdir", f"{uri}/tb", "--metrics-out", f"{uri}/m.json"]) == 0, \
        capsys.readouterr().err
    with fs.open_input_stream(f"{name}/run/m.json") as f:
        assert len(json.loads(f.read())["history"]) == 1
    capsys.readouterr()
    assert cli.main(["eval", f"{uri}/ck", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["epoch"] == 0
