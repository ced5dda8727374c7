"""Helpers shared by the benchmark scripts (timing, markdown, BENCHMARKS.md sections)."""
from __future__ import annotations

import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path


def pin_threads(n: int = 1) -> None:
    """Limit BLAS/OpenMP threads; must run before numpy is imported."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


def best_of(fn, repeats: int) -> float:
    return max(fn() for _ in range(repeats))


def median(xs):
    return statistics.median(xs)


def machine() -> str:
    import numpy as np
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from distnn.core import blas
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"NumPy {np.__version__}, {blas.kernels() or 'an unknown BLAS'} kernels")


def table(header, rows) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def write_section(path: str, name: str, body: str) -> None:
    """Replace (or append) the section between <!-- NAME --> and <!-- /NAME -->."""
    p = Path(path)
    text = p.read_text() if p.exists() else "# Benchmarks\n"
    block = f"<!-- {name} -->\n{body.rstrip()}\n<!-- /{name} -->"
    pat = re.compile(rf"<!-- {re.escape(name)} -->.*?<!-- /{re.escape(name)} -->", re.S)
    text = pat.sub(lambda m: block, text) if pat.search(text) else text.rstrip() + "\n\n" + block + "\n"
    p.write_text(text)


def command_line() -> str:
    """The command as typed, quoted where a shell needs it (copy-paste runnable)."""
    import shlex
    return "python " + shlex.join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])


def now() -> str:
    return time.strftime("%Y-%m-%d")


def report(section: str, title: str, setup: str, lines: list[str], write: str | None) -> str:
    """Print a BENCHMARKS.md section (title, the command and machine, ``lines``) and,
    with ``write``, replace that section of the file."""
    body = "\n".join([f"### {title} ({now()})", "",
                      f"`{command_line()}` on {machine()}; {setup}", "", *lines])
    print(body)
    if write:
        write_section(write, section, body)
    return body


def breakdown(path) -> dict:
    """Milliseconds per step of each part, the mean over ranks of the median over epochs,
    and the bytes a rank sent per step (``comm_seconds``: exposed communication;
    ``overlapped_seconds``: the communication hidden behind backprop)."""
    h = json.loads(Path(path).read_text())["history"][1:]
    keys = ("compute_seconds", "compress_seconds", "comm_seconds", "overlapped_seconds",
            "wait_seconds", "update_seconds", "data_seconds")
    out = {}
    for k in keys:
        per_rank = [statistics.median(e["ranks"][r].get(k, 0.0) / e["ranks"][r]["steps"]
                                      for e in h)
                    for r in range(len(h[0]["ranks"]))]
        out[k] = 1e3 * statistics.mean(per_rank)
    out["bytes"] = statistics.median(e["bytes_per_step"] for e in h)
    return out


def one_worker(cfg, split):
    """The training loop (``distnn.train.Engine``) on ``split`` in this process, in a
    group of one — what a one-worker run does — with the data normalised to [0, 1]."""
    import numpy as np
    from distnn.data.augment import Augmenter
    from distnn.data.splits import Normalizer
    from distnn.parallel.comm import Group
    from distnn.train import Batches, Engine
    batches = Batches(split, Normalizer(), Augmenter(cfg.augment, seed=cfg.seed),
                      np.dtype(cfg.dtype))
    engine = Engine(cfg, batches, None, background=True)
    engine.join(Group())
    return engine


def epoch(engine, k: int) -> dict:
    """Train epoch ``k``; its result (``seconds``, ``loss_sum``, ...)."""
    return engine.run_epoch(k, engine.schedule.state_dict())


class Peer:
    """A bare member of an all-reduce group, wired the way the driver wires workers."""

    def __init__(self, rank, world):
        self.rank, self.world, self.group, self._handle = rank, world, None, None

    def node(self):
        import ray
        return ray.get_runtime_context().get_node_id()

    def listen(self, backend, spec):
        import ray
        from distnn.parallel.comm import BACKENDS
        self._handle, address = BACKENDS[backend].listen(self.rank, spec,
                                                         ray.util.get_node_ip_address())
        return address

    def join(self, backend, spec, peers, addresses):
        from distnn.parallel.comm import BACKENDS
        self.group = BACKENDS[backend].join(self.rank, spec, peers=peers,
                                            addresses=addresses, handle=self._handle)

    def deliver(self, key, data):
        self.group.deliver(tuple(key), data)

    def run(self, n, reps, sharded=False):
        """Per-step seconds of ``reps`` steps (after 2 warm-up steps): the sharded
        update's reduce-scatter + all-gather, or a plain all-reduce."""
        import numpy as np
        buf = np.ones(n + 1, np.float32)
        vec = np.ones(n, np.float32)
        lo, hi = self.group.shard(n)
        times = []
        for k in range(reps + 2):
            t0 = time.perf_counter()
            if sharded:
                self.group.reduce_parts_(2 * k, buf, [(lo, hi), (n, n + 1)])
                self.group.all_gather_(2 * k + 1, vec, lo, hi)
            else:
                self.group.allreduce_(2 * k, buf)
            times.append(time.perf_counter() - t0)
        return times[2:]

    def close(self):
        self.group.close()


def peers(backend: str, world: int, size: int):
    """``world`` Peer actors joined in a group of ``backend`` over ``size`` numbers,
    wired the way the driver wires workers; returns (actors, their node plan)."""
    import numpy as np
    import ray
    from distnn.parallel import comm
    actor = ray.remote(num_cpus=1, max_concurrency=4)(Peer)
    ps = [actor.remote(r, world) for r in range(world)]
    nodes = comm.plan(ray.get([p.node.remote() for p in ps]))
    spec = comm.BACKENDS[backend](world, size, np.float32, nodes,
                                  {"ports": None, "timeout": 120.0}).spec()
    addresses = ray.get([p.listen.remote(backend, spec) for p in ps])
    ray.get([p.join.remote(backend, spec, ps if backend == "ring" else None, addresses)
             for p in ps])
    return ps, nodes


def close_peers(ps) -> None:
    import ray
    ray.get([p.close.remote() for p in ps])
    for p in ps:
        ray.kill(p)
