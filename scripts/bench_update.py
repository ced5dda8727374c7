"""One worker's per-step communication and update work on one node, by the number of
workers N: the full all-reduce then the whole update (every replica updates every
parameter) against the sharded update (reduce-scatter of its 1/N, update of that 1/N,
all-gather), both through distnn's ``shm`` collective.

    python scripts/bench_update.py [--workers 2,4,8,16] [--repeats 5] [--write docs/BENCHMARKS.md]

This machine has 2 cores, so N workers cannot run at once here; the script measures what
*one* worker does in a step, in one process, with the other N-1 workers' gradients
already in their shared slots and their step counters already published (no waiting).
That work is what grows with N on a bigger node: the full all-reduce reads N gradients
of P numbers per worker and step, the sharded one N slices of P/N.  Parameters of
[784,800,10] (P = 636,010 float32), momentum SGD, one BLAS thread.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402

_bench.pin_threads(1)

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from distnn.core.optim import Momentum  # noqa: E402
from distnn.parallel.comm import SharedMemoryCollective, SharedMemoryFile  # noqa: E402

P = 784 * 800 + 800 + 800 * 10 + 10


def per_step_ms(world: int, repeats: int, steps: int = 100) -> tuple[float, float]:
    group = SharedMemoryFile(world, P + 1, np.float32)
    coll = SharedMemoryCollective(0, group.path, world, P + 1, np.dtype(np.float32).str)
    try:
        coll.flags[1:world] = 2 ** 62        # the other workers: always already published
        rng = np.random.default_rng(0)
        coll.slots[:] = rng.standard_normal(coll.slots.shape).astype(np.float32) * 1e-3
        buf = rng.standard_normal(P + 1).astype(np.float32) * 1e-3
        params = np.zeros(P, np.float32)
        lo, hi = coll.shard(P)
        full_opt, shard_opt = Momentum(0.1, 0.9), Momentum(0.1, 0.9)
        shard_opt.state["velocity"] = np.zeros(hi - lo, np.float32)   # its shard only
        key = [0]

        def full():
            coll.allreduce_(key[0], buf)
            full_opt.step_prescaled(params, buf[:P])
            key[0] += 1

        def sharded():
            coll.reduce_parts_(key[0], buf, [(lo, hi), (P, P + 1)])
            shard_opt.step_prescaled(params[lo:hi], buf[lo:hi])
            coll.all_gather_(key[0] + 1, params, lo, hi)
            key[0] += 2

        times = {full: [], sharded: []}
        for _ in range(repeats):                 # interleaved
            for fn in times:
                fn()
                t0 = time.perf_counter()
                for _ in range(steps):
                    fn()
                times[fn].append((time.perf_counter() - t0) / steps * 1e3)
        return _bench.median(times[full]), _bench.median(times[sharded])
    finally:
        coll.close()
        group.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", default="2,4,8,16")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--write", metavar="BENCHMARKS.md")
    args = p.parse_args(argv)
    rows = []
    for n in (int(w) for w in args.workers.split(",")):
        full, sharded = per_step_ms(n, args.repeats)
        rows.append([n, f"{full:.2f} ms", f"{sharded:.2f} ms", f"**{sharded / full:.2f}**"])
        print(rows[-1], flush=True)
    _bench.report("bench_update", "Per-worker all-reduce and update work by workers per node",
                  f"one process standing for one worker, the other N-1 already published; "
                  f"medians of {args.repeats} interleaved runs of 100 steps.", [
        _bench.table(["workers N", "full all-reduce + whole update", "sharded: reduce-scatter "
                      "+ 1/N update + all-gather", "sharded / full"], rows), "",
        f"[784,800,10] parameters (P = {P:,} float32), momentum SGD. The full all-reduce "
        "reads N gradients of P numbers per worker and step, so a node's memory traffic "
        "grows as N^2 P; the sharded update reads N slices of P/N and copies P back.",
    ], args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
