"""The all-reduce overlapped with backprop (``--bucket-mb``) across simulated hosts, for
the deep network of issue 30, against the same run reduced at once and the compute-only
step, side by side.

    python scripts/bench_overlap.py [--rates 1gbit,10gbit] [--buckets 0,4,16]
                                    [--write docs/BENCHMARKS.md]

Two simulated hosts (``scripts/simcluster.py``: network namespaces, ``tc tbf`` at each
rate), one worker each, ``--allreduce tcp``; the network 784-2500-2000-1500-1000-500-10
(12.1M weights, a 48 MB gradient), ReLU, momentum, global batch 128, on MNIST's first
2,560 images, 3 epochs.  A step's time is the median over epochs 1.. of the epoch's
seconds per step; "compute" is the ranks' own forward+backward time per step, and
"compute-only" the step of two bare processes (no communication, batch 64 each) run at
once on these cores.  ``--buckets`` 0 is the reduction at once.  Needs root.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402
import bench_compress as bc  # noqa: E402
import simcluster  # noqa: E402

ROOT = bc.ROOT
DEEP = ["--dataset", "mnist", "--layers", "784,2500,2000,1500,1000,500,10", "--activation",
        "relu", "--init", "he", "--optimizer", "momentum", "--lr", "0.02"]


def _step_ms(path: Path, batch: int) -> float:
    return 1e3 * batch / bc._rate(path)


def _bare(hosts: int, args, tmp: Path) -> float:
    """ms per step of ``hosts`` bare processes at once, batch/hosts each."""
    procs, outs = [], []
    for i in range(hosts):
        out = tmp / f"bare{i}.json"
        argv = [*bc.TRAIN, *DEEP, *bc._common(args), "--batch-size",
                str(args.batch_size // hosts), "--metrics-out", str(out)]
        procs.append(subprocess.Popen(argv, cwd=ROOT, env={**bc.os.environ, **bc.ONE_THREAD},
                                      stdout=subprocess.DEVNULL))
        outs.append(out)
    for p in procs:
        if p.wait(timeout=3600):
            raise RuntimeError("a bare process failed")
    return max(_step_ms(o, args.batch_size // hosts) for o in outs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rates", default="1gbit,10gbit")
    p.add_argument("--buckets", default="0,4,16", help="--bucket-mb values (0: at once)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-size", type=int, default=2560)
    p.add_argument("--write", metavar="BENCHMARKS.md")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        bare = _bare(2, args, tmp)
        print("compute-only step", bare, flush=True)
        for rate in args.rates.split(","):
            with simcluster.SimCluster(2, 1, rate) as c:
                got = {b: [] for b in args.buckets.split(",")}
                parts = {}
                for _ in range(args.rounds):
                    for b in got:           # interleaved within a round
                        out = tmp / "run.json"
                        r = c.run(0, [*bc.TRAIN, *DEEP, *bc._common(args), "--workers", "2",
                                      "--address", c.address, "--allreduce", "tcp",
                                      "--bucket-mb", b, "--metrics-out", str(out)],
                                  cwd=ROOT, timeout=3600)
                        if r.returncode:
                            raise RuntimeError(f"--bucket-mb {b} at {rate} failed:\n"
                                               f"{r.stderr[-3000:]}")
                        got[b].append(_step_ms(out, args.batch_size))
                        parts[b] = _bench.breakdown(out)
                        print(rate, b, got[b][-1], parts[b], flush=True)
            at_once = statistics.median(got["0"]) if "0" in got else None
            for b, ms in got.items():
                step = statistics.median(ms)
                rows.append([rate, "at once" if b == "0" else f"{b} MB", f"{step:.0f}",
                             f"{parts[b]['compute_seconds']:.0f}",
                             f"{parts[b]['comm_seconds']:.0f}",
                             f"{parts[b]['update_seconds']:.0f}",
                             f"{at_once / step:.2f}x" if at_once else "",
                             f"{step / bare:.2f}x"])
    _bench.report(
        "bench_overlap", "All-reduce overlapped with backprop (deep network, 2 hosts)",
        f"2 simulated hosts x 1 worker, tcp, 784-2500-2000-1500-1000-500-10, batch "
        f"{args.batch_size}, {args.train_size} images, {args.epochs} epochs, {args.rounds} "
        "round(s); ms per step (median over epochs 1..); compute, exposed communication "
        "and update are the ranks' own figures per step.", [
            _bench.table(["link", "--bucket-mb", "step ms", "compute ms", "comm ms (exposed)",
                          "update ms", "vs at once", "vs compute-only"], rows), "",
            f"Compute-only step (two bare processes at batch {args.batch_size // 2}, at "
            f"once, no communication): {bare:.0f} ms."], args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
