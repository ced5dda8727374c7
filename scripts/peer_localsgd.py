"""The peer of ``--local-steps``: PyTorch's local SGD (``PostLocalSGDOptimizer`` with a
``PeriodicModelAverager``, gloo) on the main job, one process per (simulated) host.

    python scripts/peer_localsgd.py --rank R --world M --master IP:PORT --period H
        [--epochs 10] [--out result.json]

Each rank trains [784,800,10] (ReLU, He-initialised weights, zero biases) on its half of
every global batch of 128 of MNIST's 50,000 training images (x / 255), cross-entropy,
momentum SGD (lr 0.05, momentum 0.9: distnn's momentum update), one thread; the
averager averages the parameters over gloo every H steps (no warm-up), as
``PostLocalSGDOptimizer`` does after each ``step``.  Rank 0 writes each epoch's training
seconds (the epoch's steps, evaluation excluded) and test accuracy.  torch is a
benchmark peer only: distnn never imports it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--world", type=int, required=True)
    p.add_argument("--master", required=True, help="IP:PORT of rank 0")
    p.add_argument("--period", type=int, required=True)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out")
    a = p.parse_args(argv)
    import numpy as np
    import torch
    import torch.distributed as dist
    from torch.distributed.algorithms.model_averaging.averagers import PeriodicModelAverager
    from torch.distributed.optim import PostLocalSGDOptimizer

    from distnn.config import TrainConfig
    from distnn.train.data import load_splits
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://{a.master}", rank=a.rank,
                            world_size=a.world)
    s = load_splits(TrainConfig(dataset="mnist"))
    x = torch.tensor(s.train.x.reshape(len(s.train.y), -1), dtype=torch.float32) / 255
    y = torch.tensor(s.train.y, dtype=torch.long)
    xt = torch.tensor(s.test.x.reshape(len(s.test.y), -1), dtype=torch.float32) / 255
    yt = torch.tensor(s.test.y, dtype=torch.long)
    torch.manual_seed(a.seed)
    model = torch.nn.Sequential(torch.nn.Linear(784, 800), torch.nn.ReLU(),
                                torch.nn.Linear(800, 10))
    for m in model:
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            torch.nn.init.zeros_(m.bias)
    for q in model.parameters():          # every rank starts from rank 0's parameters
        dist.broadcast(q.data, 0)
    opt = PostLocalSGDOptimizer(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                                PeriodicModelAverager(period=a.period, warmup_steps=0))
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
                        "examples_per_second": n / seconds, "test_accuracy": acc})
        if a.rank == 0:
            print(json.dumps(history[-1]), flush=True)
    if a.rank == 0 and a.out:
        Path(a.out).write_text(json.dumps({"history": history}))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
