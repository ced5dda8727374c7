"""The worker actor: a replica of the parameters and optimizer state, and a view of the
shared dataset (zero-copy from the node's object store).

Each call of ``run_epoch`` trains through a whole epoch: for every global batch the
worker takes its contiguous slice, computes the gradient and cost *sums* scaled by
1/(global batch size), all-reduces them with its peers (no driver round trip), adds
the L1/L2 terms once and applies the optimizer step, exactly as every other replica.

With the ``shm`` backend the update is sharded: each worker sums and updates only its
1/N of the parameters (its optimizer state lives in the node's shared memory, one copy
for all its workers) and then gathers the other shards, so every replica ends the step
with the same parameters as before, element for element, at a fraction of the memory
traffic.
"""
from __future__ import annotations

import hashlib
import math
import os
import time

import numpy as np

from ..config import TrainConfig
from ..data.augment import Augmenter
from ..data.datasets import Split
from ..data.splits import Normalizer
from ..train.loop import Batches, epoch_order
from ..train.run import build_network, build_trainer
from .collective import Collective, CollectiveAborted, RingCollective, SharedMemoryCollective


def digest(a: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(a).view(np.uint8), digest_size=16).hexdigest()


class Worker:
    """Plain class; the driver wraps it with ``ray.remote`` (threaded, so ``deliver``
    and ``abort`` can run while ``run_epoch`` is blocked in an all-reduce)."""

    def __init__(self, rank: int, world: int, cfg: dict, norm: dict, n_train: int,
                 train_x, train_y, valid_x, valid_y):
        self.rank, self.world = rank, world
        self.cfg = TrainConfig(**{**cfg, "layers": tuple(cfg["layers"])})
        self.net = build_network(self.cfg)
        self.trainer = build_trainer(self.cfg, self.net)
        self.buf = np.zeros(self.net.params.size + 1, self.net.dtype)
        self.net.rebind_grads(self.buf)
        normalizer = Normalizer(norm["pixel_max"], norm.get("mean"), norm.get("std"))
        aug = Augmenter(self.cfg.augment, seed=self.cfg.seed, pixel_max=norm["pixel_max"])
        self.train = Batches(Split(train_x, train_y), normalizer, aug, self.net.dtype, cache=False)
        self.valid = Batches(Split(valid_x, valid_y), normalizer, None, self.net.dtype,
                             cache=False) if len(valid_y) else None
        self.n_train = n_train
        self.collective: Collective = Collective()
        self._key = 0   # the next all-reduce's number (see collective.allreduce_)
        if self.cfg.sync_batchnorm and world > 1:
            self.net.sync_batchnorm(self._allreduce)

    # -- plumbing -------------------------------------------------------------------
    def info(self) -> dict:
        import ray
        return {"rank": self.rank, "pid": os.getpid(),
                "node": ray.get_runtime_context().get_node_id()}

    def setup_collective(self, spec: dict, peers=None) -> None:
        self.collective.close()
        if spec["backend"] == "shm":
            self.collective = SharedMemoryCollective(self.rank, spec["path"], spec["world"],
                                                     spec["size"], spec["dtype"],
                                                     shared_rows=spec.get("shared_rows", 0))
        elif spec["backend"] == "ring":
            self.collective = RingCollective(self.rank, self.world, peers)
        else:
            self.collective = Collective()
        self.shard = self.collective.shard(self.net.params.size)
        self._share_optimizer_state()

    @property
    def sharded(self) -> bool:
        return self.collective.shared is not None

    def _share_optimizer_state(self) -> None:
        """With a sharded update, point the optimizer's state at this worker's range of
        the shared rows 1, 2, ... (one per state slot), first writing that range from the
        state it holds (when it has none yet: zeros, and the parameters for the average)."""
        if not self.sharded:
            return
        opt, (lo, hi), P = self.trainer.optimizer, self.shard, self.net.params.size
        for i, name in enumerate(opt.slots):
            row = self.collective.shared[1 + i, :P]
            held = opt.state.get(name)
            if held is None or held.shape != (P,):
                held = self.net.params if name == "average" else np.zeros(P, row.dtype)
            row[lo:hi] = held[lo:hi]
            opt.state[name] = row[lo:hi]

    def _full_slot(self, name: str) -> np.ndarray | None:
        """The whole of one optimizer state slot (from the shared rows when sharded)."""
        opt = self.trainer.optimizer
        if name not in opt.slots or name not in opt.state:
            return None
        if not self.sharded:
            return opt.state[name]
        return self.collective.shared[1 + opt.slots.index(name), :self.net.params.size]

    def _allreduce(self, a: np.ndarray) -> None:
        self.collective.allreduce_(self._key, a)
        self._key += 1

    def deliver(self, key, data) -> None:
        self.collective.deliver(tuple(key), data)

    def abort(self) -> None:
        self.collective.abort()

    def get_state(self) -> dict:
        state = self.trainer.snapshot()
        if self.sharded:   # the whole optimizer state, from the shared rows
            state["optimizer"]["slots"] = {name: self._full_slot(name).copy()
                                           for name in self.trainer.optimizer.slots}
        return state

    def set_state(self, state: dict) -> None:
        self.trainer.restore(state)
        self._share_optimizer_state()

    # -- work -----------------------------------------------------------------------
    def run_epoch(self, epoch: int, schedule_state: dict, batch_size: int,
                  check_every: int = 0) -> dict:
        """Train one epoch; return summed cost, timings and (optionally) digests.

        Every worker scales its gradient sum by ``grad_scale(B)`` for the global batch
        size B, so the all-reduced buffer is exactly what one process would compute."""
        t = self.trainer
        t.schedule.load_state_dict(schedule_state)
        n = len(self.train.y)
        order = epoch_order(self.cfg.seed, epoch, n)
        steps = math.ceil(n / batch_size)
        warm = t.schedule.warmup > 0 and epoch < t.schedule.warmup
        t.optimizer.lr = t.schedule(epoch)
        loss_total, comm, digests = 0.0, 0.0, []
        P = self.net.params.size
        lo, hi = self.shard
        calls = 2 + self.net.syncs_per_step   # collective calls per step
        t0 = time.perf_counter()
        for k in range(steps):
            self._key = (epoch * steps + k) * calls
            gidx = order[k * batch_size:(k + 1) * batch_size]
            b = len(gidx)
            idx = gidx[self.rank * b // self.world:(self.rank + 1) * b // self.world]
            if warm:
                t.optimizer.lr = t.schedule(epoch + (k + 1) / steps)
            if len(idx):
                x, y = self.train.get(idx, epoch)
                self.buf[P] = self.net._loss_and_grad_sum(x, y, epoch=epoch, indices=idx,
                                                          scale=t.grad_scale(b))
            else:
                self.buf[:] = 0.0
                if calls > 1:
                    self.net.sync_idle()
            c0 = time.perf_counter()
            self.collective.reduce_parts_(self._key, self.buf, [(lo, hi), (P, P + 1)])
            comm += time.perf_counter() - c0
            loss = float(self.buf[P])           # the batch's summed cost, all shards
            if not math.isfinite(loss):
                return {"diverged": True, "step": k, "lr": t.optimizer.lr,
                        "loss": loss, "rank": self.rank}
            loss_total += loss
            t.apply_update(self.n_train, shard=(lo, hi))   # all of it unless sharded
            c0 = time.perf_counter()
            self.collective.all_gather_(self._key + 1, self.net.params, lo, hi)
            comm += time.perf_counter() - c0
            t.finish_step((lo, hi))   # max-norm, then the parameter average
            if check_every and k % check_every == 0:
                digests.append((k, digest(self.net.params)))
        return {"diverged": False, "loss_sum": loss_total, "seconds": time.perf_counter() - t0,
                "comm_seconds": comm, "lr": t.optimizer.lr, "digests": digests,
                "final_digest": digest(self.net.params), "rank": self.rank}

    def evaluate(self, which: str) -> tuple[float, int, int]:
        """(summed cost, correct, count) on this worker's shard of a split."""
        data = self.train if which == "train" else self.valid
        n = len(data.y)
        lo, hi = self.rank * n // self.world, (self.rank + 1) * n // self.world
        loss, correct = 0.0, 0
        with self.trainer.averaged(self._full_slot("average")):
            for s in range(lo, hi, 2000):
                idx = np.arange(s, min(s + 2000, hi))
                x = data.normalizer(data.split.x[idx], self.net.dtype)
                l_, c_ = self.net.evaluate(x, data.y[idx])
                loss, correct = loss + l_, correct + c_
        return loss, correct, hi - lo
