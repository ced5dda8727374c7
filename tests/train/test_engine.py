import json

import numpy as np
import pytest

import distnn
from distnn.config import TrainConfig
from distnn.data.splits import Split, Splits
from distnn.parallel.driver import train


def blobs(rng, n=600, d=16, k=4, noise=0.6):
    """Separable Gaussian blobs as 4x4 'images' in 0..255."""
    centres = rng.random((k, d)) * 200 + 25
    y = rng.integers(0, k, n)
    x = centres[y] + rng.standard_normal((n, d)) * noise * 40
    x = np.clip(x, 0, 255).astype(np.uint8).reshape(n, 4, 4)
    return x, y.astype(np.int64)


@pytest.fixture
def splits():
    rng = np.random.default_rng(0)
    x, y = blobs(rng)
    return Splits("blobs", Split(x[:400], y[:400]), Split(x[400:500], y[400:500]),
                  Split(x[500:], y[500:]), 4, "generated")


def cfg(**kw):
    base = dict(dataset="digits", layers=(16, 12, 4), lr=0.5, epochs=4, batch_size=10)
    base.update(kw)
    return TrainConfig(**base)


def test_learns_separable_data(splits):
    m = train(cfg(), splits, progress=False)
    assert m["test_accuracy"] > 0.9
    h = m["history"]
    assert len(h) == 4 and h[-1]["train_cost"] < h[0]["train_cost"]
    assert set(h[0]) == {"epoch", "batch_cost", "train_cost", "train_accuracy", "valid_cost",
                         "valid_accuracy", "lr", "train_seconds", "examples_per_second",
                         "comm_seconds", "workers", "ranks", "bytes_per_step"}
    r = h[0]["ranks"][0]      # where one replica's epoch went
    assert r["rank"] == 0 and r["steps"] == 40 and r["bytes_sent"] == 0
    parts = sum(r[k] for k in ("data_seconds", "compute_seconds", "compress_seconds",
                               "comm_seconds", "update_seconds"))
    assert 0.5 * r["seconds"] < parts <= r["seconds"] and r["compute_seconds"] > 0
    assert r["overlapped_seconds"] == 0        # (only --bucket-mb's thread hides any)
    assert h[-1]["batch_cost"] < h[0]["batch_cost"]


@pytest.mark.parametrize("opts", [dict(), dict(optimizer="adam", lr=0.01, keep_prob=0.8),
                                  dict(augment="rotate=10,elastic=8:3", batchnorm=True,
                                       optimizer="momentum", lr=0.05)])
def test_same_seed_gives_bit_identical_parameters(splits, opts):
    a = train(cfg(epochs=2, **opts), splits, progress=False)["network"].params
    b = train(cfg(epochs=2, **opts), splits, progress=False)["network"].params
    c = train(cfg(epochs=2, seed=1, **opts), splits, progress=False)["network"].params
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_regularisation_shrinks_weights(splits):
    plain = train(cfg(epochs=3), splits, progress=False)["network"]
    l2 = train(cfg(epochs=3, l2=50.0), splits, progress=False)["network"]
    l1 = train(cfg(epochs=3, l1=50.0), splits, progress=False)["network"]
    size = lambda n: np.abs(n.params[:n.n_decay]).sum()  # noqa: E731
    assert size(l2) < 0.8 * size(plain) and size(l1) < 0.8 * size(plain)
    # per-layer strengths: the same value twice is the scalar form, bit for bit; a
    # strength on the first layer only shrinks that layer
    same = train(cfg(epochs=3, l2=(50.0, 50.0)), splits, progress=False)["network"]
    assert np.array_equal(same.params, l2.params)
    first = train(cfg(epochs=3, l2=(50.0, 0.0)), splits, progress=False)["network"]
    w0 = lambda n: np.abs(n.weight_layers[0].W).sum()  # noqa: E731
    w1 = lambda n: np.abs(n.weight_layers[1].W).sum()  # noqa: E731
    assert w0(first) < 0.5 * w0(plain) and w1(first) > 5 * w1(l2)
    capped = train(cfg(epochs=3, max_norm=0.5), splits, progress=False)["network"]
    for w in (d.W for d in capped.weight_layers):
        assert np.linalg.norm(w, axis=0).max() <= 0.5 + 1e-6


def test_early_stopping_restores_the_best_epoch(splits):
    # a huge learning rate makes validation accuracy wander, so it stops early
    m = train(cfg(epochs=30, early_stop=2, lr=20.0, output="sigmoid", cost="cross-entropy"),
              splits, progress=False)
    h = m["history"]
    best = max(range(len(h)), key=lambda i: h[i]["valid_accuracy"])
    assert len(h) < 30 and m["best_epoch"] == h[best]["epoch"]
    net = m["network"]
    x = splits.valid.x.reshape(100, -1).astype(np.float32) * np.float32(1 / 255)
    assert np.mean(net.predict(x) == splits.valid.y) == pytest.approx(h[best]["valid_accuracy"])


def test_plateau_schedule_halves_and_stops(splits):
    m = train(cfg(epochs=40, schedule="plateau:1:4", monitor="train_cost", lr=0.05),
              splits, progress=False)
    lrs = [e["lr"] for e in m["history"]]
    assert set(lrs) <= {0.05, 0.025, 0.0125} and lrs == sorted(lrs, reverse=True)


def test_warm_up_epochs_end_at_their_own_rate(splits):
    # each epoch's recorded rate is the one its last step took: epoch 0 warmed up to
    # the full 0.2, then epoch 1 and on at 0.2 x 0.5^epoch
    m = train(cfg(epochs=3, lr=0.2, warmup=1, schedule="exponential:0.5"), splits,
              progress=False)
    assert [e["lr"] for e in m["history"]] == [0.2, 0.1, 0.05]


def test_divergence_stops_with_a_message_and_keeps_the_last_good_epoch(splits):
    from distnn.train.records import DivergenceError
    with pytest.raises(DivergenceError, match=r"cost became (nan|inf) at epoch \d+, step \d+"
                                              r" \(lr 1e\+30\)") as e:
        train(cfg(lr=1e30, optimizer="sgd", activation="relu", output="identity",
                  cost="quadratic"), splits, progress=False)
    assert "Try a smaller --lr" in str(e.value)


def test_metrics_out_json(splits, tmp_path):
    out = tmp_path / "m" / "metrics.json"
    train(cfg(epochs=2, metrics_out=str(out)), splits, progress=False)
    m = json.loads(out.read_text())
    assert len(m["history"]) == 2 and 0 <= m["test_accuracy"] <= 1
    assert m["history"][1]["epoch"] == 1 and m["config"]["layers"] == [16, 12, 4]


def test_train_size_uses_the_first_examples(splits):
    m = train(cfg(epochs=1, train_size=50), splits, progress=False)
    assert m["history"][0]["examples_per_second"] > 0
    with pytest.raises(ValueError, match="larger than the training split"):
        train(cfg(train_size=5000), splits, progress=False)


def test_layer_sizes_must_match_the_data(splits):
    with pytest.raises(ValueError, match="images have 16 pixels; use --layers 16"):
        train(cfg(layers=(784, 30, 4)), splits, progress=False)
    with pytest.raises(ValueError, match="has 4 classes"):
        train(cfg(layers=(16, 30, 10)), splits, progress=False)


def test_loop_matches_a_hand_written_sgd_loop(splits):
    """The trainer's update equals w -= lr * (mean grad + (l2/n) w) over the epoch order,
    and its batch_cost is the mean data cost of those batches before each step."""
    from distnn.train.batches import epoch_order
    c = cfg(epochs=1, l2=2.0, lr=0.3, batch_size=32)
    m = train(c, splits, progress=False)
    net = distnn.Network(c.layers, seed=c.seed)
    x = splits.train.x.reshape(400, -1).astype(np.float32) * np.float32(1 / 255)
    order = epoch_order(c.seed, 0, 400)
    summed = 0.0
    for s in range(0, 400, 32):
        i = order[s:s + 32]
        cost, g = net.loss_and_grad(x[i], splits.train.y[i])
        summed += cost * len(i)
        g[:net.n_decay] += (2.0 / 400) * net.params[:net.n_decay]
        net.params -= np.float32(0.3) * g
    np.testing.assert_allclose(m["network"].params, net.params, rtol=1e-5, atol=1e-6)
    assert m["history"][0]["batch_cost"] == pytest.approx(summed / 400, rel=1e-5)
    # not the end-of-epoch training cost: the parameters moved during the epoch
    assert abs(m["history"][0]["batch_cost"] - m["history"][0]["train_cost"]) > 1e-3


def test_merge_valid_trains_on_train_and_valid_together(splits):
    both = Splits("blobs", Split(np.concatenate([splits.train.x, splits.valid.x]),
                                 np.concatenate([splits.train.y, splits.valid.y])),
                  Split(splits.valid.x[:0], splits.valid.y[:0]), splits.test, 4, "generated")
    merged = train(cfg(merge_valid=True), splits, progress=False)
    by_hand = train(cfg(), both, progress=False)
    np.testing.assert_array_equal(merged["network"].params, by_hand["network"].params)
    assert all(h["valid_accuracy"] is None for h in merged["history"])
    plain = train(cfg(), splits, progress=False)
    assert not np.array_equal(merged["network"].params, plain["network"].params)
    with pytest.raises(ValueError, match="--merge-valid trains on the validation split"):
        cfg(merge_valid=True, early_stop=3)
    cfg(merge_valid=True, early_stop=3, monitor="train_accuracy")


def test_ema_evaluates_and_returns_the_parameter_average(splits):
    """With --ema the validation/test figures and the returned network are those of the
    parameter average, which follows its formula over every step of the run."""
    from distnn.train.batches import epoch_order
    c = cfg(epochs=2, lr=0.3, batch_size=40, ema=0.8)
    m = train(c, splits, progress=False)
    net = distnn.Network(c.layers, seed=c.seed)
    x = splits.train.x.reshape(400, -1).astype(np.float32) * np.float32(1 / 255)
    avg, t = net.params.astype(np.float64), 0
    for epoch in range(2):
        order = epoch_order(c.seed, epoch, 400)
        for s in range(0, 400, 40):
            i = order[s:s + 40]
            _, g = net.loss_and_grad(x[i], splits.train.y[i])
            net.params -= np.float32(0.3) * g
            t += 1
            d = min(0.8, (1 + t) / (10 + t))
            avg = d * avg + (1 - d) * net.params
    np.testing.assert_allclose(m["network"].params, avg, rtol=1e-4, atol=1e-5)
    assert not np.allclose(avg, net.params, atol=1e-3)   # the average is not the last step
    xt = splits.test.x.reshape(len(splits.test.x), -1).astype(np.float32) * np.float32(1 / 255)
    raw_cost = net.evaluate(xt, splits.test.y)[0] / len(xt)
    net.params[...] = avg
    avg_cost = net.evaluate(xt, splits.test.y)[0] / len(xt)
    assert m["test_cost"] == pytest.approx(avg_cost, rel=1e-4)
    assert abs(raw_cost - avg_cost) > 1e-3 * avg_cost
    assert m["test_accuracy"] == np.mean(net.predict(xt) == splits.test.y)


def test_an_epoch_closed_under_it_ends_quietly(monkeypatch):
    """Ctrl-C closes the workers while an epoch runs in another of the actor's threads:
    the epoch then fails inside (its group gone) and must return quietly, not raise (Ray
    prints an unread task's error as a traceback before distnn's "stopped in epoch" line;
    issue 41)."""
    import threading

    from distnn.parallel.worker import Worker
    started, release = threading.Event(), threading.Event()

    class FakeEngine:
        group = None

        def run_epoch(self, *args):
            started.set()
            release.wait(10)
            return self.group.reduce_parts_       # the group was closed meanwhile

    w = Worker.__new__(Worker)
    w.engine = FakeEngine()
    out = {}
    t = threading.Thread(target=lambda: out.update(r=w.run_epoch(0, {})))
    t.start()
    started.wait(10)
    w.close()
    release.set()
    t.join(10)
    assert out["r"] == {"closed": True}
    w2 = Worker.__new__(Worker)      # not closing: the error is raised as ever
    w2.engine = FakeEngine()
    release.set()
    with pytest.raises(AttributeError):
        w2.run_epoch(0, {})
