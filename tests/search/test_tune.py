"""Searches on Ray Tune and their results on disk."""
from pathlib import Path

import numpy as np
import pytest

from distnn.config import TrainConfig
from distnn.search import results, space, tune


def test_best_config_toml_round_trips(tmp_path):
    import tomllib
    from distnn.config import from_mapping
    cfg = TrainConfig(layers=(64, 50, 10), lr=0.25, l2=0.0005, augment="rotate=5",
                      batchnorm=True)
    results.write_toml(tmp_path / "best.toml", cfg)
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
    small, big = space.apply(base, {"hidden": 10}), space.apply(base, {"hidden": 60})
    assert tune.cost(big, n) > tune.cost(small, n)
    assert tune.cost(base.replace(epochs=20), n) == 2 * tune.cost(base, n)
    assert tune.cost(base.replace(batch_size=100), n) < tune.cost(base, n)
    q = tune._Queue([(2, {"a": 1}), (0, {"a": 2})])
    assert [q.next(), q.next(), q.next()] == [(2, {"a": 1}), (0, {"a": 2}), None]


def test_pending_resumes_only_the_same_search(tmp_path):
    trials = [{"lr": 0.1}, {"lr": 0.5}, {"lr": 1.0}]
    assert results.pending(trials, tmp_path, resume=False) == list(enumerate(trials))
    d = tmp_path / "trials" / "0001"
    d.mkdir(parents=True)
    results._write_json(d / "result.json", 1, {"lr": 0.5}, {"valid_accuracy": 0.9})
    assert results.pending(trials, tmp_path, resume=True) == [(0, trials[0]), (2, trials[2])]
    with pytest.raises(ValueError, match="already holds the results of 1 trials"):
        results.pending(trials, tmp_path, resume=False)
    with pytest.raises(ValueError, match="not trial 1 of this search"):
        results.pending([{"lr": 0.1}, {"lr": 0.7}], tmp_path, resume=True)


@pytest.mark.ray
def test_search_with_asha_reports_every_trial(tmp_path, ray_session, capsys):
    from distnn import cli
    from tests.data import tiny
    data = tiny.write_blobs(tmp_path, 400, 100, low=150, high=100)
    out = tmp_path / "s"
    assert cli.main(["-q", "search", "--dataset", "idx", "--data-dir", str(data),
                     "--layers", "64,8,4", "--epochs", "4", "--batch-size", "20",
                     "--random", "lr=loguniform:0.01:1", "--samples", "6", "--asha",
                     "--epochs", "8", "--out", str(out)]) == 0
    import pandas as pd
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 6 and table["lr"].between(0.01, 1).all()
    # every trial, stopped early by ASHA or not, has its model and its learning curves
    assert table["trial_dir"].notna().all()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from distnn.io import checkpoint as ckpt
    for _, row in table.iterrows():
        final = ckpt.load(Path(row["trial_dir"]) / "final")
        assert len(final.meta["history"]) == row["epochs_trained"]
        acc = EventAccumulator(str(out / "tensorboard" / Path(row["trial_dir"]).name))
        acc.Reload()
        assert [e.step for e in acc.Scalars("valid/accuracy")] == \
            list(range(row["epochs_trained"]))


def test_ties_go_to_the_lower_validation_cost(tmp_path):
    import json
    from types import SimpleNamespace
    from distnn.core.network import Network
    from distnn.train.checkpointing import save_model
    cfg = TrainConfig(dataset="idx", layers=(4, 3, 2))
    for i, cost in enumerate((0.5, 0.2, 0.9)):          # equal accuracy, different cost
        d = results.trial_dir(tmp_path, i)
        save_model(d, "final", Network.from_spec(cfg.network_spec()), cfg)
        (d / "result.json").write_text(json.dumps(
            {"index": i, "overrides": {"lr": 0.1 * (i + 1)},
             "final": {"valid_accuracy": 0.9, "valid_cost": cost, "epoch": 0}}))
    from distnn.data.splits import Split
    empty = Split(np.zeros((0, 4), np.uint8), np.zeros(0, np.int64))
    res = results.summarise(cfg, SimpleNamespace(test=empty), tmp_path)
    assert res["best"] == {"lr": 0.2} and list(res["table"]["valid_cost"]) == [0.2, 0.5, 0.9]


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
            "--grid", "lr=0.05,0.2,1e30,-1", "--out", str(out)]
    assert cli.main(args) == 0, capsys.readouterr().err
    import pandas as pd
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 4
    bad = table[table["lr"] == 1e30].iloc[0]
    assert "diverged" in bad["error"] and pd.isna(bad["trial_dir"])
    invalid = table[table["lr"] == -1].iloc[0]        # recorded; the search went on
    assert "lr must be" in invalid["error"] and pd.isna(invalid["trial_dir"])
    assert json.loads((out / "summary.json").read_text())["best"]["lr"] in (0.05, 0.2)
    # a second search into the same --out is refused; resuming runs only what is missing
    capsys.readouterr()
    assert cli.main(args) == 2 and "--resume-search" in capsys.readouterr().err
    kept = (out / "trials" / "0000" / "result.json").stat().st_mtime_ns
    shutil.rmtree(out / "trials" / "0001")
    assert cli.main(args + ["--resume-search"]) == 0
    assert (out / "trials" / "0000" / "result.json").stat().st_mtime_ns == kept
    assert (out / "trials" / "0001" / "result.json").exists()
    assert len(pd.read_csv(out / "results.csv")) == 4


@pytest.mark.parametrize("opts", [dict(train_size=50), dict(merge_valid=True)])
def test_a_trial_saves_the_normaliser_of_the_examples_it_trained_on(tmp_path, opts):
    """--standardize with --train-size or --merge-valid: the saved model's mean and std
    are those of the examples the trial trained on, not of the whole training split."""
    from distnn.data.splits import Split, Splits
    from distnn.train.evaluate import load_model
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (300, 4, 4), dtype=np.uint8)
    x[:50] //= 4                         # the first 50 are much darker than the rest
    y = rng.integers(0, 3, 300)
    splits = Splits("blobs", Split(x[:200], y[:200]), Split(x[200:250], y[200:250]),
                    Split(x[250:], y[250:]), 3, "generated")
    base = TrainConfig(dataset="digits", layers=(16, 8, 3), epochs=1, standardize=True)
    final = tune._run_one(0, opts, base, splits, tmp_path)
    assert "error" not in final
    _, norm, _, _ = load_model(results.trial_dir(tmp_path, 0) / "final")
    seen = x[:50] if "train_size" in opts else x[:250]
    want = (seen.reshape(len(seen), -1) / 255.0).mean(axis=0)
    np.testing.assert_allclose(norm.mean, want, rtol=1e-5)
    whole = (x[:200].reshape(200, -1) / 255.0).mean(axis=0)
    assert np.abs(norm.mean - whole).max() > 0.01


def test_live_progress_counts_trials_and_names_the_best_so_far(tmp_path):
    import json
    prog = tune.Progress(tmp_path, 5, "valid_accuracy")
    assert prog.report() == "search: 0/5 trials done, 0 running, 0 failed"
    for i, (name, acc) in enumerate((("result.json", 0.8), ("progress.json", 0.9),
                                     ("result.json", None))):
        d = results.trial_dir(tmp_path, i)
        d.mkdir(parents=True)
        final = {"valid_accuracy": acc} if acc is not None else {"error": "diverged"}
        (d / name).write_text(json.dumps({"index": i, "overrides": {"lr": i}, "final": final}))
    assert prog.report() == ("search: 2/5 trials done, 1 running, 1 failed; best so far "
                             "valid_accuracy 90.00% (trial 0001, {'lr': 1})")
    assert prog.report() is None                  # nothing changed: nothing said


@pytest.mark.ray
def test_run_search_from_python_returns_the_table_best_first(tmp_path, ray_session):
    import distnn
    from tests.data import tiny
    data = tiny.write_blobs(tmp_path, 600, 200, low=150, high=100)
    res = distnn.run_search(TrainConfig(dataset="idx", data_dir=str(data), layers=(64, 8, 4),
                                    epochs=2, batch_size=20),
                        grid={"lr": [0.05, 0.5]}, out=str(tmp_path / "s"))
    table = res["table"]
    assert sorted(table["lr"]) == [0.05, 0.5] and res["trials"] == 2
    assert list(table["valid_accuracy"]) == sorted(table["valid_accuracy"], reverse=True)
    assert res["best"] == {"lr": table["lr"].iloc[0]} and 0 < res["test_accuracy"] <= 1
    assert (tmp_path / "s" / "best.toml").is_file()
    with pytest.raises(ValueError, match="out"):       # never onto its own dataset
        distnn.run_search(TrainConfig(dataset="idx", data_dir=str(data)), grid={"lr": [0.1]},
                      out=str(data))
