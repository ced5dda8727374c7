"""What a run trains on, decided once: the splits checked against the network, the
validation split folded in (``merge_valid``), the training split cut to
``train_size``, and the input normaliser fitted on exactly that training split.

Every caller — the driver for any number of workers, the learning-rate finder, a search
trial saving its model — takes the normaliser from here, so a model is always saved
with the mean and standard deviation of the examples it was trained on.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import TrainConfig
from ..data.augment import Augmenter
from ..data.splits import Split, Splits
from ..data.splits import Normalizer


@dataclass(frozen=True)
class TrainingData:
    splits: Splits            # after merge_valid: .valid is empty then
    train: Split              # the examples trained on (train_size applied)
    normalizer: Normalizer    # fitted on ``train``
    augmenter: Augmenter

    def parts(self) -> dict:
        """{"train"/"valid"/"test": (the split, as trained on / measured)}."""
        return {"train": self.train, "valid": self.splits.valid, "test": self.splits.test}

    def worker_splits(self) -> tuple:
        """What the workers are given: the training and validation splits, and the test
        split when it is read on demand (else the trainer measures it)."""
        test = self.splits.test
        return self.train, self.splits.valid, None if test.held_whole else test

    def describe(self) -> dict:
        """Each split's rows (and, for files read on demand, which files and how they
        were chosen): printed at the start of a run and kept in its checkpoints."""
        return {k: s.describe() for k, s in self.parts().items()}

    def fingerprint(self) -> str:
        """A hash of what each split holds, kept in the checkpoints: a resumed run on
        other data (files changed since, another --data-dir) is refused."""
        import hashlib
        h = hashlib.blake2b(digest_size=16)
        for k, s in self.parts().items():
            h.update(k.encode())
            s.fingerprint(h)
        return h.hexdigest()


def prepare(cfg: TrainConfig, splits: Splits) -> TrainingData:
    check_data(cfg, splits)
    if cfg.merge_valid:
        splits = splits.merged()
    train = subset(splits.train, cfg.train_size)
    if train.held_whole:
        norm = Normalizer.fit(train.x, splits.pixel_max, cfg.standardize)
    else:     # read on demand: one pass, a row group at a time (or the cached result)
        norm = train.normalizer(cfg.standardize)
    check_shard_memory(cfg, train)
    aug = Augmenter(cfg.augment, seed=cfg.seed, pixel_max=splits.pixel_max)
    if aug.spec.active:
        if len(train.shape) != 3:
            raise ValueError(f"--augment works on images; {splits.name} holds feature "
                             f"vectors {train.shape[1:]}: use --augment none")
        aug.check_images(train.shape[1:])
    return TrainingData(splits, train, norm, aug)


def check_shard_memory(cfg: TrainConfig, train) -> None:
    """--shard-memory must hold two windows, and a window (half of it) one row group."""
    if not cfg.shard_memory or train.held_whole or not len(train):
        return
    biggest = int(np.diff(train.ends, prepend=0).max()) * train.row_bytes
    if biggest > cfg.shard_memory * 2 ** 20 // 2:
        need = -(-2 * biggest // 2 ** 20)
        raise ValueError(f"--shard-memory {cfg.shard_memory}: a row group of {train.where} "
                         f"holds {biggest / 2 ** 20:.1f} MB of examples, more than a window "
                         f"(half of it); give --shard-memory {need} or more, or write "
                         "the data in smaller row groups (distnn data convert --row-group N)")


def load_splits(cfg: TrainConfig, data_dir=None) -> Splits:
    """The dataset ``cfg`` names (a Parquet one with its column and split settings)."""
    from ..data.datasets import load
    return load(cfg.dataset, data_dir or cfg.data_dir, options=cfg.data_options())


def fit_input(cfg: TrainConfig, splits: Splits) -> TrainConfig:
    """``cfg`` with the input's image shape taken from the data where its network has
    image layers (``input_shape``, recorded with the run), checked where it was given;
    ``cfg`` itself for a fully-connected network."""
    from ..core import architecture
    if not architecture.has_images(cfg.layers):
        return cfg
    shape = tuple(int(v) for v in splits.train.shape[1:])
    if len(shape) not in (2, 3):
        raise ValueError(f"--layers {','.join(map(str, cfg.layers))} has image layers (conv, "
                         f"pool), but {splits.name} holds feature vectors of {shape[0]} "
                         "values, not images: use dense layers only")
    if cfg.input_shape and (*cfg.input_shape, 1)[:3] != (*shape, 1)[:3]:
        raise ValueError(f"--input-shape {','.join(map(str, cfg.input_shape))} is not the "
                         f"shape of {splits.name}'s images ({','.join(map(str, shape))}); "
                         "leave it out to take the dataset's")
    return cfg if cfg.input_shape else cfg.replace(input_shape=shape)


def check_data(cfg: TrainConfig, splits: Splits) -> None:
    from ..core import architecture
    d = int(np.prod(splits.train.shape[1:]))
    if architecture.has_images(cfg.layers):
        fit_input(cfg, splits)     # (the config given is the one fitted: just checked)
    elif cfg.layers[0] != d:
        raise ValueError(f"--layers starts with {cfg.layers[0]} inputs but {splits.name} images "
                         f"have {d} pixels; use --layers {d},...")
    if cfg.layers[-1] != splits.n_classes:
        raise ValueError(f"--layers ends with {cfg.layers[-1]} outputs but {splits.name} has "
                         f"{splits.n_classes} classes; use --layers ...,{splits.n_classes}")


def subset(split: Split, n: int | None) -> Split:
    """The first ``n`` examples (all of them for None)."""
    if n is None:
        return split
    if n > len(split):
        raise ValueError(f"--train-size {n} is larger than the training split ({len(split)})")
    return split.head(n)
