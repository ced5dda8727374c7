"""distnn's convolutional step against PyTorch's, one thread, side by side in one run
(issue 40, item 5), with where distnn's time goes against the sgemm peak of the run.

    python scripts/bench_conv.py [--batches 32,64,128] [--steps 10] [--nets NAME,...]
                                 [--two-workers NAME] [--write docs/BENCHMARKS.md]

The same step in both: forward, backward, momentum update (float32, ReLU, He init,
softmax + log-likelihood, MNIST-shaped random images; PyTorch's torch.nn layers, NCHW,
``torch.set_num_threads(1)``; distnn's ``Network.loss_and_grad_sum_`` with -lr/B folded
in and ``Momentum.step_prescaled``, what a one-worker run's engine calls).  Networks:

- ``nielsen-ch6``: Nielsen's chapter 6 net, conv:20:5,pool:2,conv:40:5,pool:2,1000,1000,10
  (without its dropout, which both would add alike);
- ``simard-cnn``: conv:5:5,pool:2,conv:50:5,pool:2,100,10 (Simard et al. 2003's 5 and 50
  maps and 100 hidden units, with stride-1 convolutions and 2x2 pooling in place of
  their stride-2 convolutions);
- ``lenet5``: conv:6:5:same,pool:2,conv:16:5,pool:2,120,84,10.

For distnn the step is split into its GEMMs (the same products alone, into buffers of
the same shapes), the im2col and col2im copies (alone), and the rest (element-wise work:
activations, pooling, bias, cost, update; and Python).  ``--two-workers NAME`` instead
measures 2 workers on this node (Ray, shared memory) against one process and against
the two-process ceiling (``bench_deep.two_workers``), for that net at global batch 128.  torch is a benchmark peer only:
``pip install torch==2.13.0``.
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
from distnn.core import optim  # noqa: E402
from distnn.core.conv import patches  # noqa: E402
from distnn.core.network import Network  # noqa: E402

NETS = {
    "nielsen-ch6": ("conv:20:5", "pool:2", "conv:40:5", "pool:2", 1000, 1000, 10),
    "simard-cnn": ("conv:5:5", "pool:2", "conv:50:5", "pool:2", 100, 10),
    "lenet5": ("conv:6:5:same", "pool:2", "conv:16:5", "pool:2", 120, 84, 10),
}
LR = 0.01


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def sgemm_peak(n=2048, reps=3) -> float:
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    np.matmul(a, b, out=out)
    return 2 * n ** 3 / min(_timed(lambda: np.matmul(a, b, out=out)) for _ in range(reps)) / 1e9


def data(batch):
    rng = np.random.default_rng(0)
    return rng.random((batch, 784), dtype=np.float32), rng.integers(0, 10, batch)


def distnn_step(layers, batch, steps):
    """Median seconds of distnn's step, and the network (for the breakdown)."""
    net = Network(layers, activation="relu", init="he", input_shape=(28, 28, 1))
    opt = optim.Momentum(LR, 0.9)
    x, y = data(batch)

    def step():
        net.loss_and_grad_sum_(x, y, scale=-LR / batch)
        opt.step_prescaled(net.params, net.grads)
    for _ in range(2):
        step()
    return _bench.median([_timed(step) for _ in range(steps)]), net


def torch_step(layers, batch, steps):
    import torch
    torch.set_num_threads(1)
    torch.manual_seed(0)
    mods, c, hw = [], 1, 28
    for item in layers:
        if isinstance(item, str) and item.startswith("conv"):
            _, f, k, *pad = item.split(":")
            p = (int(k) - 1) // 2 if pad == ["same"] else 0
            mods += [torch.nn.Conv2d(c, int(f), int(k), padding=p), torch.nn.ReLU()]
            c, hw = int(f), hw + 2 * p - int(k) + 1
        elif isinstance(item, str):
            mods.append(torch.nn.MaxPool2d(int(item.split(":")[1])))
            hw //= int(item.split(":")[1])
        else:
            if not any(isinstance(m, torch.nn.Flatten) for m in mods):
                mods.append(torch.nn.Flatten())
                c = c * hw * hw
            mods += [torch.nn.Linear(c, item), torch.nn.ReLU()]
            c = item
    model = torch.nn.Sequential(*mods[:-1])
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    x, y = data(batch)
    xt, yt = torch.from_numpy(x).reshape(batch, 1, 28, 28), torch.from_numpy(y)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=False)
        loss_fn(model(xt), yt).backward()
        opt.step()
    for _ in range(2):
        step()
    return _bench.median([_timed(step) for _ in range(steps)])


def breakdown(net, batch, steps) -> dict:
    """Seconds of the step's GEMMs alone and of its im2col/col2im copies alone, and
    the step's FLOPs."""
    rng = np.random.default_rng(1)
    gemms, copies, flops = [], [], 0
    for layer in net.layers:
        if layer.kind == "conv":     # the same products and copies as Conv2D's
            (h, w, c), (ho, wo), k, f = layer.in_shape, layer.out_hw, layer.k, layer.filters
            m, kk = batch * ho * wo, k * k * c
            wm = rng.random((kk, f), dtype=np.float32)
            out, dy = np.empty((m, f), np.float32), rng.random((m, f), dtype=np.float32)
            gw = np.empty((kk, f), np.float32)
            p = layer.pad
            xp = rng.random((batch, h + 2 * p, w + 2 * p, c), dtype=np.float32)
            if c == 1:
                buf = np.empty((k, k, batch, ho, wo), np.float32)
                cols = buf.reshape(k * k, -1).T

                def im2col(xp=xp, buf=buf, k=k, ho=ho, wo=wo):
                    for a in range(k):
                        for b in range(k):
                            buf[a, b] = xp[:, a:a + ho, b:b + wo, 0]
            else:
                buf = np.empty((batch, ho, wo, k, k, c), np.float32)
                cols = buf.reshape(m, kk)

                def im2col(xp=xp, buf=buf, k=k):
                    np.copyto(buf, patches(xp, k))
            copies.append(im2col)
            gemms.append(lambda cols=cols, wm=wm, out=out: np.matmul(cols, wm, out=out))
            gemms.append(lambda cols=cols, dy=dy, gw=gw: np.matmul(cols.T, dy, out=gw))
            flops += 4 * m * kk * f
            if layer.need_input_grad:
                wt = rng.random((k * k, f, c), dtype=np.float32)
                d = np.empty((k * k, m, c), np.float32)
                gemms.append(lambda dy=dy, wt=wt, d=d: np.matmul(dy, wt, out=d))
                flops += 2 * m * kk * f

                def col2im(xp=xp, d=d, k=k, ho=ho, wo=wo, n=batch, c=c):
                    xp[...] = 0
                    for a in range(k):
                        for b in range(k):
                            xp[:, a:a + ho, b:b + wo] += d[a * k + b].reshape(n, ho, wo, c)
                copies.append(col2im)
        elif layer.kind == "dense":
            a = rng.random((batch, layer.n_in), dtype=np.float32)
            wt = rng.random((layer.n_in, layer.n_out), dtype=np.float32)
            o, dy = np.empty((batch, layer.n_out), np.float32), np.empty((batch, layer.n_out),
                                                                          np.float32)
            gw, dx = np.empty_like(wt), np.empty_like(a)
            gemms += [lambda a=a, wt=wt, o=o: np.matmul(a, wt, out=o),
                      lambda a=a, dy=dy, gw=gw: np.matmul(a.T, dy, out=gw),
                      lambda dy=dy, wt=wt, dx=dx: np.matmul(dy, wt.T, out=dx)]
            flops += 6 * batch * layer.n_in * layer.n_out

    def run(fns):
        return lambda: [f() for f in fns]
    return {"gemm": _bench.median([_timed(run(gemms)) for _ in range(steps)]),
            "copies": _bench.median([_timed(run(copies)) for _ in range(steps)]),
            "flops": flops}


def two_workers(name, steps, write) -> int:
    import bench_deep
    from distnn.config import TrainConfig

    def make(workers, batch, epochs):
        return TrainConfig(dataset="mnist", layers=NETS[name], input_shape=(28, 28, 1),
                           activation="relu", init="he", optimizer="momentum", lr=LR,
                           batch_size=batch, epochs=epochs, workers=workers,
                           monitor_train=False)
    one, two, ceiling, parts = bench_deep.two_workers(128, steps * 4, 3, 3, make=make)
    c = _bench.median([b / a for a, b in ceiling])
    line = (f"{name}, global batch 128: 2 workers {two:,.0f} ex/s against {one:,.0f} for "
            f"one = {two / one:.2f}x; two independent processes at batch 64 against one at "
            f"128 (no communication), interleaved: "
            + "; ".join(f"{b / a:.2f}x" for a, b in ceiling)
            + f", median {c:.2f}x; 2 workers reach **{two / one / c:.2f}** of it. A 2-worker "
            "step, ms (rank 0 / rank 1): "
            + ", ".join(f"{k} {a:.1f} / {b:.1f}" for k, (a, b) in parts.items()) + ".")
    _bench.report("bench_conv_two_workers", "Two workers on one node, a conv net",
                  f"{name}, float32, ReLU, momentum; medians of epochs 1-2 of "
                  f"{steps * 4} steps; Ray, shared memory.", [line], write)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="32,64,128")
    p.add_argument("--steps", type=int, default=10, help="steps timed (median)")
    p.add_argument("--nets", default=",".join(NETS))
    p.add_argument("--two-workers", metavar="NAME", help="instead: 2 workers vs the ceiling")
    p.add_argument("--write", metavar="BENCHMARKS.md")
    args = p.parse_args(argv)
    if args.two_workers:
        return two_workers(args.two_workers, args.steps, args.write)
    peak = sgemm_peak()
    print(f"sgemm peak {peak:.1f} GFLOP/s", flush=True)
    rows = []
    for name in args.nets.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            ours, net = distnn_step(NETS[name], batch, args.steps)
            theirs = torch_step(NETS[name], batch, args.steps)
            b = breakdown(net, batch, args.steps)
            rest = ours - b["gemm"] - b["copies"]
            rows.append([name, batch, f"{ours * 1e3:.1f}", f"{theirs * 1e3:.1f}",
                         f"**{theirs / ours:.2f}x**", f"{b['gemm'] / ours:.0%}",
                         f"{b['copies'] / ours:.0%}", f"{rest / ours:.0%}",
                         f"{b['flops'] / b['gemm'] / 1e9 / peak:.0%}",
                         f"{b['flops'] / ours / 1e9 / peak:.0%}"])
            print(rows[-1], flush=True)
    lines = [_bench.table(["net", "batch", "distnn step ms", "PyTorch step ms",
                           "distnn speed (PyTorch = 1)", "GEMMs", "im2col/col2im copies",
                           "element-wise + Python", "GEMMs alone % of peak",
                           "step % of peak"], rows), "",
             f"sgemm peak measured in the same run: {peak:.1f} GFLOP/s (2048^3, one "
             "thread). The GEMM, copy and rest columns are shares of distnn's step; the "
             "GEMMs and copies are timed alone on buffers of the same shapes."]
    _bench.report("bench_conv", "Convolutional step against PyTorch (one thread)",
                  "float32, ReLU, momentum; medians of "
                  f"{args.steps} steps after 2 warm-up ones; PyTorch "
                  f"{__import__('torch').__version__} (CPU build).", lines, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
