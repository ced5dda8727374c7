"""The second peer of ``--local-steps``: torchft's ``DiLoCo`` (PyPI ``torchft``, a
benchmark peer only) on the main job, one replica group of one process per (simulated)
host.

    PYTHONPATH=TORCHFT_DIR python scripts/peer_diloco.py --rank R --world M
        --ip THIS_HOST_IP --lighthouse IP_OF_RANK_0 --period H [--epochs 10]
        [--out result.json]

Rank 0 runs the lighthouse (torchft's quorum server, port 29510); every rank runs a
``Manager`` (its own TCP store and manager server on ``--ip``) with a gloo process group
reconfigured by each quorum, and wraps the model in ``DiLoCo`` (inner optimizer: momentum
SGD, lr 0.05, momentum 0.9, distnn's momentum update; outer: Nesterov SGD, lr 0.7,
momentum 0.9, DiLoCo's and distnn's ``--outer nesterov`` defaults; ``sync_every`` H: the
replicas' change all-reduced every H inner steps, float32, not quantized).  Each rank
trains [784,800,10] (ReLU, He-initialised weights, zero biases, the same seed on every
rank) on its slice of every global batch of 128 of MNIST's 50,000 training images
(x / 255), one thread.  Rank 0 writes each epoch's training seconds (evaluation excluded)
and test accuracy.  ``scripts/bench_local.py --peer diloco`` runs it on simulated hosts.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LIGHTHOUSE_PORT = 29510


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--world", type=int, required=True)
    p.add_argument("--ip", required=True, help="this host's address")
    p.add_argument("--lighthouse", required=True, help="rank 0's address")
    p.add_argument("--period", type=int, required=True)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out")
    a = p.parse_args(argv)
    import numpy as np
    import torch
    import torch.distributed as dist
    from torchft._torchft import LighthouseServer
    from torchft.local_sgd import DiLoCo
    from torchft.manager import Manager
    from torchft.process_group import ProcessGroupGloo

    from distnn.config import TrainConfig
    from distnn.train.data import load_splits
    torch.set_num_threads(1)
    lighthouse = LighthouseServer(bind=f"[::]:{LIGHTHOUSE_PORT}", min_replicas=a.world) \
        if a.rank == 0 else None
    s = load_splits(TrainConfig(dataset="mnist"))
    x = torch.tensor(s.train.x.reshape(len(s.train.y), -1), dtype=torch.float32) / 255
    y = torch.tensor(s.train.y, dtype=torch.long)
    xt = torch.tensor(s.test.x.reshape(len(s.test.y), -1), dtype=torch.float32) / 255
    yt = torch.tensor(s.test.y, dtype=torch.long)
    torch.manual_seed(a.seed)           # the same initial parameters on every replica
    model = torch.nn.Sequential(torch.nn.Linear(784, 800), torch.nn.ReLU(),
                                torch.nn.Linear(800, 10))
    for m in model:
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            torch.nn.init.zeros_(m.bias)
    inner = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    outer = torch.optim.SGD(model.parameters(), lr=0.7, momentum=0.9, nesterov=True)
    store = dist.TCPStore(host_name=a.ip, port=0, is_master=True, wait_for_workers=False)
    manager = Manager(
        pg=ProcessGroupGloo(timeout=timedelta(seconds=120)), min_replica_size=a.world,
        use_async_quorum=False,
        load_state_dict=lambda sd: (model.load_state_dict(sd["model"]),
                                    inner.load_state_dict(sd["inner"])),
        state_dict=lambda: {"model": model.state_dict(), "inner": inner.state_dict()},
        replica_id=f"replica{a.rank}", store_addr=a.ip, store_port=store.port, rank=0,
        world_size=1, lighthouse_addr=f"http://{a.lighthouse}:{LIGHTHOUSE_PORT}",
        hostname=a.ip, port=19530 + a.rank, timeout=timedelta(seconds=120),
        init_sync=False,       # every replica starts from the same seed: nothing to heal
        quorum_timeout=timedelta(seconds=120), connect_timeout=timedelta(seconds=60))
    loss_fn = torch.nn.CrossEntropyLoss()
    n, B = len(y), a.batch_size
    history = []
    with DiLoCo(manager, [model], inner, outer, sync_every=a.period,
                backup_device=torch.device("cpu"), pin_memory=False):
        for epoch in range(a.epochs):
            order = torch.from_numpy(np.random.default_rng([a.seed, epoch]).permutation(n))
            t0 = time.perf_counter()
            for k in range(0, n, B):
                g = order[k:k + B]
                mine = g[a.rank * len(g) // a.world:(a.rank + 1) * len(g) // a.world]
                inner.zero_grad(set_to_none=True)
                loss_fn(model(x[mine]), y[mine]).backward()
                inner.step()
            seconds = time.perf_counter() - t0
            with torch.no_grad():
                acc = float((model(xt).argmax(1) == yt).float().mean())
            history.append({"epoch": epoch, "train_seconds": seconds,
                            "examples_per_second": n / seconds, "test_accuracy": acc,
                            "syncs": manager.current_step()})
            if a.rank == 0:
                print(json.dumps(history[-1]), flush=True)
    if a.rank == 0 and a.out:
        Path(a.out).write_text(json.dumps({"history": history}))
    manager.shutdown(wait=False)
    if lighthouse is not None:
        lighthouse.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
