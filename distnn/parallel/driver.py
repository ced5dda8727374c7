"""The driver: one run, for any number of workers.

It prepares the data once, starts the workers (in this process for one, as Ray actors
for more: see ``pools``), runs the epochs, checks that the replicas agree, and is the
``trainer`` the callbacks see: it writes the logs, checkpoints and metrics, once.  The
training loop itself is ``train.Engine``, inside every worker.
"""
from __future__ import annotations

import importlib
import logging
import os
import signal
import threading
import time

from ..config import TrainConfig
from ..core import regularizers, schedules
from ..io.files import OutputError
from ..core.network import Network
from ..core.schedules import HalveOnPlateau
from ..data.datasets import Split, Splits
from ..train.batches import Batches
from ..train.callbacks import EarlyStopping, PlateauSchedule, ProgressLogger
from ..train.data import TrainingData, load_splits, prepare
from ..train.diagnosis import from_history
from ..train.evaluate import cost_and_accuracy, measure
from ..train.records import (DivergenceError, all_finite, diverged_message, epoch_logs,
                             model_params, straggler, write_json)
from . import comm
from .comm import compress
from .pools import open_pool
from .worker import memory

log = logging.getLogger(__name__)


def mode_of(metric: str) -> str:
    return "max" if metric.endswith("accuracy") else "min"


class Driver:
    """What callbacks see as ``trainer``: the run's history and stop flag, the schedule,
    a network holding the parameters the run is evaluated with (the average, with
    ``--ema``), and ``snapshot``/``restore`` of the replicated state."""

    def __init__(self, cfg: TrainConfig, data: TrainingData, callbacks=(),
                 world: int | None = None):
        self.cfg, self.data = cfg, data
        self.net = Network.from_spec(cfg.network_spec())
        self.schedule = schedules.parse(cfg.schedule, cfg.lr, cfg.warmup)
        self.penalty = regularizers.Penalty(self.net, cfg.l1, cfg.l2)
        self.callbacks = list(callbacks) + run_callbacks(cfg, self.schedule)
        self.stop, self.epoch, self.best_epoch, self.history = False, 0, None, []
        self.overrides = []        # settings changed at a resume (--override)
        self.first_epoch = 0
        self.state_loader = None   # epoch -> state, when checkpoints are kept
        self.pool = open_pool(cfg, data, self.net.params.size + 1, world)
        self.backend = self.pool.backend
        self.state = self.pool.get_state()

    # -- state used by callbacks --------------------------------------------------------
    @property
    def lr(self) -> float:
        return self.schedule(self.epoch)

    def snapshot(self) -> dict:
        return self.state

    def restore(self, state: dict) -> None:
        self.state = state
        self.pool.set_state(state)
        self._load_local(state)
        if state["schedule"].get("spec") == self.schedule.spec:   # else: --override schedule
            self.schedule.load_state_dict(state["schedule"])

    def _load_local(self, state):
        self.net.params[...] = model_params(state)
        for k, v in self.net.named_buffers().items():
            v[...] = state["buffers"][k]

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
        self._load_local(self.state)
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
            last_step = -(-len(self.data.train) // cfg.batch_size) - 1
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
        if which == "test" and isinstance(self.data.splits.test, Split):
            d = self.data
            parts = [measure(self.net, Batches(d.splits.test, d.normalizer, None,
                                               self.net.dtype), 0, len(d.splits.test))]
        else:
            avg = self.state["optimizer"]["slots"].get("average")
            parts = self.pool.evaluate(which, self.net.params if avg is not None else None)
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


def attach_outputs(driver: Driver, cfg: TrainConfig) -> None:
    """TensorBoard logging, checkpointing and resume, as the config asks; the
    checkpoint callback goes last so it captures the other callbacks' decisions."""
    from ..io.store import local
    from ..train.checkpointing import Checkpointing, epoch_state_loader, resume
    d = driver.data
    if cfg.resume:
        resume(driver, cfg, resume_source(cfg))
    if cfg.logdir:
        from ..train.tensorboard import TensorBoard
        driver.callbacks.append(TensorBoard(cfg.logdir, cfg, d.splits, d.augmenter,
                                            d.normalizer))
    if cfg.checkpoint_dir:
        driver.callbacks.append(Checkpointing(
            cfg.checkpoint_dir, cfg, d.normalizer, cfg.keep_last, cfg.monitor,
            mode_of(cfg.monitor), {"fingerprint": d.fingerprint(), "splits": d.describe()}))
        driver.state_loader = epoch_state_loader(local(cfg.checkpoint_dir), driver.net)


CONFIG_HEADER = "# the settings of this run: distnn train --config config.toml trains it again\n"


def claim_outputs(cfg: TrainConfig, inputs: dict | None = None) -> list:
    """Before any work: the checkpoint and log directories become this run's (locked;
    another run's refused unless --resume continues the run they hold, or --overwrite;
    for a URI, its local stage is locked and the URI checked), and the metrics file is
    checked to be writable and to be no output directory's and no input's (``inputs``:
    {what: path}, such as --config).  A run resuming from a URI downloads the checkpoint
    into the stage.  Returns the locks to release at the end."""
    from ..io import checkpoint as ckpt
    from ..io import checkpoint_store as ckpt_store
    from ..io import store
    from ..io import tensorboard as tb
    from ..io.files import check_file_target, check_targets, claim, write_text_atomic
    check_targets({"--checkpoint-dir": cfg.checkpoint_dir, "--logdir": cfg.logdir},
                  {**(inputs or {}), "--resume": _resumed(cfg) if cfg.resume else None,
                   "the dataset": _dataset_path(cfg)},
                  ("--metrics-out", cfg.metrics_out) if cfg.metrics_out else None)
    if cfg.metrics_out:
        check_file_target(cfg.metrics_out, "--metrics-out")
    locks = []
    kinds = {cfg.checkpoint_dir: ("--checkpoint-dir", ckpt.used, ckpt.clear, ckpt_store.used_names,
                                  ckpt_store.clear_remote),
             cfg.logdir: ("--logdir", tb.used_events, tb.clear_events, tb.used_event_names,
                          tb.clear_remote_events)}
    try:
        for d in (cfg.checkpoint_dir, cfg.logdir):
            if not d:
                continue
            flag, used, clear, used_remote, clear_remote = kinds[d]
            # checkpoints already there are this run's only when it resumes from them
            ours = bool(cfg.resume) and (d != cfg.checkpoint_dir or _resumes_from(cfg))
            how = dict(resume=ours, overwrite=cfg.overwrite)
            if store.is_uri(d):
                locks.append(store.claim_uri(d, flag, used=used_remote, clear=clear_remote,
                                             **how))
            else:
                locks.append(claim(d, flag, used=used, clear=clear, **how))
        if cfg.checkpoint_dir:
            ckpt.clean_leftovers(store.local(cfg.checkpoint_dir))
            if cfg.resume and store.is_uri(cfg.checkpoint_dir):
                _fetch_resumed(cfg)
        for d in (cfg.checkpoint_dir, cfg.logdir):
            if d:        # the effective settings beside the run's outputs
                own = store.local(d) / "config.toml"
                if own.is_symlink() or (own.exists() and not own.read_text(
                        errors="replace").startswith(CONFIG_HEADER)):
                    raise ValueError(f"{d} holds a config.toml that distnn did not write; "
                                     "it would be replaced by this run's settings: move it, "
                                     "or give the run a directory of its own")
                write_text_atomic(own, CONFIG_HEADER + cfg.replace(
                    resume=None, override=(), overwrite=False).to_toml())
    except BaseException:
        release(locks)
        raise
    return locks


def _resumed(cfg: TrainConfig) -> str:
    """The checkpoint or checkpoint directory ``--resume`` names."""
    return cfg.checkpoint_dir if cfg.resume == "latest" else cfg.resume


def _resumes_from(cfg: TrainConfig) -> bool:
    """Whether --resume names --checkpoint-dir or a checkpoint inside it (so what is
    there is this run's), rather than another run's directory."""
    from pathlib import Path

    from ..io import store
    src, d = str(_resumed(cfg)).rstrip("/"), str(cfg.checkpoint_dir).rstrip("/")
    if store.is_uri(src) or store.is_uri(d):
        return src == d or src.startswith(d + "/")
    s, r = Path(src).resolve(), Path(d).resolve()
    return s == r or r in s.parents


def _dataset_path(cfg: TrainConfig) -> str | None:
    """The local path the data are read from (to keep outputs off it), if any."""
    if cfg.dataset.startswith("parquet:"):
        return cfg.dataset[len("parquet:"):]
    return cfg.data_dir


def resume_source(cfg: TrainConfig):
    """What ``--resume`` loads: a path or URI, or for a checkpoint inside a URI
    --checkpoint-dir, its copy in the stage (``_fetch_resumed``)."""
    from ..io import store
    src, d = _resumed(cfg), cfg.checkpoint_dir
    if d and store.is_uri(d) and store.is_uri(src) and \
            (src.rstrip("/") + "/").startswith(d.rstrip("/") + "/"):
        return store.local(d) / src.rstrip("/")[len(d.rstrip("/")):].lstrip("/")
    return src


def _fetch_resumed(cfg: TrainConfig) -> None:
    """Download the checkpoint a run resumes into its URI checkpoint directory's stage,
    known to the mirror as already there."""
    from ..io import checkpoint_store as ckpt_store
    from ..io import store
    if isinstance(resume_source(cfg), str):
        return     # resuming from elsewhere: read from there
    _, files = ckpt_store.fetch(_resumed(cfg), into=store.local(cfg.checkpoint_dir))
    store.mirror(cfg.checkpoint_dir).know(files)


def release(locks) -> None:
    for lock in locks:
        lock.release()


class Interrupted(RuntimeError):
    """The user stopped the run (Ctrl-C) in epoch ``epoch``."""

    def __init__(self, epoch: int, epochs: int):
        super().__init__(f"stopped in epoch {epoch} of 0..{epochs - 1}")


def train(cfg: TrainConfig, splits: Splits | None = None, *, progress: bool = True,
          callbacks=(), inputs: dict | None = None) -> dict:
    """Train as ``cfg`` says on ``cfg.workers`` workers (1: in this process, no Ray);
    return the metrics dict written by ``--metrics-out``, with the trained ``network``
    and its input ``normalizer``."""
    comm.check(cfg.allreduce)
    compress.check(cfg.compress, cfg.dtype)
    if cfg.data_shards == 0 and cfg.dataset.startswith("parquet:"):
        cfg = cfg.replace(data_shards=cfg.workers)   # recorded: a resume keeps the order
    splits = splits or load_splits(cfg)
    if cfg.data_shards > len(splits.train):
        raise ValueError(f"--data-shards {cfg.data_shards} is more than the training split's "
                         f"{len(splits.train)} examples")
    if cfg.workers > 1:      # imported before the memory baseline (see _memory)
        importlib.import_module("ray")
    rss0 = memory()["rss"]
    data = prepare(cfg, splits)
    check_fits(cfg)
    locks = claim_outputs(cfg, inputs)
    run_cfg = cfg     # what the run computes with; ``cfg`` is what the user asked for
    if cfg.lr_scaling == "linear" and cfg.workers > 1:
        log.info("linear lr scaling: lr %g x %d workers = %g", cfg.lr, cfg.workers,
                 cfg.lr * cfg.workers)
        run_cfg = cfg.replace(lr=cfg.lr * cfg.workers)
    started, driver, kept = False, None, False
    t0 = time.perf_counter()
    try:
        if cfg.workers > 1:
            from .ray_pool import start_ray, workers_to_start
            started = start_ray(cfg.address, cfg.workers, may_wait=True)
        world = workers_to_start(cfg) if cfg.workers > 1 else 1
        driver = Driver(run_cfg, data, [ProgressLogger(bar=None if progress else False),
                                        *callbacks], world)
        attach_outputs(driver, cfg)
        threads = sorted({w.get("blas_threads") for w in driver.pool.memory()},
                         key=str)
        log.info("training %s on %s (%d examples, source: %s) with %d worker%s x %s "
                 "BLAS thread(s) (all-reduce: %s%s)", list(cfg.layers), cfg.dataset,
                 len(data.train), data.splits.source, cfg.workers,
                 "s" if cfg.workers > 1 else "", "/".join(map(str, threads)),
                 driver.backend, "" if cfg.compress == "none" else f", {cfg.compress}")
        log.info("splits: %s", splits_said(data.describe()))
        return _finish(driver, cfg, t0, rss0)
    except OutputError:
        kept = True       # a URI's stage may hold what could not be copied there
        raise
    finally:
        with _no_interrupts():
            if driver is not None:
                driver.close()
            if started:
                from .ray_pool import stop_ray
                stop_ray()
            release(locks)
            _stages_done(cfg, kept)


def splits_said(described: dict) -> str:
    """"train 48000 rows (train.parquet), valid 6000 rows (...), test ..."."""
    out = []
    for k, d in described.items():
        files = d.get("files")
        where = f" of {', '.join(files[:3])}{', ...' if len(files) > 3 else ''}" \
            f" by {d['by']}" if files else ""
        out.append(f"{k} {d['rows']} rows{where}")
    return "; ".join(out)


def _stages_done(cfg: TrainConfig, kept: bool) -> None:
    """The local stages of URI outputs go with the run (their files are at the URI),
    unless a copy there failed (they are then the only copy) or DISTNN_KEEP_STAGE."""
    from ..io import store
    for d in (cfg.checkpoint_dir, cfg.logdir):
        if d and store.is_uri(d):
            if kept:
                log.error("what could not be copied to %s is in %s", d, store.local(d))
            else:
                store.remove_stage(d)


def check_fits(cfg: TrainConfig) -> None:
    """Refuse a network whose parameters and optimizer state would not fit in this
    machine's memory (each worker holds them all), before allocating any of it."""
    n = sum(a * b + b for a, b in zip(cfg.layers[:-1], cfg.layers[1:]))
    need = n * (4 if cfg.dtype == "float32" else 8) * 6   # params, grads, 2 slots, 2 buffers
    if n >= 2 ** 31:
        raise ValueError(f"layers {list(cfg.layers)} have {n:,} parameters; distnn holds at "
                         "most 2**31 - 1 in one network")
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > total:
        raise ValueError(f"layers {list(cfg.layers)} have {n:,} parameters, which need about "
                         f"{need / 2 ** 30:.1f} GiB per worker with their gradients and "
                         f"optimizer state; this machine has {total / 2 ** 30:.1f} GiB")


def _memory(driver: Driver, rss0: int) -> dict:
    """Resident memory in MiB: the driver's once the dataset is opened and the modules
    the run needs are imported, and its peak; each worker's when it started hosting its
    worker, and its peak (a process's peak is its whole life's: a worker in the driver's
    process reports the driver's)."""
    mib = 2 ** 20
    workers = driver.pool.memory()
    return {"driver_start_mib": rss0 / mib, "driver_peak_mib": memory()["peak"] / mib,
            "workers": [{"start_mib": w["start"] / mib, "peak_mib": w["peak"] / mib}
                        for w in workers]}


class _no_interrupts:
    """Ctrl-C is ignored while the run shuts down, so a second press cannot leave workers,
    Ray processes or shared-memory files behind (main thread only)."""

    def __enter__(self):
        self.old = None
        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGINT, signal.SIG_IGN)

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)


def _finish(driver: Driver, cfg: TrainConfig, t0: float, rss0: int = 0) -> dict:
    """Train, then measure the test split, diagnose, and write the metrics JSON; a
    stopped run (divergence, workers lost, a full disk, Ctrl-C) still writes what it
    has, then raises."""
    from ..io.files import OutputError
    from .ray_pool import WorkerFailure
    error = None
    try:
        driver.fit(cfg.epochs)
    except (DivergenceError, WorkerFailure, OutputError) as e:
        error = e
    except KeyboardInterrupt:
        error = Interrupted(driver.epoch, cfg.epochs)
    with _no_interrupts():
        metrics = _metrics(driver, cfg, t0, error, rss0)
    if error:
        raise error
    return metrics


def _metrics(driver: Driver, cfg: TrainConfig, t0: float, error, rss0: int = 0) -> dict:
    from ..io.files import OutputError
    metrics = {"config": cfg.to_dict(), "history": driver.history,
               "best_epoch": driver.best_epoch, "wall_seconds": time.perf_counter() - t0,
               "workers": cfg.workers, "allreduce": driver.backend,
               "faults": driver.pool.faults, "overrides": driver.overrides,
               "first_epoch": driver.first_epoch,
               "error": str(error) if error else None}
    if len(driver.data.splits.test) and not isinstance(error, Interrupted):
        metrics["test_cost"], metrics["test_accuracy"] = driver.evaluate("test")
        metrics["test_penalty"] = driver.penalty.value(driver.net.params,
                                                       len(driver.data.train))
    metrics["diagnosis"] = from_history(driver.history, driver.best_epoch, cfg.bayes_error)
    metrics["memory"] = _memory(driver, rss0)
    metrics["blas_threads"] = [w.get("blas_threads") for w in driver.pool.memory()]
    if cfg.metrics_out:
        try:
            write_json(cfg.metrics_out, metrics)
        except OutputError as e:
            if error is None:
                raise
            log.error("%s", e)
    metrics["network"], metrics["normalizer"] = driver.net, driver.data.normalizer
    return metrics
