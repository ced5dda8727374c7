"""distnn: a data-parallel neural-network trainer on Ray with a pure NumPy core."""
from . import data
from ._version import __version__
from .config import TrainConfig
from .core.network import Network
from .train.callbacks import Callback
from .train.result import Result, TrainedModel

__all__ = ["Callback", "Network", "Result", "TrainConfig", "TrainedModel", "data", "fit",
           "run_search", "__version__"]


def _config(config: TrainConfig | None, overrides: dict) -> TrainConfig:
    """``config`` (the defaults where None) with ``overrides`` applied."""
    cfg = config or TrainConfig()
    return cfg.replace(**overrides) if overrides else cfg


def fit(config: TrainConfig | None = None, splits=None, *, datasets=None, callbacks=(),
        **overrides) -> "Result":
    """Train from a ``TrainConfig`` (fields may be overridden by keyword, e.g.
    ``workers=2``); ``workers > 1`` runs on Ray (in the session already open, or a local
    one).  ``splits``: a ``data.Splits`` to train on instead of ``config.dataset``.
    ``datasets``: a ``ray.data.Dataset``, or {"train": ds, "valid": ds, "test": ds},
    read as a Parquet dataset is (its columns, ``split_column`` and ``split`` settings;
    ``parallel.ray_data``): the run records ``dataset = "ray-dataset"``, and a resume is
    given the same rows again.
    ``callbacks``: ``Callback`` objects, called on this process after every epoch (and
    with progress within one); ``trainer.stop = True`` ends the run after the epoch.
    Returns a ``Result``: ``.network``, ``.test_accuracy``, ``.history``,
    ``.dataframe()``, ``.best``, ``.checkpoint("best")``, ... and, as a mapping, the
    metrics dict that --metrics-out writes (``result["test_accuracy"]``)."""
    if datasets is not None:
        if splits is not None:
            raise ValueError("give splits or datasets, not both")
        from .parallel.ray_data import NAME, open_ray
        cfg = _config(config, {**overrides, "dataset": NAME})
        splits = open_ray(datasets, cfg.data_options())
    else:
        cfg = _config(config, overrides)
    from .parallel.driver import train
    return Result(train(cfg, splits, callbacks=tuple(callbacks)))


def run_search(config: TrainConfig | None = None, grid=None, random=None, *, samples: int = 10,
               out: str = "results/search", search_seed: int = 0, asha: bool = False,
               resume: bool = False, splits=None, **overrides) -> dict:
    """``distnn search`` from Python: train every configuration of ``grid`` (``{"lr":
    [0.05, 0.1], "hidden": [30, 100]}`` or ``["lr=0.05,0.1"]``), each with ``samples``
    draws from ``random`` (``{"lr": "loguniform:1e-3:1"}``), on Ray Tune (the session
    already open, or a local one), ``config.workers`` CPUs a trial; results into ``out``
    (results.csv/.parquet, best.toml, a checkpoint per trial).  Returns {"table": a
    pandas DataFrame, best first by ``config.monitor``; "best": the winning overrides;
    "best_valid"; "test_accuracy" and "test_cost" of the winner; "best_config": the path
    of its TOML; "trials"}."""
    cfg = _config(config, overrides)
    from .data.datasets import read_from
    from .io.files import check_not_input
    from .search import space, tune
    trials = space.trials(grid, random, samples, search_seed)
    space.check_trials(cfg, trials)
    check_not_input(out, "out", read_from(cfg.dataset, cfg.data_dir))
    return tune.run_search(cfg, trials, out, asha=asha, resume=resume, address=cfg.address,
                           splits=splits)
