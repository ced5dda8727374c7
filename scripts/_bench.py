"""Helpers shared by the benchmark scripts (timing, markdown, BENCHMARKS.md sections)."""
from __future__ import annotations

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
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"NumPy {np.__version__}")


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
    return "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])


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
