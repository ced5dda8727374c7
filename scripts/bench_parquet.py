"""Epoch time and memory: MNIST from Parquet shards (each worker reading its own) and
from a Ray Dataset vs the object-store path (the driver loads the dataset and puts it in
Ray's object store).

    python scripts/bench_parquet.py [--epochs 8] [--rounds 3] [--write docs/BENCHMARKS.md]

MNIST is converted once (``distnn data convert mnist DIR``); each configuration then
runs ``distnn train --workers 2`` in a fresh process, the three data paths interleaved
``--rounds`` times: the built-in loader (object store), ``--dataset parquet:DIR`` (each
worker holds its shard), and ``--dataset parquet:DIR --shard-memory 8`` (each worker
holds at most 8 MB of examples, reading row groups as training visits them), and
``distnn.fit(datasets={"train": ray.data.read_parquet(DIR/train.parquet), ...})`` in
the process's own ``ray.init``
(each worker reads its shard's blocks from the object store).  Reported:
each run's median epoch time (train seconds, epoch 0 left out: it includes warm-up),
the best (lowest) of the rounds and their median, the ratio of the best to the
object-store path's best (the machine is shared: a run that meets another job's load is
slower as a whole, so the best of several is the comparable figure), and peak resident
memory of the driver and of the workers (MiB, above their start: ``distnn train``'s
metrics record them).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"784,30,10 batch 10": ["--layers", "784,30,10", "--batch-size", "10"],
          "the main job: 784,800,10 batch 128": [
              "--layers", "784,800,10", "--activation", "relu", "--init", "he",
              "--optimizer", "momentum", "--lr", "0.05", "--batch-size", "128"]}


#: the Ray Dataset path: distnn.fit from Python, the shape's flags read by the CLI's parser
RAY_DATASET = """
import sys, ray, distnn
from distnn.cli import build_parser
from distnn.cli.flags import config_from_args
ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
ray.data.DataContext.get_current().enable_progress_bars = False
ds = {s: ray.data.read_parquet(f"{sys.argv[1]}/{f}.parquet")       # the files' splits
      for s, f in (("train", "train"), ("valid", "validation"), ("test", "test"))}
distnn.fit(config_from_args(build_parser().parse_args(["train", *sys.argv[2:]])), datasets=ds)
"""


def run(dataset: list[str], shape: list[str], epochs: int, tmp: Path) -> dict:
    out = tmp / f"m{time.monotonic_ns()}.json"
    flags = [*shape, "--workers", "2", "--epochs", str(epochs), "--metrics-out", str(out)]
    cmd = [sys.executable, "-c", RAY_DATASET, dataset[1], *flags] if \
        dataset[0] == "ray-dataset" else \
        [sys.executable, "-m", "distnn.cli", "-q", "train", *dataset, *flags]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    m = json.loads(out.read_text())
    mem = m["memory"]
    return {"epoch": _bench.median([h["train_seconds"] for h in m["history"][1:]]),
            "driver": mem["driver_peak_mib"] - mem["driver_start_mib"],
            "workers": max(w["peak_mib"] - w["start_mib"] for w in mem["workers"]),
            "acc": m["test_accuracy"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--write", metavar="FILE")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-parquet-") as t:
        tmp = Path(t)
        subprocess.run([sys.executable, "-m", "distnn.cli", "data", "convert", "mnist",
                        str(tmp / "mnist")], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        paths = {"object store": ["--dataset", "mnist"],
                 "Parquet shards": ["--dataset", f"parquet:{tmp / 'mnist'}"],
                 "Parquet, --shard-memory 8": ["--dataset", f"parquet:{tmp / 'mnist'}",
                                               "--shard-memory", "8"],
                 "Ray Dataset (read_parquet)": ["ray-dataset", str(tmp / "mnist")]}
        rows = []
        for label, shape in SHAPES.items():
            got = {k: [] for k in paths}
            for r in range(args.rounds):
                for k, ds in paths.items():
                    got[k].append(run(ds, shape, args.epochs, tmp))
                    print(label, k, r, got[k][-1], flush=True)
            base = min(g["epoch"] for g in got["object store"])
            for k, gs in got.items():
                ep = min(g["epoch"] for g in gs)
                med = _bench.median([g["epoch"] for g in gs])
                rows.append([label, k, f"{ep:.3f}", f"{med:.3f}", f"{ep / base:.3f}",
                             f"{_bench.median([g['driver'] for g in gs]):.0f}",
                             f"{_bench.median([g['workers'] for g in gs]):.0f}",
                             f"{100 * gs[-1]['acc']:.2f}%"])
    table = _bench.table(["network", "data path", "epoch s (best)", "(median)",
                          "best vs object store",
                          "driver peak +MiB", "worker peak +MiB", "test acc"], rows)
    print(table)
    if args.write:
        body = (f"### Parquet shards vs the object store ({time.strftime('%Y-%m-%d')})\n\n"
                f"`python scripts/bench_parquet.py --epochs {args.epochs} --rounds "
                f"{args.rounds} --write docs/BENCHMARKS.md` on {_bench.machine()}: MNIST, "
                "2 workers, each configuration a fresh process (`distnn train`, or "
                "`distnn.fit(datasets={split: ray.data.read_parquet(file)})` in its own "
                "`ray.init`), "
                "the four interleaved. Epoch time: a run's median train seconds of epochs 1.., "
                "the best and the median of the rounds. Memory: peak resident above the process's start (the driver's "
                "once its modules are imported; a worker's when it starts hosting its "
                "worker).\n\n" + table + "\n")
        _bench.write_section(args.write, "bench_parquet", body)


if __name__ == "__main__":
    main()
