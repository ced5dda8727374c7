"""A user's day (issue #20): recipes are configs, the effective config is printed and
written beside the run, checkpoints are announced with a `best` pointer that eval and
export use, and a resumed run says how many epochs it ran."""
import json
import tomllib
from importlib import resources

import pytest

from distnn import cli, recipes
from distnn.cli.flags import config_from_args
from distnn.io import checkpoint as ckpt
from tests.runs import train_args

pytest.importorskip("pyarrow")


@pytest.mark.parametrize("name", recipes.names())
def test_every_recipe_file_is_a_config_and_show_prints_it(name, tmp_path, capsys):
    assert cli.main(["recipes", "show", name]) == 0
    shown = capsys.readouterr().out
    (tmp_path / "r.toml").write_text(shown)
    path = resources.files("distnn.recipes").joinpath(f"{name}.toml")
    for config in (str(path), str(tmp_path / "r.toml")):
        args = cli.build_parser().parse_args(["train", "--config", config])
        assert config_from_args(args) == config_from_args(
            cli.build_parser().parse_args(["train", "--recipe", name]))


def test_print_config_round_trips(tmp_path, capsys):
    argv = ["train", "--recipe", "nielsen-ch3", "--lr", "0.25", "--l2", "5,1",
            "--augment", "rotate=5", "--comm-ports", "7000-7010"]
    assert cli.main([*argv, "--print-config"]) == 0
    text = capsys.readouterr().out
    tomllib.loads(text)
    (tmp_path / "c.toml").write_text(text)
    a = config_from_args(cli.build_parser().parse_args(argv))
    b = config_from_args(cli.build_parser().parse_args(["train", "--config",
                                                        str(tmp_path / "c.toml")]))
    assert a == b and b.l2 == (5.0, 1.0)


def test_a_run_writes_its_config_announces_its_checkpoints_and_eval_takes_the_best(
        blob_dir, tmp_path, capsys):
    c = tmp_path / "c"
    extra = ("--monitor", "valid_cost", "--keep-last", "1", "--lr", "3")
    assert cli.main([*train_args(blob_dir, c, epochs=6, extra=extra)]) == 0
    out = capsys.readouterr().out
    best = ckpt.load(c, "best")
    latest = ckpt.load(c)
    assert f"checkpoints in {c}: latest {latest.path.name}, best {best.path.name}" in out
    assert f"distnn train --resume {c}" in out
    costs = [h["valid_cost"] for h in latest.meta["history"]]
    assert best.meta["epoch"] == costs.index(min(costs))     # kept from pruning too
    again = tomllib.loads((c / "config.toml").read_text())
    assert again["lr"] == 3 and again["monitor"] == "valid_cost" and "resume" not in again
    for which, want in (("best", best.path), ("latest", latest.path)):
        assert cli.main(["eval", str(c), "--json", "--which", which]) == 0
        assert json.loads(capsys.readouterr().out)["checkpoint"] == str(want)
    assert cli.main(["eval", str(c), "--json"]) == 0          # the default: best
    assert json.loads(capsys.readouterr().out)["checkpoint"] == str(best.path)
    # a resumed run says what it ran
    assert cli.main(["train", "--resume", str(c), "--epochs", "8"]) == 0
    assert "finished 8 epochs (2 in this run)" in capsys.readouterr().out


def test_a_run_with_no_validation_says_eval_takes_the_latest(blob_dir, tmp_path, capsys):
    # --merge-valid leaves nothing to measure the monitor on: no best pointer, and the
    # closing line must not name one "by valid_accuracy"
    c = tmp_path / "c"
    assert cli.main([*train_args(blob_dir, c, epochs=2, extra=("--merge-valid",))]) == 0
    out = capsys.readouterr().out
    latest = ckpt.load(c)
    assert (f"checkpoints in {c}: latest {latest.path.name}, no best by valid_accuracy "
            "(nothing measured it), so eval takes the latest") in out
    assert cli.main(["eval", str(c), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"] == str(latest.path)


def test_papercuts(blob_dir, tmp_path, capsys):
    c = tmp_path / "c"
    assert cli.main([*train_args(blob_dir, c, epochs=2), "-q"]) == 0   # -q after the command
    assert capsys.readouterr().err == ""
    assert cli.main(["inspect", str(c)]) == 0
    out = capsys.readouterr().out
    assert "network    [64, 24, 4]  sigmoid hidden" in out and "valid_accuracy" in out
    assert cli.main(["inspect", str(c), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parameters"] == 64 * 24 + 24 + 24 * 4 + 4
    assert cli.main(["eval", str(c)]) == 0
    assert "true\\pred     0     1     2     3" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["train", "--learning-rate", "0.1"])
    with pytest.raises(SystemExit):
        cli.main(["train", "--batch-sise", "3"])
    assert "did you mean --batch-size?" in capsys.readouterr().err
