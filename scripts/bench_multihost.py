"""All-reduce across simulated hosts, against the bandwidth bound, old ring vs new.

    python scripts/bench_multihost.py [--hosts 2,3,4] [--per-host 1,2] [--rates 1gbit,10gbit]
        [--mb 2.54,10] [--reps 20] [--write docs/BENCHMARKS.md]
    python scripts/bench_multihost.py --training ROUNDS --layers L [--rate 1gbit]
        [--hosts 2,4] [--bucket-mb MB]
    python scripts/bench_multihost.py --to-accuracy 0.99 --hosts 2,4 --layers L --rate 1gbit
        [--epochs 8] [--train-flags '--schedule cosine:8 --merge-valid']

For every placement (M hosts x L workers, links shaped with tbf at each rate) it starts
a simulated cluster (scripts/simcluster.py), runs bare all-reduce members as Ray actors
placed like distnn's workers, and times one training step's communication: for ``tcp``
and ``hier`` the reduce-scatter of the gradient plus the all-gather of the updated
parameters (the sharded update), for the old ``ring`` of Ray actor calls its
all-reduce.  The bound is 2(M-1)/M S/B: what each host must send over its link of rate
B for a gradient of S bytes, however it is done.  Bytes per step are read from host
0's interface counters.  Needs root (network namespaces); see simcluster.py.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402
import simcluster  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RATES = {"1gbit": 1e9, "10gbit": 1e10}


def _link_bytes():
    net = Path("/sys/class/net/eth0/statistics")
    return int((net / "tx_bytes").read_text()), int((net / "rx_bytes").read_text())


def inner(args) -> None:
    """On host 0 of a simulated cluster: every backend and size; one JSON line each."""
    import ray
    ray.init(address="auto", logging_level="ERROR")
    world = int(ray.cluster_resources()["CPU"])
    for backend in args.backends.split(","):
        for mb in (float(m) for m in args.mb.split(",")):
            n = int(mb * 1e6 / 4)
            peers, nodes = _bench.peers(backend, world, n + 1)
            before = _link_bytes()
            per = ray.get([p.run.remote(n, args.reps, backend != "ring") for p in peers])
            after = _link_bytes()
            steps = args.reps + 2
            step_times = [max(ts[i] for ts in per) for i in range(args.reps)]
            print(json.dumps({"backend": backend, "mb": mb, "nodes": len(nodes),
                              "ms": 1e3 * statistics.median(step_times),
                              "tx_mb_per_step": (after[0] - before[0]) / steps / 1e6,
                              "rx_mb_per_step": (after[1] - before[1]) / steps / 1e6}),
                  flush=True)
            _bench.close_peers(peers)


def measure(hosts, per_host, rate, args) -> list[dict]:
    backends = "ring," + ("hier" if per_host > 1 else "tcp")
    with simcluster.SimCluster(hosts, per_host, None if rate == "none" else rate) as c:
        r = c.run(0, [sys.executable, __file__, "--inner", "--backends", backends,
                      "--mb", args.mb, "--reps", str(args.reps)], cwd=ROOT, timeout=1800)
    if r.returncode:
        raise RuntimeError(f"the benchmark on {hosts}x{per_host} failed:\n{r.stderr[-3000:]}")
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    for row in rows:
        row.update(hosts=hosts, per_host=per_host, rate=rate)
    return rows


def table(rows) -> str:
    out = []
    for r in rows:
        M, S = r["hosts"], r["mb"] * 1e6
        bound = 1e3 * 2 * (M - 1) / M * S / (RATES[r["rate"]] / 8) if r["rate"] in RATES \
            else None   # unshaped: no link limit, the floor of these cores
        link = 2 * (M - 1) / M * r["mb"]
        out.append([f"{M} x {r['per_host']}", r["rate"], f"{r['mb']:g} MB", r["backend"],
                    f"{r['ms']:.1f}", f"{bound:.1f}" if bound else "-",
                    f"**{r['ms'] / bound:.2f}x**" if bound else "-",
                    f"{r['tx_mb_per_step']:.2f} / {r['rx_mb_per_step']:.2f}",
                    f"{max(r['tx_mb_per_step'], r['rx_mb_per_step']) / link:.2f}x"])
    return _bench.table(["hosts x workers", "link", "gradient", "backend", "ms per step",
                         "bound ms", "vs bound", "host 0 MB out / in per step",
                         "vs 2(M-1)/M S"], out)


TRAIN = ["-m", "distnn.cli", "-q", "train", "--dataset", "mnist", "--activation", "relu",
         "--init", "he", "--optimizer", "momentum", "--lr", "0.05", "--batch-size", "128",
         "--epochs", "4", "--no-monitor-train"]


def _rate(out: Path) -> float:
    h = json.loads(out.read_text())["history"]
    return statistics.median(e["examples_per_second"] for e in h[1:])


def training(rounds: int, tmp: Path, layers: str = "784,800,10", rate: str | None = None,
             extra=(), hosts=(2,)) -> tuple[list[list[float]], dict]:
    """Examples/s of ``layers``@128 on MNIST: one process, 2 workers on this node (shm),
    then H simulated hosts x 1 worker for each H of ``hosts`` (tcp; links shaped to
    ``rate``, or unshaped), with ``extra`` flags for the hosts' runs (--bucket-mb);
    ``rounds`` interleaved.  Also each host run's step, part by part
    (``_bench.breakdown``, the median over rounds): {H: parts}."""
    out, parts = [], {h: [] for h in hosts}
    train = [*TRAIN, "--layers", layers]
    clusters = {}
    try:
        for h in hosts:
            clusters[h] = simcluster.SimCluster(h, 1, rate).__enter__()
        for k in range(rounds):
            row = []
            for name, workers in (("one", 1), ("node", 2)):
                f = tmp / f"{name}{k}.json"
                subprocess.run([sys.executable, *train, "--workers", str(workers),
                                "--metrics-out", str(f)], cwd=ROOT, check=True, timeout=1800)
                row.append(_rate(f))
            for h, c in clusters.items():
                f = tmp / f"hosts{h}-{k}.json"
                r = c.run(0, [sys.executable, *train, "--workers", str(h), "--address",
                              c.address, *extra, "--metrics-out", str(f)], cwd=ROOT,
                          timeout=1800)
                if r.returncode:
                    raise RuntimeError(r.stderr[-3000:])
                row.append(_rate(f))
                parts[h].append(_bench.breakdown(f))
            print(f"round {k + 1}: one process {row[0]:,.0f}, 2 workers on one node "
                  f"{row[1]:,.0f}, " + ", ".join(f"{h} hosts {x:,.0f}" for h, x in
                                                 zip(hosts, row[2:])) + " ex/s", flush=True)
            out.append(row)
    finally:
        for c in reversed(list(clusters.values())):
            c.__exit__(None, None, None)
    return out, {h: {k: statistics.median(p[k] for p in ps) for k in ps[0]}
                 for h, ps in parts.items()}


def _test_curve(ckpt: Path, metrics: Path) -> list[tuple[int, float, float]]:
    """(epoch, training seconds up to its end, test accuracy) of every epoch a run kept,
    each checkpoint read back with ``distnn eval`` (nothing in training sees the test
    split)."""
    hist = json.loads(metrics.read_text())["history"]
    out, t = [], 0.0
    for e in hist:
        t += e["train_seconds"]
        ev = subprocess.run([sys.executable, "-m", "distnn.cli", "eval", "--json",
                             str(ckpt / f"epoch-{e['epoch']:04d}")], cwd=ROOT, check=True,
                            capture_output=True, text=True, timeout=600)
        out.append((e["epoch"], t, json.loads(ev.stdout)["accuracy"]))
    return out


def to_accuracy(target: float, epochs: int, hosts: list[int], tmp: Path, layers: str,
                rate: str | None, extra=(), flags=()) -> list[dict]:
    """Time to ``target`` test accuracy of ``layers``@128 on MNIST: one process, then
    H simulated hosts x 1 worker for each H of ``hosts`` (tcp, links shaped to
    ``rate``), each trained ``epochs`` epochs keeping every checkpoint, with ``flags``
    (e.g. a schedule) in every run."""
    train = [*TRAIN, "--layers", layers, "--epochs", str(epochs), "--keep-last", "1000",
             *flags]
    rows = []

    def row(name, ck, f):
        curve = _test_curve(ck, f)
        hit = next(((e, t, a) for e, t, a in curve if a >= target), None)
        rows.append({"run": name, "ex/s": _rate(f), "curve": curve, "hit": hit,
                     "parts": _bench.breakdown(f)})
        print(name, f"{rows[-1]['ex/s']:,.0f} ex/s", "reached at", hit, flush=True)

    ck, f = tmp / "one", tmp / "one.json"
    subprocess.run([sys.executable, *train, "--workers", "1", "--checkpoint-dir", str(ck),
                    "--metrics-out", str(f)], cwd=ROOT, check=True, timeout=3600)
    row("one process", ck, f)
    for h in hosts:
        with simcluster.SimCluster(h, 1, rate) as c:
            ck, f = tmp / f"hosts{h}", tmp / f"hosts{h}.json"
            r = c.run(0, [sys.executable, *train, "--workers", str(h), "--address", c.address,
                          *extra, "--checkpoint-dir", str(ck), "--metrics-out", str(f)],
                      cwd=ROOT, timeout=3600)
            if r.returncode:
                raise RuntimeError(r.stderr[-3000:])
        row(f"{h} hosts x 1 worker", ck, f)
    return rows


def to_accuracy_table(rows, target: float) -> str:
    base = rows[0]["hit"][1] if rows[0]["hit"] else None
    out = []
    for r in rows:
        e, t, _ = r["hit"] or (None, None, None)
        out.append([r["run"], f"{r['ex/s']:,.0f}", f"{r['ex/s'] / rows[0]['ex/s']:.2f}x",
                    "not reached" if e is None else str(e), "-" if t is None else f"{t:.1f}",
                    "-" if t is None or base is None else f"**{base / t:.2f}x**",
                    " ".join(f"{100 * a:.2f}" for _, _, a in r["curve"])])
    return _bench.table(["run", "ex/s", "vs one process", f"first epoch >= {100 * target:g}%",
                         "training s to it", "speed-up to it", "test accuracy by epoch, %"],
                        out)


def breakdown_table(runs, rate: str | None) -> str:
    """Per step of each (name, breakdown) run: compute, the communication (exposed plus
    what ran hidden behind backprop), the exposed part and, of it, the wait for the
    other hosts, the update, the bytes a host sent and their time at the link's rate."""
    bps = RATES.get(rate)
    out = []
    for name, p in runs:
        comm = p["comm_seconds"] + p["overlapped_seconds"]
        out.append([name, f"{p['compute_seconds']:.1f}", f"{comm:.1f}",
                    f"{p['comm_seconds']:.1f}", f"{p['wait_seconds']:.1f}",
                    f"{p['update_seconds']:.1f}", f"{p['bytes'] / 1e3:,.0f}",
                    f"{8e3 * p['bytes'] / bps:.1f}" if bps else "-"])
    return _bench.table(["run", "compute ms", "communication ms", "exposed comm ms",
                         "of it waiting for peers ms", "update ms", "kB sent",
                         f"kB at {rate or 'the link rate'}, ms"], out)


def training_table(rounds, hosts) -> str:
    med = [statistics.median(r[i] for r in rounds) for i in range(len(rounds[0]))]
    cells = [f"{med[0]:,.0f}", f"{med[1]:,.0f}"]
    head = ["one process ex/s", "2 workers, one node (shm) ex/s"]
    for i, h in enumerate(hosts, 2):
        one = statistics.median(r[i] / r[0] for r in rounds)
        head += [f"{h} hosts x 1 worker (tcp) ex/s", f"{h} hosts / one process"]
        cells += [f"{med[i]:,.0f}", f"**{one:.2f}x** (" + ", ".join(
            f"{r[i] / r[0]:.2f}" for r in rounds) + ")"]
        if h == 2:
            ratio = statistics.median(r[i] / r[1] for r in rounds)
            head.append("2 hosts / one node")
            cells.append(f"**{ratio:.2f}x** (" + ", ".join(f"{r[i] / r[1]:.2f}"
                                                          for r in rounds) + ")")
    return _bench.table(head, [cells])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hosts", default=None, help="host counts (default: 2,3,4; with "
                   "--training 2; with --to-accuracy 2,4)")
    p.add_argument("--per-host", default="1,2")
    p.add_argument("--rates", default="1gbit,10gbit",
                   help="link rates (tbf), or none: unshaped, the floor of these cores")
    p.add_argument("--mb", default="2.54,10")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--write", metavar="BENCHMARKS.md")
    p.add_argument("--training", type=int, default=0, metavar="ROUNDS",
                   help="instead: training throughput across --hosts simulated hosts (default 2) "
                   "x 1 worker vs one process and one node, with each host run's step "
                   "part by part")
    p.add_argument("--layers", default="784,800,10",
                   help="with --training: the network (e.g. a conv net's --layers)")
    p.add_argument("--rate", default=None, help="with --training: the hosts' link rate "
                   "(tbf, e.g. 1gbit); unshaped if not given")
    p.add_argument("--bucket-mb", default=None,
                   help="with --training: --bucket-mb for the hosts' run")
    p.add_argument("--to-accuracy", type=float, default=None, metavar="FRACTION",
                   help="instead: time to this test accuracy (e.g. 0.99), one process vs "
                   "each of --hosts x 1 worker at --rate, --epochs epochs each")
    p.add_argument("--epochs", type=int, default=8, help="with --to-accuracy")
    p.add_argument("--train-flags", default="", help="with --to-accuracy: more distnn "
                   "train flags for every run, e.g. '--schedule cosine:20 --merge-valid'")
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--backends", default="ring,tcp", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.inner:
        inner(args)
        return 0
    why = simcluster.available()
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    extra = ("--bucket-mb", args.bucket_mb) if args.bucket_mb else ()
    if args.to_accuracy:
        import tempfile
        hosts = [int(h) for h in (args.hosts or "2,4").split(",")]
        with tempfile.TemporaryDirectory() as tmp:
            rows = to_accuracy(args.to_accuracy, args.epochs, hosts, Path(tmp), args.layers,
                               args.rate, extra, args.train_flags.split())
        _bench.report(f"bench_multihost_to_accuracy_{args.layers.split(':')[0]}",
                      f"Time to {100 * args.to_accuracy:g}% test accuracy across simulated "
                      "hosts", f"[{args.layers}]@128 on MNIST, {args.epochs} epochs each "
                      f"{args.train_flags}, "
                      f"every epoch's checkpoint read back with `distnn eval`; host links "
                      f"{args.rate or 'unshaped'}{', ' + ' '.join(extra) if extra else ''}; "
                      "training seconds (the runs' own train_seconds, summed; "
                      "evaluation left out); every simulated host shares this machine's "
                      "2 cores", [to_accuracy_table(rows, args.to_accuracy), "",
                                  "Per step of rank 0.. (the mean over hosts of the median "
                                  "over epochs 1..):", "",
                                  breakdown_table([(r["run"], r["parts"]) for r in rows[1:]],
                                                  args.rate)], args.write)
        return 0
    if args.training:
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            hosts = [int(h) for h in (args.hosts or "2").split(",")]
            rounds, parts = training(args.training, Path(tmp), args.layers, args.rate, extra,
                                     hosts)
        section = "bench_multihost_training" + ("" if args.layers == "784,800,10" and not
                                                args.rate else "_" + args.layers.split(":")[0]
                                                + (f"_{args.rate}" if args.rate else "")) \
            + (f"_bucket{args.bucket_mb}" if args.bucket_mb else "") \
            + ("" if hosts == [2] else "_hosts" + "-".join(map(str, hosts)))
        _bench.report(section, "Training across simulated hosts",
                      f"[{args.layers}]@128 on MNIST, median examples/s over epochs 1-3, "
                      f"{args.training} interleaved rounds, host links "
                      f"{args.rate or 'unshaped'}{', ' + ' '.join(extra) if extra else ''}; "
                      "every simulated host shares this machine's 2 cores",
                      [training_table(rounds, hosts), "", "The hosts' step, per host (the "
                       "mean over hosts of the median over epochs 1.., the median over "
                       "rounds):", "", breakdown_table([(f"{h} hosts x 1 worker", p)
                                                        for h, p in parts.items()],
                                                       args.rate)],
                      args.write)
        return 0
    rows = []
    for rate in args.rates.split(","):
        for per_host in (int(x) for x in args.per_host.split(",")):
            for hosts in (int(x) for x in (args.hosts or "2,3,4").split(",")):
                rows += measure(hosts, per_host, rate, args)
                print(table(rows[-len(args.mb.split(",")) * 2:]), flush=True)
    _bench.report("bench_multihost", "All-reduce across simulated hosts",
                  f"median step of {args.reps}; tbf-shaped veth links between network "
                  "namespaces; every simulated host shares this machine's 2 cores",
                  [table(rows)], args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
