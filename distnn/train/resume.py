"""Resuming a run from a checkpoint, exactly: where a resume reads from (decided here and
nowhere else), the one reading of the checkpoint, the settings the resumed run continues
with, and what it refuses.

Resuming is exact because nothing in training draws from a stateful generator: the
epoch order comes from (seed, epoch) and dropout/augmentation from (seed, epoch, example
index).  A run resumed from the checkpoint of epoch k therefore computes epochs k+1...
exactly as the uninterrupted run did; a run killed mid-epoch replays that epoch from
the last checkpoint.

The checkpoint is read once per resume (``read``): the command line takes the settings
of the run it continues from that reading (``settings``) and hands the same checkpoint
to the run (``parallel.driver.train(..., resumed=)``), which restores it (``restore``);
a run started from Python without one reads it itself, once.
"""
from __future__ import annotations

import logging

from ..config import PLACEMENT_KEYS, TrainConfig
from ..core import optim
from ..io import checkpoint as ckpt
from .checkpointing import saved_config
from .state import ReplicaState

log = logging.getLogger(__name__)

ARCH_KEYS = ("layers", "activation", "output", "cost", "batchnorm", "dtype")
#: --override of any of these changes the data on purpose ("data": the same settings)
DATA_KEYS = {"data", "dataset", "train_size", "merge_valid", "split", "split_column",
             "feature_columns", "label_column"}


def source(resume: str | None, checkpoint_dir: str | None) -> str | None:
    """What ``--resume`` reads: ``--resume PATH`` reads PATH (a checkpoint, a checkpoint
    directory's latest, a URI); ``--resume`` alone, --checkpoint-dir's latest."""
    return checkpoint_dir if resume == "latest" else resume


def read(cfg: TrainConfig) -> ckpt.Checkpoint:
    """The one reading of the checkpoint ``cfg`` resumes from (verified)."""
    return ckpt.load(source(cfg.resume, cfg.checkpoint_dir))


def settings(c: ckpt.Checkpoint, given: str) -> TrainConfig:
    """The settings of the run checkpoint ``c`` (read from ``given``) continues, saving
    where it saved: the checkpoint's directory (a URI's, for one read from a URI)."""
    from ..io.store import Remote, is_uri
    # where the run writes comes from this command line, never from the checkpoint: its
    # --logdir and --metrics-out are the old command line's (give them again to go on)
    elsewhere = dict(logdir=None, metrics_out=None)
    if is_uri(given):      # read from a local copy: save to the URI itself
        single = Remote(given).exists("meta.json")
        return saved_config(c.meta, checkpoint_dir=given.rstrip("/").rsplit("/", 1)[0]
                            if single else given.rstrip("/"), **elsewhere)
    return saved_config(c.meta, checkpoint_dir=str(c.path.parent), **elsewhere)


def restore(trainer, cfg: TrainConfig, c: ckpt.Checkpoint) -> None:
    """Put checkpoint ``c`` into ``trainer``, whose settings ``cfg`` must be the
    checkpoint's but for placement and ``--override`` (then the optimizer's
    hyperparameters are this run's, and the change is recorded)."""
    changes = check_config(c, cfg)
    check_data(c, trainer.data, cfg)
    # the optimizer's hyperparameters are this run's (the checkpoint's, or overridden);
    # a plug-in whose setting was overridden (--compress) starts afresh
    state = ReplicaState.from_checkpoint(c, trainer.net) \
        .with_hyperparameters(optim.hyperparameters(trainer.cfg)) \
        .for_settings(c.meta["config"], cfg.to_dict())
    trainer.restore(state)
    trainer.history = list(c.meta["history"])
    trainer.epoch = c.meta["epoch"] + 1
    trainer.best_epoch = c.meta.get("best_epoch")
    trainer.overrides = list(c.meta.get("overrides") or [])
    if changes:
        trainer.overrides.append({"from_epoch": trainer.epoch, "changes": changes})
        log.warning("resuming with changed settings: %s", ", ".join(
            f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()))
    log.info("resumed from %s (epoch %d done)", c.path, c.meta["epoch"])


def config_changes(saved: dict, cfg: TrainConfig) -> dict[str, tuple]:
    """{setting: (checkpoint's value, cfg's value)} where ``cfg`` computes something other
    than the run that wrote ``saved`` (placement settings aside)."""
    free = PLACEMENT_KEYS - ({"workers"} if cfg.lr_scaling == "linear" else set())
    default, now = TrainConfig().to_dict(), cfg.to_dict()
    return {k: (saved.get(k, default[k]), v) for k, v in now.items()
            if k not in free and saved.get(k, default[k]) != v}


def check_config(c: ckpt.Checkpoint, cfg: TrainConfig) -> dict[str, list]:
    """Refuse a resume whose settings differ from the checkpoint's unless each change is
    named in ``cfg.override``; return the accepted changes {key: [old, new]}."""
    check_architecture(c, cfg)
    changes = config_changes(c.meta["config"], cfg)
    refused = {k: v for k, v in changes.items() if k not in cfg.override}
    if refused:
        shown = "; ".join(f"--{k.replace('_', '-')}: checkpoint {a!r}, now {b!r}"
                          for k, (a, b) in refused.items())
        raise ckpt.CheckpointError(
            f"--resume {c.path}: this run's settings differ from the checkpoint's ({shown}). "
            "Leave them out to continue with the checkpoint's settings, or pass --override "
            f"{','.join(refused)} to change them (recorded in the checkpoint's history)")
    return {k: [a, b] for k, (a, b) in changes.items()}


def check_data(c: ckpt.Checkpoint, data, cfg) -> None:
    """Refuse to resume on other data than the checkpoint was trained on (files changed
    since, another --data-dir or dataset) unless ``--override data``."""
    saved = c.meta.get("data")
    if not isinstance(saved, dict) or set(cfg.override) & DATA_KEYS:
        return          # (checkpoints from before data was recorded are not checked)
    if saved.get("fingerprint") != data.fingerprint():
        then, now = _rows(saved.get("splits") or {}), _rows(data.describe())
        what = f"the same rows ({now}) with other contents" if then == now else \
            f"{now}, where it was trained on {then}"
        raise ckpt.CheckpointError(
            f"--resume {c.path}: the data are not what this run was trained on: {what}. "
            "Resume with the same data (--dataset, --data-dir), or pass --override data to "
            "go on with these")


def _rows(splits: dict) -> str:
    return ", ".join(f"{k} {v.get('rows')} rows" for k, v in splits.items()
                     if isinstance(v, dict))


def check_architecture(c: ckpt.Checkpoint, cfg) -> None:
    have = {k: c.meta["config"].get(k) for k in ARCH_KEYS}
    want = {k: (list(v) if isinstance(v, tuple) else v)
            for k, v in ((k, getattr(cfg, k)) for k in ARCH_KEYS)}
    if have != want:
        diff = {k: (have[k], want[k]) for k in ARCH_KEYS if have[k] != want[k]}
        raise ckpt.CheckpointError(
            f"checkpoint {c.path} does not fit the requested network: "
            + "; ".join(f"{k}: checkpoint {a!r} vs requested {b!r}" for k, (a, b) in diff.items()))
    if c.meta["config"].get("optimizer") != cfg.optimizer:
        raise ckpt.CheckpointError(f"checkpoint {c.path} holds {c.meta['config']['optimizer']} "
                                   f"state but --optimizer is {cfg.optimizer}")
