"""The TensorBoard callback: per-epoch scalars, per-layer histograms of weights and
gradients, the fraction of saturated units, the config, augmented samples, hparams.

Gradients and saturation are measured on a fixed probe batch of training examples at
the end of each epoch, in evaluation mode, so the single-process and the distributed
runs log the same quantities."""
from __future__ import annotations

import json
import logging

import numpy as np

from ..io.png import grid
from ..io.tensorboard import RunWriter
from .callbacks import Callback
from .diagnosis import format_diagnosis, from_history

log = logging.getLogger(__name__)

SCALARS = {"batch_cost": "train/batch_cost", "train_cost": "train/cost", "train_accuracy": "train/accuracy",
           "valid_cost": "valid/cost", "valid_accuracy": "valid/accuracy", "lr": "lr",
           "examples_per_second": "throughput/examples_per_second",
           "train_seconds": "time/train_seconds", "comm_seconds": "time/communication_seconds",
           "workers": "membership/workers", "bytes_per_step": "comm/bytes_per_step"}
#: each rank's figures of an epoch (``history[].ranks``), as ranks/<rank>/<name>
RANK_SCALARS = ("data_seconds", "compute_seconds", "compress_seconds", "comm_seconds",
                "overlapped_seconds", "wait_seconds", "update_seconds", "bytes_sent")


def saturation(net, x) -> dict[str, float]:
    """Per hidden layer: the fraction of saturated units (sigmoid a < 0.02 or > 0.98;
    tanh |a| > 0.98 of its range) or, for ReLU, of units dead on every probe example."""
    net.forward(x)
    out = {}
    for layer in net.layers:
        if not hasattr(layer, "fn") or not hasattr(layer, "a"):
            continue
        a, name = layer.a, layer.fn.name
        if name == "relu":
            out[f"dead_relu/{layer.name}"] = float(np.mean(np.all(a <= 0, axis=0)))
        elif name == "sigmoid":
            out[f"saturated/{layer.name}"] = float(np.mean((a < 0.02) | (a > 0.98)))
        else:
            top = 1.7159 if name == "scaled-tanh" else 1.0
            out[f"saturated/{layer.name}"] = float(np.mean(np.abs(a) > 0.98 * top))
    return out


class TensorBoard(Callback):
    """``splits``: the run's data (held in memory or read on demand: Parquet);
    ``normalizer``: how the run turns examples into inputs, used for the probe batch."""

    def __init__(self, logdir: str, cfg, splits, augmenter, normalizer, probe: int = 512):
        from ..io import store
        # a URI: written to its local stage, and the event file copied there after each
        # epoch (the whole file: TensorBoard reading the URI lags by up to one epoch)
        self.uri = logdir if store.is_uri(logdir) else None
        self.local = store.local(logdir)
        self.logdir, self.cfg, self.splits, self.aug = logdir, cfg, splits, augmenter
        self.normalizer, self.probe = normalizer, probe
        self.writer = self._batch = None

    def _probe(self, trainer):
        """The first training examples as the network sees them (normalised as the run
        normalises), read once."""
        if self._batch is None:
            s = self.splits.train.read(0, min(self.probe, len(self.splits.train)))
            self._batch = self.normalizer(s.x, trainer.net.dtype), s.y
        return self._batch

    def on_train_begin(self, trainer):
        self.writer = RunWriter(self.local, trainer.epoch if trainer.history else None)
        self.writer.text("config", "```\n" + json.dumps(self.cfg.to_dict(), indent=2) + "\n```")
        x = self.splits.train.read(0, 8).x
        if self.aug is not None and self.aug.spec.active and x.ndim == 3:
            rows = [x.astype(np.float32) / self.splits.pixel_max]
            rows += [self.aug(x, np.arange(8), e) for e in range(3)]
            img = np.clip(np.rint(np.concatenate(rows) * 255), 0, 255).astype(np.uint8)
            self.writer.image("augmented_samples", grid(img, cols=8))
        import importlib.util
        missing = "" if importlib.util.find_spec("tensorboard") else \
            " (install it first: pip install 'distnn[viz]')"
        log.info("TensorBoard logs in %s; view them with: tensorboard --logdir %s%s",
                 self.logdir, self.logdir, missing)

    def on_epoch_end(self, epoch, logs, trainer):
        w = self.writer
        w.scalars(epoch, {tag: logs.get(k) for k, tag in SCALARS.items()})
        w.scalars(epoch, {f"ranks/{r['rank']}/{k}": r.get(k) for r in logs.get("ranks") or ()
                          for k in RANK_SCALARS})
        net = trainer.net
        x, y = self._probe(trainer)
        _, grad = net.loss_and_grad(x, y)
        w.histograms(epoch, {f"weights/{k}": v for k, v in net.named_params().items()})
        w.histograms(epoch, {f"grads/{k}": grad[sl] for k, sl in net.slices.items()})
        w.scalars(epoch, saturation(net, x))
        w.flush()
        self._mirror()

    def _mirror(self):
        if self.uri:
            from ..io import store
            store.mirror(self.uri).sync()

    def on_train_end(self, trainer):
        h = trainer.history
        if h:
            best = max((e["valid_accuracy"] for e in h if e["valid_accuracy"] is not None),
                       default=None)
            last = h[-1]
            test = {}
            if len(trainer.data.splits.test):   # the last parameters' test figures
                test["cost"], test["accuracy"] = trainer.evaluate("test")
                self.writer.scalars(len(h) - 1, {f"test/{k}": v for k, v in test.items()})
            self.writer.hparams(
                {k: v for k, v in self.cfg.to_dict().items() if not isinstance(v, (list, dict))}
                | {"layers": ",".join(map(str, self.cfg.layers))},
                {"hparam/best_valid_accuracy": best,
                 "hparam/final_valid_accuracy": last["valid_accuracy"],
                 "hparam/final_train_accuracy": last["train_accuracy"],
                 "hparam/final_test_accuracy": test.get("accuracy"),
                 "hparam/epochs": len(h)}, step=len(h) - 1)
            d = from_history(h, trainer.best_epoch, self.cfg.bayes_error)
            if d:
                self.writer.text("diagnosis", format_diagnosis(d))
        self.writer.close()
        self._mirror()
