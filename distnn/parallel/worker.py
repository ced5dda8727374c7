"""The worker: hosts the training loop (``train.Engine``) on its slices of the data.

The same class serves a one-worker run, in the driver's process, and each Ray actor of a
multi-worker run (the driver wraps it with ``ray.remote``; threaded, so ``deliver`` and
``abort`` run while ``run_epoch`` waits in a collective).  Its data are the whole
training and validation splits as uint8 arrays — zero-copy views of the node's object
store on Ray — of which it trains on its slice of every global batch; or, for a dataset
read on demand (Parquet), its shard of each split, read by the worker itself, of which it
trains on the examples every global batch draws from it.
"""
from __future__ import annotations

import os

from ..config import TrainConfig
from ..core import blas
from ..data.augment import Augmenter
from ..data.splits import Normalizer
from ..train.batches import Batches, owned_range
from ..train.engine import Engine
from ..train.local import replica_rows
from ..train.records import memory
from ..train.state import ReplicaState
from ..train.stream import StreamedBatches
from .comm import BACKENDS
from .comm import compress


class Worker:
    """Rank ``rank`` of ``world``; ``in_process``: the one-worker run (normalise the
    data once, build augmented batches in a background thread)."""

    def __init__(self, rank: int, world: int, cfg: TrainConfig, normalizer: Normalizer,
                 train, valid, test=None, in_process: bool = False):
        if cfg.threads:
            blas.set_threads(cfg.threads)
        self.splits = (train, valid, test)     # each a Split, a ParquetSplit, or None
        # how batches are made; the one worker of a run in this process holds the split
        # normalised once (``cache``), Ray workers share one copy of the raw images
        self._how = (normalizer, Augmenter(cfg.augment, seed=cfg.seed,
                                           pixel_max=normalizer.pixel_max),
                     cfg.network_spec().dtype, {"cache": in_process})
        self._budget = cfg.shard_memory and cfg.shard_memory * 2 ** 20
        self._shards = max(cfg.data_shards, 1)
        #: with local steps, the training shards read are those of the logical replicas
        #: hosted (``train.local``): K, else None
        self._replicas = cfg.replica_count if cfg.local else None
        self._reads_own = any(s is not None and not s.held_whole for s in self.splits)
        if self._reads_own:
            import importlib     # pyarrow in memory before the baseline is taken
            importlib.import_module("pyarrow.parquet")
        self._rss0 = memory()["rss"]
        self.rank, self._handle = rank, None   # _handle: from listen, for join
        train, valid, test = self._batches(rank, world)
        self.engine = Engine(cfg, train, valid, test=test, rank=rank, world=world,
                             background=in_process)
        # the compressor outlives the groups it reduces through (a fault re-wires them)
        # (local steps carry --compress bf16 in their synchronisation: train.local)
        self.compressor = None if cfg.compress == "none" or cfg.local else compress.build(
            cfg.compress, self.engine.net.layout(), self.engine.net.dtype, cfg.seed)

    def _batches(self, rank: int, world: int) -> tuple:
        """Batches of the training, validation and test splits for this place: whole
        splits held in memory, or this rank's shard of a split read on demand (of the
        training split: its --data-shards, which fix the epoch order)."""
        norm, aug, dtype, how = self._how
        out = []
        for split, a, share, shards in zip(self.splits, (aug, None, None),
                                           (1, 8, 8), (self._shards, 1, 1)):
            if split is None or not len(split):
                out.append(None)
            elif split.held_whole:
                out.append(Batches(split, norm, a, dtype, **how))
            else:
                n = len(split)
                lo, hi = owned_range(n, shards, rank, world)
                if self._replicas and a is aug:       # the training split
                    lo, hi = replica_rows(n, shards, rank, world, self._replicas)
                if self._budget:     # read as training visits it (train.stream); the
                    # evaluation reads in order: a few row groups of cache are enough
                    out.append(StreamedBatches.of(split, lo, hi, norm, a, dtype,
                                                  self._budget // share, shards))
                else:
                    out.append(Batches(split.read(lo, hi), norm, a, dtype, offset=lo,
                                       total=n, shards=shards, **how))
        return tuple(out)

    def memory(self) -> dict:
        """This process's resident memory now and at its peak, and when it started
        hosting the worker (bytes), and its BLAS: threads and kernels."""
        return {**memory(), "start": self._rss0, "blas_threads": blas.threads(),
                "blas": blas.kernels()}

    def set_place(self, rank: int, world: int) -> None:
        """A new rank among a new number of workers (elastic membership); the worker
        then joins a new group.  A worker reading its own shard reads its new one."""
        self.rank = self.engine.rank = rank
        self.engine.world = world
        if self._reads_own:
            e = self.engine
            e.train, e.valid, e.test = self._batches(rank, world)

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
        group = BACKENDS[backend].join(self.rank, spec, peers=peers, addresses=addresses,
                                       handle=handle)
        if self.compressor is not None:
            group = compress.CompressedGroup(group, self.compressor, self.engine.world)
        self.engine.join(group)

    def deliver(self, key, data) -> None:
        self.engine.group.deliver(tuple(key), data)

    def abort(self) -> None:
        if self.engine.group is not None:
            self.engine.group.abort()

    def close(self) -> None:
        """Leave the group (its creator removes what it made, e.g. the shm file); an
        epoch still running (the run stopped: Ctrl-C) is released and ends quietly."""
        self._closing = True
        if self.engine.group is not None:
            self.engine.group.abort()
            self.engine.group.close()
            self.engine.group = None

    def get_state(self) -> ReplicaState:
        return self.engine.get_state()

    def set_state(self, state: ReplicaState) -> None:
        self.engine.set_state(state)

    def run_epoch(self, epoch: int, schedule_state: dict, progress=None) -> dict:
        """One epoch; its progress is ``progress(done, total)`` when given (in-process),
        else kept for ``progress()`` (the driver polls a Ray actor for it)."""
        self._progress = (0, 0)
        try:
            return self.engine.run_epoch(epoch, schedule_state, progress or self._note)
        except Exception:
            if getattr(self, "_closing", False):
                # closed under it (the run is stopping): nobody reads this epoch, and an
                # error here would be printed by Ray as an unhandled traceback
                return {"closed": True}
            raise

    def _note(self, done: int, total: int) -> None:
        self._progress = (done, total)

    def progress(self) -> tuple[int, int]:
        """(examples done, examples) of the epoch running now (all workers', every
        worker stepping through the same global batches)."""
        return getattr(self, "_progress", (0, 0))

    def evaluate(self, which: str, params=None) -> tuple[float, int, int]:
        return self.engine.evaluate(which, params)


#: what a user's mistake (bad data, a bad setting, an unreadable file) raises: reported to
#: the driver as it is, not as a Ray traceback
USER_ERRORS = (ValueError, KeyError, OSError)


class Refused:
    """A user's mistake met inside a worker, carried back to the driver as a value (so
    that Ray neither prints nor wraps it); ``RayPool`` raises ``error`` there."""

    def __init__(self, error: BaseException):
        self.error = error


class GuardedWorker(Worker):
    """The worker as a Ray actor: a user error in its construction or any call comes
    back as a ``Refused`` value (a failed construction answers every call with it)."""

    def __init__(self, *args):
        self._refused = None
        try:
            super().__init__(*args)
        except USER_ERRORS as e:
            self._refused = Refused(e)


def _guard(name):
    method = getattr(Worker, name)

    def guarded(self, *args, **kwargs):
        if self._refused is not None:
            return self._refused
        try:
            return method(self, *args, **kwargs)
        except USER_ERRORS as e:
            return Refused(e)
    guarded.__name__, guarded.__doc__ = name, method.__doc__
    return guarded


for _name in ("info", "listen", "join", "get_state", "set_state", "run_epoch", "evaluate",
              "set_place", "memory", "progress"):
    setattr(GuardedWorker, _name, _guard(_name))

