"""The single-process training loop and its callbacks."""
from .callbacks import Callback, EarlyStopping, PlateauSchedule, ProgressLogger
from .loop import Batches, DivergenceError, Trainer, epoch_order

__all__ = ["Batches", "Callback", "DivergenceError", "EarlyStopping", "PlateauSchedule",
           "ProgressLogger", "Trainer", "epoch_order"]
