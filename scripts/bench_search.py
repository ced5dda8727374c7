"""Wall time of the digits-grid search (64 trials) run in parallel on Ray Tune vs the
same trials one after another in this process.

    python scripts/bench_search.py [--epochs 60] [--rounds 3] [--write docs/BENCHMARKS.md]

The parallel side is everything ``distnn search`` does: start a local Ray, run the
trials on Tune (one lane per CPU, fed longest first from a shared queue), write the
results table and best.toml, evaluate the winner on the test split, shut Ray down.  The
sequential side trains the same trials in this process, one after another, and records
each the way the search does (curves and progress each epoch; final model, result.json,
TensorBoard hparams); its training, with that per-epoch recording, is reported too.  A third measurement gives the floor any parallel
search has on these cores: the trials split between two bare processes, no Ray, no
start-up.  The three run interleaved ``--rounds`` times
(this machine is shared and noisy) and the table gives each round and the medians.
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
from distnn import recipes  # noqa: E402
from distnn.search import results, space, tune  # noqa: E402
from distnn.config import from_mapping  # noqa: E402
from distnn.data import load  # noqa: E402


def parallel(base, trials, splits) -> dict:
    from distnn.parallel.session import start_ray, stop_ray
    t0 = time.perf_counter()
    start_ray(None, 1)
    startup = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as out:
        res = tune.run_search(base, trials, out, splits=splits)
    stop_ray()
    return {"wall": time.perf_counter() - t0, "startup": startup, "res": res}


def sequential(base, trials, splits) -> dict:
    from distnn.parallel.driver import train
    t0 = time.perf_counter()
    fit, best = 0.0, float("-inf")
    with tempfile.TemporaryDirectory() as out:
        for i, t in enumerate(trials):
            cfg = space.apply(base, t)
            recorder = results.TrialRecorder(Path(out), i, t, cfg)
            f0 = time.perf_counter()
            m = train(cfg, splits, progress=False, callbacks=[recorder])
            fit += time.perf_counter() - f0
            final = recorder.finish(m)
            best = max(best, final["valid_accuracy"])
    return {"wall": time.perf_counter() - t0, "train": fit, "best": best}


def _half(args):
    """Child process of the ceiling measurement: wait for the sibling, then train and
    record its share of the trials; return the seconds that took."""
    base, trials, barrier = args
    splits = load("digits")
    barrier.wait()
    t0 = time.perf_counter()
    sequential(base, trials, splits)
    return time.perf_counter() - t0


def ceiling(base, trials, splits) -> float:
    """What any parallel search can reach on these cores: two independent processes (no
    Ray, no Tune, no start-up counted) each run half the trials, split longest first
    the way the search's queue hands them out; the wall time is the slower half's."""
    import multiprocessing as mp
    n = len(splits.train)
    order = sorted(trials, key=lambda t: -tune.cost(space.apply(base, t), n))
    halves, load_ = [[], []], [0.0, 0.0]
    for t in order:                       # longest-processing-time-first assignment
        k = load_.index(min(load_))
        halves[k].append(t)
        load_[k] += tune.cost(space.apply(base, t), n)
    ctx = mp.get_context("spawn")
    with ctx.Manager() as m, ctx.Pool(2) as pool:
        barrier = m.Barrier(2)
        return max(pool.map(_half, [(base, h, barrier) for h in halves]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--rounds", type=int, default=3,
                   help="interleaved repeats of parallel vs sequential (medians reported)")
    p.add_argument("--write", metavar="BENCHMARKS.md")
    args = p.parse_args(argv)
    base = from_mapping(recipes.settings("digits-grid")).replace(epochs=args.epochs)
    trials = space.expand_grid(space.parse_grid(recipes.load("digits-grid")["search"]["grid"]))
    splits = load("digits")
    rounds = []
    for r in range(args.rounds):
        par, seq = parallel(base, trials, splits), sequential(base, trials, splits)
        seq["ceiling"] = ceiling(base, trials, splits)
        rounds.append((par, seq))
        print(f"round {r + 1}: parallel {par['wall']:.1f} s (Ray start-up "
              f"{par['startup']:.1f} s), sequential {seq['wall']:.1f} s (training "
              f"{seq['train']:.1f} s): ratio {par['wall'] / seq['wall']:.2f}; two bare "
              f"processes {seq['ceiling']:.1f} s", flush=True)
    med = _bench.median
    ratio = [p["wall"] / s["wall"] for p, s in rounds]
    strict = [p["wall"] / s["train"] for p, s in rounds]
    no_start = [(p["wall"] - p["startup"]) / s["wall"] for p, s in rounds]
    floor = [s["ceiling"] / s["wall"] for _, s in rounds]
    each = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    res = rounds[-1][0]["res"]
    _bench.report("bench_search", "Hyperparameter search",
                  f"{args.rounds} interleaved rounds, medians (each round in brackets).", [
        _bench.table(["digits-grid, 64 trials x {} epochs".format(args.epochs),
                      "wall time"], [
            ["`distnn search` on Ray Tune, 2 lanes, including Ray start-up and shutdown",
             f"{med([p['wall'] for p, _ in rounds]):.1f} s (start-up "
             f"{med([p['startup'] for p, _ in rounds]):.1f} s)"],
            ["the same trials one after another, in process, each recorded as the search "
             "does", f"{med([s['wall'] for _, s in rounds]):.1f} s"],
            ["... of which training (per-epoch recording included)",
             f"{med([s['train'] for _, s in rounds]):.1f} s"],
            ["**ratio**, parallel / sequential (target <= 0.6)",
             f"**{med(ratio):.2f}** ({each(ratio)})"],
            ["ratio without Ray start-up", f"{med(no_start):.2f} ({each(no_start)})"],
            ["ratio to the sequential training (per-epoch recording included)",
             f"{med(strict):.2f} ({each(strict)})"],
            ["hardware floor: two bare processes, half the trials each, no Ray, no "
             "start-up, / sequential", f"{med(floor):.2f} ({each(floor)})"]]), "",
        f"Best trial {res['best']}: validation accuracy {100 * res['best_valid']:.2f}%, "
        f"test accuracy (winner, evaluated once) {100 * res['test_accuracy']:.2f}%; the "
        f"sequential run's best validation accuracy {100 * rounds[-1][1]['best']:.2f}%.",
    ], args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
