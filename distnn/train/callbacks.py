"""Callbacks: they see ``(epoch, logs, trainer)`` after each epoch, run on the driver
only, and act only through the trainer (``trainer.stop = True``, the schedule, the
parameters).  ``mode`` is always explicit and a missing monitored metric is an error.
"""
from __future__ import annotations

import logging
import math
import sys
import time

log = logging.getLogger(__name__)


def mode_of(metric: str) -> str:
    """"max" for an accuracy, "min" for a cost: which way a monitored metric improves."""
    return "max" if metric.endswith("accuracy") else "min"


class Callback:
    def on_train_begin(self, trainer) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: dict, trainer) -> None:
        pass

    def on_progress(self, done: int, total: int, trainer) -> None:
        """Called a few hundred times an epoch at most, with examples done/total."""

    def on_train_end(self, trainer) -> None:
        pass


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _metric(logs: dict, name: str) -> float:
    if name not in logs or logs[name] is None:
        raise KeyError(f"monitored metric {name!r} is not in this run's logs "
                       f"{sorted(k for k, v in logs.items() if v is not None)}; "
                       "is there a validation split, or is --no-monitor-train set?")
    return float(logs[name])


def better(v: float, best: float, mode: str, min_delta: float = 0.0) -> bool:
    return v < best - min_delta if mode == "min" else v > best + min_delta


def best_of(history: list[dict], monitor: str) -> dict | None:
    """{"epoch", "monitor", "value"} of the history's best epoch by ``monitor`` (the
    first of equals, as the checkpoint kept as ``best`` is), or None where no epoch
    measured it."""
    best = None
    for h in history:
        v = h.get(monitor)
        if v is not None and (best is None or better(v, best["value"], mode_of(monitor))):
            best = {"epoch": h["epoch"], "monitor": monitor, "value": v}
    return best


class _Improvement:
    """Tracks the best value of a metric; ``mode`` is "min" or "max"."""

    def __init__(self, monitor: str, mode: str, min_delta: float = 0.0):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.monitor, self.mode, self.min_delta = monitor, mode, min_delta
        self.best = math.inf if mode == "min" else -math.inf

    def update(self, logs: dict) -> bool:
        v = _metric(logs, self.monitor)
        if better(v, self.best, self.mode, self.min_delta):
            self.best = v
            return True
        return False


class EarlyStopping(Callback):
    """Stop after ``patience`` epochs without improvement of ``monitor`` (Nielsen's
    no-improvement-in-n), and optionally put back the best epoch's parameters."""

    def __init__(self, monitor: str, mode: str, patience: int, restore_best: bool = True):
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience!r}")
        self.tracker = _Improvement(monitor, mode)
        self.patience, self.restore_best = patience, restore_best
        self.wait, self.best_epoch, self.best_state = 0, None, None
        self.stopped_epoch = None

    def on_train_begin(self, trainer):
        """After a resume, rebuild best/wait from the history so far."""
        for logs in trainer.history:
            if self.tracker.update(logs):
                self.wait, self.best_epoch = 0, logs["epoch"]
            else:
                self.wait += 1
        if trainer.history and self.restore_best:
            last = trainer.history[-1]["epoch"]
            self.best_state = trainer.snapshot() if self.best_epoch == last else None

    def on_epoch_end(self, epoch, logs, trainer):
        if self.tracker.update(logs):
            self.wait, self.best_epoch = 0, epoch
            if self.restore_best:
                self.best_state = trainer.snapshot()
            return
        self.wait += 1
        if self.wait >= self.patience:
            trainer.stop = True
            self.stopped_epoch = epoch
            log.info("early stopping at epoch %d: no improvement of %s in %d epochs "
                     "(best %.6g at epoch %d)", epoch, self.tracker.monitor, self.patience,
                     self.tracker.best, self.best_epoch)

    def on_train_end(self, trainer):
        if not self.restore_best or self.best_epoch is None:
            return
        state = self.best_state
        if state is None and getattr(trainer, "state_loader", None) is not None:
            try:    # the best epoch predates a resume
                state = trainer.state_loader(self.best_epoch)
            except ValueError as e:   # its checkpoint is gone: keep the last parameters
                log.warning("early stopping cannot restore the best epoch %d (%s); the "
                            "run ends with its last parameters", self.best_epoch, e)
                return
        if state is not None:
            trainer.restore(state)
            trainer.best_epoch = self.best_epoch


class PlateauSchedule(Callback):
    """Drives a plateau schedule (``plateau:N[:F]``): halve the learning rate after N
    epochs without improvement, and stop once it has fallen by F."""

    def __init__(self, monitor: str, mode: str):
        self.tracker = _Improvement(monitor, mode)

    def on_train_begin(self, trainer):
        for logs in trainer.history:   # after a resume: the best value so far
            self.tracker.update(logs)

    def on_epoch_end(self, epoch, logs, trainer):
        trainer.schedule.on_epoch_end(self.tracker.update(logs))
        if trainer.schedule.finished:
            log.info("stopping at epoch %d: the learning rate has fallen by the plateau "
                     "schedule's factor", epoch)
            trainer.stop = True


class ProgressLogger(Callback):
    """One line per epoch through ``logging``, and on a terminal a live bar (tqdm) of the
    epoch's examples with their rate, the epoch's ETA and the run's (after its first
    epoch).  When stderr is not a terminal (a log file, ``ray job logs``), a progress
    line every ``every`` seconds instead (examples, rate, the epoch's and the run's ETA);
    neither under ``-q``."""

    def __init__(self, stream=None, bar: bool | None = None, min_interval: float = 0.25,
                 every: float = 30.0):
        self.stream = stream or sys.stderr
        tty = self.stream.isatty()
        self.bar = (tty and log.isEnabledFor(logging.INFO)) if bar is None else bar
        #: seconds between progress lines where there is no bar (None: none)
        self.every = every if bar is None and not tty else None
        self.min_interval, self._tqdm, self._seconds = min_interval, None, []
        self._last_end = None
        self._epoch_start = self._last_line = None

    def on_train_begin(self, trainer):
        self._last_end = time.monotonic()

    def on_progress(self, done, total, trainer):
        if not self.bar:
            self._line(done, total, trainer)
            return
        if self._tqdm is None:
            from tqdm import tqdm
            self._tqdm = tqdm(total=total, unit="ex", unit_scale=True, leave=False,
                              file=self.stream, mininterval=self.min_interval,
                              dynamic_ncols=True, desc=self._desc(trainer))
        self._tqdm.update(done - self._tqdm.n)

    def _line(self, done, total, trainer) -> None:
        """Every ``every`` seconds of an epoch: where it is (no bar to show it)."""
        if self.every is None or not log.isEnabledFor(logging.INFO):
            return
        now = time.monotonic()
        if self._epoch_start is None:
            self._epoch_start = self._last_line = now
            return
        if now - self._last_line < self.every or not done or now <= self._epoch_start:
            return
        self._last_line = now
        rate = done / (now - self._epoch_start)
        left = (total - done) / rate
        log.info("%s: %d of %d examples (%.0f%%), %.0f ex/s, epoch ~%s left", self._desc(
            trainer), done, total, 100 * done / total, rate, _duration(left))

    def _desc(self, trainer) -> str:
        epochs = getattr(getattr(trainer, "cfg", None), "epochs", None)
        desc = f"epoch {trainer.epoch}" + (f" of 0..{epochs - 1}" if epochs else "")  # as logged
        if epochs and self._seconds:
            left = (epochs - trainer.epoch) * sum(self._seconds) / len(self._seconds)
            desc += f" (run: ~{_duration(left)} left)"
        return desc

    def on_epoch_end(self, epoch, logs, trainer):
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
        self._epoch_start = None
        now = time.monotonic()          # whole epochs, evaluation and checkpoint included
        if self._last_end is not None:
            self._seconds.append(now - self._last_end)
        self._last_end = now
        parts = [f"epoch {epoch}"]
        for k in ("batch_cost", "train_cost", "train_accuracy", "valid_cost",
                  "valid_accuracy"):
            if logs.get(k) is not None:
                v = logs[k]
                parts.append(f"{k} {100 * v:.2f}%" if k.endswith("accuracy") else f"{k} {v:.4f}")
        parts.append(f"lr {logs['lr']:.4g}")
        parts.append(f"{logs['examples_per_second']:.0f} ex/s")
        log.info("  ".join(parts))
