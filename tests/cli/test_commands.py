import json

import pytest

from distnn import cli
from tests.data import tiny


@pytest.fixture
def digits_dir(tmp_path, data_home):
    """Generated 8x8 IDX files (10 separable classes) for --dataset idx."""
    d = tmp_path / "digits"
    d.mkdir()
    return tiny.write_blobs(d, 360, 100, classes=10)


def test_gradcheck_passes_and_exits_zero(capsys):
    assert cli.main(["gradcheck", "--layers", "8,6,5", "--activation", "tanh"]) == 0
    out = capsys.readouterr().out
    assert "dense0.weight" in out and "PASS" in out


def test_gradcheck_of_a_conv_net_with_pooling_batch_norm_and_dropout(capsys):
    """Max pooling's kinks: where a step of the finite difference changes a window's
    maximum, that position is measured again with a smaller step."""
    assert cli.main(["gradcheck", "--layers", "conv:3:3,pool:2,conv:4:3:same,pool:2,6,5",
                     "--input-shape", "10,10,2", "--activation", "relu", "--batchnorm",
                     "--keep-prob", "0.7", "--l2", "0.3", "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert all(k in out for k in ("conv0.weight", "conv1.weight", "bnc1.gamma", "PASS"))


def test_gradcheck_fails_above_tolerance(capsys):
    assert cli.main(["gradcheck", "--layers", "8,6,5", "--tol", "1e-30"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_train_from_flags_and_toml_with_flags_overriding(tmp_path, digits_dir, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text('dataset = "idx"\nlayers = [64, 20, 10]\nepochs = 5\nlr = 0.5\n'
                   f'data_dir = "{digits_dir}"\nbatch_size = 10\nl2 = [0.5, 0.1]\n')
    out = tmp_path / "m.json"
    rc = cli.main(["-q", "train", "--config", str(cfg), "--epochs", "2", "--metrics-out", str(out)])
    assert rc == 0
    m = json.loads(out.read_text())
    assert len(m["history"]) == 2 and m["config"]["lr"] == 0.5 and m["test_accuracy"] > 0.5
    assert m["config"]["l2"] == [0.5, 0.1]
    rc = cli.main(["-q", "train", "--config", str(cfg), "--epochs", "1", "--l2", "2,0",
                   "--metrics-out", str(out)])
    assert rc == 0 and json.loads(out.read_text())["config"]["l2"] == [2.0, 0.0]
    assert "test accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("argv,match", [
    (["--lr", "0"], "lr must be a finite number > 0, got 0.0"),
    (["--lr", "-0.1"], "lr must be"),
    (["--activation", "swish"], "unknown hidden activation 'swish'"),
    (["--optimizer", "lbfgs"], "unknown optimizer 'lbfgs'"),
    (["--keep-prob", "1.5"], r"keep_prob must be in \(0, 1\]"),
    (["--cost", "cross-entropy", "--output", "softmax"], "needs output activation 'sigmoid'"),
    (["--layers", "784,x,10"], "layers: 'x' is not a layer; expected a positive width"),
    (["--layers", "30,10"], "images have 64 pixels"),
    (["--l2", "1,2,3"], "l2 has 3 values but the network has 2 weight layers"),
    (["--l2", "1,x"], "l2 must be a number or comma-separated numbers"),
])
def test_bad_flags_exit_2_with_a_message(argv, match, digits_dir, capsys):
    rc = cli.main(["train", "--dataset", "idx", "--data-dir", str(digits_dir),
                   "--layers", "64,10,10", "--epochs", "1"] + argv)
    assert rc == 2
    import re
    assert re.search(match, capsys.readouterr().err)


def test_unknown_toml_key_is_an_error(tmp_path, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("learning_rate = 0.1\n")
    assert cli.main(["train", "--config", str(cfg)]) == 2
    assert "unknown key(s) ['learning_rate']" in capsys.readouterr().err


def test_help_lists_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    for flag in ("--dataset", "--layers", "--activation", "--output", "--cost", "--init",
                 "--optimizer", "--lr", "--momentum", "--l2", "--l1", "--keep-prob",
                 "--batchnorm", "--batch-size", "--epochs", "--early-stop", "--schedule",
                 "--train-size", "--seed", "--workers", "--augment", "--metrics-out",
                 "--config"):
        assert flag in out
    flat = " ".join(out.split())
    assert "(default: 784,30,10)" in flat and "(default: sgd)" in flat


def test_data_info_and_preview(digits_dir, tmp_path, capsys):
    assert cli.main(["data", "info", "idx", "--data-dir", str(digits_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["train"]["images"] == [300, 8, 8] and info["classes"] == 10
    assert info["valid"]["images"] == [60, 8, 8] and info["test"]["labels_per_class"] == [10] * 10
    assert cli.main(["data", "info", "idx", "--data-dir", str(digits_dir)]) == 0
    text = capsys.readouterr().out                      # for people: one line a split
    assert "10 classes" in text and "train    300 images of [8, 8]" in text
    png = tmp_path / "p.png"
    assert cli.main(["data", "preview", "idx", str(png), "--data-dir", str(digits_dir),
                     "--augment", "rotate=20", "--count", "4"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = int.from_bytes(png.read_bytes()[16:20], "big"), int.from_bytes(png.read_bytes()[20:24], "big")
    assert (w, h) == (3 * (4 * 10 + 2), 3 * (4 * 10 + 2))   # zoomed 3x: 4 images, 4 rows
    assert "row 1 the originals" in capsys.readouterr().out


def test_min_workers_must_not_exceed_workers(digits_dir, capsys):
    rc = cli.main(["train", "--dataset", "idx", "--data-dir", str(digits_dir),
                   "--layers", "64,10,10", "--workers", "2", "--min-workers", "3"])
    assert rc == 2 and "min_workers 3 must not exceed workers 2" in capsys.readouterr().err


def test_python_dash_m_distnn_is_the_command():
    import subprocess
    import sys
    from distnn import __version__
    for module in ("distnn", "distnn.cli"):
        r = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0 and __version__ in r.stdout + r.stderr, (module, r.stderr)
