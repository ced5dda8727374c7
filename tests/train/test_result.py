"""distnn.fit's Result: the run's figures as attributes, its history as a DataFrame, its
checkpoints as models that predict from raw inputs, callbacks through fit; and still the
metrics dict it was."""
import json

import numpy as np
import pytest

import distnn
from distnn import cli
from distnn.data.idx import load as read_idx

RUN = dict(dataset="idx", layers=(64, 24, 4), activation="relu", init="he",
           optimizer="momentum", lr=0.05, batch_size=16, epochs=4, seed=1)


class StopAfter(distnn.Callback):
    """Records the epochs it saw; stops the run after epoch ``last``."""

    def __init__(self, last):
        self.last, self.seen = last, []

    def on_epoch_end(self, epoch, logs, trainer):
        self.seen.append((epoch, logs["valid_accuracy"]))
        if epoch == self.last:
            trainer.stop = True


def test_fit_returns_a_result_with_callbacks_and_checkpoints(blob_dir, tmp_path, capsys):
    stop = StopAfter(2)
    r = distnn.fit(data_dir=str(blob_dir), checkpoint_dir=str(tmp_path / "ck"),
                   callbacks=[stop], **RUN)
    assert isinstance(r, distnn.Result)
    assert [e for e, _ in stop.seen] == [0, 1, 2] and len(r.history) == 3
    # the mapping it always was, and the same figures as attributes
    assert r["test_accuracy"] == r.test_accuracy > 0.9 and r["network"] is r.network
    assert r.config.layers == (64, 24, 4) and r.config.epochs == 4
    assert r.best["monitor"] == "valid_accuracy"
    assert r.best["value"] == max(a for _, a in stop.seen)
    assert r.checkpoint_dir == tmp_path / "ck"
    assert r.metrics_path == tmp_path / "ck" / "metrics.json"
    on_disk = json.loads(r.metrics_path.read_text())
    assert on_disk["test_accuracy"] == r.test_accuracy and on_disk["best"] == r.best
    df = r.dataframe()
    assert list(df["epoch"]) == [0, 1, 2]
    assert list(df["valid_accuracy"]) == [a for _, a in stop.seen]
    # checkpoints as models: raw test images in, the accuracy `distnn eval` measures out
    x = read_idx(blob_dir / "t10k-images-idx3-ubyte")
    y = read_idx(blob_dir / "t10k-labels-idx1-ubyte")
    best, latest = r.checkpoint("best"), r.checkpoint("latest")
    assert best.epoch == r.best["epoch"] and latest.epoch == 2
    capsys.readouterr()
    assert cli.main(["eval", str(tmp_path / "ck"), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert np.mean(best.predict(x) == y) == pytest.approx(evaluated["accuracy"], abs=1e-12)
    p = latest.predict_proba(x)
    assert p.shape == (len(y), 4) and np.allclose(p.sum(axis=1), 1, atol=1e-5)
    # the last parameters are the network the run ends with
    np.testing.assert_array_equal(latest.network.params, r.network.params)
    assert "3 epochs" in repr(r) and "checkpoints in" in repr(r)


def test_a_run_without_checkpoints_says_so(blob_dir):
    r = distnn.fit(data_dir=str(blob_dir), **{**RUN, "epochs": 1})
    assert r.checkpoint_dir is None and r.metrics_path is None
    with pytest.raises(ValueError, match="kept no checkpoints: give checkpoint_dir"):
        r.checkpoint()
    with pytest.raises(ValueError, match="'best' or 'latest'"):
        r.checkpoint("first")
