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

import sys
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _peer  # noqa: E402

LIGHTHOUSE_PORT = 29510


def main(argv=None) -> int:
    p = _peer.parser(__doc__)
    p.add_argument("--ip", required=True, help="this host's address")
    p.add_argument("--lighthouse", required=True, help="rank 0's address")
    a = p.parse_args(argv)
    import torch
    import torch.distributed as dist
    from torchft._torchft import LighthouseServer
    from torchft.local_sgd import DiLoCo
    from torchft.manager import Manager
    from torchft.process_group import ProcessGroupGloo
    # (heartbeats missed for a minute, not torchft's default seconds: the simulated
    # hosts share 2 cores, and a replica is never lost here)
    lighthouse = LighthouseServer(bind=f"[::]:{LIGHTHOUSE_PORT}", min_replicas=a.world,
                                  heartbeat_timeout_ms=60000) if a.rank == 0 else None
    data = _peer.main_job(a.seed)        # the same initial parameters on every replica
    model = data[-1]
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
        # (the manager server on any free port: a fixed one such as torchft's
        # examples' 19530 lies in Ray's worker port range, 10002-19999, and a Ray
        # worker on these hosts may hold it)
        hostname=a.ip, port=0, timeout=timedelta(seconds=120),
        init_sync=False,       # every replica starts from the same seed: nothing to heal
        quorum_timeout=timedelta(seconds=120), connect_timeout=timedelta(seconds=60))
    with DiLoCo(manager, [model], inner, outer, sync_every=a.period,
                backup_device=torch.device("cpu"), pin_memory=False):
        _peer.train(a, data, inner, extra=lambda: {"syncs": manager.current_step()})
    manager.shutdown(wait=False)
    if lighthouse is not None:
        lighthouse.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
