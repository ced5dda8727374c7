"""Nielsen's network2 JSON: export, import, and what cannot be exported."""
import json

import numpy as np
import pytest

from distnn import cli
from tests.runs import train_args


def test_network2_export_import_round_trip(blob_dir, tmp_path, capsys):
    args = train_args(blob_dir, tmp_path / "c", epochs=1)
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
        assert cli.main(["eval", str(c), "--data-dir", str(blob_dir), "--json"]) == 0
        accs.append(json.loads(capsys.readouterr().out)["accuracy"])
    assert accs[0] == pytest.approx(accs[1], abs=1e-9)


def test_export_refuses_what_network2_cannot_run(blob_dir, tmp_path, capsys):
    assert cli.main(["-q", *train_args(blob_dir, tmp_path / "c", epochs=1)]) == 0  # softmax output
    assert cli.main(["export", str(tmp_path / "c"), str(tmp_path / "x.json")]) == 2
    assert "output is 'softmax'" in capsys.readouterr().err
