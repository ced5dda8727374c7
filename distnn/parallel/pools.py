"""Where the workers run.  The driver talks to a pool the same way whatever the number
of workers: ``LocalPool`` holds the one worker of an in-process run (no Ray);
``RayPool`` (``ray_pool``) places N Ray actors and handles their failures."""
from __future__ import annotations

import os

from ..config import TrainConfig
from ..train.data import TrainingData
from ..train.state import ReplicaState
from .worker import Worker


class LocalPool:
    """One worker in this process, in a group of one."""

    backend = "local"

    def __init__(self, cfg: TrainConfig, data: TrainingData):
        self.worker = Worker(0, 1, cfg, data.normalizer, *data.worker_splits(),
                             in_process=True)
        self.worker.join("local", {"world": 1, "nodes": [[0]]})
        self.faults: list = []   # a worker in this process cannot die alone

    def run_epoch(self, epoch: int, schedule_state: dict, progress=None) -> list[dict]:
        return [self.worker.run_epoch(epoch, schedule_state, progress)]

    def get_state(self) -> ReplicaState:
        return ReplicaState.merge([self.worker.get_state()])

    epoch_state = get_state   # nothing per worker to reconcile at the end of an epoch

    def set_state(self, state: ReplicaState) -> None:
        self.worker.set_state(state)

    def evaluate(self, which: str, params=None) -> list[tuple[float, int, int]]:
        return [self.worker.evaluate(which, params)]

    def worker_pids(self) -> list[int]:
        return [os.getpid()]

    def memory(self) -> list[dict]:
        return [self.worker.memory()]

    def close(self) -> None:
        pass


def open_pool(cfg: TrainConfig, data: TrainingData, size: int, world: int | None = None):
    """The pool for ``cfg.workers`` workers (Ray only for more than one), ``world`` of
    them to begin with (all by default); ``size`` as for ``RayPool``."""
    if cfg.workers == 1:
        return LocalPool(cfg, data)
    from .ray_pool import RayPool
    return RayPool(cfg, data, size, world or cfg.workers)
