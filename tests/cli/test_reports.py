"""The cases of issue 28 that a new user and an adversary found, each as the user met it:
through the CLI, ending in exit 0 or one clean ``error:`` line, never a traceback."""
import gzip
import io
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distnn import cli
from distnn.data import idx
from tests.runs import train_args

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

ROOT = Path(__file__).resolve().parents[2]


def one_error_line(err: str, *words: str) -> str:
    """The single ``error:`` line of ``err`` (no traceback), which names ``words``."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def run_cli(*argv, capsys):
    rc = cli.main(list(argv))
    return rc, capsys.readouterr()


# -- search ------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, words", [
    (["--grid", "lr=abc"], ["every one", "lr"]),
    (["--grid", "batch_size=0"], ["every one", "batch_size"]),
    (["--grid", "seed=a"], ["every one", "seed"]),
    (["--random", "hidden=choice:"], ["hidden"]),
    (["--random", "lr=loguniform:0.01:1", "--samples", "1000000000"], ["1,000,000,000 trials"]),
    (["--grid", "lr=0.1", "--grid", "lr=0.2"], ["lr twice"]),
])
def test_a_search_that_cannot_run_is_one_line_before_it_starts(tmp_path, capsys, flags, words):
    rc, out = run_cli("search", "--out", str(tmp_path / "s"), *flags, capsys=capsys)
    assert rc == 2
    one_error_line(out.err, *words)
    assert not (tmp_path / "s").exists()   # refused before any trial ran


def test_repeated_grid_flags_add_up(tmp_path, capsys):
    """`--grid a=.. --grid b=..` searched only the last grid: 11 trials where 11 x 11
    x 10 x 10 x 10 were asked for.  Counted before the search starts."""
    rc, out = run_cli("search", "--out", str(tmp_path / "s"),
                      "--grid", "lr=" + ",".join(str(k / 10) for k in range(1, 12)),
                      "--grid", "seed=" + ",".join(str(k) for k in range(11)),
                      "--grid", "l2=" + ",".join(str(k) for k in range(10)),
                      "--grid", "batch_size=" + ",".join(str(k) for k in range(1, 11)),
                      "--grid", "hidden=" + ",".join(str(k) for k in range(1, 11)),
                      capsys=capsys)
    assert rc == 2
    one_error_line(out.err, "121,000 trials")


# -- flags that cannot work --------------------------------------------------------------

@pytest.mark.parametrize("flags, words", [
    (["--comm-timeout", "1e-9"], ["comm_timeout", "at least 1 second"]),
    # (shared memory, the one-node default, listens on no port: a range matters to tcp)
    (["--workers", "2", "--allreduce", "tcp", "--comm-ports", "29500-29500"],
     ["--comm-ports 29500-29500 has 1 port(s)"]),
    # threads take CPUs: more than any machine has (a Ray this process already joined,
    # as in the whole suite, is waited for up to --replace-timeout: it may be starting)
    (["--workers", "2", "--threads", "4096", "--replace-timeout", "1"],
     ["--workers 2 x --threads 4096 needs 8192 CPUs", "the Ray cluster has",
      "; use --workers 1 --threads "]),
])
def test_values_that_cannot_work_are_refused_before_training(blob_dir, tmp_path, capsys,
                                                             flags, words):
    rc, out = run_cli(*train_args(blob_dir, tmp_path / "ck", epochs=1), *flags, capsys=capsys)
    assert rc == 2
    one_error_line(out.err, *words)
    assert "nothing to resume" not in out.err and not list(tmp_path.glob("ck/epoch-*"))


def test_no_help_repeats_a_default(capsys):
    for command in ("train", "search", "eval", "inspect", "export", "plot", "data",
                    "lr-find", "gradcheck"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "(default: None)" not in text, command
        for chunk in text.split("(default:")[1:]:
            shown = chunk.split(")")[0]
            assert "(default:" not in shown and "(" not in shown, (command, chunk[:80])


# -- what train, eval and inspect say they report ----------------------------------------

@pytest.fixture(scope="module")
def worse_at_the_end(tmp_path_factory):
    """A run whose best checkpoint (epoch 0) is not its latest: lr 20 diverges."""
    d = tmp_path_factory.mktemp("ck") / "ck"
    cap = io.StringIO()
    from contextlib import redirect_stdout
    with redirect_stdout(cap):
        assert cli.main(["-q", "train", "--dataset", "digits", "--layers", "64,16,10",
                         "--epochs", "6", "--lr", "20", "--batch-size", "10", "--seed", "0",
                         "--checkpoint-dir", str(d)]) == 0
    return d, cap.getvalue()


def test_train_ends_with_the_accuracy_that_eval_will_print(worse_at_the_end, capsys):
    d, said = worse_at_the_end
    latest = (d / "latest").read_text().split()[0]
    best = (d / "best").read_text().split()[0]
    assert best != latest            # the case at hand
    assert f"(epoch {int(latest[-4:])}, the last)" in said
    line = next(ln for ln in said.splitlines() if ln.startswith("the best checkpoint"))
    best_acc = line.rsplit(" ", 1)[1]
    rc, out = run_cli("eval", str(d), capsys=capsys)
    assert rc == 0
    head = out.out.splitlines()
    assert f"epoch {int(best[-4:])}, the best" in head[0]
    assert head[1].startswith(f"accuracy {best_acc}")
    rc, out = run_cli("inspect", str(d), capsys=capsys)
    assert rc == 0 and f"epoch {int(latest[-4:])}, the latest" in out.out.splitlines()[0]
    # the history: train_cost among the columns, each column in one format (issue 42)
    lines = out.out.splitlines()
    header = next(ln for ln in lines if ln.startswith("epoch "))
    assert "train_cost" in header.split()
    rows = [ln.split() for ln in lines[lines.index(header) + 1:] if ln[:5].strip().isdigit()]
    col = header.split().index("valid_accuracy")
    assert rows and all(r[col].endswith("%") for r in rows)
    col = header.split().index("valid_cost")
    assert all(len(r[col].split(".")[1]) == 4 for r in rows)


def test_eval_accepts_validation_as_parquet_names_it(worse_at_the_end, capsys):
    d, _ = worse_at_the_end
    outs = []
    for split in ("validation", "valid"):
        rc, out = run_cli("eval", str(d), "--split", split, capsys=capsys)
        assert rc == 0
        outs.append(out.out.splitlines()[:2])
    assert outs[0] == outs[1] and "valid (359 examples" in outs[0][0]


def test_no_measurable_variance_rather_than_a_negative_one():
    from distnn.train.diagnosis import diagnose, format_diagnosis
    text = format_diagnosis(diagnose(0.03, 0.0125))
    assert "no measurable variance" in text and "-1.75" not in text


# -- bad data ----------------------------------------------------------------------------

def test_an_idx_training_file_with_no_images(tmp_path, capsys):
    d = tmp_path / "idx"
    d.mkdir()
    for pre, n in (("train", 0), ("t10k", 4)):
        (d / f"{pre}-images-idx3-ubyte").write_bytes(idx.encode(np.zeros((n, 4, 4), np.uint8)))
        (d / f"{pre}-labels-idx1-ubyte").write_bytes(idx.encode(np.zeros(n, np.uint8)))
    rc, out = run_cli("train", "--dataset", "idx", "--data-dir", str(d), "--layers", "16,2",
                      "--epochs", "1", capsys=capsys)
    assert rc == 2
    one_error_line(out.err, "holds no images")


@pytest.mark.parametrize("doc", [{"history": {"epoch": 0}}, {"history": [1, 2]},
                                 {"history": [{"epoch": "0", "train_cost": 1.0}]},
                                 {"history": [{"epoch": 0, "train_cost": "x"}]}, [1]])
def test_plot_of_a_history_that_is_not_records(tmp_path, capsys, doc):
    pytest.importorskip("matplotlib")
    (tmp_path / "m.json").write_text(json.dumps(doc))
    rc, out = run_cli("plot", str(tmp_path / "m.json"), str(tmp_path / "p.png"), capsys=capsys)
    assert rc == 2
    one_error_line(out.err, "history")
    assert not (tmp_path / "p.png").exists()


def _png_parquet(root: Path, big: tuple[int, int] | None) -> Path:
    """A Hugging Face layout of 8x8 PNGs; with ``big``, training row 5 is a (w, h)
    black PNG: a few kilobytes that decode to w*h bytes."""
    from PIL import Image
    rng = np.random.default_rng(0)
    (root / "data").mkdir(parents=True)
    for name, n in (("train-00000-of-00001.parquet", 40), ("test-00000-of-00001.parquet", 10)):
        rows = []
        for i in range(n):
            im = Image.new("L", big) if big and i == 5 and name.startswith("train") else \
                Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8))
            b = io.BytesIO()
            im.save(b, format="PNG")
            rows.append({"bytes": b.getvalue(), "path": None})
        pq.write_table(pa.table({"image": rows, "label": np.arange(n) % 2}), root / "data" / name)
    return root


def test_a_decompression_bomb_is_a_data_error_with_a_limit_to_raise(tmp_path, capsys):
    pytest.importorskip("PIL")
    bomb = _png_parquet(tmp_path / "bomb", (5000, 5000))
    assert (bomb / "data" / "train-00000-of-00001.parquet").stat().st_size < 200_000
    rc, out = run_cli("train", "--dataset", f"parquet:{bomb}", "--layers", "64,2", "--epochs",
                      "1", capsys=capsys)
    assert rc == 2
    one_error_line(out.err, "--max-image-pixels", "5000x5000", "train-00000-of-00001.parquet")
    # the same limit, lowered, refuses ordinary images; raised, lets them through
    fine = _png_parquet(tmp_path / "fine", None)
    rc, out = run_cli("train", "--dataset", f"parquet:{fine}", "--layers", "64,2", "--epochs",
                      "1", "--max-image-pixels", "63", capsys=capsys)
    assert rc == 2
    one_error_line(out.err, "--max-image-pixels 63", "8x8")
    assert cli.main(["-q", "train", "--dataset", f"parquet:{fine}", "--layers", "64,2",
                     "--epochs", "1", "--max-image-pixels", "64"]) == 0


def test_data_preview_of_a_parquet_dataset(tmp_path, capsys):
    assert cli.main(["-q", "data", "convert", "digits", str(tmp_path / "img")]) == 0
    rc, out = run_cli("data", "preview", f"parquet:{tmp_path / 'img'}", str(tmp_path / "p.png"),
                      "--augment", "shift=1", capsys=capsys)
    assert rc == 0 and (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_malicious_pickle_is_a_data_error_naming_the_file(tmp_path, capsys):
    """The Python API's loader says which file it refused, as a DataError the CLI prints as
    one line; the CLI itself also checks a pickle's hash before it unpickles anything."""
    from distnn.data.datasets import idx_from_pickle
    from distnn.data.idx import DataError
    blob = gzip.compress(pickle.dumps((np.zeros(2), _Evil()), protocol=2))
    with pytest.raises(DataError, match=r"evil\.pkl\.gz: refusing to load .*system"):
        idx_from_pickle(blob, "evil.pkl.gz")
    (tmp_path / "mnist.pkl.gz").write_bytes(blob)
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        rc, out = run_cli("train", "--dataset", "mnist", "--data-dir", str(tmp_path),
                          "--epochs", "1", capsys=capsys)
    finally:
        os.chdir(old)
    assert rc == 2
    one_error_line(out.err, "mnist.pkl.gz")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.ray
@pytest.mark.slow
def test_bad_parquet_data_in_a_worker_is_the_one_line_it_is_in_process(tmp_path):
    """NaN features found by a Ray worker: the same line as with 1 worker, no Ray
    traceback (the CLI in a process of its own, as the user runs it)."""
    src = tmp_path / "tab.parquet"
    assert cli.main(["-q", "data", "convert", "digits", str(src), "--tabular"]) == 0
    t = pq.read_table(src)
    p7 = t.column("p7").to_numpy().astype(np.float64)
    p7[len(p7) // 2] = np.nan     # a training row in the second worker's half
    bad = tmp_path / "bad.parquet"
    pq.write_table(t.set_column(t.schema.get_field_index("p7"), "p7", pa.array(p7)), bad)
    lines = []
    for workers in ("1", "2"):
        r = subprocess.run([sys.executable, "-m", "distnn.cli", "-q", "train", "--dataset",
                            f"parquet:{bad}", "--layers", "64,10", "--epochs", "1",
                            "--workers", workers], capture_output=True, text=True, cwd=ROOT,
                           timeout=300, env={**os.environ, "RAY_DEDUP_LOGS": "0"})
        assert r.returncode == 2, r.stderr
        lines.append(one_error_line(r.stderr, "NaN"))
        assert "ray" not in r.stderr.lower().replace(lines[-1].lower(), ""), r.stderr
    assert lines[0] == lines[1]
