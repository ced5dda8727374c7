"""Loading a trained model from a checkpoint and measuring it on a split."""
from __future__ import annotations

import numpy as np

from ..config import TrainConfig
from ..core.network import Network
from ..data.splits import Normalizer
from ..io import checkpoint as ckpt
from .checkpointing import saved_config
from .state import ReplicaState


def load_model(path, average: bool = True, prefer: str = "best"
               ) -> tuple[Network, Normalizer, TrainConfig, ckpt.Checkpoint]:
    """(network with the checkpoint's parameters, its input normaliser, config, raw).

    ``path``: a checkpoint, or a checkpoint directory (then its ``best`` checkpoint, or
    with ``prefer="latest"`` its newest).  The parameters are the run's parameter
    average when it kept one (``--ema``) and ``average`` is True, else the last
    parameters trained."""
    c = ckpt.load(path, prefer)
    cfg = saved_config(c.meta, checkpoint_dir=None, logdir=None, metrics_out=None)
    net = Network.from_spec(cfg.network_spec())
    ReplicaState.from_checkpoint(c, net).load_into(net, average)
    if "input.pixel_max" in c.tensors:
        pixel_max = float(c.tensors["input.pixel_max"][0])
    else:           # checkpoints from before it was recorded
        pixel_max = 16 if cfg.dataset == "digits" else 255
    norm = Normalizer(pixel_max, c.tensors.get("input.mean"), c.tensors.get("input.std"))
    return net, norm, cfg, c


def measure(net: Network, data, lo: int, hi: int, chunk: int | None = None
            ) -> tuple[float, int, int]:
    """(summed cost, number correct, count) of examples lo..hi-1 of ``data`` (a
    ``Batches``) in eval mode: the one evaluation every worker, the driver and
    ``distnn eval`` use.  Cost and accuracy are ``sum / count``.  ``chunk``: examples
    per pass, by default 2000 or fewer so that the largest array of a chunk's pass (its
    inputs, a layer's output, a convolution's patches) stays under 8 MiB."""
    if chunk is None:
        chunk = max(1, min(2000, 2 ** 23 // (net.values_per_example * net.dtype.itemsize)))
    loss, correct = 0.0, 0
    for s in range(lo, hi, chunk):
        e = min(s + chunk, hi)
        l_, c_ = net.evaluate(data.rows(s, e), data.y[s:e], chunk=chunk)
        loss, correct = loss + l_, correct + c_
    return loss, correct, hi - lo


def cost_and_accuracy(net: Network, penalty, parts, n_train: int) -> tuple[float, float]:
    """(mean cost + the L1/L2 penalty on ``net``'s parameters, accuracy) from the
    ``measure`` results of the parts of a split (one per worker, or one)."""
    loss, correct, n = (sum(p[i] for p in parts) for i in range(3))
    return loss / n + penalty.value(net.params, n_train), correct / n


def _summary(conf: np.ndarray, loss: float, n: int) -> dict:
    per_class = conf.diagonal() / np.maximum(conf.sum(axis=1), 1)
    return {"examples": int(n), "accuracy": float(conf.diagonal().sum() / max(n, 1)),
            "cost": float(loss / max(n, 1)), "per_class_accuracy": per_class.tolist(),
            "confusion": conf.tolist()}


def evaluate_chunks(net: Network, norm: Normalizer, chunks) -> dict:
    """Accuracy, mean cost, per-class accuracy and the confusion matrix (rows: true
    class, columns: predicted) of a split given a chunk (a ``Split``) at a time: a
    Parquet split's row groups, never all in memory."""
    k = net.n_classes
    conf = np.zeros((k, k), np.int64)
    loss, n = 0.0, 0
    for c in chunks:
        xs = norm(c.x, net.dtype)
        part, _ = net.evaluate(xs, c.y)
        np.add.at(conf, (np.asarray(c.y), net.predict(xs)), 1)
        loss, n = loss + part, n + len(c.y)
    return _summary(conf, loss, n)


def evaluate_committee(members, chunks) -> dict:
    """A committee of networks (Cireşan et al. 2010's), each a ``(net, norm)``: the
    class is the argmax of their outputs averaged, each output first scaled to sum to
    1 (a softmax output already does), and the cost is the mean -log of that average's
    true class. Also each member's own accuracy (``members``), from the same pass."""
    sizes = {(net.n_inputs, net.n_classes) for net, _ in members}
    if len(sizes) != 1:
        raise ValueError(f"a committee's networks must share their inputs and classes; "
                         f"these have (inputs, classes) {sorted(sizes)}")
    k = members[0][0].n_classes
    conf = np.zeros((k, k), np.int64)
    right = np.zeros(len(members), np.int64)
    loss, n = 0.0, 0
    for c in chunks:
        y = np.asarray(c.y)
        avg = np.zeros((len(y), k))
        for i, (net, norm) in enumerate(members):
            a = net.predict_proba(norm(c.x, net.dtype)).astype(np.float64)
            a /= np.maximum(a.sum(axis=1, keepdims=True), 1e-300)
            right[i] += int((a.argmax(axis=1) == y).sum())
            avg += a
        avg /= len(members)
        np.add.at(conf, (y, avg.argmax(axis=1)), 1)
        loss -= float(np.log(np.maximum(avg[np.arange(len(y)), y], 1e-300)).sum())
        n += len(y)
    return {**_summary(conf, loss, n),
            "member_accuracy": [float(r / max(n, 1)) for r in right]}
