"""Time to 98.0% MNIST test accuracy: distnn with 2 workers vs PyTorch (CPU, 2 threads),
same network, batch, optimizer and schedule, side by side in one run.

    python scripts/bench_time_to_accuracy.py [--target 0.98] [--max-epochs 20]
        [--settings 128:0.05,256:0.1] [--gamma 1] [--seeds 7] [--write docs/BENCHMARKS.md]

Network [784,800,10], ReLU, softmax + log-likelihood, momentum SGD (mu 0.9), inputs
scaled to [0, 1], no augmentation; PyTorch starts from the parameters distnn initialises
for the seed (He init, zero biases) and visits the training images in distnn's order
for the seed and epoch (the same global batches), so the two run the same algorithm on
the same batches and differ only in float rounding and speed.  Each setting
is a global batch size and its learning rate, the same for both, multiplied by
``--gamma`` after every epoch (distnn ``exponential:G``, PyTorch ``ExponentialLR``;
default 1, constant).  98% is close to
where this network levels off, so the epoch that first crosses it varies with the seed
(by one or two either way): hence several seeds and medians; with the same start and
the same batches both cross it in the same epoch for almost every seed, so the ratio
per seed measures speed, not which run was luckier, and the target is on the median of
those paired ratios (the ratio of the two medians is reported beside it).  (A decaying
rate does not help: at 0.8 per epoch both level off just under 98%.)  Each setting
runs ``--seeds`` times, distnn and PyTorch alternating.  The clock runs during training
only; after each epoch the test accuracy is measured off the clock.
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
from distnn.train.batches import epoch_order  # noqa: E402

MOMENTUM = 0.9


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


def config(max_epochs, batch, lr, gamma, seed, workers=2) -> TrainConfig:
    return TrainConfig(layers=(784, 800, 10), activation="relu", init="he", output="softmax",
                       cost="log-likelihood", optimizer="momentum", lr=lr, momentum=MOMENTUM,
                       batch_size=batch, epochs=max_epochs, workers=workers,
                       monitor_train=False, seed=seed, schedule=f"exponential:{gamma}")


def distnn_time(splits, target, max_epochs, batch, lr, gamma, seed, workers=2):
    from distnn.parallel.driver import train
    clock = TestClock(splits, target)
    train(config(max_epochs, batch, lr, gamma, seed, workers), splits, callbacks=[clock])
    return clock.reached


def torch_time(splits, target, max_epochs, batch, lr, gamma, seed, threads=2):
    import torch
    torch.set_num_threads(threads)
    model = torch.nn.Sequential(torch.nn.Linear(784, 800), torch.nn.ReLU(),
                                torch.nn.Linear(800, 10))
    # the very parameters distnn starts from (He init on both layers, zero biases):
    # PyTorch's default output-layer init alone reaches 98% about one epoch sooner
    from distnn.core.network import Network
    start = Network.from_spec(config(max_epochs, batch, lr, gamma, seed).network_spec()
                              ).named_params()
    with torch.no_grad():
        for k, layer in ((0, model[0]), (1, model[2])):
            layer.weight.copy_(torch.from_numpy(start[f"dense{k}.weight"].T.copy()))
            layer.bias.copy_(torch.from_numpy(start[f"dense{k}.bias"].copy()))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma)
    lossf = torch.nn.CrossEntropyLoss()
    x = torch.from_numpy(splits.train.x.reshape(len(splits.train), -1).astype(np.float32) / 255)
    y = torch.from_numpy(splits.train.y.astype(np.int64))
    xt = torch.from_numpy(splits.test.x.reshape(len(splits.test), -1).astype(np.float32) / 255)
    yt = torch.from_numpy(splits.test.y.astype(np.int64))
    clock = 0.0
    for epoch in range(max_epochs):
        perm = torch.from_numpy(epoch_order(seed, epoch, len(y)).astype(np.int64))
        t0 = time.perf_counter()
        for s in range(0, len(y), batch):
            idx = perm[s:s + batch]
            opt.zero_grad(set_to_none=True)
            lossf(model(x[idx]), y[idx]).backward()
            opt.step()
        sched.step()
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
    p.add_argument("--settings", default="128:0.05,256:0.1",
                   help="BATCH:LR pairs, comma-separated")
    p.add_argument("--gamma", type=float, default=1.0, help="learning-rate factor per epoch")
    p.add_argument("--seeds", type=int, default=7)
    p.add_argument("--write", metavar="BENCHMARKS.md")
    args = p.parse_args(argv)
    splits = load("mnist")
    settings = [(int(b), float(lr)) for b, lr in (x.split(":") for x in args.settings.split(","))]

    def cell(runs):
        done = [r for r in runs if r]
        if len(done) < len(runs):
            return f"not reached in {args.max_epochs} epochs ({len(runs) - len(done)} seeds)"
        return (f"{_bench.median([r[1] for r in done]):.1f} s ("
                + ", ".join(f"{r[1]:.1f} s/{r[0]} ep" for r in done) + ")")

    rows, notes = [], []
    for batch, lr in settings:
        ours, theirs = [], []
        for seed in range(args.seeds):
            ours.append(distnn_time(splits, args.target, args.max_epochs, batch, lr, args.gamma,
                                    seed))
            theirs.append(torch_time(splits, args.target, args.max_epochs, batch, lr, args.gamma,
                                     seed))
        ratio = "n/a"
        if all(ours) and all(theirs):
            r = [o[1] / t[1] for o, t in zip(ours, theirs)]
            of_medians = (_bench.median([o[1] for o in ours])
                          / _bench.median([t[1] for t in theirs]))
            ratio = (f"**{_bench.median(r):.2f}** (ratio of the medians {of_medians:.2f}; "
                     "per seed " + ", ".join(f"{x:.2f}" for x in r) + ")")
            per_epoch = _bench.median([o[1] / o[0] for o in ours]) / \
                _bench.median([t[1] / t[0] for t in theirs])
            notes.append(f"batch {batch}: seconds per epoch, distnn / PyTorch = {per_epoch:.2f}")
        rows.append([f"batch {batch}, lr {lr}", cell(ours), cell(theirs), ratio])
    _bench.report("bench_time_to_accuracy",
                  f"Time to {100 * args.target:.1f}% MNIST test accuracy",
                  "training time only; test accuracy measured off the clock.", [
        _bench.table(["global batch, lr", "distnn, 2 workers (1 BLAS thread each, shm "
                      "all-reduce): median (each seed)", "PyTorch CPU, 2 threads, same "
                      "network/batch/optimizer", "distnn / PyTorch, median over seeds of the "
                      "same seed's ratio (target <= 1)"], rows), "",
        "[784,800,10] ReLU, both starting from distnn's He-initialised parameters for the "
        "seed and visiting the same batches (distnn's order), softmax + log-likelihood, "
        "momentum SGD mu 0.9, "
        + (f"learning rate x {args.gamma} per epoch" if args.gamma != 1 else
           "constant learning rate")
        + f"; seeds 0..{args.seeds - 1}, distnn and PyTorch alternating; test accuracy "
        "measured after each epoch, off the clock. " + "; ".join(notes) + ".",
    ], args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
