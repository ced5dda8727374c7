"""The Ray driver: starts the workers, ships the data once, runs epochs, fires callbacks.

Fault tolerance: the driver keeps the replicated state (parameters, batch-norm buffers,
optimizer and schedule state) as of the start of the current epoch.  If a worker dies,
the others are aborted, the dead one is replaced, every worker is reset to that state,
and the epoch is replayed.  Every step depends only on (seed, epoch, state), so the
replay computes exactly what the lost attempt would have: a failure costs time, never a
result.  After ``max_failures`` failed attempts of one epoch in a row it gives up with a
message; the parameters of the last complete epoch are kept.
"""
from __future__ import annotations

import logging
import math
import os
import socket
import time

import numpy as np

from ..config import TrainConfig
from ..data.datasets import Splits
from ..data.splits import Normalizer
from ..train.loop import DivergenceError, end_epoch, epoch_logs, model_params
from ..train.run import build_network, build_trainer, mode_of
from .collective import SharedMemoryGroup
from .worker import Worker

log = logging.getLogger(__name__)

BLAS_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class WorkerFailure(RuntimeError):
    """A worker died and the epoch could not be completed after the allowed retries."""


def _check_address(address: str) -> None:
    """Fail fast, with the address in the message, if HOST:PORT does not answer."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--address must be 'auto' or HOST:PORT, got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as e:
        raise ConnectionError(f"cannot reach a Ray cluster at {address} ({e}); start one "
                              "with 'ray start --head' or check the address") from None


def start_ray(address: str | None, workers: int):
    """Join ``address`` (auto or HOST:PORT) or start a local Ray bound to 127.0.0.1.
    Returns True if this call started Ray (and so should shut it down)."""
    import ray
    if ray.is_initialized():
        started = False
    elif address:
        if address != "auto":
            _check_address(address)
        ray.init(address=address, logging_level=logging.WARNING)
        started = False
    else:
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                 _node_ip_address="127.0.0.1", logging_level=logging.WARNING)
        started = True
    cpus = ray.cluster_resources().get("CPU", 0)
    if workers > cpus:
        if started:
            ray.shutdown()
        raise ValueError(f"--workers {workers} needs {workers} CPUs but the Ray cluster has "
                         f"{cpus:g}; use --workers {int(cpus)} or add nodes")
    return started


class DistTrainer:
    """Data-parallel counterpart of ``train.loop.Trainer`` (same callbacks and history)."""

    def __init__(self, cfg: TrainConfig, splits: Splits, train_split, *, allreduce="auto",
                 check_every=0, max_failures=3, callbacks=()):
        import ray
        self.ray, self.cfg, self.world = ray, cfg, cfg.workers
        if cfg.batch_size % self.world:
            raise ValueError(f"--batch-size {cfg.batch_size} (the global batch) must be "
                             f"divisible by --workers {self.world}")
        self.check_every, self.max_failures = check_every, max_failures
        self.net = build_network(cfg)   # the driver's copy, for snapshots and the test set
        local = build_trainer(cfg, self.net, callbacks)
        self.schedule, self.callbacks = local.schedule, local.callbacks
        self.penalty = local.penalty
        self._slots = local.optimizer.slots   # optimizer state slots (+ the average)
        self.stop, self.epoch, self.best_epoch, self.history = False, 0, None, []
        self.state_loader = None
        self.normalizer = Normalizer.fit(train_split.x, splits.pixel_max, cfg.standardize)
        self.n_train = len(train_split)
        self._refs = [ray.put(a) for a in (train_split.x, train_split.y,
                                          splits.valid.x, splits.valid.y)]
        norm = {"pixel_max": splits.pixel_max, "mean": self.normalizer.mean,
                "std": self.normalizer.std}
        self._worker_args = (cfg.to_dict(), norm, self.n_train)
        self._actor = ray.remote(num_cpus=1, max_concurrency=4,
                                 runtime_env={"env_vars": BLAS_ENV})(Worker)
        self.workers = [self._spawn(r) for r in range(self.world)]
        infos = ray.get([w.info.remote() for w in self.workers])
        same_node = len({i["node"] for i in infos}) == 1
        self.backend = self._choose_backend(allreduce, same_node)
        self.group = None
        self._wire()
        self.state = ray.get(self.workers[0].get_state.remote())

    def _spawn(self, rank):
        return self._actor.remote(rank, self.world, *self._worker_args, *self._refs)

    def _choose_backend(self, requested, same_node):
        if requested == "auto":
            return "shm" if same_node and os.path.isdir("/dev/shm") else "ring"
        if requested == "shm" and not same_node:
            raise ValueError("--allreduce shm needs every worker on one node; use ring")
        if requested not in ("shm", "ring"):
            raise ValueError(f"--allreduce must be auto, shm or ring, got {requested!r}")
        return requested

    def _wire(self):
        """(Re)create the all-reduce group and connect every worker to it."""
        ray = self.ray
        if self.group is not None:
            self.group.close()
            self.group = None
        if self.backend == "shm":
            # shared rows: the gathered parameters, then one per optimizer state slot
            self.group = SharedMemoryGroup(self.world, self.net.params.size + 1, self.net.dtype,
                                           shared_rows=1 + len(self._slots))
            spec = self.group.spec()
            ray.get([w.setup_collective.remote(spec) for w in self.workers])
        else:
            ray.get([w.setup_collective.remote({"backend": "ring"}, self.workers)
                     for w in self.workers])

    # -- state used by callbacks --------------------------------------------------------
    @property
    def lr(self) -> float:
        return self.schedule(self.epoch)

    def snapshot(self) -> dict:
        return self.state

    def restore(self, state: dict) -> None:
        self.state = state
        self.ray.get([w.set_state.remote(state) for w in self.workers])
        self._load_local(state)

    def _load_local(self, state):
        """The driver's copy holds what is evaluated: the average with ``--ema``."""
        self.net.params[...] = model_params(state)
        for k, v in self.net.named_buffers().items():
            v[...] = state["buffers"][k]

    # -- one epoch, with recovery ------------------------------------------------------
    def _attempt(self, epoch):
        """Run the epoch on every worker; returns the results, or the ranks that died."""
        ray = self.ray
        refs = [w.run_epoch.remote(epoch, self.schedule.state_dict(), self.cfg.batch_size,
                                   self.check_every) for w in self.workers]
        results, dead, pending = {}, [], list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            rank = refs.index(done[0])
            try:
                results[rank] = ray.get(done[0])
            except ray.exceptions.RayActorError:
                dead.append(rank)
                self._abort()
            except ray.exceptions.RayTaskError as e:
                if "CollectiveAborted" not in str(e):
                    self._abort()
                    raise
        return results, dead

    def _abort(self):
        if self.group is not None:
            self.group.abort()
        for w in self.workers:
            w.abort.remote()  # ring backend; harmless for shm

    def _recover(self, dead, epoch, failures):
        ray = self.ray
        if failures > self.max_failures:
            raise WorkerFailure(
                f"epoch {epoch} failed {failures} times in a row (workers {dead} died); "
                f"giving up. The parameters of the last complete epoch ({epoch - 1}) are kept.")
        log.warning("worker(s) %s died during epoch %d; replacing them and replaying the "
                    "epoch from its start (attempt %d)", dead, epoch, failures + 1)
        for r in dead:
            ray.kill(self.workers[r], no_restart=True)
            self.workers[r] = self._spawn(r)
        self._wire()
        ray.get([w.set_state.remote(self.state) for w in self.workers])

    def run_epoch(self, epoch):
        failures = 0
        while True:
            results, dead = self._attempt(epoch)
            if not dead:
                break
            failures += 1
            self._recover(dead, epoch, failures)
        if any(r["diverged"] for r in results.values()):
            r = results[0]
            self.restore(self.state)
            raise DivergenceError(
                f"training diverged: the cost became {r['loss']} at epoch {epoch}, step "
                f"{r['step']} (lr {r['lr']:g}). The parameters were put back to the end of "
                f"the last complete epoch. Try a smaller --lr (e.g. {r['lr'] / 10:g}).",
                self.history)
        self._check_replicas(results, epoch)
        return results

    def _check_replicas(self, results, epoch):
        finals = {r["final_digest"] for r in results.values()}
        if len(finals) == 1:
            return
        steps = [dict(r["digests"]) for r in results.values()]
        bad = next((k for k in sorted(steps[0]) if len({s.get(k) for s in steps}) > 1), None)
        where = f" (first seen at step {bad})" if bad is not None else ""
        raise RuntimeError(f"replicas diverged in epoch {epoch}{where}: the workers' "
                           "parameters differ; this is a bug, please report it")

    # -- the loop -------------------------------------------------------------------------
    # -- between epochs: a worker can die here too --------------------------------------
    def _live_state(self) -> dict:
        """The replicated state from the first worker that answers."""
        for w in self.workers:
            try:
                return self.ray.get(w.get_state.remote())
            except self.ray.exceptions.RayActorError:
                continue
        raise WorkerFailure("every worker died at the end of an epoch")

    def _heal(self) -> None:
        """Replace dead workers and bring every worker to ``self.state``."""
        dead = []
        for r, w in enumerate(self.workers):
            try:
                self.ray.get(w.info.remote())
            except self.ray.exceptions.RayActorError:
                dead.append(r)
        if dead:
            log.warning("worker(s) %s died between epochs; replacing them", dead)
            for r in dead:
                self.workers[r] = self._spawn(r)
            self._wire()
            self.ray.get([w.set_state.remote(self.state) for w in self.workers])

    def _end_of_epoch_state(self) -> None:
        self.state = self._live_state()
        self._heal()
        if self.state["buffers"] and not self.cfg.sync_batchnorm:
            # batch-norm running statistics are per worker; adopt one worker's everywhere
            # (parameters and optimizer state are already identical: digests checked)
            self.ray.get([w.set_state.remote(self.state) for w in self.workers])
        self._load_local(self.state)

    def evaluate(self, which: str, n_train: int) -> tuple[float, float]:
        try:
            parts = self.ray.get([w.evaluate.remote(which) for w in self.workers])
        except self.ray.exceptions.RayActorError:
            self._heal()
            parts = self.ray.get([w.evaluate.remote(which) for w in self.workers])
        loss, correct, n = (sum(p[i] for p in parts) for i in range(3))
        return loss / n + self.penalty.value(self.net.params, n_train), correct / n

    def fit(self, epochs: int, monitor_train: bool = True, has_valid: bool = True):
        for cb in self.callbacks:
            cb.on_train_begin(self)
        for epoch in range(self.epoch, epochs):
            self.epoch = epoch
            t0 = time.perf_counter()
            results = self.run_epoch(epoch)
            seconds = time.perf_counter() - t0
            self._end_of_epoch_state()
            comm = max(r["comm_seconds"] for r in results.values())
            logs = epoch_logs(epoch, results[0]["lr"], self.n_train, seconds,
                              results[0]["loss_sum"],   # already summed over all workers
                              lambda which: self.evaluate(which, self.n_train), monitor_train,
                              has_valid, comm_seconds=comm)
            if end_epoch(self, epoch, logs):
                break
        for cb in self.callbacks:
            cb.on_train_end(self)
        return self.history

    def worker_pids(self) -> list[int]:
        return [i["pid"] for i in self.ray.get([w.info.remote() for w in self.workers])]

    def close(self):
        for w in self.workers:
            self.ray.kill(w, no_restart=True)
        if self.group is not None:
            self.group.close()
            self.group = None
        for ref in self._refs:
            del ref
        self._refs = []


def train(cfg: TrainConfig, splits: Splits | None = None, *, callbacks=()) -> dict:
    """Train as ``cfg`` says on ``cfg.workers`` Ray workers (1 = in this process);
    returns the same metrics dict as ``distnn.train.run.train``."""
    from ..data.datasets import load
    from ..train import run as single
    from ..train.callbacks import ProgressLogger
    if cfg.workers == 1:
        return single.train(cfg, splits, callbacks=callbacks)
    splits, train_split = single.training_data(cfg, splits or load(cfg.dataset,
                                                                   cfg.data_dir))
    if cfg.lr_scaling == "linear":
        log.info("linear lr scaling: lr %g x %d workers = %g", cfg.lr, cfg.workers,
                 cfg.lr * cfg.workers)
        cfg = cfg.replace(lr=cfg.lr * cfg.workers)
    started = start_ray(cfg.address, cfg.workers)
    t0 = time.perf_counter()
    trainer = None
    try:
        trainer = DistTrainer(cfg, splits, train_split, allreduce=cfg.allreduce,
                              check_every=cfg.check_replicas, max_failures=cfg.max_failures,
                              callbacks=[ProgressLogger(bar=False), *callbacks])
        from ..data.augment import Augmenter
        single.attach_run_callbacks(trainer, cfg, trainer.normalizer, splits,
                                    Augmenter(cfg.augment, cfg.seed, splits.pixel_max))
        log.info("training %s on %s with %d workers (all-reduce: %s)", cfg.layers,
                 cfg.dataset, cfg.workers, trainer.backend)
        error = None
        try:
            trainer.fit(cfg.epochs, cfg.monitor_train, len(splits.valid) > 0)
        except (DivergenceError, WorkerFailure) as e:
            error = e
            log.error("%s", e)
        metrics = {"config": cfg.to_dict(), "history": trainer.history,
                   "best_epoch": trainer.best_epoch, "wall_seconds": time.perf_counter() - t0,
                   "workers": cfg.workers, "allreduce": trainer.backend,
                   "error": str(error) if error else None}
        net = trainer.net
        if len(splits.test):
            from ..train.loop import Batches
            local = build_trainer(cfg, net)
            te = Batches(splits.test, trainer.normalizer, None, net.dtype)
            metrics["test_cost"], metrics["test_accuracy"] = local.evaluate(te, len(train_split))
        from ..train.diagnosis import from_history
        metrics["diagnosis"] = from_history(trainer.history, trainer.best_epoch, cfg.bayes_error)
        if cfg.metrics_out:
            single.write_json(cfg.metrics_out, metrics)
        metrics["network"] = net
        if error:
            raise error
        return metrics
    finally:
        if trainer is not None:
            trainer.close()
        if started:
            import ray
            ray.shutdown()
