"""Training throughput of the NumPy core, single thread, side by side with PyTorch (CPU)
and with a per-example loop in the style of Nielsen's network2.py.

    python scripts/bench_core.py [--seconds 3] [--repeats 3] [--write docs/BENCHMARKS.md]

Each row: sigmoid hidden layer, softmax output with log-likelihood cost, momentum SGD
(lr 0.1, mu 0.9), float32, one BLAS thread.  Runs of the peers are interleaved and the
median of ``--repeats`` is reported; ratios are from the same run.
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

ROWS = [((784, 30, 10), 10), ((784, 100, 10), 10), ((784, 100, 10), 128),
        ((784, 800, 10), 128), ((784, 800, 10), 10)]


def synthetic(n, rng):
    return Split(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n))


def distnn_rate(sizes, batch, split, seconds, opt="momentum", l2=0.0):
    cfg = TrainConfig(layers=sizes, activation="sigmoid", output="softmax",
                      cost="log-likelihood", optimizer=opt, lr=0.1 if opt == "momentum" else 0.5,
                      momentum=0.9, batch_size=batch, l2=l2)
    n = min(len(split.y), max(batch * 20, int(seconds * 4000 * 128 / max(sizes[1], 30))))
    engine = _bench.one_worker(cfg, Split(split.x[:n], split.y[:n]))
    _bench.epoch(engine, 0)                                   # warm-up epoch
    return n / _bench.epoch(engine, 1)["seconds"]


def torch_rate(sizes, batch, split, seconds):
    import torch
    torch.set_num_threads(1)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.Sigmoid())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    lossf = torch.nn.CrossEntropyLoss()
    n = min(len(split.y), max(batch * 20, int(seconds * 4000 * 128 / max(sizes[1], 30))))
    x = torch.from_numpy(split.x[:n].reshape(n, -1).astype(np.float32) / 255)
    y = torch.from_numpy(split.y[:n].astype(np.int64))

    def epoch():
        perm = torch.randperm(n)
        t0 = time.perf_counter()
        for s in range(0, n, batch):
            idx = perm[s:s + batch]
            opt.zero_grad(set_to_none=True)
            lossf(model(x[idx]), y[idx]).backward()
            opt.step()
        return n / (time.perf_counter() - t0)

    epoch()
    return epoch()


def network2_rate(sizes, batch, split, n=2000):
    """Nielsen's network2.py algorithm: per-example backprop on column vectors, summed
    over the mini-batch, SGD with L2 weight decay (re-implemented here)."""
    rng = np.random.default_rng(0)
    ws = [rng.standard_normal((b, a)) / np.sqrt(a) for a, b in zip(sizes[:-1], sizes[1:])]
    bs = [rng.standard_normal((b, 1)) for b in sizes[1:]]
    xs = [split.x[i].reshape(-1, 1) / 255.0 for i in range(n)]
    ys = [np.eye(sizes[-1])[split.y[i]].reshape(-1, 1) for i in range(n)]
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    eta, lmbda = 0.5, 5.0
    t0 = time.perf_counter()
    for s in range(0, n, batch):
        nb = [np.zeros(b.shape) for b in bs]
        nw = [np.zeros(w.shape) for w in ws]
        for x, y in zip(xs[s:s + batch], ys[s:s + batch]):
            acts, zs, a = [x], [], x
            for b, w in zip(bs, ws):
                z = np.dot(w, a) + b
                zs.append(z)
                a = sig(z)
                acts.append(a)
            delta = acts[-1] - y                       # cross-entropy cost
            dnb, dnw = [None] * len(bs), [None] * len(ws)
            dnb[-1], dnw[-1] = delta, np.dot(delta, acts[-2].T)
            for k in range(2, len(sizes)):
                sp = sig(zs[-k]) * (1 - sig(zs[-k]))
                delta = np.dot(ws[-k + 1].T, delta) * sp
                dnb[-k], dnw[-k] = delta, np.dot(delta, acts[-k - 1].T)
            nb = [p + q for p, q in zip(nb, dnb)]
            nw = [p + q for p, q in zip(nw, dnw)]
        ws = [(1 - eta * lmbda / 50000) * w - (eta / batch) * g for w, g in zip(ws, nw)]
        bs = [b - (eta / batch) * g for b, g in zip(bs, nb)]
    return n / (time.perf_counter() - t0)


def gemm_peak() -> float:
    a = np.random.default_rng(0).random((1024, 1024), dtype=np.float32)
    c = np.empty_like(a)
    np.matmul(a, a, out=c)
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(5):
            np.matmul(a, a, out=c)
        best = max(best, 5 * 2 * 1024 ** 3 / (time.perf_counter() - t0))
    return best


def flops_per_example(sizes) -> float:
    mac = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
    return 2 * (2 * sum(mac) + sum(mac[1:]))  # forward, dW, dx (not for the input)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--write", metavar="BENCHMARKS.md")
    args = p.parse_args(argv)
    try:
        import torch  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
    rng = np.random.default_rng(0)
    split = synthetic(60000, rng)
    peak = gemm_peak()
    rows = []
    for sizes, batch in ROWS:
        ours, theirs = [], []
        for _ in range(args.repeats):
            ours.append(distnn_rate(sizes, batch, split, args.seconds))
            if have_torch:
                theirs.append(torch_rate(sizes, batch, split, args.seconds))
        o = _bench.median(ours)
        t = _bench.median(theirs) if theirs else None
        frac = o * flops_per_example(sizes) / peak
        rows.append([f"{list(sizes)}@{batch}", f"{o:,.0f}", f"{t:,.0f}" if t else "n/a",
                     f"{o / t:.2f}x" if t else "n/a", f"{100 * frac:.0f}%"])
        print(rows[-1], flush=True)
    n2 = network2_rate((784, 30, 10), 10, split)
    ours_n2 = _bench.median([distnn_rate((784, 30, 10), 10, split, args.seconds, "sgd", 5.0)
                             for _ in range(args.repeats)])
    _bench.report("bench_core", "Core training throughput",
                  f"one BLAS thread; float32 sgemm peak measured in the same run: "
                  f"{peak / 1e9:.1f} GFLOP/s.", [
        _bench.table(["network@batch", "distnn ex/s", "PyTorch ex/s", "distnn/PyTorch",
                      "distnn % of sgemm peak"], rows), "",
        "Sigmoid hidden, softmax + log-likelihood, momentum SGD (lr 0.1, μ 0.9); medians of "
        f"{args.repeats} interleaved runs of {args.seconds:g} s-sized epochs.", "",
        f"Nielsen's chapter-3 recipe ([784,30,10]@10, cross-entropy-equivalent update, SGD, "
        f"L2): distnn {ours_n2:,.0f} ex/s vs a per-example network2.py-style loop "
        f"{n2:,.0f} ex/s = **{ours_n2 / n2:.1f}x** (an epoch of 50,000: "
        f"{50000 / ours_n2:.2f} s vs {50000 / n2:.2f} s).",
    ], args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
