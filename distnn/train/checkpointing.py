"""Saving a trainer to a checkpoint and resuming from one, exactly.

Resuming is exact because nothing in training draws from a stateful generator: the
epoch order comes from (seed, epoch) and dropout/augmentation from (seed, epoch, example
index).  A run resumed from the checkpoint of epoch k therefore computes epochs k+1...
exactly as the uninterrupted run did; a run killed mid-epoch replays that epoch from
the last checkpoint.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..config import PLACEMENT_KEYS, TrainConfig, field_names, from_mapping
from ..core import optim
from ..io import checkpoint as ckpt
from ..io import checkpoint_store as ckpt_store
from ..io.layout import epoch_name
from .callbacks import Callback, better

log = logging.getLogger(__name__)

ARCH_KEYS = ("layers", "activation", "output", "cost", "batchnorm", "dtype")
#: --override of any of these changes the data on purpose ("data": the same settings)
DATA_KEYS = {"data", "dataset", "train_size", "merge_valid", "split", "split_column",
             "feature_columns", "label_column"}
#: the prefix of a compressor's rows in optimizer.parquet ("compress.q.dense0.weight")
COMPRESS = "compress"


def state_to_checkpoint(state: dict, net, normalizer) -> tuple[dict, dict, dict]:
    """(tensors, optimizer slots, optimizer/schedule scalars) from ``trainer.snapshot()``."""
    tensors = {}
    for key, sl in net.slices.items():
        tensors[key] = state["params"][sl].reshape(net.named_params()[key].shape)
    tensors.update(state["buffers"])
    if normalizer is not None:
        tensors.update(normalizer.tensors())
    opt = state["optimizer"]
    slots = {f"{name}.{key}": slot[sl].reshape(net.named_params()[key].shape)
             for name, slot in opt["slots"].items() for key, sl in net.slices.items()}
    scalars = {"optimizer": {k: v for k, v in opt.items() if k != "slots"},
               "schedule": state["schedule"]}
    comm = state.get("comm")
    if comm is not None:      # a compressor's state: its arrays beside the slots
        scalars["compress"] = {k: v for k, v in comm.items() if not isinstance(v, dict)}
        slots.update({f"{COMPRESS}.{part}.{key}": a for part, arrays in comm.items()
                      if isinstance(arrays, dict) for key, a in arrays.items()})
    return tensors, slots, scalars


def checkpoint_to_state(c: ckpt.Checkpoint, net) -> dict:
    """The inverse of ``state_to_checkpoint``: a ``trainer.restore()`` state."""
    params = np.empty_like(net.params)
    for key, sl in net.slices.items():
        params[sl] = _tensor(c, c.tensors, key, net.named_params()[key].shape)
    buffers = {k: _tensor(c, c.tensors, k, v.shape) for k, v in net.named_buffers().items()}
    slot_names = sorted({k.split(".", 1)[0] for k in c.optimizer} - {COMPRESS})
    slots = {}
    for name in slot_names:
        flat = np.empty_like(net.params)
        for key, sl in net.slices.items():
            flat[sl] = _tensor(c, c.optimizer, f"{name}.{key}",
                               net.named_params()[key].shape)
        slots[name] = flat
    state = {"params": params, "buffers": buffers,
             "optimizer": {**c.meta["optimizer"], "slots": slots},
             "schedule": c.meta["schedule"]}
    if isinstance(c.meta.get("compress"), dict):
        comm = dict(c.meta["compress"])
        for k, a in c.optimizer.items():
            if k.startswith(COMPRESS + "."):
                part, key = k[len(COMPRESS) + 1:].split(".", 1)
                comm.setdefault(part, {})[key] = a
        state["comm"] = comm
    return state


def _tensor(c: ckpt.Checkpoint, table: dict, key: str, shape) -> np.ndarray:
    """``table[key]`` as a flat array, if it is there with ``shape`` and finite."""
    a = table.get(key)
    if a is None or tuple(a.shape) != tuple(shape):
        raise ckpt.CheckpointError(f"{c.path}: tensor {key} is "
                                   f"{'missing' if a is None else f'of shape {a.shape}'}; "
                                   f"the network needs {tuple(shape)}")
    if not np.isfinite(a).all():
        raise ckpt.CheckpointError(f"{c.path}: tensor {key} holds NaN or infinity")
    return a.reshape(-1)


def saved_config(meta: dict, **changes) -> TrainConfig:
    """The settings a checkpoint was written with, type-checked (settings this distnn
    does not know are dropped), as a run that is not resuming, with ``changes``."""
    known = set(field_names())
    values = {k: v for k, v in meta["config"].items() if k in known}
    values.update(resume=None, override=(), overwrite=False, **changes)
    return from_mapping(values, where="the checkpoint's config")


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


class Checkpointing(Callback):
    """Save ``CKPT_DIR/epoch-NNNN`` after every epoch (after the other callbacks, so
    schedule and early-stopping decisions are included), keep the last ``keep_last``
    and the best by ``monitor``."""

    def __init__(self, root, cfg, normalizer, keep_last=3, monitor=None, mode=None,
                 data: dict | None = None):
        from ..io import store
        # a URI: written to its local stage, then mirrored there after each epoch
        self.uri = root if store.is_uri(root) else None
        self.root, self.cfg, self.normalizer = store.local(root), cfg, normalizer
        self.keep_last, self.monitor, self.mode = keep_last, monitor, mode
        self.best = None
        self.data = data          # {"fingerprint", "splits"}: what the run trains on

    def on_train_begin(self, trainer):
        """After a resume: the best checkpoint so far is kept from pruning as before."""
        names = set(ckpt.epochs_in(self.root))
        for logs in trainer.history:
            self._track(logs, epoch_name(logs["epoch"]), names)

    def _track(self, logs, name, names=None):
        v = logs.get(self.monitor) if self.monitor else None
        if v is not None and (names is None or name in names) and (
                self.best is None or better(v, self.best[0], self.mode)):
            self.best = (v, name)

    def on_epoch_end(self, epoch, logs, trainer):
        # the schedule as the callbacks left it (a plateau's halvings include this epoch)
        state = {**trainer.snapshot(), "schedule": trainer.schedule.state_dict()}
        tensors, slots, scalars = state_to_checkpoint(state, trainer.net, self.normalizer)
        from .._version import __version__
        meta = {"distnn_version": __version__, "config": self.cfg.to_dict(), "epoch": epoch,
                "step": None,
                "history": trainer.history, "best_epoch": trainer.best_epoch,
                "overrides": trainer.overrides,
                "randomness": {"seed": self.cfg.seed, "generator": "counter-based, keyed "
                               "by (seed, epoch, example index); no stateful RNG"},
                **({"data": self.data} if self.data else {}), **scalars}
        name = epoch_name(epoch)
        self._track(logs, name)
        best = self.best is not None and self.best[1] == name
        ckpt.save(self.root, name, tensors, slots, meta,
                  ("latest", "best") if best else ("latest",))
        keep = {self.best[1]} if self.best else set()
        ckpt.prune(self.root, self.keep_last, keep)
        if self.uri:
            from ..io import store
            store.mirror(self.uri).sync(last=ckpt.POINTERS)   # the pointers last
            ckpt_store.prune_remote(store.mirror(self.uri).remote, self.keep_last,
                                    keep | ckpt.pointed(self.root))


def resume(trainer, cfg, source) -> ckpt.Checkpoint:
    """Load ``source`` (a checkpoint, or a root's latest) into ``trainer``, whose settings
    ``cfg`` must be the checkpoint's but for placement and ``--override`` (then the
    optimizer's hyperparameters are this run's, and the change is recorded)."""
    c = ckpt.load(source)
    changes = check_config(c, cfg)
    check_data(c, trainer.data, cfg)
    state = checkpoint_to_state(c, trainer.net)
    # the optimizer's hyperparameters are this run's (the checkpoint's, or overridden)
    state["optimizer"].update(optim.hyperparameters(trainer.cfg))
    if c.meta["config"].get("compress", "none") != cfg.compress:
        state.pop("comm", None)   # --override compress: the new compressor starts afresh
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
    return c


def epoch_state_loader(root, net):
    """A function epoch -> restore-state, reading ``root/epoch-NNNN`` (for early stopping
    after a resume, whose best epoch may be older than the resume point)."""
    def load(epoch):
        return checkpoint_to_state(ckpt.load(Path(root) / epoch_name(epoch)), net)
    return load


def save_model(root, name: str, net, cfg, normalizer=None, history=(), **extra) -> Path:
    """A checkpoint of a model alone (parameters, buffers, input normalisation; no
    optimizer state): enough for ``distnn eval``/``export``, not for ``--resume``."""
    from .._version import __version__
    tensors = {**net.named_params(), **net.named_buffers(),
               **(normalizer.tensors() if normalizer is not None else {})}
    meta = {"distnn_version": __version__, "config": cfg.to_dict(), "epoch": len(history) - 1,
            "step": None, "history": list(history), "best_epoch": None,
            "optimizer": {"name": cfg.optimizer, "t": 0, "lr": cfg.lr},
            "schedule": {"spec": cfg.schedule}, **extra}
    return ckpt.save(root, name, tensors, {}, meta)
