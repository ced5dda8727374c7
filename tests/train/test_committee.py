"""`distnn eval A B ...`: a committee (Cireşan et al. 2010) judged by its members' outputs
averaged. The formula against NumPy, and the CLI against single evaluations."""
import json

import numpy as np
import pytest

from distnn import cli
from distnn.core.network import Network
from distnn.data.splits import Normalizer, Split
from distnn.train.evaluate import evaluate_chunks, evaluate_committee
from tests.runs import train_args

pytest.importorskip("pyarrow")


def _nets(rng):
    a = Network([16, 12, 3], activation="relu", output="softmax", cost="log-likelihood")
    a.reset("he", seed=1)
    b = Network([16, 7, 3], activation="tanh", output="sigmoid", cost="cross-entropy")
    b.reset("fan-in", seed=2)
    x = rng.integers(0, 256, size=(300, 4, 4), dtype=np.uint8)
    y = rng.integers(0, 3, size=300)
    return a, b, x, y


def test_the_committee_averages_its_members_outputs_each_scaled_to_sum_to_one(rng):
    a, b, x, y = _nets(rng)
    na, nb = Normalizer(255.0), Normalizer(128.0)   # each member its own input scaling
    chunks = [Split(x[:120], y[:120]), Split(x[120:], y[120:])]
    res = evaluate_committee([(a, na), (b, nb)], chunks)
    pa = a.predict_proba(na(x, a.dtype)).astype(np.float64)
    pb = b.predict_proba(nb(x, b.dtype)).astype(np.float64)
    pb /= pb.sum(axis=1, keepdims=True)             # sigmoid outputs do not sum to 1
    avg = (pa + pb) / 2
    assert res["examples"] == 300
    assert res["accuracy"] == pytest.approx(np.mean(avg.argmax(axis=1) == y))
    assert res["cost"] == pytest.approx(-np.mean(np.log(avg[np.arange(300), y])), rel=1e-6)
    assert res["member_accuracy"] == pytest.approx(
        [np.mean(pa.argmax(axis=1) == y), np.mean(pb.argmax(axis=1) == y)])
    conf = np.zeros((3, 3), int)
    np.add.at(conf, (y, avg.argmax(axis=1)), 1)
    assert res["confusion"] == conf.tolist()
    # a committee of one softmax network is that network
    one = evaluate_committee([(a, na)], chunks)
    alone = evaluate_chunks(a, na, chunks)
    assert one["accuracy"] == alone["accuracy"] and one["confusion"] == alone["confusion"]
    assert one["cost"] == pytest.approx(alone["cost"], rel=1e-5)


def test_a_committee_needs_the_same_inputs_and_classes(rng):
    a, _, x, y = _nets(rng)
    c = Network([16, 5, 4])
    with pytest.raises(ValueError, match="share their inputs and classes"):
        evaluate_committee([(a, Normalizer()), (c, Normalizer())], [Split(x, y)])


def test_eval_of_several_checkpoints_is_their_committee(blob_dir, tmp_path, capsys):
    runs = []
    for seed in (0, 1):
        d = tmp_path / f"s{seed}"
        assert cli.main([*train_args(blob_dir, d, epochs=1, extra=("--seed", str(seed))),
                         "-q"]) == 0
        capsys.readouterr()
        assert cli.main(["eval", str(d), "--json"]) == 0
        runs.append((d, json.loads(capsys.readouterr().out)))
    (a, ra), (b, rb) = runs
    assert cli.main(["eval", str(a), str(b), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [m["accuracy"] for m in res["committee"]] == [ra["accuracy"], rb["accuracy"]]
    assert [m["checkpoint"] for m in res["committee"]] == [ra["checkpoint"], rb["checkpoint"]]
    assert res["examples"] == ra["examples"] and res["split"] == "test"
    # the same network twice is that network
    assert cli.main(["eval", str(a), str(a), "--json"]) == 0
    twice = json.loads(capsys.readouterr().out)
    assert twice["accuracy"] == ra["accuracy"]
    assert twice["cost"] == pytest.approx(ra["cost"], rel=1e-5)
    assert cli.main(["eval", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("a committee of 2 networks, their outputs averaged:")
    assert f"alone {100 * ra['accuracy']:.2f}%" in out


def test_a_committee_of_networks_trained_on_different_datasets_is_refused(
        blob_dir, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli.main([*train_args(blob_dir, a, epochs=1), "-q"]) == 0
    assert cli.main(["train", "--dataset", "digits", "--layers", "64,8,10", "--epochs", "1",
                     "--checkpoint-dir", str(b), "-q"]) == 0
    capsys.readouterr()
    assert cli.main(["eval", str(a), str(b)]) != 0
    err = capsys.readouterr().err
    assert "was trained on digits" in err and "a committee is judged on one dataset" in err
