"""Hyperparameter search on Ray Tune.

Tune schedules the trials (override dicts from ``space``) in parallel with their
resources declared; each is one training run.  Selection is on the validation split;
the winner's model is evaluated once on the test split (``results``).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path

from ..config import TrainConfig
from ..train.data import fit_input, load_splits
from ..train.batches import steps_per_epoch
from ..train.callbacks import mode_of
from .results import TrialRecorder, pending, record_error, summarise, trial_dir
from .space import apply

log = logging.getLogger(__name__)


def _splits(splits_ref):
    """The splits a Tune trial was given (by reference, or in tests by value)."""
    import ray
    return ray.get(splits_ref) if isinstance(splits_ref, ray.ObjectRef) else splits_ref


def _run_one(index: int, overrides: dict, base_cfg: TrainConfig, splits, out_dir: Path,
             callbacks=(), stoppable: bool = False) -> dict:
    """Train one configuration and record it in ``out_dir/trials/NNNN``: the final model,
    ``result.json`` and the hparams for TensorBoard.  A run that diverges, or whose
    settings are invalid, is recorded with its error (and its last good epoch) instead
    of stopping the search."""
    from ..parallel.driver import train
    from ..train.records import DivergenceError
    recorder = None
    try:
        cfg = apply(base_cfg, overrides).replace(checkpoint_dir=None, logdir=None,
                                                 metrics_out=None, resume=None)
        recorder = TrialRecorder(out_dir, index, overrides, cfg, stoppable)
        m = train(cfg, splits, progress=False, callbacks=[recorder, *callbacks])
    except (DivergenceError, ValueError) as e:
        if recorder is not None:
            recorder.close()
        return record_error(out_dir, index, overrides, e)
    return recorder.finish(m)


def _lane(config, base: TrainConfig, splits_ref, out_dir: str, queue):
    """One Tune trial per CPU slot: take the next configuration from the search's queue
    until it is empty, so every slot stays busy to the end (dynamic load balancing: a
    fast node simply takes more), then report the lane's best result once."""
    import ray
    from ray import tune
    splits = _splits(splits_ref)
    finals = []
    while (item := ray.get(queue.next.remote())) is not None:
        finals.append(_run_one(*item, base, splits, Path(out_dir)))
    key = base.monitor
    scored = [f for f in finals if key in f and "error" not in f]
    pick = max if mode_of(key) == "max" else min
    tune.report({"configurations": len(finals),
                 **(pick(scored, key=lambda f: f[key]) if scored else {})})


def _trial(config, base: TrainConfig, splits_ref, out_dir: str):
    """One configuration as one Tune trial, reporting every epoch (for ASHA)."""
    from ray import tune

    from ..train.callbacks import Callback
    from .results import clean

    class Report(Callback):
        def on_epoch_end(self, epoch, logs, trainer):
            tune.report(clean(logs))

    index, overrides = config["trial"]
    if not (trial_dir(out_dir, index) / "result.json").exists():
        _run_one(index, overrides, base, _splits(splits_ref), Path(out_dir),
                 callbacks=[Report()], stoppable=True)


def cost(cfg: TrainConfig, n_train: int) -> float:
    """A relative estimate of a configuration's training time, used to hand out the
    longest trials first: steps x (a fixed per-step overhead, worth ~20k weights in
    NumPy calls, + the weights)."""
    return cfg.epochs * steps_per_epoch(n_train, cfg.batch_size) * \
        (20_000 + cfg.network_spec().n_params)


def _cost_of(base: TrainConfig, overrides: dict, n_train: int) -> float:
    """``cost`` of a trial; 0 for one whose settings are invalid (it is recorded with
    its error when its turn comes, and the search goes on)."""
    try:
        return cost(apply(base, overrides), n_train)
    except ValueError:
        return 0.0


def run_search(base: TrainConfig, trials: list[dict], out: str, *, name: str = "search",
               asha: bool = False, resume: bool = False, address: str | None = None,
               splits=None) -> dict:
    """Run ``trials`` (override dicts) on Ray Tune; write results.csv/.parquet and
    best.toml into ``out``; return the summary (best trial, its test metrics).

    Without ``asha``, Tune runs one *lane* per CPU slot (``base.workers`` CPUs each);
    each lane takes configurations, longest first, from a shared queue until none are
    left, so no slot idles while another still has a backlog and Tune's per-trial
    overhead is paid once per lane.  With it, each configuration is its own Tune trial
    and reports every epoch for the scheduler to act on."""
    from ..parallel.session import start_ray, stop_ray
    out_dir, mirror = local_out(out, resume)
    todo = pending(trials, out_dir, resume)
    splits = splits or load_splits(base)
    base = fit_input(base, splits)        # (a conv net's input shape: its trials' costs)
    started = start_ray(address, base.workers, worker_output=False) if todo else False
    if started:       # the node gone: say so, and how to go on, not Ray's exit alone
        from ..parallel.session import watch_node
        watch_node(lambda: f"the finished trials are in {out}; the same command with "
                   "--resume-search runs the rest")
    watch = Progress(out_dir, len(trials), base.monitor, mirror=mirror)
    try:
        watch.start()
        grid = _fit(base, todo, splits, out_dir, name, asha, resume) if todo else []
        res = summarise(base, splits, out_dir, grid)
        if mirror is not None:       # name the URI's best.toml, not the stage's
            res["best_config"] = f"{out.rstrip('/')}/best.toml"
            summary = json.loads((out_dir / "summary.json").read_text())
            summary["best_config"] = res["best_config"]
            (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return res
    finally:
        watch.stop()
        if mirror is not None:
            mirror.sync()
        if started:
            stop_ray()


def local_out(out: str, resume: bool):
    """Where the search writes (``out``, or for a URI its local stage, emptied and, to
    resume, filled with what is there) and the mirror that copies it to a URI."""
    from ..io import store
    if not store.is_uri(out):
        out_dir = Path(out).resolve()
        out_dir.mkdir(parents=True, exist_ok=True)
        return out_dir, None
    mirror = store.Mirror(out)
    shutil.rmtree(mirror.root, ignore_errors=True)
    mirror.root.mkdir(parents=True)
    if resume:
        names = mirror.remote.files()
        for rel in names:
            mirror.remote.get(rel, mirror.root / rel)
        mirror.know(names)
    return mirror.root, mirror


class Progress(threading.Thread):
    """Live progress of a search, read from what its trials write (so it sees trials on
    any node): every few seconds, when something changed, one line with the trials
    finished, running and failed, and the best so far."""

    def __init__(self, out_dir: Path, total: int, monitor: str, every: float = 5.0,
                 mirror=None):
        super().__init__(daemon=True)
        self.out_dir, self.total, self.monitor, self.every = out_dir, total, monitor, every
        self.halt, self.last, self.mirror = threading.Event(), None, mirror

    def run(self):
        self.report()
        while not self.halt.wait(self.every):
            self.report()
            if self.mirror is not None:     # --out on a URI: what changed, every tick
                self.mirror.sync()

    def stop(self):
        self.halt.set()
        if self.is_alive():
            self.join()

    def report(self) -> str | None:
        from .results import progress
        done, running, failed, best = progress(self.out_dir, self.monitor)
        line = f"search: {done}/{self.total} trials done, {running} running, {failed} failed"
        if best:
            v = f"{100 * best[0]:.2f}%" if self.monitor.endswith("accuracy") \
                else f"{best[0]:.4g}"
            line += f"; best so far {self.monitor} {v} (trial {best[1]:04d}, {best[2]})"
        if line != self.last:
            self.last = line
            log.info("%s", line)
            return line
        return None


def _fit(base, todo, splits, out_dir, name, asha, resume):
    import ray
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    common = dict(base=base, splits_ref=ray.put(splits), out_dir=str(out_dir))
    storage = str(out_dir / "tune")
    # distnn writes its own results table and hparams: of Tune's loggers keep the
    # CSV/JSON ones its result table reads, not its TensorBoard one
    run_config = tune.RunConfig(name=name, storage_path=storage, verbose=0,
                                callbacks=[CSVLoggerCallback(), JsonLoggerCallback()])
    make = _asha_tuner if asha else _lanes_tuner
    tuner = make(base, todo, splits, common, run_config, f"{storage}/{name}", resume)
    # Tune's own console output goes (its box counts lanes, not configurations): distnn
    # reports the search's progress itself (``Progress``)
    with _environment(TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1", RAY_AIR_NEW_OUTPUT="0"):
        grid = tuner.fit()
    errors = [r.error for r in grid if r.error]
    if errors:
        log.warning("%d Tune trials failed (the first: %s); the table covers the "
                    "configurations that finished, and --resume-search runs the rest",
                    len(errors), errors[0])
    return grid


@contextmanager
def _environment(**values):
    """The process's environment with ``values`` set, for the duration."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _asha_tuner(base, todo, splits, common, run_config, path, resume):
    """One Tune trial per configuration, reporting every epoch to ASHA."""
    from ray import tune
    trainable = tune.with_resources(tune.with_parameters(_trial, **common),
                                    {"cpu": base.workers})
    if resume and tune.Tuner.can_restore(path):
        return tune.Tuner.restore(path, trainable, resume_errored=True)
    sched = tune.schedulers.ASHAScheduler(grace_period=max(1, base.epochs // 8))
    return tune.Tuner(
        trainable, param_space={"trial": tune.grid_search(todo)},
        tune_config=tune.TuneConfig(metric=base.monitor, mode=mode_of(base.monitor),
                                    scheduler=sched, reuse_actors=True),
        run_config=run_config)


def _lanes_tuner(base, todo, splits, common, run_config, path, resume):
    """One Tune trial per free slot, each taking configurations, longest first, from one
    shared queue."""
    import ray
    from ray import tune
    n = len(splits.train)
    order = sorted(todo, key=lambda it: -_cost_of(base, it[1], n))
    queue = ray.remote(num_cpus=0)(_Queue).remote(order)
    slots = max(1, int(ray.cluster_resources().get("CPU", 1)) // base.workers)
    trainable = tune.with_resources(tune.with_parameters(_lane, queue=queue, **common),
                                    {"cpu": base.workers})
    lanes = list(range(min(slots, len(order))))
    return tune.Tuner(trainable, param_space={"lane": tune.grid_search(lanes)},
                      run_config=run_config)


class _Queue:
    """The search's backlog of (index, overrides) pairs, served in order (a Ray actor:
    every lane, on any node, takes from the same one)."""

    def __init__(self, items):
        self.items = list(items)

    def next(self):
        return self.items.pop(0) if self.items else None
