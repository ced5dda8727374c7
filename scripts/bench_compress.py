"""Gradient compression across simulated hosts: throughput, bytes, accuracy, the peer.

    python scripts/bench_compress.py throughput [--hosts 2,4] [--rates 1gbit,10gbit]
        [--compress none,bf16,powersgd:1,powersgd:2,powersgd:4,powersgd:8]
        [--batch-size 128] [--train-size 12800] [--epochs 3] [--rounds 2]
    python scripts/bench_compress.py accuracy [--seeds 0,1,2] [--networks main,deep]
    python scripts/bench_compress.py peer [--hosts 2] [--rates 1gbit] [--ranks 1,2,4,8]
    python scripts/bench_compress.py time-to-accuracy [--target 0.98]
    python scripts/bench_compress.py projection
    (each: [--write docs/BENCHMARKS.md])

``throughput``: for every link rate and number of hosts (one distnn worker each, on
simulated hosts: scripts/simcluster.py), the README's main job ([784,800,10] ReLU,
momentum 0.05, MNIST) with every ``--compress``, interleaved ``--rounds`` times with,
measured in the same run: one process on this machine (distnn's default: one worker,
BLAS on every core), and the ceiling -- one bare process per host, each training its
share of every global batch with no communication at all, concurrently (once plain, once
with the compressor's own work, ``--workers 1 --compress``: the floor of a compressed
run with no network).  Examples/s is the median over epochs 1..; where the time of a
step goes is each rank's own record (``history[].ranks``), averaged over ranks.
``accuracy``: test accuracy after 10 epochs, 2 workers on this node, per compressor and
seed, for the main job and a deep network (784-1000-500-250-10).  ``peer``: PyTorch DDP
(gloo) with its fp16 and PowerSGD comm hooks on the same simulated hosts, network,
batches and rank (its bf16 hook refuses anything but CUDA and NCCL; PyTorch is a
benchmark peer only: ``pip install torch==2.13.0``).
``time-to-accuracy``: wall seconds of training until the test accuracy (measured off the
clock, from each epoch's checkpoint) first reaches the target, 2 hosts at 1 Gbit/s vs
one process.  ``projection``: on paper, from constants measured here, hosts of 32 cores
at 10 and 25 Gbit/s.  Needs root (network namespaces) for ``throughput``, ``peer`` and
``time-to-accuracy``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402
import simcluster  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from distnn.io.layout import epoch_name  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MAIN = ["--dataset", "mnist", "--layers", "784,800,10", "--activation", "relu", "--init",
        "he", "--optimizer", "momentum", "--lr", "0.05"]
DEEP = ["--dataset", "mnist", "--layers", "784,1000,500,250,10", "--activation", "relu",
        "--init", "he", "--optimizer", "momentum", "--lr", "0.05"]
TRAIN = [sys.executable, "-m", "distnn.cli", "-q", "train"]
ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
RATES = {"1gbit": 1e9, "10gbit": 1e10, "25gbit": 2.5e10}


def _history(path: Path) -> list[dict]:
    return json.loads(path.read_text())["history"]


def _rate(path: Path, epochs_of: int = 1) -> float:
    """Median examples/s over epochs 1.. (the first warms up), times ``epochs_of`` (the
    ceiling's processes each train their own copy of the split)."""
    return epochs_of * statistics.median(e["examples_per_second"] for e in _history(path)[1:])


def _common(args) -> list[str]:
    return ["--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
            "--train-size", str(args.train_size), "--no-monitor-train"]


def _ceiling(hosts: int, args, tmp: Path, compress: str = "none") -> float:
    """Examples/s of ``hosts`` bare processes at once, each training batches of
    batch/hosts (one BLAS thread each, no communication)."""
    procs, outs = [], []
    for i in range(hosts):
        out = tmp / f"ceiling{i}.json"
        argv = [*TRAIN, *MAIN, *_common(args), "--batch-size", str(args.batch_size // hosts),
                "--compress", compress, "--metrics-out", str(out)]
        procs.append(subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **ONE_THREAD},
                                      stdout=subprocess.DEVNULL))
        outs.append(out)
    for p in procs:
        if p.wait(timeout=3600):
            raise RuntimeError("a ceiling process failed")
    # each trained the whole split with 1/hosts of each batch: together, hosts splits in
    # the time of the slowest
    return hosts * min(_rate(o) for o in outs)


def throughput(args, tmp: Path) -> list[dict]:
    rows = []
    for rate in args.rates.split(","):
        for hosts in (int(h) for h in args.hosts.split(",")):
            with simcluster.SimCluster(hosts, 1, None if rate == "none" else rate) as c:
                for k in range(args.rounds):
                    one = tmp / "one.json"
                    subprocess.run([*TRAIN, *MAIN, *_common(args), "--metrics-out", str(one)],
                                   cwd=ROOT, check=True, timeout=3600, stdout=subprocess.DEVNULL)
                    base = {"rate": rate, "hosts": hosts, "round": k, "one": _rate(one),
                            "ceiling": _ceiling(hosts, args, tmp)}
                    for comp in args.compress.split(","):
                        out = tmp / "run.json"
                        r = c.run(0, [*TRAIN, *MAIN, *_common(args), "--workers", str(hosts),
                                      "--address", c.address, "--compress", comp,
                                      "--metrics-out", str(out)], cwd=ROOT, timeout=3600)
                        if r.returncode:
                            raise RuntimeError(f"{comp} on {hosts} hosts failed:\n"
                                               f"{r.stderr[-3000:]}")
                        row = {**base, "compress": comp, "rate_ex": _rate(out),
                               **_bench.breakdown(out)}
                        if comp != "none":
                            row["floor"] = _ceiling(hosts, args, tmp, comp)
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    return rows


def throughput_table(rows) -> str:
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["rate"], r["hosts"], r["compress"]), []).append(r)
    out = []
    for (rate, hosts, comp), rs in groups.items():
        med = {k: statistics.median(r[k] for r in rs if k in r) for k in rs[0]
               if isinstance(rs[0][k], (int, float)) and k != "round"}
        ratios = [r["rate_ex"] / r["one"] for r in rs]
        floor = f"{med['floor'] / med['one']:.2f}x" if "floor" in med else "-"
        out.append([rate, f"{hosts} x 1", comp, f"{med['rate_ex']:,.0f}",
                    f"**{statistics.median(ratios):.2f}x** (" + ", ".join(
                        f"{x:.2f}" for x in ratios) + ")",
                    f"{med['ceiling'] / med['one']:.2f}x", floor,
                    f"{med['bytes'] / 1e3:,.1f}",
                    " / ".join(f"{med[k]:.2f}" for k in (
                        "compute_seconds", "compress_seconds", "comm_seconds", "wait_seconds",
                        "update_seconds"))])
    return _bench.table(["link", "hosts", "--compress", "ex/s", "vs one process (rounds)",
                         "ceiling vs one", "compressed floor vs one", "kB sent per step",
                         "ms per step: compute / compress / comm (wait) / update"], out)


def accuracy(args, tmp: Path) -> list[dict]:
    rows = []
    nets = {"main": MAIN, "deep": DEEP}
    for name in args.networks.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            for comp in args.compress.split(","):
                out = tmp / "acc.json"
                subprocess.run([*TRAIN, *nets[name], "--batch-size", "128", "--epochs", "10",
                                "--workers", "2", "--seed", str(seed), "--compress", comp,
                                "--metrics-out", str(out)], cwd=ROOT, check=True,
                               timeout=7200, stdout=subprocess.DEVNULL)
                m = json.loads(out.read_text())
                row = {"network": name, "seed": seed, "compress": comp,
                       "test_accuracy": m["test_accuracy"], "wall": m["wall_seconds"]}
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def accuracy_table(rows) -> str:
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["network"], r["compress"]), []).append(r)
    base = {n: statistics.mean(r["test_accuracy"] for r in rs)
            for (n, c), rs in groups.items() if c == "none"}
    out = []
    for (net, comp), rs in groups.items():
        accs = [100 * r["test_accuracy"] for r in rs]
        mean = statistics.mean(accs)
        out.append([net, comp, f"{mean:.2f}%", ", ".join(f"{a:.2f}" for a in accs),
                    f"{mean - 100 * base[net]:+.2f}" if net in base else "-"])
    return _bench.table(["network", "--compress", "test accuracy, mean", "seeds",
                         "vs none (points)"], out)


# -- the peer: PyTorch DDP (gloo) and its comm hooks ----------------------------------------
def ddp_rank(args) -> None:
    """One rank of a DDP run (on a simulated host): print examples/s as JSON."""
    import time

    import numpy as np
    import torch
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=args.rank, world_size=args.world)
    sys.path.insert(0, str(ROOT))
    from distnn.data import load
    s = load("mnist").train
    n = args.train_size
    x = torch.from_numpy(s.x[:n].reshape(n, -1).astype(np.float32) / 255)
    y = torch.from_numpy(s.y[:n].astype(np.int64))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(784, 800), torch.nn.ReLU(),
                                torch.nn.Linear(800, 10))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    if args.hook == "fp16":    # (its bf16 hook needs CUDA and NCCL; this is the same bytes)
        ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
    elif args.hook.startswith("powersgd:"):
        state = powerSGD_hook.PowerSGDState(
            process_group=None, matrix_approximation_rank=int(args.hook.split(":")[1]),
            start_powerSGD_iter=2, min_compression_rate=2, use_error_feedback=True,
            warm_start=True, random_seed=0)
        ddp.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")
    B, per = args.batch_size, args.batch_size // args.world
    rates = []
    for epoch in range(args.epochs):
        order = torch.from_numpy(np.random.default_rng([0, epoch]).permutation(n))
        dist.barrier()
        t0 = time.perf_counter()
        for s0 in range(0, n - B + 1, B):
            idx = order[s0 + args.rank * per:s0 + (args.rank + 1) * per]
            opt.zero_grad(set_to_none=False)
            # the sum over the rank's slice, / B: DDP averages over ranks, so x world
            (loss_fn(ddp(x[idx]), y[idx]) * (args.world / B)).backward()
            opt.step()
        rates.append((n // B) * B / (time.perf_counter() - t0))
    if args.rank == 0:
        print(json.dumps({"ex_per_s": statistics.median(rates[1:])}), flush=True)
    dist.destroy_process_group()


#: distnn's compressor beside each of DDP's comm hooks
SAME = {"none": "none", "fp16": "bf16"}


def peer(args, tmp: Path) -> list[dict]:
    """DDP with each comm hook, and right after it distnn with the same compression
    (bf16 for fp16: the same bytes), on the same simulated hosts."""
    rows = []
    for rate in args.rates.split(","):
        for hosts in (int(h) for h in args.hosts.split(",")):
            with simcluster.SimCluster(hosts, 1, None if rate == "none" else rate) as c:
                for hook in ["none", "fp16", *(f"powersgd:{r}" for r in args.ranks.split(","))]:
                    env = {**c.env(), **ONE_THREAD, "MASTER_ADDR": c.ips[0],
                           "MASTER_PORT": "29511", "GLOO_SOCKET_IFNAME": "eth0"}
                    procs = [subprocess.Popen(
                        c.command(i, [sys.executable, __file__, "ddp-rank", "--rank", str(i),
                                      "--world", str(hosts), "--hook", hook,
                                      "--batch-size", str(args.batch_size),
                                      "--train-size", str(args.train_size),
                                      "--epochs", str(args.epochs)]),
                        cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
                        for i in range(hosts)]
                    outs = [p.communicate(timeout=3600)[0] for p in procs]
                    if any(p.returncode for p in procs):
                        raise RuntimeError(f"DDP {hook} on {hosts} hosts failed")
                    got = json.loads(next(ln for ln in outs[0].splitlines() if ln.startswith("{")))
                    out = tmp / "peer.json"
                    r = c.run(0, [*TRAIN, *MAIN, *_common(args), "--workers", str(hosts),
                                  "--address", c.address, "--compress", SAME.get(hook, hook),
                                  "--metrics-out", str(out)], cwd=ROOT, timeout=3600)
                    if r.returncode:
                        raise RuntimeError(r.stderr[-3000:])
                    row = {"rate": rate, "hosts": hosts, "hook": hook, **got,
                           "distnn": _rate(out)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    return rows


def peer_table(rows) -> str:
    return _bench.table(["link", "hosts", "DDP comm hook", "PyTorch DDP ex/s",
                         "distnn --compress", "distnn ex/s", "distnn / DDP"],
                        [[r["rate"], f"{r['hosts']} x 1", r["hook"], f"{r['ex_per_s']:,.0f}",
                          SAME.get(r["hook"], r["hook"]), f"{r['distnn']:,.0f}",
                          f"**{r['distnn'] / r['ex_per_s']:.2f}x**"] for r in rows])


# -- time to accuracy ---------------------------------------------------------------------
def _time_to(ckpt: Path, metrics: Path, target: float) -> tuple[float | None, int | None]:
    """Training seconds until the first epoch whose checkpoint's test accuracy (measured
    now, off the clock) reaches ``target``."""
    h = _history(metrics)
    spent = 0.0
    for e in h:
        spent += e["train_seconds"]
        r = subprocess.run([*TRAIN[:-1], "eval", str(ckpt / epoch_name(e["epoch"])),
                            "--json"], cwd=ROOT, capture_output=True, text=True, check=True)
        if json.loads(r.stdout)["accuracy"] >= target:
            return spent, e["epoch"]
    return None, None


def time_to_accuracy(args, tmp: Path) -> list[dict]:
    rows = []
    common = ["--batch-size", "128", "--epochs", str(args.max_epochs), "--keep-last", "1000",
              "--no-monitor-train"]
    one = tmp / "one"
    subprocess.run([*TRAIN, *MAIN, *common, "--checkpoint-dir", str(one), "--metrics-out",
                    str(tmp / "one.json")], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    rows.append({"run": "one process", **dict(zip(("seconds", "epoch"),
                                                  _time_to(one, tmp / "one.json", args.target)))})
    with simcluster.SimCluster(2, 1, "1gbit") as c:
        for comp in args.compress.split(","):
            d = tmp / comp.replace(":", "")
            r = c.run(0, [*TRAIN, *MAIN, *common, "--workers", "2", "--address", c.address,
                          "--compress", comp, "--checkpoint-dir", str(d), "--metrics-out",
                          str(d) + ".json"], cwd=ROOT, timeout=7200)
            if r.returncode:
                raise RuntimeError(r.stderr[-3000:])
            rows.append({"run": f"2 hosts, 1 Gbit/s, {comp}", **dict(zip(
                ("seconds", "epoch"), _time_to(d, Path(str(d) + ".json"), args.target)))})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def tta_table(rows, target) -> str:
    one = rows[0]["seconds"]
    return _bench.table(
        ["run", f"training seconds to {100 * target:g}%", "epoch", "vs one process"],
        [[r["run"], f"{r['seconds']:.1f}" if r["seconds"] else "not reached",
          r["epoch"], f"{r['seconds'] / one:.2f}x" if r["seconds"] and one else "-"]
         for r in rows])


# -- on paper ---------------------------------------------------------------------------
P_MAIN = 636_010                      # the main job's parameters


def projection(args) -> str:
    """Examples/s of N hosts of 32 cores, one worker each with 32 BLAS threads, a batch
    of 256 a host, from the constants measured on this machine: a step's compute from
    its FLOPs (6 per weight per example) at the sgemm rate ``--gflops`` per core and the
    efficiency the core reaches at this shape; compression and the whole update as
    measured for one worker (NumPy's element-wise passes use one core whatever the
    host); the exact path's sharded update 1/N of its measured cost; a ring's time as
    its bytes at the link's rate plus ``--latency-us`` a hop; one host: compute and the
    whole update."""
    B, cores = 256, 32
    compute = 6 * P_MAIN * B / (cores * args.efficiency * args.gflops * 1e9)
    small = args.powersgd_rank * (784 + 800 + 800 + 10) + 811      # P and Q, numbers
    rows = []
    for rate_name in ("1gbit", "10gbit", "25gbit"):
        rate = RATES[rate_name] / 8
        for n in (2, 4, 8, 16, 32, 64):
            hop = args.latency_us * 1e-6
            ring = lambda nbytes, k=n: 2 * (k - 1) / k * nbytes / rate + 2 * (k - 1) * hop
            exact = compute + args.update_ms * 1e-3 / n + ring(4 * (P_MAIN + 1))
            comp = compute + (args.compress_ms + args.update_ms) * 1e-3 + 2 * ring(4 * small / 2)
            one = B / (compute * 1.0 + args.update_ms * 1e-3)
            rows.append([rate_name, n, f"{n * B / exact:,.0f}", f"{n * B / comp:,.0f}",
                         f"{n * B / exact / one:.1f}x", f"{n * B / comp / one:.1f}x",
                         f"{1e3 * exact:.2f} / {1e3 * comp:.2f}"])
    return _bench.table(["link", "hosts", "exact ex/s", f"powersgd:{args.powersgd_rank} ex/s",
                         "exact vs one host", "compressed vs one host",
                         "ms per step exact / compressed"], rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["throughput", "accuracy", "peer", "time-to-accuracy",
                                    "projection", "ddp-rank"])
    p.add_argument("--gflops", type=float, default=94.9, help="projection: sgemm per core")
    p.add_argument("--efficiency", type=float, default=0.71,
                   help="projection: the share of it a step reaches at this shape")
    p.add_argument("--compress-ms", type=float, default=1.8,
                   help="projection: PowerSGD's local work a step, measured")
    p.add_argument("--update-ms", type=float, default=0.6,
                   help="projection: the whole update a step, measured")
    p.add_argument("--latency-us", type=float, default=50.0,
                   help="projection: a ring hop's latency on a real network")
    p.add_argument("--powersgd-rank", type=int, default=4, help="projection: PowerSGD's rank")
    p.add_argument("--hosts", default="2,4")
    p.add_argument("--rates", default="1gbit,10gbit")
    p.add_argument("--compress", default=None)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--train-size", type=int, default=12800)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--networks", default="main,deep")
    p.add_argument("--ranks", default="1,2,4,8")
    p.add_argument("--target", type=float, default=0.98)
    p.add_argument("--max-epochs", type=int, default=15)
    p.add_argument("--write", metavar="BENCHMARKS.md")
    p.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    p.add_argument("--world", type=int, help=argparse.SUPPRESS)
    p.add_argument("--hook", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.mode == "ddp-rank":
        ddp_rank(args)
        return 0
    if args.mode == "projection":
        _bench.report("bench_compress_projection", "Gradient compression: on paper",
                      "hosts of 32 cores, one worker each, 256 examples a host a step; "
                      f"sgemm {args.gflops:g} GFLOP/s a core at {args.efficiency:.0%}, "
                      f"compression {args.compress_ms:g} ms and the whole update "
                      f"{args.update_ms:g} ms a step (measured here, one core), "
                      f"{args.latency_us:g} us a ring hop", [projection(args)], args.write)
        return 0
    if args.compress is None:
        args.compress = {"time-to-accuracy": "powersgd:4,none"}.get(
            args.mode, "none,bf16,powersgd:1,powersgd:2,powersgd:4,powersgd:8")
    why = simcluster.available() if args.mode not in ("accuracy", "projection") else None
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.mode == "throughput":
            rows = throughput(args, tmp)
            lines, what = [throughput_table(rows)], (
                f"[784,800,10]@{args.batch_size} on MNIST ({args.train_size} training "
                f"images, {args.epochs} epochs, median examples/s over epochs 1..), "
                f"{args.rounds} interleaved rounds; every simulated host shares this "
                "machine's 2 cores")
        elif args.mode == "accuracy":
            rows = accuracy(args, tmp)
            lines, what = [accuracy_table(rows)], (
                "10 epochs, batch 128, 2 workers (shm), momentum 0.05; main = "
                "784-800-10, deep = 784-1000-500-250-10, ReLU, He init")
        elif args.mode == "peer":
            rows = peer(args, tmp)
            lines, what = [peer_table(rows)], (
                f"PyTorch DDP (gloo, one thread per rank) and distnn side by side, "
                f"[784,800,10]@{args.batch_size}, {args.train_size} MNIST images, "
                f"{args.epochs} epochs, median examples/s over epochs 1..")
        else:
            rows = time_to_accuracy(args, tmp)
            lines, what = [tta_table(rows, args.target)], (
                "the main job at batch 128; test accuracy of each epoch's checkpoint, "
                "measured off the clock")
    _bench.report(f"bench_compress_{args.mode.replace('-', '_')}",
                  f"Gradient compression: {args.mode}", what, lines, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
