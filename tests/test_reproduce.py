"""scripts/reproduce.py's table: rows come from ROOT/runs.jsonl, which lives only on the
machine that ran them (results/ is not in git), so an experiment with no run there keeps
the row docs/RESULTS.md already has instead of turning back into "not run yet"."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import reproduce  # noqa: E402


def _run(name, seed, acc, wall=600.0):
    workers = reproduce.EXPERIMENTS[name][3]
    return {"name": name, "seed": seed, "test_accuracy": acc, "test_cost": 0.1,
            "wall_seconds": wall, "workers": workers,
            "command": f"distnn train --seed {seed} --checkpoint-dir /abs/results/{name}-s{seed}"}


def _rows(text):
    return reproduce._rows_in(text)


def test_a_table_built_elsewhere_keeps_its_rows_and_takes_the_new_runs(tmp_path):
    names = list(reproduce.EXPERIMENTS)
    a, b = names[0], names[1]
    label_a, label_b = reproduce.EXPERIMENTS[a][0], reproduce.EXPERIMENTS[b][0]
    out = tmp_path / "RESULTS.md"
    out.write_text("# Results\n\nprose before\n")
    first = tmp_path / "machine1"
    first.mkdir()
    (first / "runs.jsonl").write_text(json.dumps(_run(a, 0, 0.98)) + "\n")
    reproduce.table(first, out)
    row_a = _rows(out.read_text())[label_a]
    assert "98.00%" in row_a and "`distnn train --seed 0 --checkpoint-dir results/" in row_a
    assert "not run yet" in _rows(out.read_text())[label_b]

    # another machine (a fresh clone) runs only b, two seeds: a's row stays as it was
    second = tmp_path / "machine2"
    second.mkdir()
    (second / "runs.jsonl").write_text(
        "".join(json.dumps(_run(b, s, acc)) + "\n" for s, acc in ((0, 0.97), (1, 0.99))))
    reproduce.table(second, out)
    text = out.read_text()
    rows = _rows(text)
    assert rows[label_a] == row_a
    assert "98.00% ± 1.41 (2 seeds)" in rows[label_b]
    assert text.startswith("# Results\n\nprose before\n")
    assert text.count(reproduce.MARKERS[0]) == 1 and text.count(reproduce.MARKERS[1]) == 1
    # every experiment has exactly one row, in the order of EXPERIMENTS
    labels = [line.split(" | ", 1)[0][2:] for line in text.splitlines()
              if line.startswith("| ") and not line.startswith("| experiment ")]
    assert labels == [e[0] for e in reproduce.EXPERIMENTS.values()]


def test_a_rerun_seed_replaces_the_earlier_one_and_no_log_changes_nothing(tmp_path):
    name = next(iter(reproduce.EXPERIMENTS))
    label = reproduce.EXPERIMENTS[name][0]
    out = tmp_path / "RESULTS.md"
    (tmp_path / "runs.jsonl").write_text(json.dumps(_run(name, 0, 0.90)) + "\n"
                                         + json.dumps(_run(name, 0, 0.95)) + "\n")
    reproduce.table(tmp_path, out)
    assert "95.00%" in _rows(out.read_text())[label]
    before = out.read_text()
    empty = tmp_path / "fresh"
    empty.mkdir()                      # a fresh clone: no runs.jsonl at all
    reproduce.table(empty, out)
    assert out.read_text() == before


def test_curve_reads_every_nth_epoch_and_the_last_back_from_one_run(tmp_path, monkeypatch):
    """`curve` trains once, keeping every checkpoint; its last point is the run's own test
    figure, its training times add up, and a second call evaluates without training."""
    monkeypatch.setitem(reproduce.EXPERIMENTS, "tiny", (
        "tiny", "-", "--dataset digits --layers 64,16,10 --epochs 4 --batch-size 32 "
        "--merge-valid --no-monitor-train", 1))
    points = reproduce.curve("tiny", 0, tmp_path, every=3)
    assert [p["epoch"] for p in points] == [0, 3]
    out = json.loads((tmp_path / "tiny-curve-s0.test.json").read_text())
    assert out["points"] == points
    assert points[-1]["test_accuracy"] == out["final_test_accuracy"]
    hist = json.loads((tmp_path / "tiny-curve-s0.metrics.json").read_text())["history"]
    assert points[-1]["train_minutes"] == round(sum(e["train_seconds"] for e in hist) / 60, 2)
    assert sorted(d.name for d in (tmp_path / "tiny-curve-s0").glob("epoch-*")) == \
        [f"epoch-{e:04d}" for e in range(4)]
    # evaluated again from the same checkpoints (no second run), every epoch this time
    again = reproduce.curve("tiny", 0, tmp_path, every=1)
    assert [p["epoch"] for p in again] == [0, 1, 2, 3]
    assert again[3] == points[1] and again[0] == points[0]


def test_curve_refuses_a_run_that_did_not_finish(tmp_path, monkeypatch):
    monkeypatch.setitem(reproduce.EXPERIMENTS, "tiny", ("tiny", "-", "--dataset digits", 1))
    (tmp_path / "tiny-curve-s0").mkdir()
    with pytest.raises(SystemExit, match="did not finish.*--resume"):
        reproduce.curve("tiny", 0, tmp_path, every=1)


def test_table_runs_from_outside_the_checkout(tmp_path, monkeypatch):
    """Its defaults are this checkout's results/ and docs/RESULTS.md, not the working
    directory's (was: FileNotFoundError outside the checkout); nothing is made where it
    runs."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "R.md"
    assert reproduce.main(["table", "--root", str(tmp_path / "none"), "--out", str(out)]) == 0
    assert "| experiment |" in out.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["R.md"]
    assert reproduce.REPO == Path(reproduce.__file__).resolve().parents[1]
    with pytest.raises(SystemExit):
        reproduce.main(["table", "--out", str(tmp_path / "no" / "R.md")])
