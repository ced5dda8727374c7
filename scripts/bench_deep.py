"""Where a step of the deep network goes, against the sgemm peak measured in the same run
(issue 30, item 1): Cireşan et al.'s 784-2500-2000-1500-1000-500-10 (12.0M weights).

    python scripts/bench_deep.py [--batches 64,128,256] [--steps 10] [--epochs 3] [--two-workers]
                                [--write docs/BENCHMARKS.md]

One worker, one BLAS thread (``distnn.train.Engine`` in a group of one, what a
one-worker run does), ReLU, He init, softmax + log-likelihood, momentum SGD, float32,
MNIST-shaped random images (every pixel non-zero somewhere, so the first layer does
all its FLOPs).  For each batch size:

- the step as the engine times it: forward + backward, the optimizer update, and the
  wait for the next batch (the data pipeline runs in a thread, as in a one-worker run);
- the same GEMM calls alone (``np.matmul`` into the same buffers), so that forward +
  backward minus GEMMs is the element-wise work and what Python adds;
- FLOPs: 2 per weight per example forward, 2 for dW, 2 for dx (all but the first layer).

``--augment`` adds the distortions of a recipe (the pipeline thread's cost shows as
"data" only where it cannot keep up).  ``--two-workers`` also measures 2 workers (Ray,
shared memory) against the two-process ceiling of ``bench_dist.py``, side by side.
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
from distnn.config import TrainConfig  # noqa: E402
from distnn.data.splits import Split  # noqa: E402

DEEP = (784, 2500, 2000, 1500, 1000, 500, 10)


def cfg(batch, augment="none", workers=1, epochs=2):
    return TrainConfig(dataset="mnist", layers=DEEP, activation="relu", init="he",
                       optimizer="momentum", lr=0.01, batch_size=batch, epochs=epochs,
                       workers=workers, augment=augment, monitor_train=False)


def sgemm_peak(n=2048, reps=3) -> float:
    """GFLOP/s of the best of ``reps`` (n, n) x (n, n) float32 products, one thread."""
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    np.matmul(a, b, out=out)
    best = min(_timed(lambda: np.matmul(a, b, out=out)) for _ in range(reps))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def flops_per_step(batch) -> float:
    w = [a * b for a, b in zip(DEEP[:-1], DEEP[1:])]
    return 2 * batch * (2 * sum(w) + sum(w[1:]))


def gemm_seconds(net, batch, reps) -> float:
    """Seconds of one step's GEMM calls alone: x @ W, x^T dy, dy W^T (not the first
    layer's), into buffers of the same shapes, in the same order as backprop."""
    rng = np.random.default_rng(1)
    acts = [rng.random((batch, n), dtype=np.float32) for n in DEEP]
    outs = [np.empty((batch, n), np.float32) for n in DEEP]
    dW = [np.empty_like(d.W) for d in net.weight_layers]

    def step():
        for i, d in enumerate(net.weight_layers):
            np.matmul(acts[i], d.W, out=outs[i + 1])
        for i in reversed(range(len(net.weight_layers))):
            d = net.weight_layers[i]
            np.matmul(acts[i].T, acts[i + 1], out=dW[i])
            if i:
                np.matmul(acts[i + 1], d.W.T, out=outs[i])
    step()
    return _bench.median([_timed(step) for _ in range(reps)])


def one_worker(batch, steps, augment, epochs):
    """(ms per step of: the whole step, forward+backward, GEMMs alone, update, waiting
    for data): medians over epochs 1..``epochs`` of a one-worker engine (epoch 0 warms
    up), the GEMMs' over as many steps."""
    n = batch * steps
    rng = np.random.default_rng(0)
    split = Split(rng.integers(1, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n))
    engine = _bench.one_worker(cfg(batch, augment), split)
    _bench.epoch(engine, 0)
    runs = []
    for k in range(1, epochs + 1):
        r = _bench.epoch(engine, k)
        t, per = r["times"], 1e3 / r["times"]["steps"]
        runs.append({"step": per * r["seconds"], "fb": per * t["compute_seconds"],
                     "update": per * t["update_seconds"], "data": per * t["data_seconds"]})
    out = {k: _bench.median([r[k] for r in runs]) for k in runs[0]}
    out["gemm"] = 1e3 * gemm_seconds(engine.net, batch, steps * epochs)
    return out


def two_workers(batch, steps, epochs, rounds, make=None):
    """(1 worker ex/s, 2 workers ex/s, ceiling pairs, {part: [ms per step of each
    rank]}): 2 Ray workers on this node against one process, and the two-process
    ceiling (bench_dist.hardware_ceiling), at global ``batch``, for the config
    ``make(workers, batch, epochs)`` (default: the deep net's)."""
    import bench_dist
    from distnn.parallel.driver import train
    from distnn.parallel.session import start_ray, stop_ray
    make = make or (lambda w, b, k: cfg(b, workers=w, epochs=k))
    n = batch * steps
    data = bench_dist.splits(n)
    ceiling = bench_dist.hardware_ceiling(batch, n, epochs, rounds, make=make)
    start_ray(None, 2)
    try:
        rate = {}
        for w in (1, 2):
            h = train(make(w, batch, epochs), data, progress=False)["history"]
            rate[w] = _bench.median([e["examples_per_second"] for e in h[1:]])
    finally:
        stop_ray()
    # where a 2-worker step goes, each rank's own clock, last epoch (ms per step)
    parts = {k: [1e3 * r[f"{k}_seconds"] / r["steps"] for r in h[-1]["ranks"]]
             for k in ("compute", "comm", "wait", "update")}
    return rate[1], rate[2], ceiling, parts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="64,128,256")
    p.add_argument("--steps", type=int, default=10, help="steps an epoch")
    p.add_argument("--epochs", type=int, default=3, help="epochs timed after a warm-up one")
    p.add_argument("--augment", default="none", help="a --augment spec for the pipeline")
    p.add_argument("--two-workers", action="store_true",
                   help="also 2 workers against the two-process ceiling (batch 128)")
    p.add_argument("--write", metavar="BENCHMARKS.md")
    args = p.parse_args(argv)
    peak = sgemm_peak()
    print(f"sgemm peak {peak:.1f} GFLOP/s", flush=True)
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        m = one_worker(batch, args.steps, args.augment, args.epochs)
        gflop = flops_per_step(batch) / 1e9
        rows.append([f"{batch}", f"{m['step']:.1f}", f"{m['fb']:.1f}", f"{m['gemm']:.1f}",
                     f"{m['fb'] - m['gemm']:.1f}", f"{m['update']:.1f}", f"{m['data']:.1f}",
                     f"{gflop / m['gemm'] * 1e3 / peak:.0%}",
                     f"**{gflop / m['step'] * 1e3 / peak:.0%}**"])
        print(rows[-1], flush=True)
    lines = [_bench.table(["batch", "step ms", "fwd+bwd ms", "GEMMs alone ms",
                           "element-wise + Python ms", "update ms", "waiting for data ms",
                           "GEMMs % of peak", "step % of peak"], rows), "",
             f"sgemm peak measured in the same run: {peak:.1f} GFLOP/s (2048^3, one thread); "
             "FLOPs: 6 per weight per example, less the first layer's dx."]
    if args.two_workers:
        one, two, ceiling, parts = two_workers(128, args.steps * 4, 3, 3)
        c = _bench.median([b / a for a, b in ceiling])
        solo = 128 / _bench.median([b for _, b in ceiling]) * 1e3   # ms a step of 64 each
        lines.append(
            f"2 workers at global batch 128: {two:,.0f} ex/s against {one:,.0f} for one "
            f"worker = {two / one:.2f}x; two independent processes at batch 64 against one "
            f"at 128 (no communication), interleaved: "
            + "; ".join(f"{b / a:.2f}x" for a, b in ceiling)
            + f", median **{c:.2f}x**; 2 workers reach **{two / one / c:.2f}** of it. "
            f"A 2-worker step, ms (rank 0 / rank 1): "
            + ", ".join(f"{k} {a:.1f} / {b:.1f}" for k, (a, b) in parts.items())
            + f" (comm includes wait); a bare process's step at batch 64 beside another: "
            f"{solo:.1f} ms.")
    _bench.report("bench_deep", "The deep network's step against the sgemm peak",
                  f"784-2500-2000-1500-1000-500-10, one worker, one BLAS thread, augment "
                  f"{args.augment!r}, {args.steps} steps an epoch, medians of {args.epochs} epochs "
                  "after a warm-up one.",
                  lines, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
