"""Run a training job described by a ``TrainConfig``: load the data, build the network,
optimizer, schedule and callbacks, train, and evaluate on the test split."""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from ..config import TrainConfig
from ..core.network import Network
from ..core.optim import make as make_optimizer
from ..core.schedules import HalveOnPlateau, parse as parse_schedule
from ..data.augment import Augmenter
from ..data.datasets import Split, Splits, load
from ..data.splits import Normalizer
from .callbacks import EarlyStopping, PlateauSchedule, ProgressLogger
from .diagnosis import from_history
from .loop import Batches, DivergenceError, Trainer, model_params

log = logging.getLogger(__name__)


def mode_of(metric: str) -> str:
    return "max" if metric.endswith("accuracy") else "min"


def build_network(cfg: TrainConfig) -> Network:
    return Network(cfg.layers, activation=cfg.activation, output=cfg.output, cost=cfg.cost,
                   init=cfg.init, keep_prob=cfg.keep_prob, batchnorm=cfg.batchnorm,
                   seed=cfg.seed, dtype=cfg.dtype, keep_prob_input=cfg.keep_prob_input,
                   init_scale=cfg.init_scale)


def check_data(cfg: TrainConfig, splits: Splits) -> None:
    d = int(np.prod(splits.train.x.shape[1:]))
    if cfg.layers[0] != d:
        raise ValueError(f"--layers starts with {cfg.layers[0]} inputs but {splits.name} images "
                         f"have {d} pixels; use --layers {d},...")
    if cfg.layers[-1] != splits.n_classes:
        raise ValueError(f"--layers ends with {cfg.layers[-1]} outputs but {splits.name} has "
                         f"{splits.n_classes} classes; use --layers ...,{splits.n_classes}")


def build_trainer(cfg: TrainConfig, net: Network, callbacks=()) -> Trainer:
    opt = make_optimizer(cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum, beta1=cfg.beta1,
                         beta2=cfg.beta2, eps=cfg.eps, rho=cfg.rho, ema=cfg.ema)
    sched = parse_schedule(cfg.schedule, cfg.lr, cfg.warmup)
    cbs = list(callbacks)
    if isinstance(sched, HalveOnPlateau):
        cbs.append(PlateauSchedule(cfg.monitor, mode_of(cfg.monitor)))
    if cfg.early_stop:
        cbs.append(EarlyStopping(cfg.monitor, mode_of(cfg.monitor), cfg.early_stop))
    return Trainer(net, opt, sched, l1=cfg.l1, l2=cfg.l2, max_norm=cfg.max_norm,
                   batch_size=cfg.batch_size, seed=cfg.seed, callbacks=cbs)


def attach_run_callbacks(trainer, cfg: TrainConfig, norm: Normalizer, splits, aug) -> None:
    """TensorBoard logging, checkpointing and resume, as the config asks; the
    checkpoint callback goes last so it captures the other callbacks' decisions."""
    from .checkpointing import Checkpointing, epoch_state_loader, resume
    if cfg.logdir:
        from .tensorboard import TensorBoard
        trainer.callbacks.append(TensorBoard(cfg.logdir, cfg, splits, aug))
    if cfg.checkpoint_dir:
        trainer.callbacks.append(Checkpointing(cfg.checkpoint_dir, cfg, norm, cfg.keep_last,
                                               cfg.monitor, mode_of(cfg.monitor)))
        trainer.state_loader = epoch_state_loader(cfg.checkpoint_dir, trainer.net)
    if cfg.resume:
        resume(trainer, cfg, cfg.checkpoint_dir if cfg.resume == "latest" else cfg.resume)


def training_data(cfg: TrainConfig, splits: Splits) -> tuple[Splits, Split]:
    """What a run trains on: the splits checked against the network, the validation
    split folded into training with ``merge_valid``, and the training split cut to
    ``train_size``.  Shared by the in-process and the Ray paths."""
    check_data(cfg, splits)
    if cfg.merge_valid:
        splits = splits.merged()
    return splits, _subset(splits.train, cfg.train_size)


def _subset(split: Split, n: int | None) -> Split:
    if n is None:
        return split
    if n > len(split):
        raise ValueError(f"--train-size {n} is larger than the training split ({len(split)})")
    return Split(split.x[:n], split.y[:n])


def train(cfg: TrainConfig, splits: Splits | None = None, *, progress: bool = True,
          callbacks=()) -> dict:
    """Train as ``cfg`` says; return the metrics dict written by ``--metrics-out``."""
    splits = splits or load(cfg.dataset, cfg.data_dir)
    if cfg.workers != 1:
        raise ValueError(f"--workers {cfg.workers}: multi-worker training needs the Ray "
                         "engine, which this version does not have yet; use --workers 1")
    splits, train_split = training_data(cfg, splits)
    net = build_network(cfg)
    norm = Normalizer.fit(train_split.x, splits.pixel_max, cfg.standardize)
    aug = Augmenter(cfg.augment, seed=cfg.seed, pixel_max=splits.pixel_max)
    dtype = net.dtype
    tr = Batches(train_split, norm, aug, dtype)
    va = Batches(splits.valid, norm, None, dtype) if len(splits.valid) else None
    trainer = build_trainer(cfg, net, [ProgressLogger(bar=None if progress else False),
                                       *callbacks])
    attach_run_callbacks(trainer, cfg, norm, splits, aug)
    log.info("training %s on %s (%d examples, source: %s)", cfg.layers, cfg.dataset,
             len(train_split), splits.source)
    t0 = time.perf_counter()
    error = None
    try:
        trainer.fit(tr, va, cfg.epochs, monitor_train=cfg.monitor_train)
    except DivergenceError as e:
        error = str(e)
        log.error("%s", e)
    metrics = {"config": cfg.to_dict(), "history": trainer.history,
               "best_epoch": trainer.best_epoch, "wall_seconds": time.perf_counter() - t0,
               "error": error}
    if len(splits.test):
        te = Batches(splits.test, norm, None, dtype)
        metrics["test_cost"], metrics["test_accuracy"] = trainer.evaluate(te, len(train_split))
    metrics["diagnosis"] = from_history(trainer.history, trainer.best_epoch, cfg.bayes_error)
    if cfg.metrics_out:
        write_json(cfg.metrics_out, metrics)
    net.params[...] = model_params(trainer.snapshot())   # what was evaluated
    metrics["network"] = net
    if error:
        raise DivergenceError(error, trainer.history)
    return metrics


def write_json(path, obj) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float) + "\n")
    os.replace(tmp, p)
