"""The gradient's all-reduce overlapped with backprop (``--bucket-mb``).

Backprop produces the last layer's gradient first.  With ``--bucket-mb MB`` > 0 and a
group that crosses links (``overlaps``: tcp; hier with one worker a node), the weight
gradients are cut into buckets of about MB megabytes, whole layers each, from the last
layer back; as soon as backprop has finished the layers of a bucket, a communication
thread all-reduces that span of the gradient while backprop goes on with the layers
before it.  The biases, the batch-norm parameters and the batch's cost go last, once
backprop is done.  Every replica then holds the whole reduced gradient and applies the
whole update (no parameter all-gather after it: the gradient's all-gather half travels
during backprop instead, the same bytes), keeping the whole optimizer state.

Each span is reduced on its own, its chunks spread over the ring's members, so every
link carries its share of every bucket.  With two members every sum is the same two
numbers in either order: the parameters equal those of the reduction at once, bit for
bit.  With more, a number's partial sums may be added in another order than in the
reduction at once (its chunk differs), so the parameters equal one process's up to
rounding, as for any backend.  Overlap is off with synchronised batch norm (its
all-reduces inside backprop use the same links) and under compression (a compressor
needs every matrix whole).
"""
from __future__ import annotations

import threading
import time


def buckets(net, cap_bytes: float) -> dict[str, tuple[int, int]]:
    """{name of the layer (of those with weights) after whose backward a bucket is
    complete: its span of the gradient}.  Weights of consecutive layers are consecutive
    in the flat vector, so a bucket of whole layers is one span; the first layer's
    closes the last bucket."""
    spans, hi = {}, None
    item = net.params.itemsize
    first = net.weight_layers[0]
    for layer in reversed(net.weight_layers):
        own = [net.slices[f"{layer.name}.{m}"] for m in layer.matrices]
        start = min(sl.start for sl in own)
        hi = max(sl.stop for sl in own) if hi is None else hi
        if (hi - start) * item >= cap_bytes or layer is first:
            spans[layer.name] = (start, hi)
            hi = start
    return spans


class Overlap:
    """One replica's communication thread, reducing spans of ``buf`` through the group
    it is given at each step's ``start``."""

    def __init__(self, net, buf, cap_bytes: float):
        self.spans, self.buf = buckets(net, cap_bytes), buf
        self.n_weights = net.n_decay
        covered = sorted(self.spans.values())
        if covered[0][0] != 0 or covered[-1][1] != self.n_weights or any(
                a[1] != b[0] for a, b in zip(covered, covered[1:])):
            raise AssertionError(f"buckets {covered} do not tile the weights "
                                 f"[0, {self.n_weights})")
        self._cond = threading.Condition()
        self._todo: list = []
        self._pending, self._error, self._closed = 0, None, False
        #: seconds the thread has spent in the group's reductions (read after a step)
        self.busy = 0.0
        self._thread = threading.Thread(target=self._run, name="distnn-overlap", daemon=True)
        self._thread.start()

    @property
    def n_buckets(self) -> int:
        return len(self.spans) + 1

    def start(self, group, key: int, timeout: float) -> None:
        """A new step's reduction, collective ``key`` of ``group`` (what a step left
        running when it failed is waited for first)."""
        self._wait(timeout)
        self.group, self.key, self.timeout, self._error = group, key, timeout, None

    def layer_done(self, layer) -> None:
        """Backprop has finished ``layer``: its bucket, if it closes one, goes now."""
        span = self.spans.get(layer.name)
        if span is not None:
            self._submit(span, False)

    def finish(self) -> None:
        """The rest (biases, batch-norm parameters and the cost, ``buf[-1]`` set by
        now) goes; returns once every span is reduced, raising what the thread met."""
        self._submit((self.n_weights, self.buf.size - 1), True)
        self._wait(self.timeout)
        if self._error is not None:
            raise self._error

    def all_at_once(self) -> None:
        """A replica with nothing to compute (no rows in this batch): every span now."""
        for span in sorted(self.spans.values(), reverse=True):
            self._submit(span, False)
        self.finish()

    def _submit(self, span, tail) -> None:
        with self._cond:
            self._todo.append((self.group, self.key, span, tail))
            self._pending += 1
            self._cond.notify_all()

    def _wait(self, timeout: float) -> None:
        """Until every span is reduced.  Each reduction is bounded by the group's own
        timeout; past that many for all of them, the group is aborted (the thread then
        meets the group's own error, raised by ``finish``)."""
        limit = timeout * (self.n_buckets + 1)
        with self._cond:
            if self._cond.wait_for(lambda: self._pending == 0, limit):
                return
        self.group.abort()
        with self._cond:
            if not self._cond.wait_for(lambda: self._pending == 0, timeout):
                raise RuntimeError(f"the overlapped all-reduce did not end within {limit:g} "
                                   "s, nor once aborted")

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._todo or self._closed)
                if self._closed:
                    return
                group, key, (lo, hi), tail = self._todo.pop(0)
            t0 = time.perf_counter()
            try:
                if self._error is None:
                    group.reduce_span_(key, self.buf, lo, hi, tail)
            except BaseException as e:      # raised on the training thread (finish)
                self._error = e
            with self._cond:
                self.busy += time.perf_counter() - t0
                self._pending -= 1
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
