"""Every command that writes keeps train's rule, driven through the same hostile paths:
never through a symbolic link, never onto an existing file without --overwrite, never
onto an input or into one (--overwrite or not), and every check before the first byte
(issue 41)."""
import shutil

import pytest

from distnn import cli
from tests.runs import train_args

pytest.importorskip("pyarrow")


@pytest.fixture(scope="module")
def run(blob_dir, tmp_path_factory):
    """A finished run: its checkpoint directory and its metrics file."""
    d = tmp_path_factory.mktemp("run")
    assert cli.main(["-q", *train_args(blob_dir, d / "ck", epochs=1),
                     "--metrics-out", str(d / "m.json")]) == 0
    return d


def refused(argv, capsys, words: str) -> str:
    rc = cli.main(["-q", *argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert words in err, err
    assert "Traceback" not in err
    return err


def _writers(run, blob_dir):
    """(name, argv for OUT, its inputs a user could name as OUT) of each writing
    command whose output is one file."""
    ck, m = run / "ck", run / "m.json"
    return {
        "export": (lambda out, *x: ["export", str(ck), str(out), "--format", "npz", *x],
                   [ck / "latest", next(ck.glob("epoch-*")) / "tensors.parquet"]),
        "plot": (lambda out, *x: ["plot", str(m), str(out), *x], [m]),
        "data preview": (lambda out, *x: ["data", "preview", "idx", str(out), "--data-dir",
                                          str(blob_dir), "--rows", "1", *x],
                         [next(blob_dir.glob("train-images*"))]),
        "lr-find --plot": (lambda out, *x: ["lr-find", "--dataset", "idx", "--data-dir",
                                            str(blob_dir), "--layers", "64,8,4",
                                            "--find-epochs", "1", "--plot", str(out), *x],
                           [next(blob_dir.glob("train-images*"))]),
    }


@pytest.mark.parametrize("name", ["export", "plot", "data preview", "lr-find --plot"])
def test_no_command_writes_through_a_link_onto_a_file_or_onto_its_input(
        name, run, blob_dir, tmp_path, capsys):
    argv, inputs = _writers(run, blob_dir)[name]
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    link = tmp_path / "out.png"
    link.symlink_to(victim)
    refused(argv(link, "--overwrite"), capsys, "is a symbolic link")
    assert victim.read_text() == "mine" and link.is_symlink()
    existing = tmp_path / "there.png"
    existing.write_text("mine")
    refused(argv(existing), capsys, "exists; choose another path, or pass --overwrite")
    assert existing.read_text() == "mine"
    for target in inputs:          # an input, or a file inside one: never, --overwrite or not
        before = target.read_bytes()
        refused(argv(target, "--overwrite"), capsys, "an output is never an input")
        assert target.read_bytes() == before


def test_export_and_plot_replace_a_file_with_overwrite(run, tmp_path, capsys):
    out = tmp_path / "model.npz"
    out.write_text("old")
    assert cli.main(["-q", "export", str(run / "ck"), str(out), "--overwrite"]) == 0
    assert out.read_bytes()[:2] == b"PK"
    png = tmp_path / "p.png"
    png.write_text("old")
    assert cli.main(["-q", "plot", str(run / "m.json"), str(png), "--overwrite"]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_a_run_never_writes_into_its_data(blob_dir, tmp_path, capsys):
    """A Parquet dataset directory is read whole (every file under it is data): no
    output directory goes inside it; a --data-dir holds files of known names: an output
    may go beside them, never be the directory itself."""
    data = tmp_path / "pq"
    assert cli.main(["-q", "data", "convert", "idx", str(data), "--data-dir",
                     str(blob_dir)]) == 0
    before = sorted(p.name for p in data.iterdir())
    train = ["train", "--dataset", f"parquet:{data}", "--layers", "64,8,4", "--epochs", "1"]
    refused([*train, "--checkpoint-dir", str(data / "ck"), "--overwrite"], capsys,
            "an output is never an input")
    refused([*train, "--logdir", str(data / "tb")], capsys, "an output is never an input")
    refused(["search", *train[1:], "--grid", "lr=0.1", "--out", str(data / "search")],
            capsys, "an output is never an input")
    assert sorted(p.name for p in data.iterdir()) == before
    idx_dir = tmp_path / "idx"
    shutil.copytree(blob_dir, idx_dir)
    refused(["data", "convert", "idx", str(idx_dir), "--data-dir", str(idx_dir)], capsys,
            "an output is never an input")
    assert cli.main(["-q", *train_args(idx_dir, idx_dir / "ck", epochs=1)]) == 0


def test_overwrite_decides_before_deleting_anything(blob_dir, tmp_path, capsys):
    """A directory with a user's own files named latest, best and config.toml: the run
    refuses because of config.toml before --overwrite deletes a thing."""
    d = tmp_path / "mine"
    d.mkdir()
    for name in ("latest", "best", "config.toml"):
        (d / name).write_text(f"my {name}\n")
    refused([*train_args(blob_dir, d, epochs=1), "--overwrite"], capsys,
            "holds a config.toml that distnn did not write")
    assert {p.name: p.read_text() for p in d.iterdir() if not p.name.startswith(".")} == {
        n: f"my {n}\n" for n in ("latest", "best", "config.toml")}
