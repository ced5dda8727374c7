"""Communication backends, by name: the registry the driver chooses from.

``BACKENDS[name]`` is a ``Backend`` class (see ``base``); adding one (a TCP transport, a
hierarchical all-reduce) is one module here and one line below, plus its tests.
"""
from __future__ import annotations

from .base import Backend, CollectiveAborted, Group, LocalBackend
from .ring import RingBackend, RingCollective
from .shm import SHM_DIR, SharedMemoryBackend, SharedMemoryCollective

BACKENDS: dict[str, type[Backend]] = {b.name: b for b in (LocalBackend, SharedMemoryBackend,
                                                           RingBackend)}
#: what --allreduce accepts: "auto" or a backend for several workers
CHOICES = ("auto", *(n for n in BACKENDS if n != "local"))


def check(requested: str) -> None:
    """Refuse an unknown --allreduce before any work."""
    if requested not in CHOICES:
        raise ValueError(f"allreduce must be one of {list(CHOICES)}, got {requested!r}")


def choose(requested: str, world: int, same_node: bool) -> type[Backend]:
    """The backend for ``world`` workers: ``local`` for one; for ``auto``, ``shm`` when
    they share a node (and it has /dev/shm), else ``ring``."""
    check(requested)
    if world == 1:
        return LocalBackend
    if requested == "auto":
        requested = "shm" if same_node and SHM_DIR.is_dir() else "ring"
    backend = BACKENDS[requested]
    if backend.one_node and not same_node:
        raise ValueError(f"--allreduce {requested} needs every worker on one node; use "
                         f"{' or '.join(n for n, b in BACKENDS.items() if not b.one_node)}")
    return backend


__all__ = ["BACKENDS", "CHOICES", "Backend", "CollectiveAborted", "Group", "RingCollective",
           "SharedMemoryBackend", "SharedMemoryCollective", "check", "choose"]
