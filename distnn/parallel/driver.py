"""The driver: one run, for any number of workers.  It checks what it can before any
work, prepares the data once, claims the outputs, starts Ray when more than one worker
runs, opens the pool of workers (``pools``) and hands it to the ``train.Trainer``, then
leaves nothing behind: workers, Ray, locks, stages."""
from __future__ import annotations

import importlib
import logging
import os
import time

from ..config import TrainConfig
from ..data.datasets import on_demand
from ..data.splits import Splits
from ..io.files import OutputError
from ..train.callbacks import ProgressLogger
from ..train.data import fit_input, load_splits, prepare
from ..train.local import reduce_buffer
from ..train.outputs import claim_outputs, release, stages_done
from ..train.records import memory
from ..train import resume
from ..train.trainer import Trainer, attach_outputs, no_interrupts, run_to_end
from . import comm
from .comm import compress
from .pools import open_pool

log = logging.getLogger(__name__)


def train(cfg: TrainConfig, splits: Splits | None = None, *, progress: bool = True,
          callbacks=(), inputs: dict | None = None, resumed=None, on_node_lost=None) -> dict:
    """Train as ``cfg`` says on ``cfg.workers`` workers (1: in this process, no Ray);
    return the metrics dict written by ``--metrics-out``, with the trained ``network``
    and its input ``normalizer``.  ``resumed``: the checkpoint ``cfg.resume`` names,
    already read (``train.resume.read``; read here when not given).  ``on_node_lost``:
    returns a line to say (how to resume) before this process exits (status 4) if the
    Ray node it started dies (``session.watch_node``)."""
    comm.check(cfg.allreduce)
    compress.check(cfg.compress, cfg.dtype)
    if cfg.local and not cfg.replicas:
        cfg = cfg.replace(replicas=cfg.workers)   # K recorded: a resume keeps it
    if cfg.data_shards == 0 and on_demand(cfg.dataset):
        # recorded: a resume keeps the order (with local steps: a shard per replica)
        cfg = cfg.replace(data_shards=cfg.replica_count if cfg.local else cfg.workers)
    splits = splits or load_splits(cfg)
    cfg = fit_input(cfg, splits)          # image layers: the input's shape, recorded
    if cfg.data_shards > len(splits.train):
        raise ValueError(f"--data-shards {cfg.data_shards} is more than the training split's "
                         f"{len(splits.train)} examples")
    if cfg.workers > 1:      # imported before the memory baseline (see _memory)
        importlib.import_module("ray")
    rss0 = memory()["rss"]
    data = prepare(cfg, splits)
    check_fits(cfg)
    if cfg.resume and resumed is None:
        resumed = resume.read(cfg)
    locks = claim_outputs(cfg, inputs, resumed)
    run_cfg = cfg     # what the run computes with; ``cfg`` is what the user asked for
    if cfg.lr_scaling == "linear" and cfg.workers > 1:
        log.info("linear lr scaling: lr %g x %d workers = %g", cfg.lr, cfg.workers,
                 cfg.lr * cfg.workers)
        run_cfg = cfg.replace(lr=cfg.lr * cfg.workers)
    started, pool, kept = False, None, False
    t0 = time.perf_counter()
    try:
        if cfg.workers > 1:
            from .session import start_ray, workers_to_start
            started = start_ray(cfg.address, cfg.workers, may_wait=True,
                                threads=cfg.threads or 1)
            if started:
                from .session import watch_node
                watch_node(on_node_lost)
        world = workers_to_start(cfg) if cfg.workers > 1 else 1
        pool = open_pool(run_cfg, data, reduce_buffer(run_cfg)[0], world)
        trainer = Trainer(run_cfg, data, pool,
                          [ProgressLogger(bar=None if progress else False), *callbacks])
        if resumed is not None:
            resume.restore(trainer, cfg, resumed)
        attach_outputs(trainer, cfg)
        _say_what(cfg, data, pool)
        return run_to_end(trainer, cfg, t0, rss0)
    except OutputError:
        kept = True       # a URI's stage may hold what could not be copied there
        raise
    finally:
        with no_interrupts():
            if pool is not None:
                pool.close()
            if started:
                from .session import stop_ray
                stop_ray()
            release(locks)
            stages_done(cfg, kept)


def trainer_for(cfg: TrainConfig, data, callbacks=(), world: int | None = None) -> Trainer:
    """A ``Trainer`` on a pool of ``cfg.workers`` workers (``world`` to begin with) for
    prepared ``data``, without outputs or a Ray session of its own (tests, benchmarks);
    ``close()`` it."""
    pool = open_pool(cfg, data, reduce_buffer(cfg)[0], world)
    return Trainer(cfg, data, pool, callbacks)


def _say_what(cfg: TrainConfig, data, pool) -> None:
    """The run's first log lines: what trains on what, where, and the splits."""
    workers = pool.memory()
    threads = sorted({w.get("blas_threads") for w in workers}, key=str)
    default = " (the default --layers: Nielsen's first network; give --layers for another)" \
        if cfg.layers == TrainConfig().layers else ""
    log.info("training %s%s on %s (%d examples, source: %s) with %d worker%s x %s "
             "BLAS thread(s) (all-reduce: %s%s)", list(cfg.layers), default, cfg.dataset,
             len(data.train), data.splits.source, cfg.workers,
             "s" if cfg.workers > 1 else "", "/".join(map(str, threads)),
             pool.backend, "" if cfg.compress == "none" else f", {cfg.compress}")
    if cfg.local:
        log.info("local steps: %d logical replicas, each taking %d step(s) of --optimizer %s "
                 "between synchronisations (outer: %s); the result depends on the replicas, "
                 "not on the workers", cfg.replica_count, cfg.local_steps, cfg.optimizer,
                 cfg.outer)
    if cfg.bucket_mb and pool.backend not in ("tcp", "hier"):
        log.warning("--bucket-mb %g is not used: the %s all-reduce does not cross links "
                    "(buckets overlap tcp, and hier with one worker a node)", cfg.bucket_mb,
                    pool.backend)
    log.info("BLAS kernels: %s", " / ".join(sorted({
        w.get("blas") or "unknown (not NumPy's bundled OpenBLAS)" for w in workers})))
    log.info("splits: %s", splits_said(data.describe()))


def splits_said(described: dict) -> str:
    """"train 48000 rows (train.parquet), valid 6000 rows (...), test ..."."""
    out = []
    for k, d in described.items():
        files = d.get("files")
        where = f" of {', '.join(files[:3])}{', ...' if len(files) > 3 else ''}" \
            f" by {d['by']}" if files else ""
        out.append(f"{k} {d['rows']} rows{where}")
    return "; ".join(out)


def check_fits(cfg: TrainConfig) -> None:
    """Refuse a network whose parameters and optimizer state would not fit in this
    machine's memory (each worker holds them all), before allocating any of it."""
    n = cfg.network_spec().n_params
    need = n * (4 if cfg.dtype == "float32" else 8) * 6   # params, grads, 2 slots, 2 buffers
    if n >= 2 ** 31:
        raise ValueError(f"layers {list(cfg.layers)} have {n:,} parameters; distnn holds at "
                         "most 2**31 - 1 in one network")
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > total:
        raise ValueError(f"layers {list(cfg.layers)} have {n:,} parameters, which need about "
                         f"{need / 2 ** 30:.1f} GiB per worker with their gradients and "
                         f"optimizer state; this machine has {total / 2 ** 30:.1f} GiB")


