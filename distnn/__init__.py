"""distnn: a data-parallel neural-network trainer on Ray with a pure NumPy core."""
from . import data
from ._version import __version__
from .config import TrainConfig
from .core.network import Network

__all__ = ["Network", "TrainConfig", "data", "fit", "__version__"]


def fit(config: TrainConfig | None = None, splits=None, **overrides) -> dict:
    """Train from a ``TrainConfig`` (fields may be overridden by keyword, e.g.
    ``workers=2``); ``workers > 1`` runs on Ray.  Returns the metrics dict (history,
    test accuracy, ...) with the trained ``network``."""
    cfg = (config or TrainConfig()).replace(**overrides) if overrides else (config or TrainConfig())
    from .parallel.driver import train
    return train(cfg, splits)
