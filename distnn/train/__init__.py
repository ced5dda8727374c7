"""The training loop that runs in every worker (``Engine``), what a run records, and the
callbacks the driver runs."""
from .batches import Batches, epoch_order
from .callbacks import Callback, EarlyStopping, PlateauSchedule, ProgressLogger
from .engine import Engine
from .records import DivergenceError

__all__ = ["Batches", "Callback", "DivergenceError", "EarlyStopping", "Engine",
           "PlateauSchedule", "ProgressLogger", "epoch_order"]
