"""One node's cores as BLAS threads in one process or as workers: ``--workers 1
--threads K`` against ``--workers K`` (one BLAS thread each), side by side.

    python scripts/bench_threads.py [--rounds 2] [--threads 2] [--write docs/BENCHMARKS.md]

Each run is ``distnn train`` as a user types it, on 25,600 MNIST images for 4 epochs
(``--no-monitor-train``); examples/s is the median over epochs 1.. (the first warms up;
Ray's start is outside every epoch).  The configurations alternate within each round, so
a noisy machine shifts them alike; the table gives the median of the rounds.  The BLAS
threads each worker really ran with are read from the metrics (``blas_threads``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["train", "--dataset", "mnist", "--train-size", "25600", "--epochs", "4",
          "--no-monitor-train", "--activation", "relu", "--init", "he", "--optimizer",
          "momentum", "--lr", "0.05"]
#: (name, layers, global batch): the README's main job, a wide and a small network
SHAPES = [("main job", "784,800,10", 128), ("wide, big batch", "784,800,10", 512),
          ("small", "784,100,10", 10), ("small, big batch", "784,100,10", 128)]


def run(layers: str, batch: int, workers: int, threads: int, out: Path) -> tuple:
    cmd = [sys.executable, "-m", "distnn.cli", "-q", *COMMON, "--layers", layers,
           "--batch-size", str(batch), "--workers", str(workers), "--threads", str(threads),
           "--metrics-out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)}\n{r.stderr[-3000:]}")
    m = json.loads(out.read_text())
    return (statistics.median(e["examples_per_second"] for e in m["history"][1:]),
            m["blas_threads"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="K: the cores compared")
    p.add_argument("--write", metavar="BENCHMARKS.md")
    args = p.parse_args(argv)
    k = args.threads
    configs = [(1, 1), (1, k), (k, 1)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, layers, batch in SHAPES:
            rates = {c: [] for c in configs}
            seen = {}
            for _ in range(args.rounds):
                for c in configs:
                    rate, threads = run(layers, batch, *c, Path(tmp) / "m.json")
                    rates[c].append(rate)
                    seen[c] = threads
            med = {c: statistics.median(v) for c, v in rates.items()}
            best = max(configs[1:], key=med.get)
            rows.append([f"[{layers}]@{batch} ({name})", *(
                f"{med[c]:,.0f} ({'/'.join(map(str, seen[c]))})" for c in configs),
                f"{med[(1, k)] / med[(1, 1)]:.2f}x", f"{med[(k, 1)] / med[(1, 1)]:.2f}x",
                f"--workers {best[0]} --threads {best[1]}"])
            print(rows[-1], flush=True)
    _bench.report(
        "bench_threads", f"{k} cores: BLAS threads in one process or {k} workers",
        "the CLI as typed, 25,600 MNIST images, 4 epochs, median examples/s over epochs "
        f"1..; {args.rounds} interleaved rounds, medians; in brackets each worker's BLAS "
        "threads from the metrics.", [
            _bench.table(["network@global batch", "1 worker x 1 thread",
                          f"1 worker x {k} threads", f"{k} workers x 1 thread",
                          f"{k} threads vs 1", f"{k} workers vs 1", "faster"], rows)],
        args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
