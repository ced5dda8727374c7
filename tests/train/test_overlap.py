"""train/overlap.py: buckets of whole layers from the last back, each sent as soon as
backprop has finished it, and the thread's errors raised on the training thread."""
import threading

import numpy as np
import pytest

from distnn.core.network import Network
from distnn.train.overlap import Overlap, buckets


def _net():
    net = Network([30, 40, 20, 10, 5], activation="relu")
    net.reset("he", seed=1)
    return net


def test_buckets_are_whole_layers_from_the_last_back_and_tile_the_weights():
    net = _net()
    w = [net.slices[f"dense{i}.weight"] for i in range(4)]
    per_layer = buckets(net, 0)
    assert per_layer == {f"dense{i}": (w[i].start, w[i].stop) for i in range(4)}
    assert buckets(net, float("inf")) == {"dense0": (0, net.n_decay)}
    # 4-byte numbers: 10x5 + 20x10 = 250 numbers = 1000 bytes close a bucket at dense2;
    # dense1 (40x20) fills one alone
    assert buckets(net, 1000) == {"dense2": (w[2].start, w[3].stop),
                                  "dense1": (w[1].start, w[1].stop), "dense0": (0, w[0].stop)}
    assert buckets(net, 4000) == {"dense1": (w[1].start, w[3].stop), "dense0": (0, w[0].stop)}


class _Recorder:
    """A group that records each span as it is asked for, with the gradient then."""
    overlaps = True

    def __init__(self, fail_at=None):
        self.calls, self.fail_at, self.aborted = [], fail_at, False

    def reduce_span_(self, key, buf, lo, hi, tail):
        if (lo, hi) == self.fail_at:
            raise RuntimeError("the previous member closed the connection")
        self.calls.append((key, lo, hi, tail, buf[lo:hi].copy(), float(buf[-1])))

    def abort(self):
        self.aborted = True


def test_each_bucket_goes_once_backprop_has_it_and_the_rest_after_the_cost(rng):
    net = _net()
    buf = np.zeros(net.params.size + 1, net.dtype)
    net.rebind_grads(buf)
    x = rng.random((8, 30)).astype(np.float32)
    y = rng.integers(0, 5, 8)
    ov, group, done = Overlap(net, buf, 0), _Recorder(), []
    submitted = []
    real = ov._submit
    ov._submit = lambda span, tail: (submitted.append((span, list(done))), real(span, tail))

    def after(layer):
        done.append(layer.name)
        ov.layer_done(layer)
    ov.start(group, 7, timeout=10)
    buf[-1] = net.loss_and_grad_sum_(x, y, scale=1 / 8, after=after)
    ov.finish()
    assert ov.busy > 0                      # the thread's time in the group's reductions
    dense = [n for n in done if n.startswith("dense")]
    assert dense == ["dense3", "dense2", "dense1", "dense0"]
    # each bucket was handed over right after its layer, before the layers before it
    for (span, seen), name in zip(submitted, dense):
        assert seen[-1] == name and span == tuple(net.slices[f"{name}.weight"].indices(
            net.params.size)[:2])
    # what was sent is the final gradient; the rest goes last, with the cost
    full = net.loss_and_grad(x, y)[1]
    for key, lo, hi, tail, sent, cost in group.calls:
        assert key == 7
        np.testing.assert_array_equal(sent, full[lo:hi])
    assert [c[3] for c in group.calls] == [False] * 4 + [True]
    assert group.calls[-1][1:3] == (net.n_decay, net.params.size)
    assert group.calls[-1][5] == pytest.approx(buf[-1])
    ov.close()


def test_an_error_in_the_thread_is_raised_by_finish_and_the_next_step_starts_clean(rng):
    net = _net()
    buf = np.zeros(net.params.size + 1, net.dtype)
    net.rebind_grads(buf)
    w2 = net.slices["dense2.weight"]
    ov = Overlap(net, buf, 0)
    ov.start(_Recorder(fail_at=(w2.start, w2.stop)), 1, timeout=10)
    x, y = rng.random((4, 30)).astype(np.float32), rng.integers(0, 5, 4)
    buf[-1] = net.loss_and_grad_sum_(x, y, after=ov.layer_done)
    with pytest.raises(RuntimeError, match="closed the connection"):
        ov.finish()
    good = _Recorder()
    ov.start(good, 2, timeout=10)
    ov.all_at_once()                        # a replica with no rows in the batch
    assert len(good.calls) == 5 and good.calls[-1][3]
    ov.close()


def test_a_span_that_never_returns_aborts_the_group_at_the_deadline():
    net = _net()
    buf = np.zeros(net.params.size + 1, net.dtype)
    release = threading.Event()

    class Stuck(_Recorder):
        def reduce_span_(self, *a):
            release.wait(30)

        def abort(self):
            self.aborted = True
            release.set()           # as a real abort releases the blocked collective
    ov, g = Overlap(net, buf, float("inf")), Stuck()
    ov.start(g, 1, timeout=0.05)
    ov.all_at_once()
    assert g.aborted
    ov.close()
