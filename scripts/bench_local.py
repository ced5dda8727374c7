"""Local steps across simulated hosts: throughput, bytes and time to 98% against one
process and against the same hosts synchronising once an epoch (the ceiling).

    python scripts/bench_local.py [--hosts 2] [--rate 1gbit] [--steps 1,8,32,128]
        [--outer average,nesterov] [--epochs 6] [--write docs/BENCHMARKS.md]

The main job's network and batch ([784,800,10]@128, relu, He, momentum 0.05, MNIST).
Every run goes through ``distnn train --metrics-out``: one process (synchronous, this
machine's namespace), then on ``--hosts`` simulated hosts x 1 worker (scripts/
simcluster.py: network namespaces, tbf-shaped links, tcp all-reduce) the synchronous run
(H = 1, measured for two epochs: it is slow) and each H and outer optimizer with
``--replicas`` = hosts, and the ceiling: H = an epoch's steps (one synchronisation a
epoch).  Examples/s is the median over the epochs after the first; the time to 98% is
training seconds (evaluation excluded) until the validation accuracy first reaches
98%.  A run's result depends on K = --replicas alone, so the accuracy figures are those
of one process with the same K (tests/parallel/test_local_steps.py).  Needs root.
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
import simcluster  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["-m", "distnn", "-q", "train", "--dataset", "mnist", "--layers", "784,800,10",
         "--activation", "relu", "--init", "he", "--optimizer", "momentum", "--lr", "0.05",
         "--batch-size", "128", "--no-monitor-train"]
STEPS_PER_EPOCH = 50000 // 128 + 1


def summary(path: Path, epochs: int) -> dict:
    m = json.loads(path.read_text())
    h = m["history"]
    rates = [e["examples_per_second"] for e in h[1:]] or [h[0]["examples_per_second"]]
    t, to98 = 0.0, None
    for e in h:
        t += e["train_seconds"]
        if to98 is None and e.get("valid_accuracy", 0) >= 0.98:
            to98 = t
    return {"ex_s": statistics.median(rates), "to98": to98,
            "bytes_per_example": statistics.median(e.get("bytes_per_step", 0) for e in h) / 128,
            "valid": h[-1].get("valid_accuracy"), "test": m.get("test_accuracy"),
            "epochs": len(h)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hosts", type=int, default=2)
    p.add_argument("--rate", default="1gbit")
    p.add_argument("--steps", default="1,8,32,128", help="values of --local-steps H")
    p.add_argument("--outer", default="average,nesterov")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--write", metavar="BENCHMARKS.md")
    args = p.parse_args(argv)
    why = simcluster.available()
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    rows, M = [], args.hosts
    with tempfile.TemporaryDirectory() as tmp:
        def one(name, flags, epochs, cluster=None):
            out = Path(tmp) / f"{len(rows)}.json"
            cmd = [sys.executable, *TRAIN, "--epochs", str(epochs), *flags,
                   "--metrics-out", str(out)]
            if cluster is None:
                subprocess.run(cmd, cwd=ROOT, check=True, timeout=3600)
            else:
                r = cluster.run(0, [*cmd, "--workers", str(M), "--address", cluster.address,
                                    "--allreduce", "tcp"], cwd=ROOT, timeout=3600)
                if r.returncode:
                    raise RuntimeError(f"{name} failed:\n{r.stderr[-3000:]}")
            s = summary(out, epochs)
            s["name"] = name
            rows.append(s)
            print(json.dumps(s), flush=True)

        one("one process, synchronous", [], args.epochs)
        with simcluster.SimCluster(M, 1, args.rate) as c:
            one(f"{M} hosts, synchronous", [], 2, c)
            for outer in args.outer.split(","):
                for h in (int(x) for x in args.steps.split(",")):
                    if h == 1 and outer == "average":
                        continue      # (the synchronous run's updates, slower)
                    one(f"{M} hosts, H = {h}, {outer}", ["--local-steps", str(h), "--outer",
                                                          outer, "--replicas", str(M)],
                        args.epochs, c)
            one(f"{M} hosts, one sync an epoch (ceiling)",
                ["--local-steps", str(STEPS_PER_EPOCH), "--replicas", str(M)], 2, c)
    base = rows[0]["ex_s"]
    ceiling = rows[-1]["ex_s"]
    table = _bench.table(
        ["run", "examples/s", "x one process", "x ceiling", "bytes sent / example",
         "time to 98% valid (s)", f"valid / test accuracy after the run's epochs"],
        [[r["name"], f"{r['ex_s']:,.0f}", f"**{r['ex_s'] / base:.2f}x**",
          f"{r['ex_s'] / ceiling:.2f}", f"{r['bytes_per_example']:,.0f}",
          "-" if r["to98"] is None else f"{r['to98']:.0f}",
          f"{100 * r['valid']:.2f}% / {100 * (r['test'] or 0):.2f}% ({r['epochs']} ep.)"]
         for r in rows])
    _bench.report(f"bench_local_{M}_{args.rate}", f"Local steps across {M} simulated hosts",
                  f"the main job ([784,800,10]@128, momentum 0.05) on {M} simulated hosts x 1 "
                  f"worker, links {args.rate} (tbf), tcp; every simulated host shares this "
                  "machine's 2 cores", [table], args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
