"""Local steps across simulated hosts: throughput, bytes and time to 98% against one
process and against the same hosts synchronising once an epoch (the ceiling).

    python scripts/bench_local.py [--hosts 2] [--rate 1gbit] [--steps 1,8,32,128]
        [--outer average,nesterov] [--compress none,bf16] [--epochs 6] [--overlap]
        [--peer [localsgd,diloco]] [--torchft DIR] [--write docs/BENCHMARKS.md]
    python scripts/bench_local.py --projection [--write docs/BENCHMARKS.md]
    python scripts/bench_local.py --accuracy 3 [--layers 784,800,10] [--steps 32]
        [--compress none,bf16] [--epochs 10] [--write docs/BENCHMARKS.md]

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
RATES = {"1gbit": 1e9, "10gbit": 1e10, "25gbit": 2.5e10}
TRAIN = ["-m", "distnn", "-q", "train", "--dataset", "mnist", "--layers", "784,800,10",
         "--activation", "relu", "--init", "he", "--optimizer", "momentum", "--lr", "0.05",
         "--batch-size", "128", "--no-monitor-train"]
STEPS_PER_EPOCH = 50000 // 128 + 1


def test_accuracies(ckpt_dir: Path) -> list[float]:
    """Each epoch's checkpoint's test accuracy (``distnn eval`` of them all at once)."""
    cks = sorted(str(p) for p in ckpt_dir.glob("epoch-*"))
    r = subprocess.run([sys.executable, "-m", "distnn", "-q", "eval", *cks, "--json"],
                       cwd=ROOT, check=True, capture_output=True, text=True, timeout=600)
    out = json.loads(r.stdout)
    members = out["committee"] if "committee" in out else [out]
    return [m["accuracy"] for m in members]


def summary(path: Path, ckpt_dir: Path) -> dict:
    m = json.loads(path.read_text())
    h = m["history"]
    rates = [e["examples_per_second"] for e in h[1:]] or [h[0]["examples_per_second"]]
    t, to98 = 0.0, None
    for e, acc in zip(h, test_accuracies(ckpt_dir)):
        t += e["train_seconds"]
        if to98 is None and acc >= 0.98:
            to98 = t
    return {"ex_s": statistics.median(rates), "to98": to98,
            "bytes_per_example": statistics.median(e.get("bytes_per_step", 0) for e in h) / 128,
            "valid": h[-1].get("valid_accuracy"), "test": m.get("test_accuracy"),
            "epochs": len(h)}


def peer(cluster, hosts: int, period: int, epochs: int, tmp: Path,
         kind: str = "localsgd", path: str | None = None) -> dict:
    """PyTorch's PostLocalSGDOptimizer (scripts/peer_localsgd.py, gloo) or torchft's
    DiLoCo (scripts/peer_diloco.py) at period H on the same hosts, a process per host."""
    out = tmp / f"peer-{kind}{period}.json"
    script = str(ROOT / "scripts" / f"peer_{kind}.py")
    where = (["--master", f"{cluster.ips[0]}:29533"] if kind == "localsgd" else
             ["--lighthouse", cluster.ips[0]])
    logs = [tempfile.TemporaryFile(dir=tmp) for _ in range(hosts)]
    procs = [subprocess.Popen(cluster.command(i, [
        sys.executable, script, "--rank", str(i), "--world", str(hosts), *where,
        *([] if kind == "localsgd" else ["--ip", cluster.ips[i]]),
        "--period", str(period), "--epochs", str(epochs), "--out", str(out)]),
        env={**cluster.env(), "GLOO_SOCKET_IFNAME": "eth0",
             **({"PYTHONPATH": path} if path else {})}, cwd=ROOT,
        # (stderr into files, not pipes read one after another: torchft logs enough
        # to fill a pipe, and a rank blocked writing to it stalls every other rank)
        stdout=subprocess.DEVNULL, stderr=logs[i]) for i in range(hosts)]
    for pr in procs:
        pr.wait(timeout=3600)
    errs = []
    for f in logs:
        f.seek(0)
        errs.append(f.read().decode(errors="replace"))
        f.close()
    failed = [(i, pr.returncode, e) for i, (pr, e) in enumerate(zip(procs, errs)) if pr.returncode]
    if failed:
        raise RuntimeError("the peer failed:\n" + "\n".join(
            f"rank {i} (exit {rc}):\n{e[-3000:]}" for i, rc, e in failed))
    h = json.loads(out.read_text())["history"]
    t, to98 = 0.0, None
    for e in h:
        t += e["train_seconds"]
        if to98 is None and e["test_accuracy"] >= 0.98:
            to98 = t
    # every H steps each host sends about the parameters once (2 (M-1)/M of them)
    name = "PyTorch PostLocalSGD" if kind == "localsgd" else "torchft DiLoCo (nesterov)"
    return {"name": f"{name}, {hosts} hosts, H = {period}", "ex_s":
            statistics.median(e["examples_per_second"] for e in h[1:]), "to98": to98,
            "bytes_per_example": 2 * (hosts - 1) / hosts * 636010 * 4 / (period * 128),
            "valid": float("nan"), "test": h[-1]["test_accuracy"], "epochs": len(h)}


P_MAIN = 784 * 800 + 800 + 800 * 10 + 10


def peer_row(cluster, hosts: int, period: int, args, tmp: Path, kind: str) -> dict:
    """The peer's row; a peer that fails twice (torchft's quorum has timed out here now
    and then) is a row that says so, and the run goes on."""
    for attempt in (1, 2):
        try:
            return peer(cluster, hosts, period, args.epochs, tmp, kind,
                        args.torchft if kind == "diloco" else None)
        except RuntimeError as e:
            why = [line for line in str(e).splitlines() if "Error" in line][-1:] or ["?"]
            print(f"{kind} at H = {period}, attempt {attempt} failed: {why[0][:200]}",
                  flush=True)
    return {"name": f"{kind} at H = {period}: failed twice ({why[0][:80]})",
            "ex_s": float("nan"), "to98": None, "bytes_per_example": 0.0,
            "valid": float("nan"), "test": None, "epochs": 0}


def projection(args) -> int:
    """Examples/s of N hosts of 32 cores, one worker each (32 BLAS threads), 256
    examples a host a step, from the constants of scripts/bench_compress.py's projection
    (measured on this machine: sgemm per core and the share a step reaches, the whole
    update a step, a ring hop's latency on a real network) and the synchronisation's
    local work measured here (``--sync-ms``: the change, its grid, the outer step); a
    step costs its compute and update, and every H steps a synchronisation: its local
    work, the exchange of magnitudes (a ring of small messages) and the ring all-reduce
    of the parameters' change at the link's rate.  One host: compute and update."""
    B, cores = 256, 32
    compute = 6 * P_MAIN * B / (cores * args.efficiency * args.gflops * 1e9)
    step = compute + args.update_ms * 1e-3
    rows = []
    for rate_name in ("1gbit", "10gbit", "25gbit"):
        rate = RATES[rate_name] / 8
        for n in (2, 4, 8, 16, 32, 64):
            hop = args.latency_us * 1e-6
            ring = 2 * (n - 1) / n * 4 * (P_MAIN + n) / rate + 2 * (n - 1) * hop
            sync = args.sync_ms * 1e-3 + ring + 2 * (n - 1) * hop
            row = [rate_name, n]
            for h in (1, 32, 128, 512):
                per = step + sync / h
                row.append(f"{n * B / per / (B / step) / n:.2f}")
            rows.append(row)
    table = _bench.table(["link", "hosts", "H = 1", "H = 32", "H = 128",
                          "H = 512"], rows)
    _bench.report("bench_local_projection", "Local steps: on paper (scaling efficiency)",
                  f"hosts of 32 cores, one worker each, 256 examples a host a step; sgemm "
                  f"{args.gflops} GFLOP/s a core at {args.efficiency:.0%}, the whole update "
                  f"{args.update_ms} ms a step, the synchronisation's local work "
                  f"{args.sync_ms} ms, {args.latency_us:g} us a ring hop; each cell: "
                  "examples/s of N hosts / (N x one host's)", [table], args.write)
    return 0


def compressions(args) -> list[tuple[str, list[str]]]:
    """(name suffix, flags) of each value of --compress for the local-steps runs."""
    return [("" if c == "none" else f", --compress {c}",
             [] if c == "none" else ["--compress", c]) for c in args.compress.split(",")]


def accuracy(args) -> int:
    """Test accuracy after --epochs, per seed: synchronous against each H and outer
    optimizer with K = --hosts replicas, in one process (the same bits as on K hosts)."""
    rows = []
    runs = [("synchronous", [])] + [
        (f"H = {h}, {outer}" + tag, ["--local-steps", str(h), "--outer", outer, "--replicas",
                                     str(args.hosts), *flags])
        for outer in args.outer.split(",") for h in (int(x) for x in args.steps.split(","))
        for tag, flags in compressions(args)]
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags in runs:
            accs = []
            for seed in range(args.accuracy):
                out = Path(tmp) / "m.json"
                subprocess.run([sys.executable, *TRAIN, "--layers", args.layers, "--epochs",
                                str(args.epochs), "--seed", str(seed), *flags,
                                "--metrics-out", str(out), "--overwrite"], cwd=ROOT,
                               check=True, timeout=3600)
                accs.append(json.loads(out.read_text())["test_accuracy"])
                print(name, seed, accs[-1], flush=True)
            rows.append((name, accs))
    sync = statistics.mean(rows[0][1])
    table = _bench.table(
        ["run", "test accuracy, mean", "- synchronous (points)", "per seed"],
        [[name, f"{100 * statistics.mean(a):.2f}%",
          f"{100 * (statistics.mean(a) - sync):+.2f}",
          ", ".join(f"{100 * x:.2f}" for x in a)] for name, a in rows])
    _bench.report(f"bench_local_accuracy_{args.layers.replace(',', '-')}"
                  + ("" if args.compress == "none" else "_" + args.compress.replace(",", "-")),
                  "Local steps: accuracy against synchronous",
                  f"[{args.layers}]@128 on MNIST, relu, He, momentum 0.05, {args.epochs} "
                  f"epochs, seeds 0-{args.accuracy - 1}, K = {args.hosts} replicas in one "
                  "process (the same bits as on K hosts)", [table], args.write)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hosts", type=int, default=2)
    p.add_argument("--rate", default="1gbit")
    p.add_argument("--steps", default="1,8,32,128", help="values of --local-steps H")
    p.add_argument("--outer", default="average,nesterov")
    p.add_argument("--compress", default="none",
                   help="values of --compress for the local-steps runs (none, bf16)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--write", metavar="BENCHMARKS.md")
    p.add_argument("--overlap", action="store_true",
                   help="also each H with --overlap-sync")
    p.add_argument("--peer", nargs="?", const="localsgd", default="",
                   metavar="localsgd,diloco",
                   help="also the peers at each H: PyTorch's PostLocalSGDOptimizer "
                   "(localsgd, the default) and torchft's DiLoCo (diloco: torchft "
                   "importable: pip install --target DIR --no-deps torchft, its "
                   "opentelemetry dependencies beside it, and --torchft DIR)")
    p.add_argument("--torchft", metavar="DIR",
                   help="where torchft is installed (the diloco peer's PYTHONPATH alone)")
    p.add_argument("--accuracy", type=int, default=0, metavar="SEEDS",
                   help="instead: test accuracy over SEEDS seeds against synchronous")
    p.add_argument("--layers", default="784,800,10", help="with --accuracy: the network")
    p.add_argument("--projection", action="store_true",
                   help="instead: scaling on paper to 64 hosts of 32 cores")
    p.add_argument("--gflops", type=float, default=94.9)
    p.add_argument("--efficiency", type=float, default=0.71)
    p.add_argument("--update-ms", type=float, default=0.6)
    p.add_argument("--sync-ms", type=float, default=4.5)
    p.add_argument("--latency-us", type=float, default=50.0)
    args = p.parse_args(argv)
    if args.projection:
        return projection(args)
    if args.accuracy:
        return accuracy(args)
    why = simcluster.available()
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    rows, M = [], args.hosts
    with tempfile.TemporaryDirectory() as tmp:
        def one(name, flags, epochs, cluster=None):
            out = Path(tmp) / f"{len(rows)}.json"
            ck = Path(tmp) / f"ck{len(rows)}"
            cmd = [sys.executable, *TRAIN, "--epochs", str(epochs), *flags,
                   "--metrics-out", str(out), "--checkpoint-dir", str(ck),
                   "--keep-last", "1000"]
            if cluster is None:
                subprocess.run(cmd, cwd=ROOT, check=True, timeout=3600)
            else:
                r = cluster.run(0, [*cmd, "--workers", str(M), "--address", cluster.address,
                                    "--allreduce", "tcp"], cwd=ROOT, timeout=3600)
                if r.returncode:
                    raise RuntimeError(f"{name} failed:\n{r.stderr[-3000:]}")
            s = summary(out, ck)
            s["name"] = name
            rows.append(s)
            print(json.dumps(s), flush=True)

        one("one process, synchronous", [], args.epochs)
        with simcluster.SimCluster(M, 1, args.rate) as c:
            # the peers first, on hosts where no distnn run has been: torchft's DiLoCo
            # hung in its quorum (twice in a row) when run after them
            for kind in filter(None, (args.peer or "").split(",")):
                for h in (int(x) for x in args.steps.split(",")):
                    rows.append(peer_row(c, M, h, args, Path(tmp), kind))
                    print(json.dumps(rows[-1]), flush=True)
            one(f"{M} hosts, synchronous", [], 2, c)
            for outer in args.outer.split(","):
                for h in (int(x) for x in args.steps.split(",")):
                    if h == 1 and outer == "average":
                        continue      # (the synchronous run's updates, slower)
                    for tag, more in compressions(args):
                        flags = ["--local-steps", str(h), "--outer", outer, "--replicas",
                                 str(M), *more]
                        one(f"{M} hosts, H = {h}, {outer}{tag}", flags, args.epochs, c)
                        if args.overlap:
                            one(f"{M} hosts, H = {h}, {outer}{tag}, --overlap-sync",
                                [*flags, "--overlap-sync"], args.epochs, c)
            one(f"{M} hosts, one sync an epoch (ceiling)",
                ["--local-steps", str(STEPS_PER_EPOCH), "--replicas", str(M)], 2, c)
        ceiling = rows[-1]["ex_s"]
        one("one process, synchronous (again, last)", [], args.epochs)
    # (the machine is shared: one process is measured first and last, and the mean used)
    base = (rows[0]["ex_s"] + rows[-1]["ex_s"]) / 2
    table = _bench.table(
        ["run", "examples/s", "x one process (mean of first and last)", "x ceiling", "bytes sent / example",
         "time to 98% test (s)", "valid / test accuracy at the end"],
        [[r["name"], f"{r['ex_s']:,.0f}", f"**{r['ex_s'] / base:.2f}x**",
          f"{r['ex_s'] / ceiling:.2f}", f"{r['bytes_per_example']:,.0f}",
          "-" if r["to98"] is None else f"{r['to98']:.0f}",
          ("-" if r["valid"] != r["valid"] else f"{100 * r['valid']:.2f}%")
          + f" / {100 * (r['test'] or 0):.2f}% ({r['epochs']} ep.)"]
         for r in rows])
    peers = {"localsgd": "PyTorch's PostLocalSGD", "diloco": "torchft's DiLoCo"}
    _bench.report(f"bench_local_{M}_{args.rate}" + (
        "" if not args.peer else "_peer" if args.peer == "localsgd" else
        "_peer_" + args.peer.replace(",", "_")),
                  f"Local steps across {M} simulated hosts"
                  + (", against " + " and ".join(peers[k] for k in args.peer.split(","))
                     if args.peer else ""),
                  f"the main job ([784,800,10]@128, momentum 0.05) on {M} simulated hosts x 1 "
                  f"worker, links {args.rate} (tbf), tcp; every simulated host shares this "
                  "machine's 2 cores", [table], args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
