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
from ..data.datasets import Split, Splits
from ..data.splits import Normalizer


@dataclass(frozen=True)
class TrainingData:
    splits: Splits            # after merge_valid: .valid is empty then
    train: Split              # the examples trained on (train_size applied)
    normalizer: Normalizer    # fitted on ``train``
    augmenter: Augmenter


def prepare(cfg: TrainConfig, splits: Splits) -> TrainingData:
    check_data(cfg, splits)
    if cfg.merge_valid:
        splits = splits.merged()
    train = subset(splits.train, cfg.train_size)
    norm = Normalizer.fit(train.x, splits.pixel_max, cfg.standardize)
    aug = Augmenter(cfg.augment, seed=cfg.seed, pixel_max=splits.pixel_max)
    if aug.spec.active and train.x.ndim == 3:
        aug.check_images(train.x.shape[1:])
    return TrainingData(splits, train, norm, aug)


def check_data(cfg: TrainConfig, splits: Splits) -> None:
    d = int(np.prod(splits.train.x.shape[1:]))
    if cfg.layers[0] != d:
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
    return Split(split.x[:n], split.y[:n])
