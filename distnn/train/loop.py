"""The single-process training loop.

Each epoch visits the training set in an order drawn from (seed, epoch); each
mini-batch is (optionally) augmented, the mean gradient is computed, the L1/L2
gradient is added, and the optimizer steps.  ``step`` is the unit the distributed
engine reuses: it returns gradient *sums*, so results do not depend on how a batch
is split across workers.
"""
from __future__ import annotations

import logging
import math
import queue
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from ..core import regularizers
from ..core.network import Network
from ..core.optim import SGD, Optimizer
from ..core.schedules import Schedule
from ..data.augment import Augmenter
from ..data.datasets import Split
from ..data.splits import Normalizer

log = logging.getLogger(__name__)


class DivergenceError(RuntimeError):
    """The cost became NaN or infinite.  ``history`` holds the epochs completed; the
    network's parameters were put back to the end of the last complete epoch."""

    def __init__(self, msg: str, history: list):
        super().__init__(msg)
        self.history = history


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The global visiting order of epoch ``epoch``: a permutation of range(n) that
    depends only on (seed, epoch)."""
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)


@dataclass
class Batches:
    """Turns example indices into network-ready float batches (N, D).

    Without augmentation the whole split is normalised once up front; with it, each
    batch is resampled from the uint8 images on the fly.
    """

    split: Split
    normalizer: Normalizer
    augmenter: Augmenter | None
    dtype: np.dtype
    #: normalise the whole split once (fast) or each batch from the uint8 images
    #: (no float copy of the dataset: what data-parallel workers sharing one copy use)
    cache: bool = True

    def __post_init__(self):
        self.active = self.augmenter is not None and self.augmenter.spec.active
        self.x = self.normalizer(self.split.x, self.dtype) if self.cache and not self.active \
            else None
        self.y = np.ascontiguousarray(self.split.y, dtype=np.intp)

    def get(self, idx: np.ndarray, epoch: int):
        if self.x is not None:
            return self.x.take(idx, axis=0), self.y.take(idx)
        if not self.active:
            return self.normalizer(self.split.x.take(idx, axis=0), self.dtype), self.y.take(idx)
        imgs = self.augmenter(self.split.x.take(idx, axis=0), idx, epoch)
        x = imgs.reshape(len(idx), -1)
        if self.normalizer.mean is not None:
            x -= self.normalizer.mean
            x /= self.normalizer.std + self.normalizer.eps
        return x.astype(self.dtype, copy=False), self.y.take(idx)


def prefetch(batches: Batches, order: np.ndarray, batch_size: int, epoch: int, depth: int = 3):
    """Yield (start, indices, x, y) for consecutive batches of ``order``.  With
    augmentation the batches are built in a background thread (NumPy releases the GIL),
    overlapping augmentation with the gradient computation."""
    starts = range(0, len(order), batch_size)
    if not batches.active and batches.x is not None:
        for s in starts:
            idx = order[s:s + batch_size]
            yield (s, idx, *batches.get(idx, epoch))
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work():
        try:
            for s in starts:
                if stop.is_set():
                    return
                idx = order[s:s + batch_size]
                q.put((s, idx, *batches.get(idx, epoch)))
            q.put(None)
        except BaseException as e:  # handed to the consumer, re-raised there
            q.put(e)

    t = threading.Thread(target=work, name="distnn-augment", daemon=True)
    t.start()
    try:
        while (item := q.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(0.01)


def epoch_logs(epoch, lr, n, seconds, loss_sum, evaluate, monitor_train, has_valid,
               **extra) -> dict:
    """The per-epoch record every trainer writes (``evaluate(which)`` gives (cost,
    accuracy) for "train" or "valid").  ``batch_cost`` is free: the mean data cost of the
    epoch's mini-batches as they were trained on (augmented, with dropout, parameters
    moving), the one training curve a run with ``--no-monitor-train`` still has."""
    logs = {"epoch": epoch, "batch_cost": loss_sum / n, "train_cost": None,
            "train_accuracy": None, "valid_cost": None, "valid_accuracy": None, "lr": lr,
            "train_seconds": seconds, "examples_per_second": n / seconds, **extra}
    if monitor_train:
        logs["train_cost"], logs["train_accuracy"] = evaluate("train")
    if has_valid:
        logs["valid_cost"], logs["valid_accuracy"] = evaluate("valid")
    return logs


def model_params(state: dict) -> np.ndarray:
    """The parameters a trained state is evaluated and exported with: the parameter
    average when the run kept one (``--ema``), else the parameters."""
    avg = state["optimizer"]["slots"].get("average")
    return avg if avg is not None else state["params"]


def end_epoch(trainer, epoch: int, logs: dict) -> bool:
    """Record the epoch and run the callbacks; True when training should stop."""
    trainer.history.append(logs)
    for cb in trainer.callbacks:
        cb.on_epoch_end(epoch, logs, trainer)
    trainer.epoch = epoch + 1
    return trainer.stop


class Trainer:
    """Mini-batch training of one ``Network`` in this process.

    Parameters
    ----------
    net, optimizer, schedule : the model, its optimizer and learning-rate schedule.
    l1, l2 : penalty strengths λ (scaled by 1/n, n = training-set size); a number, or
        one number per weight matrix.
    max_norm : cap on each unit's incoming-weight norm, or None.
    batch_size, seed : mini-batch size and the seed of the epoch orders.
    callbacks : list of ``Callback``.
    """

    def __init__(self, net: Network, optimizer: Optimizer, schedule: Schedule, *,
                 l1=0.0, l2=0.0, max_norm=None, batch_size=10, seed=0, callbacks=()):
        regularizers.check(l1, l2, max_norm, len(net.dense))
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        self.net, self.optimizer, self.schedule = net, optimizer, schedule
        self.max_norm = max_norm
        self.penalty = regularizers.Penalty(net, l1, l2)
        self.batch_size, self.seed = batch_size, seed
        self.callbacks = list(callbacks)
        self.stop = False
        self.epoch = 0
        self.best_epoch = None
        self.history: list[dict] = []
        self.state_loader = None   # epoch -> state, when checkpoints are kept
        self._scratch = np.empty(net.n_decay, net.dtype)

    # -- state the callbacks may use -------------------------------------------------
    @property
    def lr(self) -> float:
        return self.optimizer.lr

    def snapshot(self) -> dict:
        """A copy of everything needed to resume from here (parameters, buffers,
        optimizer and schedule state)."""
        return {"params": self.net.params.copy(),
                "buffers": {k: v.copy() for k, v in self.net.named_buffers().items()},
                "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict()}

    def restore(self, state: dict) -> None:
        self.net.params[...] = state["params"]
        for k, v in self.net.named_buffers().items():
            v[...] = state["buffers"][k]
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])

    # -- the unit of work ----------------------------------------------------------
    def grad_scale(self, batch_count: int) -> float:
        """What the summed batch gradient is multiplied by in the backward pass: -lr/B
        for optimizers that take pre-scaled gradients, else 1/B (the mean)."""
        if self.optimizer.prescalable:
            return -self.optimizer.lr / batch_count
        return 1.0 / batch_count

    def step(self, x, y, idx, epoch, n_train) -> float:
        """One update on batch (x, y); returns the batch's summed data cost."""
        loss = self.net._loss_and_grad_sum(x, y, epoch=epoch, indices=idx,
                                           scale=self.grad_scale(len(x)))
        self.apply_update(n_train)
        return loss

    def apply_update(self, n_train: int, shard: tuple[int, int] | None = None) -> None:
        """Add the L1/L2 gradient (once, to the reduced gradient) and step.  The network's
        gradient is the one ``grad_scale`` asked for.

        ``shard=(lo, hi)``: update only ``params[lo:hi]`` (the optimizer's state then
        covers that range only) and leave max-norm, which needs whole weight columns, and
        the parameter average to ``finish_step`` once every shard is in place."""
        net, opt = self.net, self.optimizer
        if shard is None:
            params, grads, pen = net.params, net.grads, self.penalty
        else:
            lo, hi = shard
            params, grads, pen = net.params[lo:hi], net.grads[lo:hi], self.penalty.shard(lo, hi)
        opt.start_average(params)
        if not opt.prescalable:
            pen.add_grad(grads, params, n_train, self._scratch)
            opt.step(params, grads)
        elif pen and pen.only_l2 and type(opt) is SGD:
            # w - lr (g + (l2/n) w) == (1 - lr l2 / n) w - lr g: one pass fewer
            pen.decay_(params, opt.lr, n_train)
            opt.step_prescaled(params, grads)
        else:
            pen.add_grad(grads, params, n_train, self._scratch, scale=-opt.lr)
            opt.step_prescaled(params, grads)
        if shard is None:
            self.finish_step()

    def finish_step(self, shard: tuple[int, int] | None = None) -> None:
        """Max-norm on the whole network, then the parameter average (``--ema``) of
        ``params[lo:hi]`` (the range this replica's optimizer steps; all of it if None)."""
        if self.max_norm is not None:
            regularizers.apply_max_norm([d.W for d in self.net.dense], self.max_norm)
        lo, hi = shard if shard is not None else (0, self.net.params.size)
        self.optimizer.update_average(self.net.params[lo:hi])

    @contextmanager
    def averaged(self, average: np.ndarray | None = None):
        """Within the block the network holds the parameter average (``--ema``; the whole
        vector ``average``, or the optimizer's own), then its parameters again."""
        if average is None:
            average = self.optimizer.state.get("average")
        if average is None:   # no --ema, or no step taken yet
            yield
            return
        params = self.net.params
        held = params.copy()
        params[...] = average
        try:
            yield
        finally:
            params[...] = held

    def evaluate(self, batches: Batches, n_train: int) -> tuple[float, float]:
        """(mean cost + penalty, accuracy) of a split in eval mode, unaugmented, with the
        parameter average when there is one."""
        x = batches.x if batches.x is not None else \
            batches.normalizer(batches.split.x, batches.dtype)
        n = len(batches.y)
        with self.averaged():
            loss, correct = self.net.evaluate(x, batches.y)
            return loss / n + self.penalty.value(self.net.params, n_train), correct / n

    # -- the loop --------------------------------------------------------------------
    def fit(self, train: Batches, valid: Batches | None, epochs: int,
            monitor_train: bool = True) -> list[dict]:
        """Train for up to ``epochs`` epochs (fewer if a callback stops it)."""
        n = len(train.y)
        steps = math.ceil(n / self.batch_size)
        every = max(1, steps // 200)
        for cb in self.callbacks:
            cb.on_train_begin(self)
        last_good = self.snapshot()
        for epoch in range(self.epoch, epochs):
            self.epoch = epoch
            self.optimizer.lr = self.schedule(epoch)
            warm = self.schedule.warmup > 0 and epoch < self.schedule.warmup
            order = epoch_order(self.seed, epoch, n)
            t0 = time.perf_counter()
            loss_sum = 0.0
            for k, (s, idx, xb, yb) in enumerate(prefetch(train, order, self.batch_size, epoch)):
                if warm:
                    self.optimizer.lr = self.schedule(epoch + (k + 1) / steps)
                loss = self.step(xb, yb, idx, epoch, n)
                if not math.isfinite(loss):
                    self.restore(last_good)
                    raise DivergenceError(self._diverged_msg(loss, epoch, k), self.history)
                loss_sum += float(loss)
                if k % every == 0:
                    for cb in self.callbacks:
                        cb.on_progress(s + len(idx), n, self)
            seconds = time.perf_counter() - t0
            data = {"train": train, "valid": valid}
            logs = epoch_logs(epoch, self.optimizer.lr, n, seconds, loss_sum,
                              lambda which: self.evaluate(data[which], n), monitor_train,
                              valid is not None)
            if any(v is not None and not math.isfinite(v) for v in logs.values()):
                self.restore(last_good)
                raise DivergenceError(self._diverged_msg(math.nan, epoch, steps - 1), self.history)
            last_good = self.snapshot()
            if end_epoch(self, epoch, logs):
                break
        for cb in self.callbacks:
            cb.on_train_end(self)
        return self.history

    def _diverged_msg(self, loss, epoch, step) -> str:
        lr = self.optimizer.lr
        return (f"training diverged: the cost became {loss} at epoch {epoch}, step {step} "
                f"(lr {lr:g}). The parameters were put back to the end of the last complete "
                f"epoch. Try a smaller --lr (e.g. {lr / 10:g}), inputs scaled to [0, 1] "
                "(or --standardize), a cross-entropy or log-likelihood cost, or a smaller "
                "--init scale.")
