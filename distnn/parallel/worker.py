"""The worker: hosts the training loop (``train.Engine``) on its slices of the data.

The same class serves a one-worker run, in the driver's process, and each Ray actor of a
multi-worker run (the driver wraps it with ``ray.remote``; threaded, so ``deliver`` and
``abort`` run while ``run_epoch`` waits in a collective).  Its data are the whole
training and validation splits as uint8 arrays — zero-copy views of the node's object
store on Ray — of which it trains on its slice of every global batch.
"""
from __future__ import annotations

import os

from ..config import TrainConfig
from ..data.augment import Augmenter
from ..data.datasets import Split
from ..data.splits import Normalizer
from ..train.batches import Batches
from ..train.engine import Engine
from .comm import BACKENDS


class Worker:
    """Rank ``rank`` of ``world``; ``in_process``: the one-worker run (normalise the
    data once, build augmented batches in a background thread)."""

    def __init__(self, rank: int, world: int, cfg: TrainConfig, normalizer: Normalizer,
                 train_x, train_y, valid_x, valid_y, in_process: bool = False):
        dtype = cfg.network_spec().dtype
        aug = Augmenter(cfg.augment, seed=cfg.seed, pixel_max=normalizer.pixel_max)
        train = Batches(Split(train_x, train_y), normalizer, aug, dtype, cache=in_process)
        valid = Batches(Split(valid_x, valid_y), normalizer, None, dtype,
                        cache=in_process) if len(valid_y) else None
        self.rank, self._handle = rank, None   # _handle: from listen, for join
        self.engine = Engine(cfg, train, valid, rank=rank, world=world, background=in_process)

    def set_place(self, rank: int, world: int) -> None:
        """A new rank among a new number of workers (elastic membership); the worker
        then joins a new group."""
        self.rank = self.engine.rank = rank
        self.engine.world = world

    def info(self) -> dict:
        import ray
        return {"rank": self.rank, "pid": os.getpid(),
                "node": ray.get_runtime_context().get_node_id(),
                "ip": ray.util.get_node_ip_address()}

    def listen(self, backend: str, spec: dict, host: str | None = None):
        """Phase one of joining a group: open what the other members connect to, on
        this node's address; returns this member's address for them (or None)."""
        if host is None:
            import ray
            host = ray.util.get_node_ip_address()
        self._handle, address = BACKENDS[backend].listen(self.rank, spec, host)
        return address

    def join(self, backend: str, spec: dict, peers=None, addresses=None) -> None:
        """Phase two: join the group, now that every member's address is known."""
        handle, self._handle = self._handle, None
        self.engine.join(BACKENDS[backend].join(self.rank, spec, peers=peers,
                                                addresses=addresses, handle=handle))

    def deliver(self, key, data) -> None:
        self.engine.group.deliver(tuple(key), data)

    def abort(self) -> None:
        if self.engine.group is not None:
            self.engine.group.abort()

    def close(self) -> None:
        """Leave the group (its creator removes what it made, e.g. the shm file)."""
        if self.engine.group is not None:
            self.engine.group.close()
            self.engine.group = None

    def get_state(self) -> dict:
        return self.engine.get_state()

    def set_state(self, state: dict) -> None:
        self.engine.set_state(state)

    def run_epoch(self, epoch: int, schedule_state: dict, progress=None) -> dict:
        """One epoch; its progress is ``progress(done, total)`` when given (in-process),
        else kept for ``progress()`` (the driver polls a Ray actor for it)."""
        self._progress = (0, 0)
        return self.engine.run_epoch(epoch, schedule_state, progress or self._note)

    def _note(self, done: int, total: int) -> None:
        self._progress = (done, total)

    def progress(self) -> tuple[int, int]:
        """(examples done, examples) of the epoch running now (all workers', every
        worker stepping through the same global batches)."""
        return getattr(self, "_progress", (0, 0))

    def evaluate(self, which: str, params=None) -> tuple[float, int, int]:
        return self.engine.evaluate(which, params)
