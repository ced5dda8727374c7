"""Time to 98.0% MNIST test accuracy: distnn with 2 workers vs PyTorch (CPU, 2 threads),
same network, batch, optimizer and schedule, side by side in one run.

    python scripts/bench_time_to_accuracy.py [--target 0.98] [--max-epochs 20] [--write docs/BENCHMARKS.md]

Network [784,800,10], ReLU (He init), softmax + log-likelihood, momentum SGD (lr 0.05,
mu 0.9), global batch 128, inputs scaled to [0, 1], no augmentation.  The clock runs
during training only; after each epoch the test accuracy is measured off the clock.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402

_bench.pin_threads(1)

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from distnn.config import TrainConfig  # noqa: E402
from distnn.data import load  # noqa: E402
from distnn.train.callbacks import Callback  # noqa: E402

LR, MOMENTUM, BATCH = 0.05, 0.9, 128


class TestClock(Callback):
    """Accumulates training time per epoch; stops once test accuracy reaches target."""

    def __init__(self, splits, target):
        self.x = splits.test.x.reshape(len(splits.test), -1).astype(np.float32) / 255
        self.y, self.target = splits.test.y, target
        self.train_seconds, self.reached = 0.0, None

    def on_epoch_end(self, epoch, logs, trainer):
        self.train_seconds += logs["train_seconds"]
        acc = float(np.mean(trainer.net.predict(self.x) == self.y))
        print(f"  distnn epoch {epoch}: test {100 * acc:.2f}% after {self.train_seconds:.1f}s",
              flush=True)
        if acc >= self.target and self.reached is None:
            self.reached = (epoch + 1, self.train_seconds, acc)
            trainer.stop = True


def distnn_time(splits, target, max_epochs, workers=2):
    from distnn.dist.driver import train
    cfg = TrainConfig(layers=(784, 800, 10), activation="relu", init="he", output="softmax",
                      cost="log-likelihood", optimizer="momentum", lr=LR, momentum=MOMENTUM,
                      batch_size=BATCH, epochs=max_epochs, workers=workers, monitor_train=False)
    clock = TestClock(splits, target)
    train(cfg, splits, callbacks=[clock])
    return clock.reached


def torch_time(splits, target, max_epochs, threads=2):
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(784, 800), torch.nn.ReLU(),
                                torch.nn.Linear(800, 10))
    torch.nn.init.kaiming_normal_(model[0].weight, nonlinearity="relu")
    torch.nn.init.zeros_(model[0].bias)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    lossf = torch.nn.CrossEntropyLoss()
    x = torch.from_numpy(splits.train.x.reshape(len(splits.train), -1).astype(np.float32) / 255)
    y = torch.from_numpy(splits.train.y.astype(np.int64))
    xt = torch.from_numpy(splits.test.x.reshape(len(splits.test), -1).astype(np.float32) / 255)
    yt = torch.from_numpy(splits.test.y.astype(np.int64))
    clock = 0.0
    for epoch in range(max_epochs):
        perm = torch.randperm(len(y))
        t0 = time.perf_counter()
        for s in range(0, len(y), BATCH):
            idx = perm[s:s + BATCH]
            opt.zero_grad(set_to_none=True)
            lossf(model(x[idx]), y[idx]).backward()
            opt.step()
        clock += time.perf_counter() - t0
        with torch.no_grad():
            acc = float((model(xt).argmax(1) == yt).float().mean())
        print(f"  torch  epoch {epoch}: test {100 * acc:.2f}% after {clock:.1f}s", flush=True)
        if acc >= target:
            return epoch + 1, clock, acc
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", type=float, default=0.98)
    p.add_argument("--max-epochs", type=int, default=20)
    p.add_argument("--write", metavar="BENCHMARKS.md")
    args = p.parse_args(argv)
    splits = load("mnist")
    ours = distnn_time(splits, args.target, args.max_epochs)
    theirs = torch_time(splits, args.target, args.max_epochs)

    def cell(r):
        return f"{r[1]:.1f} s ({r[0]} epochs, {100 * r[2]:.2f}%)" if r else \
            f"not reached in {args.max_epochs} epochs"
    ratio = f"**{ours[1] / theirs[1]:.2f}**" if ours and theirs else "n/a"
    _bench.report("bench_time_to_accuracy",
                  f"Time to {100 * args.target:.1f}% MNIST test accuracy",
                  "training time only; test accuracy measured off the clock.", [
        _bench.table(["", "training time to target"], [
            ["distnn, 2 workers (1 BLAS thread each, shm all-reduce)", cell(ours)],
            ["PyTorch CPU, 2 threads, same network/batch/optimizer", cell(theirs)],
            ["distnn / PyTorch (target <= 1)", ratio]]), "",
        "[784,800,10] ReLU (He init), softmax + log-likelihood, momentum SGD lr 0.05 mu 0.9, "
        "batch 128; test accuracy measured after each epoch, off the clock.",
    ], args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
