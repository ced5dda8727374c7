"""A run submitted with Ray's Jobs API to a token-auth head against the same run on
distnn's own local Ray, interleaved: does a cluster user get the local speed?

    python scripts/bench_jobs.py [--rounds 3] [--write docs/BENCHMARKS.md]

The head is started here (``ray start --head`` on 127.0.0.1, token authentication, 2
CPUs, its own temp directory and ports) and stopped by PID at the end.  The run is the
README's main job on 25,600 MNIST images for 4 epochs, 2 workers; examples/s is the
median over epochs 1..  The workers' BLAS threads are read from the metrics.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--dataset", "mnist", "--layers", "784,800,10", "--activation", "relu",
         "--init", "he", "--optimizer", "momentum", "--lr", "0.05", "--batch-size", "128",
         "--epochs", "4", "--train-size", "25600", "--no-monitor-train", "--workers", "2"]


def _rate(path: Path) -> tuple[float, list]:
    m = json.loads(path.read_text())
    return (statistics.median(e["examples_per_second"] for e in m["history"][1:]),
            m.get("blas_threads"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--write", metavar="BENCHMARKS.md")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from tests.parallel.test_cluster import _kill_session, token_head
    bindir = Path(sys.executable).parent
    temp, env, gcs, dash, agents = token_head(bindir)
    rows = []
    try:
        subprocess.run([str(bindir / "ray"), "start", "--head", f"--port={gcs}",
                        "--num-cpus=2", f"--dashboard-port={dash}",
                        "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1",
                        f"--temp-dir={temp}", *agents], env=env, check=True,
                       capture_output=True, timeout=120)
        for k in range(args.rounds):
            job, local = Path(temp) / "job.json", Path(temp) / "local.json"
            for _ in range(20):   # the job agent can come up a little after `ray start`
                r = subprocess.run([str(bindir / "ray"), "job", "submit", "--address",
                                    f"http://127.0.0.1:{dash}", "--working-dir", str(ROOT),
                                    "--", "python", "-m", "distnn.cli", *TRAIN, "--address",
                                    "auto", "--metrics-out", str(job)], env=env,
                                   capture_output=True, text=True, timeout=1800)
                if "No available agent" not in r.stdout + r.stderr:
                    break
                time.sleep(3)
            if r.returncode:
                raise RuntimeError((r.stdout + r.stderr)[-3000:])
            subprocess.run([sys.executable, "-m", "distnn.cli", "-q", *TRAIN, "--metrics-out",
                            str(local)], cwd=ROOT, check=True, timeout=1800,
                           stdout=subprocess.DEVNULL)
            (j, jt), (lo, lt) = _rate(job), _rate(local)
            rows.append((j, lo, jt, lt))
            print(f"round {k + 1}: job {j:,.0f} ex/s, local {lo:,.0f} ex/s", flush=True)
    finally:
        _kill_session(temp)
    ratios = [j / lo for j, lo, _, _ in rows]
    table = _bench.table(
        ["Jobs API on a token-auth head ex/s", "distnn's local Ray ex/s", "job / local",
         "BLAS threads per worker (job, local)"],
        [[f"{statistics.median(r[0] for r in rows):,.0f}",
          f"{statistics.median(r[1] for r in rows):,.0f}",
          f"**{statistics.median(ratios):.2f}x** (" + ", ".join(f"{x:.2f}" for x in ratios)
          + ")", f"{rows[-1][2]}, {rows[-1][3]}"]])
    _bench.report("bench_jobs", "A job submitted to a cluster vs the local run",
                  "the main job on 25,600 MNIST images, 4 epochs, 2 workers, median "
                  f"examples/s over epochs 1..; {args.rounds} interleaved rounds",
                  [table], args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
