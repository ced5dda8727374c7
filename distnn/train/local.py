"""Training with local steps and logical replicas: ``--local-steps H``, ``--outer``,
``--replicas K`` (local SGD; DiLoCo, Douillard et al. 2023).

K logical replicas are fixed for the run; the workers host them, each a contiguous
range (rank r of W hosts replicas [r K / W, (r + 1) K / W)), one after another.  From the
global parameters θ, replica k takes the k-th of K contiguous slices of every global
batch, as a worker of a synchronous run does, and applies the run's optimizer (its
*inner* optimizer, whose state is the replica's own) to its own copy of the parameters
for H steps; then the replicas synchronise: the averaged change ``delta = θ − mean_k θ_k``
(the outer gradient) moves θ through the outer optimizer (``core.optim.Outer``: average,
or DiLoCo's Nesterov), and every replica starts again from the new θ.  Batch-norm
running statistics are averaged at each synchronisation.  Every epoch ends with one, so
evaluation, checkpoints and the best epoch are of the one global network.

**The result depends on K, never on the machines.**  Nothing a replica computes depends
on where it runs: its slices are fixed by (seed, epoch, K, k), its dropout masks and
augmentation by the examples' indices, its products run on one BLAS thread.  The sum at a
synchronisation is exact, so it does not depend on how replicas map onto workers or on
the order a backend adds in: each replica's change (computed exactly, in float64) is
rounded onto a grid shared by all, per tensor a power of two fixed by the largest
magnitude any replica's change holds (exchanged first), coarse enough that the network's
dtype adds K values on it without rounding: the largest changes keep 24 - log2(K)
significant bits in float32 (53 - log2(K) in float64), smaller ones the same absolute
precision.  So K replicas on 1, 2 or K workers, a worker lost and its replicas moved to
the others (the epoch replayed), or a resume, give the same bits.

The synchronisation sends the change in the network's dtype, every H steps: what a
synchronous run sends every step.  With ``--compress bf16`` (float32 networks) it sends
half of that: the grid is made coarse enough that bfloat16 carries every partial sum
exactly (the largest changes keep 8 - log2(K) significant bits, OpenDiLoCo's precision
for the outer gradient; the replicas' costs travel as they are), so the sum is still
exact and the result still that of K replicas on any machines.
"""
from __future__ import annotations

import math
import threading
import time

import numpy as np

from ..core import blas, optim, regularizers
from .batches import owned_range, prefetch, steps_per_epoch
from .clock import Clock, digest
from .state import PluginState
from .update import Update

#: the dtype each replica's change is computed in before it is rounded onto the grid
WORK_DTYPE = np.dtype(np.float64)


def reduce_buffer(cfg) -> tuple[int, str]:
    """(numbers, dtype) of the largest buffer a run's workers reduce: the gradient and
    the batch's cost; with local steps, the replicas' changes, batch-norm statistics and
    each replica's cost, exactly (and the exchange of magnitudes before)."""
    spec = cfg.network_spec()
    if not cfg.local:
        return spec.n_params + 1, spec.dtype
    from ..core.network import Network
    net = Network.from_spec(spec)
    n_buf = sum(v.size for v in net.named_buffers().values())
    tensors = len(net.slices) + len(net.named_buffers())
    return max(spec.n_params + n_buf + cfg.replica_count, cfg.workers * tensors), spec.dtype


def hosted(rank: int, world: int, k: int) -> range:
    """The logical replicas worker ``rank`` of ``world`` hosts."""
    return range(rank * k // world, (rank + 1) * k // world)


def replica_rows(n: int, shards: int, rank: int, world: int, k: int) -> tuple[int, int]:
    """The training examples (lo, hi) worker ``rank`` of ``world`` reads of a dataset
    read on demand in ``shards`` shards (>= K): those of the replicas it hosts, replica
    j owning shards j S / K .. (j + 1) S / K - 1 (``owned_range`` of K)."""
    mine = hosted(rank, world, k)
    return owned_range(n, shards, mine.start, k)[0], owned_range(n, shards, mine.stop - 1, k)[1]


class LocalSteps:
    """The local-steps epoch of one worker's ``Engine`` (see the module's docstring)."""

    def __init__(self, engine):
        self.engine = e = engine
        cfg, net = e.cfg, e.net
        self.K, self.H = cfg.replica_count, cfg.local_steps
        self.outer = optim.Outer(cfg.outer)
        self.P = P = net.params.size
        # the state as one vector: the parameters, then each buffer (batch-norm
        # statistics) at its (offset, end); every tensor gets a grid of its own
        self.buffers, off = [], P
        for v in net.named_buffers().values():
            self.buffers.append((v, off, off + v.size))
            off += v.size
        self.n_buf = off - P
        self.spans = [(sl.start, sl.stop) for sl in net.slices.values()] + \
            [(lo, hi) for _, lo, hi in self.buffers]
        self.sum = np.zeros(P + self.n_buf + self.K, net.dtype)
        # significant bits of what carries the sum: the dtype, or bfloat16 (8)
        self.wire = "bf16" if cfg.compress == "bf16" else "raw"
        self.bits = 8 if self.wire == "bf16" else np.finfo(net.dtype).nmant + 1
        # the finest grid: 2**q times an integer of up to `bits` bits stays a normal
        # number of the dtype (bfloat16 has no finer subnormals than float32 reaches)
        self.q_min = np.finfo(net.dtype).minexp
        self.inner: dict[int, optim.Optimizer] = {}
        self.place()

    # -- which replicas, and their state ------------------------------------------------
    def place(self) -> None:
        """Host the replicas of the engine's (rank, world), each with an inner optimizer
        of its own (fresh; a state handed out next fills it)."""
        e = self.engine
        mine = hosted(e.rank, e.world, self.K)
        self.inner = {k: self.inner.get(k) or optim.build(e.cfg.replace(ema=0.0))
                      for k in mine}

    def plugin_state(self) -> PluginState:
        """The outer optimizer's state (the same on every worker)."""
        arrays = {"momentum": {"params": m.copy()}} if (m := self.outer.state.get(
            "momentum")) is not None else {}
        return PluginState({"spec": self.outer.spec}, arrays)

    def load(self, state) -> None:
        """Take the outer optimizer's and the hosted replicas' inner states from a whole
        ``ReplicaState`` (each replica afresh where it holds none: a new run)."""
        self.place()
        p = state.plugins.get("outer")
        self.outer.state = {} if p is None or "momentum" not in p.arrays else \
            {"momentum": np.array(p.arrays["momentum"]["params"], self.engine.net.dtype)}
        hyper = {h: state.optimizer[h] for h in self.engine.optimizer.hyper
                 if h in state.optimizer}
        for k, opt in self.inner.items():
            d = state.replicas.get(k)
            if d is None:
                self.inner[k] = optim.build(self.engine.cfg.replace(ema=0.0))
            else:
                opt.load_state_dict({**d, **hyper})

    # -- one epoch --------------------------------------------------------------------
    def _items(self, order: np.ndarray, steps: int):
        """(global batch size, the replica's examples) in the order this worker trains
        them: each period of H steps, each hosted replica, each step."""
        B, data = self.engine.cfg.batch_size, self.engine.train
        rows = {r: owned_range(data.total, data.shards, r, self.K) for r in self.inner}
        for k0 in range(0, steps, self.H):
            for r in self.inner:
                lo, hi = rows[r]
                for k in range(k0, min(k0 + self.H, steps)):
                    g = order[k * B:(k + 1) * B]
                    # a split held whole: the r-th of K slices of the batch; one read
                    # on demand in shards (however many of them this worker holds):
                    # the batch's examples in replica r's shards
                    yield len(g), (g[(g >= lo) & (g < hi)] if data.shards > 1
                                   else data.owned(g, r, self.K))

    def run_epoch(self, epoch: int, schedule_state: dict, progress=None) -> dict:
        """The epoch, a replica's products on one BLAS thread (the same wherever it
        runs), the process's threads back afterwards (evaluation)."""
        threads = blas.threads()
        if threads is not None:
            blas.set_threads(1)
        try:
            return self._epoch(epoch, schedule_state, progress)
        finally:
            if threads is not None:
                blas.set_threads(threads)

    def _epoch(self, epoch: int, schedule_state: dict, progress=None) -> dict:
        e = self.engine
        cfg, net, sched, main = e.cfg, e.net, e.schedule, e.optimizer
        sched.load_state_dict(schedule_state)
        n, B = e.n_train, cfg.batch_size
        steps = steps_per_epoch(n, B)
        periods = -(-steps // self.H)
        warm = sched.warmup > 0 and epoch < sched.warmup
        lr = main.lr = sched(epoch)
        e.group.set_timeout(e.step_deadline())
        e.clock = clock = Clock(e.group)
        t0 = time.perf_counter()
        # the global state: parameters (theta, moved by the outer optimizer), then the
        # buffers (batch-norm statistics, moved by the replicas' mean change)
        g = self._state()
        overlap = cfg.overlap_sync
        # overlapped: each replica's own state, carried across synchronisations, and
        # where its current period started; else every period starts from g
        live = {r: g.copy() for r in self.inner} if overlap else {}
        start = {r: g.copy() for r in self.inner} if overlap else {}
        cur = None if overlap else np.empty_like(g)
        work = {r: np.empty(g.size, WORK_DTYPE) for r in self.inner}
        items = clock.timed(prefetch(e.train, self._items(e.train.order(cfg.seed, epoch),
                                                          steps), epoch,
                                     threaded=e.background))
        loss_total, pending = 0.0, None
        for p in range(periods):
            ks = range(p * self.H, min((p + 1) * self.H, steps))
            losses = {}
            for r, opt in self.inner.items():
                self._load(live[r] if overlap else g)
                losses[r] = self._train(opt, items, ks, steps, epoch, warm, lr, clock)
                c0 = time.perf_counter()
                if overlap:
                    self._save(live[r])
                else:
                    self._save(cur)
                    np.subtract(g, cur, out=work[r], dtype=WORK_DTYPE)
                clock.update += time.perf_counter() - c0
            if overlap:
                joined = pending is not None
                if joined:         # the last period's synchronisation, one period late
                    done = self._join(pending, g, main, clock)
                    if done is None:
                        return self._diverged(ks[-1])
                    loss_total += done
                c0 = time.perf_counter()
                for r in self.inner:
                    np.subtract(start[r], live[r], out=work[r], dtype=WORK_DTYPE)
                    if joined:     # this period's progress, moved onto the new g
                        live[r] += g
                        live[r] -= start[r]
                    np.copyto(start[r], live[r])
                clock.update += time.perf_counter() - c0
                pending = self._launch(epoch * periods + p, work, losses, background=True)
            else:
                done = self._join(self._launch(epoch * periods + p, work, losses), g, main,
                                  clock)
                if done is None:
                    return self._diverged(ks[-1])
                loss_total += done
            if progress is not None:
                progress(min(n, ks[-1] * B + B), n)
        if pending is not None:    # every epoch ends synchronised
            done = self._join(pending, g, main, clock)
            if done is None:
                return self._diverged(steps - 1)
            loss_total += done
        self._load(g)
        seconds = time.perf_counter() - t0
        e.step_seconds = seconds / periods     # a collective waits for one period
        times = clock.record(e.rank, steps, seconds)
        return {"diverged": False, "loss_sum": loss_total, "seconds": seconds,
                "comm_seconds": times["comm_seconds"], "times": times, "lr": main.lr,
                "digests": [], "final_digest": digest(net.params), "rank": e.rank}

    # -- the network's state as one vector: parameters, then buffers ---------------------
    def _state(self) -> np.ndarray:
        vec = np.empty(self.P + self.n_buf, self.engine.net.dtype)
        self._save(vec)
        return vec

    def _load(self, vec: np.ndarray) -> None:
        np.copyto(self.engine.net.params, vec[:self.P])
        for v, lo, hi in self.buffers:
            v[...] = vec[lo:hi].reshape(v.shape)

    def _save(self, vec: np.ndarray) -> None:
        np.copyto(vec[:self.P], self.engine.net.params)
        for v, lo, hi in self.buffers:
            vec[lo:hi] = v.reshape(-1)

    def _diverged(self, step: int) -> dict:
        e = self.engine
        return {"diverged": True, "step": step, "lr": e.optimizer.lr, "loss": float("nan"),
                "rank": e.rank}

    # -- synchronisations -----------------------------------------------------------------
    def _launch(self, sync: int, work: dict, losses: dict, background: bool = False):
        """Synchronisation ``sync`` of the changes ``work``: done now, or started in a
        thread (``_join`` waits for it); the handle ``_join`` takes."""
        if not background:
            return self._synchronise(sync, work, losses), None
        box: dict = {}

        def run():
            try:
                box["ok"] = self._synchronise(sync, work, losses)
            except BaseException as err:     # noqa: BLE001 - raised again in _join
                box["error"] = err
        t = threading.Thread(target=run, name="distnn-sync", daemon=True)
        t.start()
        return box, t

    def _join(self, handle, g: np.ndarray, main, clock) -> float | None:
        """Wait for a synchronisation and apply it to the global state ``g``: the outer
        step on the parameters, the mean change on the buffers, the parameter average;
        the replicas' summed cost, or None where one diverged."""
        c0 = time.perf_counter()
        ok, t = handle
        if t is not None:
            t.join()
            if "error" in ok:
                raise ok["error"]
            ok = ok["ok"]
        c1 = time.perf_counter()
        total = 0.0
        for v in self.sum[self.P + self.n_buf:]:   # in replica order, the same everywhere
            total += float(v)
        if not ok or not math.isfinite(total):
            return None
        mean = self.sum[:self.P + self.n_buf] / self.K
        theta = g[:self.P]
        self.outer.step(theta, mean[:self.P].astype(g.dtype))
        g[self.P:] -= mean[self.P:].astype(g.dtype)
        main.start_average(theta)
        main.t += 1                   # the parameter average: one update a sync
        main.update_average(theta)
        clock.comm += c1 - c0
        clock.update += time.perf_counter() - c1
        return total

    def _train(self, opt, items, ks, steps, epoch, warm, lr, clock) -> float:
        """Replica ``opt``'s steps ``ks`` (the net holds its parameters); its summed
        cost (NaN from the step it diverged at: it stops there)."""
        e = self.engine
        net, cfg = e.net, e.cfg
        update = Update(opt)
        loss = 0.0
        for k in ks:
            (_, idx), x, y = next(items)
            if not math.isfinite(loss):
                continue                  # (the batches still pass)
            opt.lr = e.schedule.during(epoch, (k + 1) / steps) if warm else lr
            t0 = time.perf_counter()
            if x is not None:
                cost = net.loss_and_grad_sum_(x, y, epoch=epoch, indices=idx,
                                              scale=update.backward_scale(len(idx)))
            else:
                cost = 0.0
                net.grads[:] = 0.0
            t1 = time.perf_counter()
            loss += cost
            if math.isfinite(cost):
                update.apply(net.params, net.grads, e.penalty, e.n_train, e._scratch)
                if cfg.max_norm is not None:
                    regularizers.apply_max_norm([m for _, m in net.matrices()], cfg.max_norm)
            clock.compute += t1 - t0
            clock.update += time.perf_counter() - t1
        return loss

    def _synchronise(self, sync: int, work: dict, losses: dict) -> bool:
        """``self.sum`` <- the exact sum over every replica of its change (and
        statistics), and each replica's cost at its place; False where a replica's
        numbers are not finite (it diverged)."""
        e, S = self.engine, self.sum
        group, T, key = e.group, len(self.spans), 2 * sync
        # the largest magnitude of each tensor, over every replica (a one-hot exchange:
        # adding zeros is exact)
        mags = np.zeros(e.world * T, S.dtype)
        mine = mags[e.rank * T:(e.rank + 1) * T]
        for w in work.values():
            for t, (lo, hi) in enumerate(self.spans):
                if hi > lo:
                    mine[t] = max(mine[t], float(np.max(np.abs(w[lo:hi]))))
        if not np.isfinite(mine).all():
            mine[:] = np.inf
        group.allreduce_(key, mags)
        top = mags.reshape(e.world, T).max(axis=0)
        S[:] = 0.0
        if not np.isfinite(top).all():
            S[self.P + self.n_buf:] = np.nan
            group.allreduce_(key + 1, S)
            return False
        spare = math.ceil(math.log2(self.K)) if self.K > 1 else 0
        for w in work.values():
            for t, (lo, hi) in enumerate(self.spans):
                if top[t] > 0:
                    # on the grid 2**q, |change| <= 2**(bits - spare): K add exactly
                    q = max(math.frexp(float(top[t]))[1] - self.bits + spare, self.q_min)
                    seg = w[lo:hi]          # (times a power of two: exact)
                    if -1000 < q < 1000:
                        seg *= math.ldexp(1.0, -q)
                        np.rint(seg, out=seg)
                        seg *= math.ldexp(1.0, q)
                    else:                    # (2**-q itself out of float64's range)
                        np.ldexp(np.rint(np.ldexp(seg, -q)), q, out=seg)
            S[:self.P + self.n_buf] += w          # (exact: on the grid, in range)
        for r, loss in losses.items():
            S[self.P + self.n_buf + r] = loss
        if self.wire == "raw":
            group.allreduce_(key + 1, S)
        else:                          # (the costs, at the tail, travel as they are)
            group.allreduce_(key + 1, S, group.wire(self.wire), tail=self.K)
        return True
