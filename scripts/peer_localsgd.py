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

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _peer  # noqa: E402


def main(argv=None) -> int:
    p = _peer.parser(__doc__)
    p.add_argument("--master", required=True, help="IP:PORT of rank 0")
    a = p.parse_args(argv)
    import torch
    import torch.distributed as dist
    from torch.distributed.algorithms.model_averaging.averagers import PeriodicModelAverager
    from torch.distributed.optim import PostLocalSGDOptimizer
    dist.init_process_group("gloo", init_method=f"tcp://{a.master}", rank=a.rank,
                            world_size=a.world)
    data = _peer.main_job(a.seed)
    model = data[-1]
    for q in model.parameters():          # every rank starts from rank 0's parameters
        dist.broadcast(q.data, 0)
    opt = PostLocalSGDOptimizer(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                                PeriodicModelAverager(period=a.period, warmup_steps=0))
    _peer.train(a, data, opt)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
