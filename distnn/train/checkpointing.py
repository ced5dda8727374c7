"""Saving a trainer to a checkpoint after every epoch (``Checkpointing``), a model alone
(``save_model``), and the settings a checkpoint was written with (``saved_config``).
Resuming from one is ``train.resume``'s."""
from __future__ import annotations

from pathlib import Path

from ..config import TrainConfig, field_names, from_mapping
from ..io import checkpoint as ckpt
from ..io import checkpoint_store as ckpt_store
from ..io.layout import epoch_name
from .callbacks import Callback, better
from .state import ReplicaState


def saved_config(meta: dict, **changes) -> TrainConfig:
    """The settings a checkpoint was written with, type-checked (settings this distnn
    does not know are dropped), as a run that is not resuming, with ``changes``."""
    known = set(field_names())
    values = {k: v for k, v in meta["config"].items() if k in known}
    values.update(resume=None, override=(), overwrite=False, **changes)
    return from_mapping(values, where="the checkpoint's config")


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
        state = trainer.snapshot().replace(schedule=trainer.schedule.state_dict())
        tensors, slots, scalars = state.to_checkpoint(trainer.net, self.normalizer)
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


def epoch_state_loader(root, net):
    """A function epoch -> restore-state, reading ``root/epoch-NNNN`` (for early stopping
    after a resume, whose best epoch may be older than the resume point)."""
    def load(epoch):
        return ReplicaState.from_checkpoint(ckpt.load(Path(root) / epoch_name(epoch)), net)
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
