"""Communication backends, by name: the registry the driver chooses from.

``BACKENDS[name]`` is a ``Backend`` class (see ``base``); adding one is one module here
and one entry below, plus its tests.

========  ===========  ==========================================================
local     one worker   nothing to do (the in-process run)
shm       one node     shared memory; sharded update
tcp       any nodes    a ring over persistent, authenticated TCP connections,
                       ranks ordered by node; sharded update
hier      any nodes    shm inside each node, a TCP ring per local rank across
                       nodes; sharded update (same number of workers per node)
ring      any nodes    a ring of Ray actor calls (slow: the object store carries
                       every chunk); kept as a fallback that needs no open ports
========  ===========  ==========================================================
"""
from __future__ import annotations

from ...config import parse_ports
from .base import Backend, CollectiveAborted, Group, LocalBackend
from .hier import HierarchicalBackend
from .ring import RingBackend, RingCollective
from .shm import SHM_DIR, SharedMemoryBackend, SharedMemoryCollective, SharedMemoryFile
from .tcp import TcpBackend

BACKENDS: dict[str, type[Backend]] = {b.name: b for b in (
    LocalBackend, SharedMemoryBackend, TcpBackend, HierarchicalBackend, RingBackend)}
#: what --allreduce accepts: "auto" or a backend for several workers
CHOICES = ("auto", *(n for n in BACKENDS if n != "local"))


def check(requested: str) -> None:
    """Refuse an unknown --allreduce before any work."""
    if requested not in CHOICES:
        raise ValueError(f"allreduce must be one of {list(CHOICES)}, got {requested!r}")


def plan(node_ids) -> list[list[int]]:
    """Ranks grouped by node (``node_ids[r]``: rank r's node), nodes in the order of
    their lowest rank."""
    nodes: dict = {}
    for rank, node in enumerate(node_ids):
        nodes.setdefault(node, []).append(rank)
    return list(nodes.values())


def choose(requested: str, world: int, nodes) -> type[Backend]:
    """The backend for ``world`` workers placed as ``nodes``: ``local`` for one; for
    ``auto``, ``shm`` on one node (with /dev/shm), ``hier`` on several with the same
    number (> 1) of workers each, else ``tcp``."""
    check(requested)
    if world == 1:
        return LocalBackend
    if requested == "auto":
        sizes = {len(n) for n in nodes}
        if len(nodes) == 1:
            requested = "shm" if SHM_DIR.is_dir() else "tcp"
        else:
            requested = "hier" if len(sizes) == 1 and sizes != {1} else "tcp"
    backend = BACKENDS[requested]
    if backend.one_node and len(nodes) > 1:
        raise ValueError(f"--allreduce {requested} needs every worker on one node, but they "
                         f"are on {len(nodes)}; use auto, tcp or hier")
    return backend


def options(cfg) -> dict:
    """Backend options from the run's config: the port range, the collective timeout."""
    return {"ports": parse_ports(cfg.comm_ports), "timeout": float(cfg.comm_timeout)}


def check_ports(backend: type[Backend], nodes, ports) -> None:
    """Refuse a --comm-ports range with fewer ports than a node has workers listening
    (every tcp and hier member listens on one), before the workers try."""
    if ports is None or backend.name not in ("tcp", "hier"):
        return
    have, need = ports[1] - ports[0] + 1, max(len(n) for n in nodes)
    if need > have:
        raise ValueError(f"--comm-ports {ports[0]}-{ports[1]} has {have} port(s), but a node "
                         f"runs {need} workers of the {backend.name} all-reduce, each "
                         f"listening on one; give a range of at least {need}")


__all__ = ["BACKENDS", "CHOICES", "Backend", "CollectiveAborted", "Group", "RingCollective",
           "SharedMemoryBackend", "SharedMemoryCollective", "SharedMemoryFile", "check",
           "check_ports", "choose", "options", "plan"]
