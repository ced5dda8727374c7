"""What the trainer asks of the workers, whoever runs them: the ``Pool`` a trainer is
handed (one worker in this process, or N Ray actors: ``parallel.pools``), and the
failure a pool raises when it cannot go on."""
from __future__ import annotations

from typing import Callable, Protocol

from .state import ReplicaState


class WorkerFailure(RuntimeError):
    """Workers were lost and the epoch could not be completed (the failure policy gave
    up, or fewer workers than allowed are left); the last complete epoch is kept."""


class Pool(Protocol):
    """Workers that train one epoch at a time and hold the run's replicated state.

    ``backend``: the name of the communication backend in use; ``faults``: a record of
    every change of membership (``{"epoch", "workers", "action", ...}``)."""

    backend: str
    faults: list

    def run_epoch(self, epoch: int, schedule_state: dict,
                  progress: Callable[[int, int], None] | None = None) -> list[dict]:
        """Every worker's result of the epoch (``train.engine.Engine.run_epoch``)."""

    def get_state(self) -> ReplicaState:
        """The whole state now (``ReplicaState.merge`` of the workers')."""

    def epoch_state(self) -> ReplicaState:
        """The state at the end of the epoch just run, every worker holding it."""

    def set_state(self, state: ReplicaState) -> None:
        """Every worker takes ``state``."""

    def evaluate(self, which: str, params=None) -> list[tuple[float, int, int]]:
        """Every worker's (summed cost, correct, count) on its part of a split."""

    def worker_pids(self) -> list[int]:
        ...

    def memory(self) -> list[dict]:
        """Each worker's resident memory (bytes) and BLAS: threads, kernels."""

    def close(self) -> None:
        ...
