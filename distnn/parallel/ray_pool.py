"""N workers as Ray actors: placing them, wiring their communication group, running
their epochs, and replacing or dropping them when they fail; what to do about a fault
is the policies' to decide (``policies``), this is how it is done.

Fault tolerance: the pool keeps the replicated state (parameters, batch-norm buffers,
optimizer and schedule state, a compressor's) as of the start of the current epoch.  If
a worker dies, the others are aborted, the dead one is replaced (or, without CPUs for
it, dropped), every worker is reset to that state, and the epoch is replayed.  Every
step depends only on (seed, epoch, state), so the replay computes exactly what the lost
attempt would have: a failure costs time, never a result.
"""
from __future__ import annotations

import logging
import time

from ..config import TrainConfig
from ..train.data import TrainingData
from ..train.local import reduce_buffer
from ..train.state import ReplicaState
from ..train.pool import WorkerFailure
from . import comm, policies
from .worker import GuardedWorker, Refused

log = logging.getLogger(__name__)

STALL_SECONDS = 1.5   # after an abort, how long the other workers get to return
FREED_SECONDS = 3.0   # how long the CPUs of killed workers get to show as free again
POLL_SECONDS = 0.5    # how often the driver asks for an epoch's progress
BLAS_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class Unplaced(WorkerFailure):
    """Workers (``ranks``) that could not be placed, or did not join, in time."""

    def __init__(self, msg: str, ranks: list[int]):
        super().__init__(msg)
        self.ranks = ranks


def answer(value, before_raising=None):
    """A worker's answer, or the user's mistake it refused with, raised here as the one
    line it would be in a single process (``before_raising``: release the others)."""
    if isinstance(value, Refused):
        if before_raising is not None:
            before_raising()
        raise value.error
    return value


class RayPool:
    """Up to ``cfg.workers`` Worker actors, ``world`` of them to begin with; ``size``:
    the length of the buffer they reduce (the gradient and the batch's cost)."""

    def __init__(self, cfg: TrainConfig, data: TrainingData, size: int, world: int,
                 failure: policies.FailurePolicy | None = None,
                 scaling: policies.ScalingPolicy | None = None):
        import ray
        self.ray, self.cfg, self.world = ray, cfg, world
        self.size = size
        defaults = policies.from_config(cfg)
        self.failure, self.scaling = failure or defaults[0], scaling or defaults[1]
        # whole splits go to the object store once (workers get zero-copy views); a
        # split read on demand travels as its small description
        self._refs = [ray.put(s) if s is not None and s.held_whole else s
                      for s in data.worker_splits()]
        self._args = (cfg, data.normalizer)
        # a worker takes one CPU per BLAS thread (--threads), and its BLAS no more
        self.threads = cfg.threads or 1
        self._actor = ray.remote(num_cpus=self.threads, max_concurrency=4, runtime_env={
            "env_vars": dict.fromkeys(BLAS_VARS, str(self.threads))})(GuardedWorker)
        self.workers = [self._spawn(r) for r in range(self.world)]
        self.group, self.faults = None, []   # faults: what died and what was done
        self._last_epoch = None              # seconds of the last epoch: its deadline
        self._where: list[str] = []          # each rank's node address, as last seen
        self._wire()
        self.state = self.get_state()

    def _spawn(self, rank):
        return self._actor.remote(rank, self.world, *self._args, *self._refs)

    def _wire(self):
        """(Re)create the communication group for where the workers are now (ranks
        grouped by node) and have every worker join it: listen, then connect."""
        if self.group is not None:
            self.group.close()
            self.group = None
        infos = self._get([w.info.remote() for w in self.workers], "report their nodes")
        self._where = [i["ip"] for i in infos]
        nodes = comm.plan([i["node"] for i in infos])
        backend = comm.choose(self.cfg.allreduce, self.world, nodes)
        comm.check_ports(backend, nodes, comm.options(self.cfg)["ports"])
        self.backend = backend.name
        self.group = backend(self.world, self.size, reduce_buffer(self.cfg)[1], nodes,
                             comm.options(self.cfg))
        spec = self.group.spec()
        addresses = self._get([w.listen.remote(self.backend, spec) for w in self.workers],
                              "open their connections")
        peers = self.workers if backend.needs_peers else None
        self._get([w.join.remote(self.backend, spec, peers, addresses)
                   for w in self.workers], "join the all-reduce group")

    def _get(self, refs, what: str):
        """Every worker's answer, within --replace-timeout: a worker that cannot be
        placed (a lost node, no spare CPUs) or reached is a clear stop, not a hang."""
        limit = self.cfg.replace_timeout
        done, _ = self.ray.wait(refs, num_returns=len(refs), timeout=limit)
        if len(done) < len(refs):
            missing = [r for r, ref in enumerate(refs) if ref not in done]
            cpus = self.ray.available_resources().get("CPU", 0)
            raise Unplaced(
                f"worker(s) {missing} did not {what} within --replace-timeout {limit:g} s "
                f"({cpus:g} CPUs free in the cluster: a lost node and no spare capacity, "
                "or nodes that cannot reach each other (firewalls: --comm-ports))",
                missing)
        return [answer(v) for v in self.ray.get(refs)]

    # -- state ------------------------------------------------------------------------
    def _collect(self, refs, limit: float) -> tuple[dict, list[int]]:
        """{rank: answer} of the workers that answered within ``limit`` seconds, and the
        ranks that died or did not answer."""
        done, _ = self.ray.wait(refs, num_returns=len(refs), timeout=limit)
        got, failed = {}, []
        for r, ref in enumerate(refs):
            try:
                if ref not in done:
                    raise TimeoutError
                got[r] = answer(self.ray.get(ref))
            except (self.ray.exceptions.RayActorError, TimeoutError):
                failed.append(r)
        return got, failed

    def _gather_states(self) -> tuple[list[dict], list[int]]:
        """Every worker's state (each holds its shard of the optimizer state), or the
        ranks that died or did not answer."""
        got, failed = self._collect([w.get_state.remote() for w in self.workers],
                                    self.cfg.comm_timeout)
        return [got[r] for r in sorted(got)], failed

    def get_state(self) -> ReplicaState:
        states, dead = self._gather_states()
        if dead:
            raise WorkerFailure(f"workers {dead} died before training started")
        return ReplicaState.merge(states)

    def set_state(self, state: ReplicaState) -> None:
        self.state = state
        ref = self.ray.put(state)
        self._get([w.set_state.remote(ref) for w in self.workers], "take the state")

    def epoch_state(self) -> ReplicaState:
        """The state at the end of the epoch just run, every worker holding it."""
        self.state = self._end_state
        if (self.state.buffers and not self.cfg.sync_batchnorm) or self.state.has_shares:
            # batch-norm running statistics are per worker; adopt one worker's everywhere
            # (parameters and optimizer state are already identical: digests checked);
            # a plug-in's shares (a compressor's errors) are merged as it declares and
            # handed out again, as a checkpoint holds them, so a resume continues exactly
            self.set_state(self.state)
        return self.state

    # -- one epoch, with recovery ----------------------------------------------------
    def run_epoch(self, epoch: int, schedule_state: dict, progress=None) -> list[dict]:
        """Every worker's result for the epoch, in rank order; ``progress(done, total)``
        is called about twice a second with the first worker's progress."""
        self._grow(epoch)
        failures = 0
        while True:
            results, dead = self._attempt(epoch, schedule_state, progress)
            if not dead and len(results) < self.world:
                # every worker alive, but some gave up waiting (a peer was unreachable
                # for a while): the same workers, a new group, the epoch again
                failures += 1
                self._recover([], epoch, failures)
                continue
            if not dead and not any(r["diverged"] for r in results.values()):
                # the optimizer state is split across the workers: an epoch is complete
                # only once every shard of it is back here
                states, dead = self._gather_states()
                if not dead:
                    self._end_state = ReplicaState.merge(states)
            if not dead:
                self._last_epoch = max(r.get("seconds", 0.0) for r in results.values())
                return [results[r] for r in range(self.world)]
            failures += 1
            self._recover(dead, epoch, failures)

    def _attempt(self, epoch, schedule_state, progress=None):
        """Run the epoch on every worker; returns (results, ranks that failed).  Once a
        worker has died or given up waiting in a collective, the others get
        ``STALL_SECONDS`` to return; one that does not is stalled (stopped, hung, cut
        off) and counts as failed.  When no worker has a peer left to notice (every one
        stopped, or a single one), the epoch itself has a deadline once an epoch's length
        is known: --comm-timeout plus ten times the last epoch.  No wait lasts for ever."""
        ray = self.ray
        refs = [w.run_epoch.remote(epoch, schedule_state) for w in self.workers]
        self._epoch_refs = refs          # read by ``close`` if the run stops under them
        results, failed, pending, deadline = {}, [], list(refs), None
        whole = None if self._last_epoch is None else \
            time.monotonic() + self.cfg.comm_timeout + 10 * self._last_epoch
        while pending:
            ends = [t for t in (deadline, whole) if t is not None]
            left = max(0.0, min(ends) - time.monotonic()) if ends else None
            poll = left if progress is None else min(POLL_SECONDS, left or POLL_SECONDS)
            done, pending = ray.wait(pending, num_returns=1, timeout=poll)
            if not done and (left is None or poll < left):     # not a deadline: report
                self._report(progress)
                continue
            if not done:
                stalled = [refs.index(r) for r in pending]
                log.warning("worker(s) %s did not answer in time in epoch %d (stopped or "
                            "cut off); replacing them", self._named(stalled), epoch)
                self._abort()
                return results, failed + stalled
            rank = refs.index(done[0])
            try:
                results[rank] = answer(ray.get(done[0]), self._abort)
                continue
            except ray.exceptions.RayActorError:
                failed.append(rank)
            except ray.exceptions.RayTaskError as e:
                if "CollectiveAborted" not in str(e):
                    self._abort()
                    raise
                log.warning("worker %s gave up in epoch %d: %s", self._named([rank]), epoch,
                            str(e).strip().splitlines()[-1][:200])
            self._abort()
            deadline = deadline or time.monotonic() + STALL_SECONDS
        return results, failed

    def _report(self, progress) -> None:
        """The first worker's progress, to ``progress``; a worker that does not answer
        at once is left to the deadlines above."""
        try:
            done, total = self.ray.get(self.workers[0].progress.remote(), timeout=POLL_SECONDS)
        except Exception:      # noqa: BLE001 - a progress report is never worth an error
            return
        if total:
            progress(done, total)

    def _abort(self):
        if self.group is not None:
            self.group.abort()
        for w in self.workers:
            w.abort.remote()  # backends without a driver side; harmless for the others

    def _recover(self, dead, epoch, failures):
        """Replace ``dead`` (none: every worker is alive but the group broke), reset
        every worker to the start of the epoch, and let it be replayed."""
        if self.failure.decide(epoch, failures) == policies.GIVE_UP:
            raise WorkerFailure(self.failure.why(epoch, failures, dead))
        if not dead:
            log.warning("the all-reduce of epoch %d was given up (a peer unreachable for "
                        "a while); rewiring and replaying the epoch (attempt %d)", epoch,
                        failures + 1)
            self._fault(epoch, [], "all-reduce broke, epoch replayed")
            self._wire()
            self.set_state(self.state)
            return
        log.warning("worker(s) %s failed during epoch %d; replacing them and replaying the "
                    "epoch from its start (attempt %d)", self._named(dead), epoch, failures + 1)
        self._fault(epoch, dead, "replaced, epoch replayed")
        self._replace(dead, epoch)

    def _fault(self, epoch, ranks, action: str) -> None:
        self.faults.append({"epoch": epoch, "workers": list(ranks), "action": action,
                            "nodes": [self._at(r) for r in ranks], "world": self.world,
                            "time": time.time()})

    def _at(self, rank: int) -> str:
        """The address of the node a worker was last seen on."""
        return self._where[rank] if rank < len(self._where) else "?"

    def _named(self, ranks) -> str:
        return ", ".join(f"{r} (node {self._at(r)})" for r in ranks)

    def _replace(self, dead, epoch=None):
        """New workers for ``dead``, when the cluster has CPUs for them now (or within
        --replace-wait); those that cannot be placed within --replace-timeout are
        dropped.  Without the CPUs (a lost node and no spare capacity) training goes on
        at once with the rest: the global batch stays the same, so the updates are
        those of the fixed-size run, and workers are added back at an epoch boundary
        when CPUs appear (``_grow``)."""
        for r in dead:
            self.ray.kill(self.workers[r], no_restart=True)
        if self._nodes_lost(dead) and not self._cpus_for(len(dead)):
            self._shrink(dead, epoch, f"no free CPU in the cluster for {len(dead)} "
                                      f"replacement worker(s) (a lost node and no spare "
                                      f"capacity; waited --replace-wait "
                                      f"{self.scaling.wait_for_cpus():g} s)", killed=True)
        else:
            for r in dead:
                self.workers[r] = self._spawn(r)
            try:
                self._wire()
            except Unplaced as e:
                self._shrink(e.ranks, epoch, str(e))
        self.set_state(self.state)

    def _nodes_lost(self, dead) -> bool:
        """Whether ``dead`` may have gone with their nodes: each was alone on a node
        that is not the driver's (a worker killed or stopped on a node that still runs
        others gets its CPU back: its replacement is waited for), and someone is left
        to go on with."""
        alive = {self._at(r) for r in range(self.world) if r not in dead}
        if not alive:
            return False
        here = self.ray.util.get_node_ip_address()
        return all(self._at(r) not in alive | {here} for r in dead)

    def _cpus_for(self, n: int) -> bool:
        """Whether the cluster shows free CPUs for ``n`` workers within FREED_SECONDS
        (killed workers' CPUs come back) plus --replace-wait (capacity that may come)."""
        deadline = time.monotonic() + FREED_SECONDS + self.scaling.wait_for_cpus()
        while True:
            if self.ray.available_resources().get("CPU", 0) >= n * self.threads:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)

    # -- elastic membership -------------------------------------------------------------
    def _renumber(self, workers) -> None:
        self.workers, self.world = workers, len(workers)
        self._get([w.set_place.remote(r, self.world) for r, w in enumerate(workers)],
                  "take their new ranks")

    def _shrink(self, lost, epoch, why: str, killed: bool = False) -> None:
        """Go on without ``lost`` (ranks), unless fewer than --min-workers would remain."""
        keep = [w for r, w in enumerate(self.workers) if r not in lost]
        for r in lost if not killed else ():
            self.ray.kill(self.workers[r], no_restart=True)
        if not self.scaling.may_go_on_with(len(keep)):
            raise WorkerFailure(f"{why}; {len(keep)} worker(s) left, fewer than --min-workers "
                                f"{self.scaling.min_workers}: stopping")
        log.warning("%s; continuing on %d worker(s) from the start of the epoch, with the "
                    "same global batch (more will join at an epoch boundary when CPUs "
                    "appear)", why, len(keep))
        self._renumber(keep)
        self._wire()
        self._fault(epoch, lost, f"could not be replaced; continuing on {self.world} workers")

    def _grow(self, epoch) -> None:
        """At an epoch boundary, add workers up to --workers where CPUs are free."""
        n = self.scaling.to_add(self.world, int(self.ray.available_resources().get(
            "CPU", 0)) // self.threads)
        if n <= 0:
            return
        old = self.world
        self.world += n
        new = [self._spawn(old + i) for i in range(n)]
        self._renumber(self.workers + new)
        try:
            self._wire()
        except Unplaced as e:   # the CPUs were not there after all: as we were
            self._shrink(e.ranks, epoch, str(e))
        self.set_state(self.state)
        if self.world > old:
            log.warning("grew to %d workers at the start of epoch %d", self.world, epoch)
            self._fault(epoch, list(range(old, self.world)), f"grew to {self.world} workers")

    def evaluate(self, which: str, params=None) -> list[tuple[float, int, int]]:
        """Every worker's (summed cost, correct, count) on its part of the split, with
        ``params`` if given (sent once through the object store)."""
        ref = self.ray.put(params) if params is not None else None
        for _ in range(2):   # a worker lost here is replaced, and asked again once
            got, failed = self._collect([w.evaluate.remote(which, ref) for w in self.workers],
                                        self.cfg.comm_timeout)
            if not failed:
                return [got[r] for r in range(self.world)]
            self._fault(None, failed, "replaced during evaluation")
            self._replace(failed)
        raise WorkerFailure(f"worker(s) {failed} failed twice while evaluating {which}")

    def _read_epoch(self) -> None:
        """The answers of an epoch the run stopped under (Ctrl-C), read and dropped: a
        worker whose collective was aborted by another's ``close`` before its own ends
        with an error, which Ray prints as an unhandled traceback if nobody reads it."""
        refs, self._epoch_refs = getattr(self, "_epoch_refs", []), []
        done, _ = self.ray.wait(refs, num_returns=len(refs), timeout=5) if refs else ([], [])
        for ref in done:
            try:
                self.ray.get(ref)
            except Exception:    # noqa: BLE001 - the epoch is abandoned; its error is not news
                pass

    def memory(self) -> list[dict]:
        """Each worker's resident memory: at its start, now, and at its peak (bytes), of
        the workers that answer within --comm-timeout."""
        got, _ = self._collect([w.memory.remote() for w in self.workers],
                               self.cfg.comm_timeout)
        return [got[r] for r in sorted(got)]

    def worker_pids(self) -> list[int]:
        return [i["pid"] for i in self._get([w.info.remote() for w in self.workers],
                                            "report their PIDs")]

    def close(self) -> None:
        """Let the workers leave their group (removing what they created), then stop
        them; a worker that does not answer within a few seconds is stopped anyway."""
        refs = [w.close.remote() for w in self.workers]
        self.ray.wait(refs, num_returns=len(refs), timeout=10)
        for w in self.workers:
            self.ray.kill(w, no_restart=True)
        self._read_epoch()
        if self.group is not None:
            self.group.close()
            self.group = None
        self._refs = []
