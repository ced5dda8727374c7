
import numpy as np
import pytest

from distnn import tune
from distnn.config import TrainConfig


def test_grid_expansion():
    g = tune.parse_grid(["hidden=10,25", "lr=0.05,0.1,0.5", "l2=0.001"])
    assert g == {"hidden": [10, 25], "lr": [0.05, 0.1, 0.5], "l2": [0.001]}
    trials = tune.expand_grid(g)
    assert len(trials) == 6 and trials[0] == {"hidden": 10, "lr": 0.05, "l2": 0.001}
    assert {(t["hidden"], t["lr"]) for t in trials} == {(h, lr) for h in (10, 25)
                                                        for lr in (0.05, 0.1, 0.5)}
    for bad in (["lr"], ["learning_rate=0.1"], ["lr="]):
        with pytest.raises(ValueError):
            tune.parse_grid(bad)


def test_random_sampling_is_seeded_and_in_range():
    space = tune.parse_random(["lr=loguniform:0.001:1", "hidden=choice:30,100",
                               "keep_prob=uniform:0.5:1", "batch_size=randint:8:64"])
    a = tune.sample_random(space, 200, seed=3)
    assert a == tune.sample_random(space, 200, seed=3)
    assert a != tune.sample_random(space, 200, seed=4)
    lrs = np.array([t["lr"] for t in a])
    assert lrs.min() >= 1e-3 and lrs.max() <= 1
    # log-uniform: about a third of the draws in each decade
    assert abs(np.mean(lrs < 0.01) - 1 / 3) < 0.1 and abs(np.mean(lrs > 0.1) - 1 / 3) < 0.1
    assert {t["hidden"] for t in a} == {30, 100}
    assert all(8 <= t["batch_size"] <= 64 and isinstance(t["batch_size"], int) for t in a)
    with pytest.raises(ValueError, match="A > 0 for loguniform"):
        tune.parse_random(["lr=loguniform:0:1"])


def test_hidden_override_sets_every_hidden_layer():
    base = TrainConfig(layers=(784, 30, 30, 10))
    c = tune.apply(base, {"hidden": 100, "lr": 0.3})
    assert c.layers == (784, 100, 100, 10) and c.lr == 0.3


def _synthetic(threshold):
    """Cost curve of a quadratic bowl: falls for lr < threshold, oscillates/grows above."""
    def curve(lr):
        r = abs(1 - lr / (threshold / 2))      # contraction factor per epoch
        return [10.0 * r ** (2 * k) for k in range(4)]
    return curve


@pytest.mark.parametrize("threshold", [0.37, 4.2, 0.0031])
def test_lr_find_locates_the_threshold(threshold):
    res = tune.find_threshold(_synthetic(threshold), start=0.01, refine=6)
    assert res["threshold"] < threshold <= res["first_failing"]
    assert res["first_failing"] / res["threshold"] < 10 ** (1 / 2 ** 6) + 1e-9
    assert res["suggested_lr"] == pytest.approx(res["threshold"] / 2)


def test_lr_find_treats_nan_as_failure():
    def curve(lr):
        return [1.0, 0.5, 0.2] if lr < 0.3 else [1.0, float("nan")]
    res = tune.find_threshold(curve, refine=3)
    assert res["threshold"] < 0.3 <= res["first_failing"]


@pytest.mark.parametrize("train,valid,bayes,verdict", [
    (0.15, 0.16, 0.0, "high bias"),
    (0.01, 0.11, 0.0, "high variance"),
    (0.05, 0.053, 0.047, "balanced"),
    (0.08, 0.12, 0.07, "high variance"),
])
def test_bias_variance_verdicts(train, valid, bayes, verdict):
    d = tune.diagnose(train, valid, bayes)
    assert d["verdict"] == verdict
    assert d["avoidable_bias"] == pytest.approx(train - bayes)
    assert d["variance"] == pytest.approx(valid - train)
    assert ("bigger network" in d["remedies"]) == (verdict == "high bias")
    assert ("regularisation" in tune.format_diagnosis(d)) == (verdict != "balanced")


def test_best_config_toml_round_trips(tmp_path):
    import tomllib
    from distnn.config import from_mapping
    cfg = TrainConfig(layers=(64, 50, 10), lr=0.25, l2=0.0005, augment="rotate=5",
                      batchnorm=True)
    tune.write_toml(tmp_path / "best.toml", cfg)
    back = from_mapping(tomllib.loads((tmp_path / "best.toml").read_text()))
    assert back == cfg


@pytest.mark.ray
def test_search_runs_trials_and_its_best_config_reproduces(tmp_path, ray_session, capsys):
    import json
    import tomllib
    from distnn import cli
    from tests.data import tiny
    data = tiny.write_blobs(tmp_path, 600, 200, low=150, high=100)
    out = tmp_path / "search"
    rc = cli.main(["-q", "search", "--dataset", "idx", "--data-dir", str(data),
                   "--layers", "64,8,4", "--epochs", "3", "--batch-size", "20",
                   "--grid", "hidden=4,16", "lr=0.05,0.5", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    import pandas as pd
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 4 and set(table["hidden"]) == {4, 16}
    assert list(table["valid_accuracy"]) == sorted(table["valid_accuracy"], reverse=True)
    summary = json.loads((out / "summary.json").read_text())
    assert 0 < summary["test_accuracy"] <= 1 and summary["trials"] == 4
    best = tomllib.loads((out / "best.toml").read_text())
    assert best["layers"][1] == summary["best"]["hidden"] and best["lr"] == summary["best"]["lr"]
    # re-running the best config reproduces the validation score it was selected on
    again = tmp_path / "again.json"
    assert cli.main(["-q", "train", "--config", str(out / "best.toml"), "--metrics-out",
                     str(again)]) == 0
    rerun = json.loads(again.read_text())["history"][-1]["valid_accuracy"]
    assert rerun == pytest.approx(table["valid_accuracy"].iloc[0], abs=1e-12)


def test_longest_trials_are_handed_out_first():
    base = TrainConfig(layers=(64, 25, 10), epochs=10, batch_size=10)
    n = 1000
    small, big = tune.apply(base, {"hidden": 10}), tune.apply(base, {"hidden": 60})
    assert tune.cost(big, n) > tune.cost(small, n)
    assert tune.cost(base.replace(epochs=20), n) == 2 * tune.cost(base, n)
    assert tune.cost(base.replace(batch_size=100), n) < tune.cost(base, n)
    q = tune._Queue([(2, {"a": 1}), (0, {"a": 2})])
    assert [q.next(), q.next(), q.next()] == [(2, {"a": 1}), (0, {"a": 2}), None]


def test_pending_resumes_only_the_same_search(tmp_path):
    trials = [{"lr": 0.1}, {"lr": 0.5}, {"lr": 1.0}]
    assert tune._pending(trials, tmp_path, resume=False) == list(enumerate(trials))
    d = tmp_path / "trials" / "0001"
    d.mkdir(parents=True)
    tune._write_result(d, 1, {"lr": 0.5}, {"valid_accuracy": 0.9})
    assert tune._pending(trials, tmp_path, resume=True) == [(0, trials[0]), (2, trials[2])]
    with pytest.raises(ValueError, match="already holds the results of 1 trials"):
        tune._pending(trials, tmp_path, resume=False)
    with pytest.raises(ValueError, match="not trial 1 of this search"):
        tune._pending([{"lr": 0.1}, {"lr": 0.7}], tmp_path, resume=True)


@pytest.mark.ray
def test_search_with_asha_reports_every_trial(tmp_path, ray_session, capsys):
    from distnn import cli
    from tests.data import tiny
    data = tiny.write_blobs(tmp_path, 400, 100, low=150, high=100)
    out = tmp_path / "s"
    assert cli.main(["-q", "search", "--dataset", "idx", "--data-dir", str(data),
                     "--layers", "64,8,4", "--epochs", "4", "--batch-size", "20",
                     "--random", "lr=loguniform:0.01:1", "--samples", "3", "--asha",
                     "--out", str(out)]) == 0
    import pandas as pd
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 3 and table["lr"].between(0.01, 1).all()


@pytest.mark.ray
def test_search_records_a_diverging_trial_and_resumes_what_is_missing(tmp_path, ray_session,
                                                                     capsys):
    import json
    import shutil
    from distnn import cli
    from tests.data import tiny
    data = tiny.write_blobs(tmp_path, 400, 100, low=150, high=100)
    out = tmp_path / "s"
    args = ["-q", "search", "--dataset", "idx", "--data-dir", str(data), "--layers", "64,8,4",
            "--activation", "relu", "--init", "he", "--epochs", "3", "--batch-size", "20",
            "--grid", "lr=0.05,0.2,1e30", "--out", str(out)]
    assert cli.main(args) == 0, capsys.readouterr().err
    import pandas as pd
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 3
    bad = table[table["lr"] == 1e30].iloc[0]
    assert "diverged" in bad["error"] and pd.isna(bad["trial_dir"])
    assert json.loads((out / "summary.json").read_text())["best"]["lr"] in (0.05, 0.2)
    # a second search into the same --out is refused; resuming runs only what is missing
    capsys.readouterr()
    assert cli.main(args) == 2 and "--resume-search" in capsys.readouterr().err
    kept = (out / "trials" / "0000" / "result.json").stat().st_mtime_ns
    shutil.rmtree(out / "trials" / "0001")
    assert cli.main(args + ["--resume-search"]) == 0
    assert (out / "trials" / "0000" / "result.json").stat().st_mtime_ns == kept
    assert (out / "trials" / "0001" / "result.json").exists()
    assert len(pd.read_csv(out / "results.csv")) == 3


def test_lr_find_cli_on_real_training(tmp_path, capsys):
    from distnn import cli
    from tests.data import tiny
    data = tiny.write_blobs(tmp_path, 400, 40, low=150, high=100)
    rc = cli.main(["-q", "lr-find", "--dataset", "idx", "--data-dir", str(data),
                   "--layers", "64,8,4", "--batch-size", "20", "--find-epochs", "3",
                   "--refine", "2", "--no-monitor-train"])
    out = capsys.readouterr().out
    assert rc == 0, out
    import re
    m = re.search(r"threshold learning rate ~ ([0-9.e+-]+) .* suggested --lr ([0-9.e+-]+)", out)
    assert m and float(m.group(2)) == pytest.approx(float(m.group(1)) / 2, rel=1e-3)
    assert 1e-4 < float(m.group(1)) < 1e4
