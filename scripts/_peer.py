"""What the benchmark peers of ``--local-steps`` share (scripts/peer_localsgd.py,
scripts/peer_diloco.py): their flags, the main job's data and network in PyTorch, and
the epoch loop that trains a rank's slice of every global batch and records each
epoch's training seconds and test accuracy.  torch is a benchmark peer only."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--world", type=int, required=True)
    p.add_argument("--period", type=int, required=True)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out")
    return p


def main_job(seed: int):
    """(x, y, x_test, y_test, model): MNIST's 50,000 training and 10,000 test images
    (x / 255) and [784,800,10] (ReLU, He-initialised weights, zero biases) from
    ``seed``; one thread."""
    import torch

    from distnn.config import TrainConfig
    from distnn.train.data import load_splits
    torch.set_num_threads(1)
    s = load_splits(TrainConfig(dataset="mnist"))
    x = torch.tensor(s.train.x.reshape(len(s.train.y), -1), dtype=torch.float32) / 255
    y = torch.tensor(s.train.y, dtype=torch.long)
    xt = torch.tensor(s.test.x.reshape(len(s.test.y), -1), dtype=torch.float32) / 255
    yt = torch.tensor(s.test.y, dtype=torch.long)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(784, 800), torch.nn.ReLU(),
                                torch.nn.Linear(800, 10))
    for m in model:
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            torch.nn.init.zeros_(m.bias)
    return x, y, xt, yt, model


def train(a, data, opt, extra=lambda: {}) -> list[dict]:
    """``a.epochs`` epochs of ``opt`` (whose ``step`` does the peer's synchronisation)
    on rank ``a.rank``'s slice of every global batch; rank 0 prints each epoch's record
    (with ``extra()``) and writes them all to ``a.out``."""
    import numpy as np
    import torch
    x, y, xt, yt, model = data
    loss_fn = torch.nn.CrossEntropyLoss()
    n, B = len(y), a.batch_size
    history = []
    for epoch in range(a.epochs):
        order = torch.from_numpy(np.random.default_rng([a.seed, epoch]).permutation(n))
        t0 = time.perf_counter()
        for k in range(0, n, B):
            g = order[k:k + B]
            mine = g[a.rank * len(g) // a.world:(a.rank + 1) * len(g) // a.world]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x[mine]), y[mine]).backward()
            opt.step()
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            acc = float((model(xt).argmax(1) == yt).float().mean())
        history.append({"epoch": epoch, "train_seconds": seconds,
                        "examples_per_second": n / seconds, "test_accuracy": acc, **extra()})
        if a.rank == 0:
            print(json.dumps(history[-1]), flush=True)
    if a.rank == 0 and a.out:
        Path(a.out).write_text(json.dumps({"history": history}))
    return history
