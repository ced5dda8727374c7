"""THE training loop: one replica's epochs, for any number of workers.

An ``Engine`` runs inside every worker — in the driver's own process for a one-worker
run, in each Ray actor otherwise — and talks to the other replicas only through the
communication group it is handed (``join``; see ``distnn.parallel.comm``).  For every
global mini-batch of ``batch_size`` examples it takes its contiguous slice, computes the
gradient and cost *sums* scaled by 1/(global batch), reduces them with the group, adds
the L1/L2 terms once and applies the optimizer step to its shard of the parameters (all
of them unless the group shards the update), then gathers the other shards.  The result
therefore does not depend on how a batch is split: N workers compute what one does.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager

import numpy as np

from ..config import TrainConfig
from ..core import regularizers
from .batches import Batches, prefetch, steps_per_epoch
from .clock import Clock, digest
from .evaluate import measure
from .model import build_model
from .state import ReplicaState
from .update import Update


class Engine:
    """One replica: the network, its optimizer, schedule and penalty, and its view of
    the training and validation data.

    Parameters
    ----------
    cfg : the run's config, whole.
    train, valid : the data (every worker sees the whole split and takes its slices).
    rank, world : this replica's place among ``world`` workers.  The engine trains once
        it has joined its communication group (``join``; a group of one for one worker).
    background : build augmented batches in a thread (the one-worker run, which has a
        spare core; Ray workers already fill every core).
    """

    def __init__(self, cfg: TrainConfig, train: Batches, valid: Batches | None, *,
                 rank: int = 0, world: int = 1, background: bool = False,
                 test: Batches | None = None):
        self.cfg, self.rank, self.world, self.background = cfg, rank, world, background
        model = build_model(cfg)
        self.net = net = model.net
        self.optimizer, self.schedule, self.penalty = model.optimizer, model.schedule, \
            model.penalty
        self.train, self.valid, self.test = train, valid, test
        self.n_train = train.total
        # the gradient and, after it, the batch's summed cost: one buffer to reduce
        # (this process's own; a group may offer one in its memory instead: see join)
        self.buf = self._own_buf = np.zeros(net.params.size + 1, net.dtype)
        net.rebind_grads(self.buf)
        self._own_params = net.params
        self._scratch = np.empty(net.n_decay, net.dtype)
        self.group, self.shard, self._key = None, (0, net.params.size), 0   # see join
        self.update = Update(self.optimizer)   # where -lr goes: see join
        self.clock = Clock()
        self.step_seconds = None   # the last epoch's mean step: sets the step deadline
        # by the workers the run may have (cfg.workers), not those it has now (world):
        # a replica made while fewer run takes part once more join (elastic growth)
        if cfg.sync_batchnorm and cfg.workers > 1:
            net.sync_batchnorm(self._allreduce)
        #: collectives one step makes: the synchronised batch-norm all-reduces, the
        #: gradient reduction and the all-gather of the updated shards
        self.calls_per_step = 2 + net.syncs_per_step
        self.overlap, self._uses_overlap = None, False    # see join
        #: with --local-steps/--replicas: the logical replicas this worker hosts, their
        #: epoch and synchronisations (``train.local``); None: the synchronous run
        self.local = None
        if cfg.local:
            from .local import LocalSteps
            self.local = LocalSteps(self)

    # -- the group ----------------------------------------------------------------------
    def join(self, group) -> None:
        """Train with ``group`` from now on (after a fault: a new one)."""
        if self.group is not None:
            self.group.close()
        self.group = group
        self.update = Update(self.optimizer, group.takes_scaled)
        if self.local is not None:     # every replica updates all of its own parameters
            self.shard = (0, self.net.params.size)
            return
        self._overlap_with(group)
        P = self.net.params.size
        # in the group's memory where it offers it (shm): the gradient its reduction
        # reads, and the parameters every member updates a shard of (max-norm rescales
        # whole rows on every member: not with parameters shared)
        alone = self._uses_overlap or self.net.syncs_per_step
        self._gradient_in(None if alone else group.gradient_buffer(P + 1))
        self._params_in(None if alone or self.cfg.max_norm is not None
                        else group.parameter_buffer(P))
        # overlapped, every replica has the whole reduced gradient: it updates everything
        lo, hi = self.shard = (0, P) if self._uses_overlap else group.shard(P)
        # per-step constants: this replica's views, penalty and reduced ranges
        self._mine = self.net.params[lo:hi], self.net.grads[lo:hi]
        self._penalty = self.penalty if (lo, hi) == (0, P) else self.penalty.shard(lo, hi)
        self._parts = [(lo, hi), (P, P + 1)]
        self._shard_optimizer_state()

    def _gradient_in(self, buf: np.ndarray | None) -> None:
        """Backprop writes the gradient (and the cost after it) into ``buf``: the group's
        own memory where it offers it (shm: the reduction then copies nothing in; the
        step makes no other collective through it), else this process's buffer."""
        buf = self._own_buf if buf is None else buf
        if buf is not self.buf:
            self.buf = buf
            self.net.rebind_grads(buf)

    def _params_in(self, buf: np.ndarray | None) -> None:
        """The parameters, holding their values, in ``buf`` (memory the replicas of a
        node share, each updating its shard there), or None: this process's own."""
        buf = self._own_params if buf is None else buf
        if buf is not self.net.params:
            self.net.rebind_params(buf)

    def _overlap_with(self, group) -> None:
        """All-reduce the gradient in buckets while backprop runs (``train.overlap``)
        where the group crosses links, --bucket-mb asks for it and there is more than
        one bucket of weights."""
        from .overlap import Overlap
        want = group.overlaps and self.cfg.bucket_mb > 0 and not self.net.syncs_per_step \
            and len(self.net.weight_layers) > 1
        if want and self.overlap is None:
            self.overlap = Overlap(self.net, self._own_buf, self.cfg.bucket_mb * 2 ** 20)
        if self.overlap is not None and (not want or self.overlap.n_buckets <= 2):
            self.overlap.close()     # (two buckets: the weights at once, then the rest)
            self.overlap = None
        self._uses_overlap = want and self.overlap is not None

    def _allreduce(self, a: np.ndarray) -> None:
        c0 = time.perf_counter()
        self.group.allreduce_(self._key, a)
        self._key += 1
        self.clock.sync += time.perf_counter() - c0

    def _shard_optimizer_state(self) -> None:
        """Keep the optimizer's state for this replica's shard only: a sharded update
        splits the state across the workers (1/N each, on any number of nodes)."""
        lo, hi = self.shard
        for name, held in self.optimizer.state.items():
            if held.shape == (self.net.params.size,):
                self.optimizer.state[name] = held[lo:hi].copy()

    # -- state ---------------------------------------------------------------------------
    def get_state(self) -> ReplicaState:
        """A copy of everything needed to resume from here, the optimizer's slots of
        this replica's ``shard`` (``ReplicaState.merge`` of every replica's makes the
        whole)."""
        plugins = self.group.plugin_states() if self.group is not None else {}
        if self.local is not None:
            plugins["outer"] = self.local.plugin_state()
        return ReplicaState.capture(self.net, self.optimizer, self.schedule, plugins,
                                    self.shard, self.local and self.local.inner)

    def set_state(self, state: ReplicaState) -> None:
        state.put(self.net, self.optimizer, self.schedule)
        self._shard_optimizer_state()
        if self.group is not None:
            self.group.load_plugin_states(state, self.rank)
        if self.local is not None:
            self.local.load(state)

    # -- one step ------------------------------------------------------------------------
    def apply_update(self) -> None:
        """Add the L1/L2 gradient (once, to the reduced gradient) and step the optimizer
        on this replica's shard ``params[lo:hi]``."""
        params, grads = self._mine
        self.update.apply(params, grads, self._penalty, self.n_train, self._scratch)

    def finish_step(self) -> None:
        """Max-norm on the whole network (every shard is in place), then the parameter
        average (``--ema``) of this replica's shard."""
        if self.cfg.max_norm is not None:
            regularizers.apply_max_norm([m for _, m in self.net.matrices()],
                                        self.cfg.max_norm)
        self.optimizer.update_average(self._mine[0])

    def step(self, x, y, idx, b: int, epoch: int, key: int) -> float:
        """One step on this replica's slice (x, y) — examples ``idx``, None when it has
        none — of a global batch of ``b`` examples, its collectives numbered from
        ``key`` (consecutive, increasing over the whole run); returns the batch's summed
        cost over every replica (not finite: nothing was updated)."""
        calls, net, buf, group, clock = self.calls_per_step, self.net, self.buf, self.group, \
            self.clock
        self._key = key
        t0 = time.perf_counter()
        if self._uses_overlap:
            busy = self.overlap.busy
            self._overlapped(x, y, idx, b, epoch, key)
            t1 = t0 + self._backprop_seconds
            # what the thread's reductions took beyond the wait after backprop: hidden
            clock.overlapped += max(0.0, self.overlap.busy - busy - (time.perf_counter() - t1))
        else:
            if x is not None:
                buf[-1] = net.loss_and_grad_sum_(x, y, epoch=epoch, indices=idx,
                                                 scale=self.update.backward_scale(b))
            else:
                buf[:] = 0.0
                if calls > 2:
                    net.sync_idle()
            self._key = key + calls - 2
            t1 = time.perf_counter()
            group.reduce_parts_(self._key, buf, self._parts, self.update.reduce_scale())
        t2 = time.perf_counter()
        clock.compute += t1 - t0
        clock.comm += t2 - t1
        loss = float(buf[-1])
        if math.isfinite(loss):
            self.apply_update()
            t3 = time.perf_counter()
            if not self._uses_overlap:     # (overlapped: nothing to gather)
                group.all_gather_(self._key + 1, net.params, *self.shard)
            t4 = time.perf_counter()
            self.finish_step()
            clock.update += (t3 - t2) + (time.perf_counter() - t4)
            clock.comm += t4 - t3
        return loss

    def _overlapped(self, x, y, idx, b: int, epoch: int, key: int) -> None:
        """Forward and backward with the gradient's buckets reduced as backprop
        finishes them; returns once the whole reduction is done (what ``reduce_parts_``
        would have made, bit for bit).  ``_backprop_seconds``: the compute part."""
        ov, t0 = self.overlap, time.perf_counter()
        self._key = key + self.calls_per_step - 2
        ov.start(self.group, self._key, self.cfg.comm_timeout)
        if x is not None:
            self.buf[-1] = self.net.loss_and_grad_sum_(x, y, epoch=epoch, indices=idx,
                                                       scale=self.update.backward_scale(b),
                                                       after=ov.layer_done)
            self._backprop_seconds = time.perf_counter() - t0
            ov.finish()
        else:
            self.buf[:] = 0.0
            self._backprop_seconds = time.perf_counter() - t0
            ov.all_at_once()

    # -- one epoch -----------------------------------------------------------------------
    def _slices(self, order: np.ndarray):
        """(global batch size, this replica's examples of it) for each batch."""
        B, r, w, data = self.cfg.batch_size, self.rank, self.world, self.train
        for s in range(0, len(order), B):
            g = order[s:s + B]
            yield len(g), data.owned(g, r, w, s)

    def run_epoch(self, epoch: int, schedule_state: dict, progress=None) -> dict:
        """Train one epoch; return the summed cost of its batches (all replicas), the
        timings, the learning rate and the parameter digests, or where it diverged.
        ``progress(done, total)`` is called a few hundred times at most."""
        if self.local is not None:
            return self.local.run_epoch(epoch, schedule_state, progress)
        sched, opt, cfg = self.schedule, self.optimizer, self.cfg
        sched.load_state_dict(schedule_state)
        n = self.n_train
        steps = steps_per_epoch(n, cfg.batch_size)
        every = max(1, steps // 200)
        warm = sched.warmup > 0 and epoch < sched.warmup
        opt.lr = sched(epoch)
        calls = self.calls_per_step
        loss_total, digests = 0.0, []
        self.group.set_timeout(self.step_deadline())
        self.clock = clock = Clock(self.group)
        t0 = time.perf_counter()
        batches = prefetch(self.train, self._slices(self.train.order(cfg.seed, epoch)), epoch,
                           threaded=self.background)
        for k, ((b, idx), x, y) in enumerate(clock.timed(batches)):
            if warm:
                opt.lr = sched.during(epoch, (k + 1) / steps)
            loss = self.step(x, y, idx, b, epoch, (epoch * steps + k) * calls)
            if not math.isfinite(loss):
                return {"diverged": True, "step": k, "lr": opt.lr, "loss": loss,
                        "rank": self.rank}
            loss_total += loss
            if cfg.check_replicas and k % cfg.check_replicas == 0:
                digests.append((k, digest(self.net.params)))
            if progress is not None and (k % every == 0 or k == steps - 1):
                progress(min(n, (k + 1) * cfg.batch_size), n)
        seconds = time.perf_counter() - t0
        self.step_seconds = seconds / max(steps, 1)
        times = clock.record(self.rank, steps, seconds)
        return {"diverged": False, "loss_sum": loss_total, "seconds": seconds,
                "comm_seconds": times["comm_seconds"], "times": times, "lr": opt.lr,
                "digests": digests, "final_digest": digest(self.net.params),
                "rank": self.rank}

    def step_deadline(self) -> float:
        """How long a collective waits for the other workers: --comm-timeout until a
        step time is known, then 20 steps' worth (at least 5 s), so that a worker that
        stops is noticed in seconds, not minutes."""
        if self.step_seconds is None:
            return self.cfg.comm_timeout
        return min(self.cfg.comm_timeout, max(5.0, 20 * self.step_seconds))

    # -- evaluation ----------------------------------------------------------------------
    @contextmanager
    def holding(self, params: np.ndarray | None):
        """Within the block the network holds ``params`` (the parameter average the
        driver evaluates with ``--ema``; None: its own), then its own again."""
        if params is None:
            yield
            return
        # (rebound, not overwritten: the parameters may be memory other replicas share)
        own = self.net.params
        self.net.rebind_params(np.array(params, own.dtype, copy=True), copy=False)
        try:
            yield
        finally:
            self.net.rebind_params(own, copy=False)

    def evaluate(self, which: str, params: np.ndarray | None = None) -> tuple[float, int, int]:
        """(summed cost, correct, count) on this replica's part of the "train", "valid"
        or "test" split (test: a dataset read a shard per worker), in eval mode,
        unaugmented, with ``params`` if given (the parameter average)."""
        data = {"train": self.train, "valid": self.valid, "test": self.test}[which]
        with self.holding(params):
            return measure(self.net, data, *data.part(self.rank, self.world))
