"""What to do about a fault or a change of capacity, apart from how it is done: small
classes that a pool asks and that return a decision (after Ray Train v2's
``FailurePolicy`` and ``ScalingPolicy``).  The defaults are distnn's behaviour; a user or
a test may hand a ``RayPool`` others.

A walk of one fault, a worker's node lost with no spare capacity: the pool's attempt of
the epoch notices (the lost worker's peers give up on it, then it does not answer within
``STALL_SECONDS``), the ``FailurePolicy`` decides to replay the epoch (it has failed
fewer than ``--max-failures`` times), the ``ScalingPolicy`` says how long to wait for a
CPU to replace the worker (``--replace-wait``) and, none coming, that going on with
fewer is allowed (``--min-workers``); the pool then acts: it drops the lost worker,
renumbers and re-wires the others, resets them to the epoch's start, and replays it;
at a later epoch boundary the ``ScalingPolicy`` has it add workers where CPUs are free.
"""
from __future__ import annotations

from dataclasses import dataclass

REPLAY, GIVE_UP = "replay", "give up"


@dataclass(frozen=True)
class FailurePolicy:
    """Replay an epoch after a failed attempt, up to ``max_failures`` failed attempts of
    one epoch in a row; then give up (the last complete epoch is kept)."""

    max_failures: int = 3

    def decide(self, epoch: int, failures: int) -> str:
        """REPLAY or GIVE_UP after the ``failures``-th failed attempt of ``epoch``."""
        return GIVE_UP if failures > self.max_failures else REPLAY

    def why(self, epoch: int, failures: int, dead) -> str:
        return (f"epoch {epoch} failed {failures} times in a row (workers {list(dead)} died "
                "or stalled, or the all-reduce broke); giving up. The parameters of the "
                f"last complete epoch ({epoch - 1}) are kept.")


@dataclass(frozen=True)
class ScalingPolicy:
    """How many workers run: up to ``workers``; at least ``min_workers`` (a run goes on
    with fewer when lost ones cannot be replaced, down to that); and how long to wait
    for CPUs to replace lost workers when none are free (``replace_wait``)."""

    workers: int
    min_workers: int = 1
    replace_wait: float = 0.0

    def wait_for_cpus(self) -> float:
        """Seconds to wait for free CPUs before going on without the lost workers."""
        return self.replace_wait

    def may_go_on_with(self, left: int) -> bool:
        return left >= self.min_workers

    def to_add(self, world: int, free_cpus: int) -> int:
        """Workers to add at an epoch boundary: up to ``workers``, one per free CPU."""
        return max(0, min(self.workers - world, free_cpus))


def from_config(cfg) -> tuple[FailurePolicy, ScalingPolicy]:
    """The default policies for a run's settings."""
    return (FailurePolicy(cfg.max_failures),
            ScalingPolicy(cfg.workers, cfg.min_workers or 1, cfg.replace_wait))
