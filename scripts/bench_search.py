"""Wall time of the digits-grid search (64 trials) run in parallel on Ray Tune vs the
same trials one after another in this process.

    python scripts/bench_search.py [--epochs 60] [--write docs/BENCHMARKS.md]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402

_bench.pin_threads(1)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from distnn import recipes, tune  # noqa: E402
from distnn.config import from_mapping  # noqa: E402
from distnn.data import load  # noqa: E402
from distnn.train.run import train  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--write", metavar="BENCHMARKS.md")
    args = p.parse_args(argv)
    base = from_mapping(recipes.settings("digits-grid")).replace(epochs=args.epochs)
    trials = tune.expand_grid(tune.parse_grid(recipes.load("digits-grid")["search"]["grid"]))
    splits = load("digits")
    import ray
    from distnn.dist.driver import start_ray
    t0 = time.perf_counter()
    start_ray(None, 1)
    startup = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as out:
        res = tune.run_search(base, trials, out, splits=splits)
    parallel = time.perf_counter() - t0
    ray.shutdown()
    t0 = time.perf_counter()
    seq_best = 0.0
    for t in trials:
        m = train(tune.apply(base, t), splits, progress=False)
        seq_best = max(seq_best, m["history"][-1]["valid_accuracy"])
    sequential = time.perf_counter() - t0
    _bench.report("bench_search", "Hyperparameter search", "Ray Tune on all CPUs.", [
        _bench.table(["digits-grid, 64 trials x {} epochs".format(args.epochs), "wall time"], [
            ["Ray Tune, in parallel on all CPUs, including Ray start-up",
             f"{parallel:.1f} s (start-up {startup:.1f} s)"],
            ["the same trials one after another, in process", f"{sequential:.1f} s"],
            ["ratio, including start-up (target <= 0.6)", f"**{parallel / sequential:.2f}**"],
            ["ratio, excluding start-up", f"{(parallel - startup) / sequential:.2f}"]]), "",
        f"Best trial {res['best']}: validation accuracy {100 * res['best_valid']:.2f}%, "
        f"test accuracy (winner, evaluated once) {100 * res['test_accuracy']:.2f}%; the "
        f"sequential run's best validation accuracy {100 * seq_best:.2f}%.",
    ], args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
