"""Learning curves as PNG: both panels, or the cost panel alone."""
import json

import pytest

from distnn import cli
from tests.runs import train_args


def _png_width(path) -> int:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big")


def test_plot_writes_a_png(blob_dir, tmp_path):
    pytest.importorskip("matplotlib")
    m = tmp_path / "m.json"
    assert cli.main(["-q", *train_args(blob_dir, tmp_path / "c", epochs=2), "--metrics-out",
                     str(m)]) == 0
    for src in (m, tmp_path / "c"):
        out = tmp_path / f"{src.name}.png"
        assert cli.main(["plot", str(src), str(out)]) == 0
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
        assert _png_width(out) == 1000   # cost and accuracy panels


def test_plot_of_a_run_that_monitored_nothing(blob_dir, tmp_path, capsys):
    """--merge-valid --no-monitor-train: the mini-batch cost is the one curve; a history
    without even that is refused with the reason, not drawn as empty axes."""
    pytest.importorskip("matplotlib")
    from distnn.io.plot import plot_history
    m = tmp_path / "m.json"
    assert cli.main(["-q", *train_args(blob_dir, tmp_path / "c", epochs=2), "--merge-valid",
                     "--no-monitor-train", "--metrics-out", str(m)]) == 0
    h = json.loads(m.read_text())["history"]
    assert [e["valid_cost"] for e in h] == [None, None] and h[1]["batch_cost"] > 0
    assert f"last epoch mini-batch cost {h[1]['batch_cost']:.4f}" in capsys.readouterr().out
    assert cli.main(["plot", str(m), str(tmp_path / "a.png")]) == 0
    assert _png_width(tmp_path / "a.png") == 1000  # the accuracy panel holds the test's
    plot_history(h, tmp_path / "n.png")
    assert _png_width(tmp_path / "n.png") == 550   # no accuracy at all: the cost panel only
    old = [{k: v for k, v in e.items() if k != "batch_cost"} for e in h]
    with pytest.raises(ValueError, match="recorded no cost or accuracy per epoch"):
        plot_history(old, tmp_path / "b.png")


def test_plot_marks_the_best_epoch_and_the_test_accuracy(blob_dir, tmp_path, capsys):
    """From the metrics file, and from the checkpoint directory (its metrics.json, when
    it is of the checkpoint's epoch); an older checkpoint is not given a later test."""
    pytest.importorskip("matplotlib")
    ck = tmp_path / "c"
    assert cli.main(["-q", *train_args(blob_dir, ck, epochs=3)]) == 0
    m = json.loads((ck / "metrics.json").read_text())
    best, acc = m["best"]["epoch"], m["test_accuracy"]
    assert m["best"]["monitor"] == "valid_accuracy" and acc > 0.5
    assert m["best"]["value"] == max(h["valid_accuracy"] for h in m["history"])
    capsys.readouterr()
    marked = f"(marked: best epoch {best}, test accuracy {100 * acc:.2f}%)"
    for i, src in enumerate((ck / "metrics.json", ck, ck / "epoch-0002")):
        assert cli.main(["plot", str(src), str(tmp_path / f"{i}.png")]) == 0
        assert marked in capsys.readouterr().out, src
    assert cli.main(["plot", str(ck / "epoch-0001"), str(tmp_path / "old.png")]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" not in out
    assert ("best epoch" in out) == (best <= 1)
