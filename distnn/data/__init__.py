"""Datasets, splits, normalisation and augmentation (numpy + stdlib; from distnn only
the counter-based random numbers in ``distnn.core.random``)."""
from .augment import Augmenter
from .datasets import DATASETS, load
from .splits import Split, Splits
from .idx import DataError
from .splits import Normalizer, train_valid_test_split

__all__ = ["Augmenter", "DATASETS", "DataError", "Normalizer", "Split", "Splits", "load",
           "train_valid_test_split"]
