"""The run's epoch loop, for any number of workers: the ``Trainer`` is what the
callbacks see as ``trainer``; it is handed a ``Pool`` of workers (``train.pool``), runs
the epochs on them, checks that the replicas agree, and writes the logs, checkpoints and
metrics, once.  The training loop of each replica is ``train.engine.Engine``."""
from __future__ import annotations

import logging
import signal
import threading
import time

from ..config import TrainConfig
from ..core.schedules import HalveOnPlateau
from ..io.files import OutputError
from .batches import Batches, steps_per_epoch
from .callbacks import EarlyStopping, PlateauSchedule, best_of, mode_of
from .data import TrainingData
from .diagnosis import from_history
from .evaluate import cost_and_accuracy, measure
from .model import build_model
from .pool import Pool, WorkerFailure
from .records import (DivergenceError, all_finite, diverged_message, epoch_logs, memory,
                      straggler, write_json)
from .state import ReplicaState

log = logging.getLogger(__name__)


class Trainer:
    """What callbacks see as ``trainer``: the run's history and stop flag, the schedule,
    a network holding the parameters the run is evaluated with (the average, with
    ``--ema``), and ``snapshot``/``restore`` of the replicated state."""

    def __init__(self, cfg: TrainConfig, data: TrainingData, pool: Pool, callbacks=()):
        self.cfg, self.data, self.pool = cfg, data, pool
        model = build_model(cfg)
        self.net, self.schedule, self.penalty = model.net, model.schedule, model.penalty
        self.callbacks = list(callbacks) + run_callbacks(cfg, self.schedule)
        self.stop, self.epoch, self.best_epoch, self.history = False, 0, None, []
        self.overrides = []        # settings changed at a resume (--override)
        self.first_epoch = 0
        self.state_loader = None   # epoch -> state, when checkpoints are kept
        self.backend = pool.backend
        self.state = pool.get_state()

    # -- state used by callbacks --------------------------------------------------------
    @property
    def lr(self) -> float:
        return self.schedule(self.epoch)

    def snapshot(self) -> ReplicaState:
        return self.state

    def restore(self, state: ReplicaState) -> None:
        self.state = state
        self.pool.set_state(state)
        state.load_into(self.net)
        if state.schedule.get("spec") == self.schedule.spec:   # else: --override schedule
            self.schedule.load_state_dict(state.schedule)

    def worker_pids(self) -> list[int]:
        return self.pool.worker_pids()

    # -- the loop ----------------------------------------------------------------------
    def fit(self, epochs: int) -> list[dict]:
        """Train up to ``epochs`` epochs (fewer if a callback stops it)."""
        self.first_epoch = self.epoch       # > 0 after a resume
        for cb in self.callbacks:
            cb.on_train_begin(self)
        for epoch in range(self.epoch, epochs):
            self.epoch = epoch
            if self._epoch(epoch):
                break
        for cb in self.callbacks:
            cb.on_train_end(self)
        return self.history

    def _epoch(self, epoch: int) -> bool:
        """Run one epoch and its callbacks; True when training should stop."""
        def progress(done, total):
            for cb in self.callbacks:
                cb.on_progress(done, total, self)
        t0 = time.perf_counter()
        results = self.pool.run_epoch(epoch, self.schedule.state_dict(), progress)
        seconds = time.perf_counter() - t0
        bad = next((r for r in results if r["diverged"]), None)
        if bad is not None:
            self._diverged(bad["loss"], epoch, bad["step"], bad["lr"])
        self._check_replicas(results, epoch)
        last_good = self.state
        self.state = self.pool.epoch_state()
        self.state.load_into(self.net)
        r0, cfg = results[0], self.cfg
        logs = epoch_logs(epoch, r0["lr"], len(self.data.train), seconds,
                          r0["loss_sum"],   # already summed over all workers
                          self.evaluate, cfg.monitor_train, len(self.data.splits.valid) > 0,
                          comm_seconds=max(r["comm_seconds"] for r in results),
                          workers=len(results), ranks=[r["times"] for r in results],
                          bytes_per_step=max(r["times"]["bytes_sent"] for r in results)
                          / max(1, r0["times"]["steps"]))
        slow = straggler(logs["ranks"], seconds)
        if slow:
            log.warning("epoch %d: %s", epoch, slow)
        if not all_finite(logs):
            self.state = last_good
            last_step = steps_per_epoch(len(self.data.train), cfg.batch_size) - 1
            self._diverged(float("nan"), epoch, last_step, r0["lr"])
        self.history.append(logs)
        for cb in self.callbacks:
            cb.on_epoch_end(epoch, logs, self)
        self.epoch = epoch + 1
        return self.stop

    def _diverged(self, loss, epoch, step, lr):
        """Put every replica back to the start of the epoch and stop with advice."""
        self.restore(self.state)
        raise DivergenceError(diverged_message(loss, epoch, step, lr), self.history)

    def _check_replicas(self, results, epoch):
        if len({r["final_digest"] for r in results}) == 1:
            return
        steps = [dict(r["digests"]) for r in results]
        bad = next((k for k in sorted(steps[0]) if len({s.get(k) for s in steps}) > 1), None)
        where = f" (first seen at step {bad})" if bad is not None else ""
        raise RuntimeError(f"replicas diverged in epoch {epoch}{where}: the workers' "
                           "parameters differ; this is a bug, please report it")

    def evaluate(self, which: str) -> tuple[float, float]:
        """(cost + penalty, accuracy) of "train", "valid" (the workers, each on its part)
        or "test" (here, unless the workers read it a shard each), with the parameters
        the run is evaluated with."""
        if which == "test" and self.data.splits.test.held_whole:
            d = self.data
            parts = [measure(self.net, Batches(d.splits.test, d.normalizer, None,
                                               self.net.dtype), 0, len(d.splits.test))]
        else:
            avg = self.state.average is not None
            parts = self.pool.evaluate(which, self.net.params if avg else None)
        return cost_and_accuracy(self.net, self.penalty, parts, len(self.data.train))

    def close(self) -> None:
        self.pool.close()


def run_callbacks(cfg: TrainConfig, schedule) -> list:
    """The callbacks the config asks for that decide the course of training."""
    cbs = []
    if isinstance(schedule, HalveOnPlateau):
        cbs.append(PlateauSchedule(cfg.monitor, mode_of(cfg.monitor)))
    if cfg.early_stop:
        cbs.append(EarlyStopping(cfg.monitor, mode_of(cfg.monitor), cfg.early_stop))
    return cbs


def attach_outputs(trainer: "Trainer", cfg: TrainConfig) -> None:
    """TensorBoard logging and checkpointing, as the config asks; the checkpoint
    callback goes last so it captures the other callbacks' decisions."""
    from ..io.store import local
    from .checkpointing import Checkpointing, epoch_state_loader
    d = trainer.data
    if cfg.logdir:
        from .tensorboard import TensorBoard
        trainer.callbacks.append(TensorBoard(cfg.logdir, cfg, d.splits, d.augmenter,
                                            d.normalizer))
    if cfg.checkpoint_dir:
        trainer.callbacks.append(Checkpointing(
            cfg.checkpoint_dir, cfg, d.normalizer, cfg.keep_last, cfg.monitor,
            mode_of(cfg.monitor), {"fingerprint": d.fingerprint(), "splits": d.describe()}))
        trainer.state_loader = epoch_state_loader(local(cfg.checkpoint_dir), trainer.net)


class Interrupted(RuntimeError):
    """The user stopped the run (Ctrl-C) in epoch ``epoch``."""

    def __init__(self, epoch: int, epochs: int):
        super().__init__(f"stopped in epoch {epoch} of 0..{epochs - 1}")


def _memory(workers: list[dict], rss0: int) -> dict:
    """Resident memory in MiB: the driver's once the dataset is opened and the modules
    the run needs are imported, and its peak; each worker's when it started hosting its
    worker, and its peak (a process's peak is its whole life's: a worker in the driver's
    process reports the driver's)."""
    mib = 2 ** 20
    return {"driver_start_mib": rss0 / mib, "driver_peak_mib": memory()["peak"] / mib,
            "workers": [{"start_mib": w["start"] / mib, "peak_mib": w["peak"] / mib}
                        for w in workers]}


class no_interrupts:
    """Ctrl-C is ignored while the run shuts down, so a second press cannot leave workers,
    Ray processes or shared-memory files behind (main thread only)."""

    def __enter__(self):
        self.old = None
        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGINT, signal.SIG_IGN)

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)


def run_to_end(trainer: Trainer, cfg: TrainConfig, t0: float, rss0: int = 0) -> dict:
    """Train, then measure the test split, diagnose, and write the metrics JSON; a
    stopped run (divergence, workers lost, a full disk, Ctrl-C) still writes what it
    has, then raises."""
    error = None
    try:
        trainer.fit(cfg.epochs)
    except (DivergenceError, WorkerFailure, OutputError) as e:
        error = e
    except KeyboardInterrupt:
        error = Interrupted(trainer.epoch, cfg.epochs)
    with no_interrupts():
        metrics = _metrics(trainer, cfg, t0, error, rss0)
    if error:
        raise error
    return metrics


def _metrics(trainer: Trainer, cfg: TrainConfig, t0: float, error, rss0: int = 0) -> dict:
    metrics = {"config": cfg.to_dict(), "history": trainer.history,
               "best_epoch": trainer.best_epoch, "best": best_of(trainer.history, cfg.monitor),
               "wall_seconds": time.perf_counter() - t0,
               "workers": cfg.workers, "allreduce": trainer.backend,
               "faults": trainer.pool.faults, "overrides": trainer.overrides,
               "first_epoch": trainer.first_epoch,
               "error": str(error) if error else None}
    if len(trainer.data.splits.test) and not isinstance(error, Interrupted):
        metrics["test_cost"], metrics["test_accuracy"] = trainer.evaluate("test")
        metrics["test_penalty"] = trainer.penalty.value(trainer.net.params,
                                                       len(trainer.data.train))
    metrics["diagnosis"] = from_history(trainer.history, trainer.best_epoch, cfg.bayes_error)
    workers = trainer.pool.memory()
    metrics["memory"] = _memory(workers, rss0)
    metrics["blas_threads"] = [w.get("blas_threads") for w in workers]
    metrics["blas"] = [w.get("blas") for w in workers]
    from .outputs import metrics_path
    path = metrics["metrics_path"] = metrics_path(cfg)
    if path:
        try:
            write_json(path, metrics)
        except OutputError as e:
            if error is None:
                raise
            log.error("%s", e)
    metrics["network"], metrics["normalizer"] = trainer.net, trainer.data.normalizer
    return metrics
