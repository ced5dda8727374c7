"""Loading a trained model from a checkpoint and measuring it on a split."""
from __future__ import annotations

import numpy as np

from ..config import TrainConfig
from ..core.network import Network
from ..data.splits import Normalizer
from ..io import checkpoint as ckpt
from .checkpointing import checkpoint_to_state
from .loop import model_params


def load_model(path, average: bool = True) -> tuple[Network, Normalizer, TrainConfig,
                                                    ckpt.Checkpoint]:
    """(network with the checkpoint's parameters, its input normaliser, config, raw).

    The parameters are the run's parameter average when it kept one (``--ema``) and
    ``average`` is True, else the last parameters trained."""
    c = ckpt.load(path)
    raw = dict(c.meta["config"])
    cfg = TrainConfig(**{**raw, "layers": tuple(raw["layers"]), "resume": None,
                         "checkpoint_dir": None, "logdir": None, "metrics_out": None})
    from .run import build_network
    net = build_network(cfg)
    state = checkpoint_to_state(c, net)
    net.params[...] = model_params(state) if average else state["params"]
    for k, v in net.named_buffers().items():
        v[...] = state["buffers"][k]
    pixel_max = 16 if cfg.dataset == "digits" else 255
    norm = Normalizer(pixel_max, c.tensors.get("input.mean"), c.tensors.get("input.std"))
    return net, norm, cfg, c


def evaluate_split(net: Network, norm: Normalizer, x, y) -> dict:
    """Accuracy, mean cost, per-class accuracy and the confusion matrix
    (rows: true class, columns: predicted)."""
    k = net.n_classes
    xs = norm(x, net.dtype)
    loss, _ = net.evaluate(xs, y)
    pred = net.predict(xs)
    conf = np.zeros((k, k), np.int64)
    np.add.at(conf, (np.asarray(y), pred), 1)
    per_class = conf.diagonal() / np.maximum(conf.sum(axis=1), 1)
    return {"examples": int(len(y)), "accuracy": float((pred == y).mean()),
            "cost": float(loss / len(y)), "per_class_accuracy": per_class.tolist(),
            "confusion": conf.tolist()}
