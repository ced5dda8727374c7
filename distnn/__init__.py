"""distnn: a data-parallel neural-network trainer on Ray with a pure NumPy core."""
from . import data
from ._version import __version__
from .config import TrainConfig
from .core.network import Network
from .train.callbacks import Callback
from .train.result import Result, TrainedModel

__all__ = ["Callback", "Network", "Result", "TrainConfig", "TrainedModel", "data", "fit",
           "__version__"]


def fit(config: TrainConfig | None = None, splits=None, *, callbacks=(),
        **overrides) -> "Result":
    """Train from a ``TrainConfig`` (fields may be overridden by keyword, e.g.
    ``workers=2``); ``workers > 1`` runs on Ray (in the session already open, or a local
    one).  ``splits``: a ``data.Splits`` to train on instead of ``config.dataset``.
    ``callbacks``: ``Callback`` objects, called on this process after every epoch (and
    with progress within one); ``trainer.stop = True`` ends the run after the epoch.
    Returns a ``Result``: ``.network``, ``.test_accuracy``, ``.history``,
    ``.dataframe()``, ``.best``, ``.checkpoint("best")``, ... and, as a mapping, the
    metrics dict that --metrics-out writes (``result["test_accuracy"]``)."""
    cfg = (config or TrainConfig()).replace(**overrides) if overrides else (config or TrainConfig())
    from .parallel.driver import train
    from .train.result import Result
    return Result(train(cfg, splits, callbacks=tuple(callbacks)))
