"""What ``distnn.fit`` returns: a run's result as an object, and still the metrics dict
it always was (``result["test_accuracy"]``, ``result["history"]``)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..config import TrainConfig, from_mapping


class TrainedModel:
    """A checkpoint's network with its input normalisation: ``predict`` takes raw inputs
    as the dataset holds them (pixels 0..255 for MNIST), as ``distnn eval`` does.

    ``path``: the checkpoint's directory; ``epoch``; ``network`` (``core.Network``: the
    run's parameter average where it kept one, ``--ema``); ``normalizer``; ``config``."""

    def __init__(self, path, prefer: str = "best"):
        from .evaluate import load_model
        self.network, self.normalizer, self.config, c = load_model(path, prefer=prefer)
        self.path, self.epoch = c.path, c.meta["epoch"]

    def _x(self, x) -> np.ndarray:
        x = np.asarray(x)
        return self.normalizer(x.reshape(len(x), -1), self.network.dtype)

    def predict_proba(self, x) -> np.ndarray:
        """Class probabilities (N, classes) of raw inputs ``x`` (N, ...)."""
        return self.network.predict_proba(self._x(x))

    def predict(self, x) -> np.ndarray:
        """The predicted class of each raw input."""
        return self.network.predict(self._x(x))

    def __repr__(self) -> str:
        return f"TrainedModel({str(self.path)!r}, epoch {self.epoch})"


class Result(Mapping):
    """A finished run (see ``distnn.fit``).

    ``network`` (the trained ``core.Network``: the last epoch's parameters, or their
    average with ``--ema``; its inputs normalised as ``normalizer`` does), ``normalizer``,
    ``config`` (the ``TrainConfig`` as run), ``history`` (a dict per epoch),
    ``test_accuracy`` and ``test_cost`` (after the last epoch; None without a test
    split), ``best`` (``{"epoch", "monitor", "value"}`` by ``--monitor``, or None),
    ``metrics_path``, ``checkpoint_dir`` (Paths, or None); ``dataframe()`` (the history
    as a pandas DataFrame), ``checkpoint("best" | "latest")`` (a ``TrainedModel``).
    As a mapping it is the metrics dict that ``--metrics-out`` writes, with ``network``
    and ``normalizer`` added."""

    def __init__(self, metrics: dict):
        self._metrics = metrics

    # -- the metrics dict ---------------------------------------------------------------
    def __getitem__(self, key):
        return self._metrics[key]

    def __iter__(self):
        return iter(self._metrics)

    def __len__(self) -> int:
        return len(self._metrics)

    # -- as attributes --------------------------------------------------------------------
    @property
    def network(self):
        return self._metrics["network"]

    @property
    def normalizer(self):
        return self._metrics.get("normalizer")

    @property
    def config(self) -> TrainConfig:
        return from_mapping(self._metrics["config"], where="the run's config")

    @property
    def history(self) -> list[dict]:
        return self._metrics["history"]

    @property
    def test_accuracy(self) -> float | None:
        return self._metrics.get("test_accuracy")

    @property
    def test_cost(self) -> float | None:
        return self._metrics.get("test_cost")

    @property
    def best(self) -> dict | None:
        return self._metrics.get("best")

    @property
    def metrics_path(self) -> Path | None:
        p = self._metrics.get("metrics_path")
        return Path(p) if p else None

    @property
    def checkpoint_dir(self) -> Path | str | None:
        """Where the checkpoints are: a Path, or the URI (``s3://...``) as given."""
        from ..io import store
        p = self._metrics["config"].get("checkpoint_dir")
        return None if not p else p if store.is_uri(p) else store.local(p)

    def dataframe(self):
        """The history as a pandas DataFrame, one row per epoch (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("Result.dataframe() needs pandas: pip install pandas "
                              "(or use result.history, a list of dicts)") from None
        return pd.DataFrame(self.history)

    def checkpoint(self, which: str = "best") -> TrainedModel:
        """The run's ``best`` checkpoint (by --monitor; the latest where nothing measured
        it) or its ``latest``, loaded (ValueError for a run without --checkpoint-dir)."""
        if which not in ("best", "latest"):
            raise ValueError(f"checkpoint() takes 'best' or 'latest', got {which!r}")
        if self.checkpoint_dir is None:
            raise ValueError("this run kept no checkpoints: give checkpoint_dir=... to "
                             "distnn.fit (or --checkpoint-dir)")
        return TrainedModel(self.checkpoint_dir, prefer=which)

    def __repr__(self) -> str:
        acc = self.test_accuracy
        return (f"Result({len(self.history)} epochs"
                + (f", test accuracy {100 * acc:.2f}%" if acc is not None else "")
                + (f", checkpoints in {str(self.checkpoint_dir)!r}"
                   if self.checkpoint_dir else "") + ")")
