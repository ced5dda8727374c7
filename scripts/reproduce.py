"""Run the published-result experiments with distnn's own recipes and commands, read
each result back from its checkpoint with `distnn eval`, and write docs/RESULTS.md.

    python scripts/reproduce.py run NAME [NAME ...] [--seeds 3] [--first-seed 0] [--root results]
    python scripts/reproduce.py table [--root results] [--out docs/RESULTS.md]
    python scripts/reproduce.py curve NAME [--seed 0] [--every 10] [--root results]

`run` appends one JSON line per finished run to ROOT/runs.jsonl (so rows can be run in
parallel processes and over several sessions); `table` builds the Markdown table.

`curve` answers "test accuracy against wall time" for a run that has no validation split
to watch (--merge-valid): it trains NAME with seed SEED into ROOT/NAME-curve-sSEED,
keeping every epoch's checkpoint (~31 MB each for deep-elastic), then reads every
EVERY-th epoch's checkpoint and the last back with `distnn eval` and writes
ROOT/NAME-curve-sSEED.test.json. Nothing in training looks at the test split: the curve
is read afterwards, so the run is the same run as `run`'s (same command, same seed).
A directory from a finished training run is evaluated without training it again.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]   # the checkout this script is in

#: the 99.5% recipe of the goal rows ([784,1000,500,10], 60,000 images, --ema)
GOAL_60K_EMA = ("--layers 784,1000,500,10 --activation relu --init he --output softmax "
                "--cost log-likelihood --optimizer momentum --lr 0.05 --momentum 0.9 "
                "--batch-size 128 --epochs 330 --schedule exponential:0.99 --ema 0.9998 "
                "--augment rotate=10,shift=2,scale=0.1,shear=10,elastic=34:4 "
                "--merge-valid --no-monitor-train")

EXPERIMENTS = {
    # name: (row label, published figure, distnn train arguments, workers)
    "nielsen-ch3": ("[784,30,10] cross-entropy, η=0.5, λ=5, batch 10, 30 epochs (Nielsen ch. 3)",
                    "96.49%", "--recipe nielsen-ch3", 1),
    "nielsen-ch3-100": ("[784,100,10] cross-entropy, λ=5 (Nielsen ch. 3; his 98.04% is on "
                        "validation)", "≈98.0%", "--recipe nielsen-ch3-100", 1),
    "tanh-softmax": ("tanh hidden + softmax output, fan-in init, shuffling, L2, momentum "
                     "(tutorial)", "96%", "--recipe tanh-softmax", 1),
    "simard-plain": ("800 hidden units, cross-entropy, no distortion (Simard 2003)", "98.4%",
                     "--recipe simard-elastic --augment none --epochs 40", 1),
    "simard-plain-relu-ema": ("800 hidden units, no distortion: ReLU + He init, parameter "
                              "averaging (--ema 0.999), all 60,000 training images", "98.4%",
                              "--recipe simard-elastic --augment none --activation relu "
                              "--init he --lr 0.05 --batch-size 128 --epochs 40 "
                              "--schedule exponential:0.95 --ema 0.999 --merge-valid "
                              "--no-monitor-train", 1),
    "simard-plain-relu-l2": ("800 hidden units, no distortion: ReLU + He init, η 0.1, L2 "
                             "(λ 30), --ema 0.999, all 60,000 training images", "98.4%",
                             "--recipe simard-elastic --augment none --activation relu "
                             "--init he --lr 0.1 --l2 30 --batch-size 128 --epochs 40 "
                             "--schedule exponential:0.95 --ema 0.999 --merge-valid "
                             "--no-monitor-train", 1),
    "simard-affine": ("same + affine distortions (Simard 2003)", "98.9%",
                      "--recipe simard-elastic --augment rotate=10,shift=2,scale=0.1,shear=10 "
                      "--epochs 40", 1),
    "simard-elastic": ("same + elastic distortions (Simard 2003)", "99.3%",
                       "--recipe simard-elastic --epochs 40", 1),
    "simard-elastic-100": ("same + elastic distortions, 100 epochs", "99.3%",
                           "--recipe simard-elastic --epochs 100", 1),
    "simard-elastic-relu": ("same + elastic distortions, ReLU hidden units (He init), batch 128, "
                            "200 epochs", "99.3%",
                            "--recipe simard-elastic --activation relu --init he --lr 0.05 "
                            "--batch-size 128 --epochs 200 --schedule exponential:0.98 "
                            "--no-monitor-train", 2),
    "nielsen-ch6": ("conv 20@5x5, pool 2, conv 40@5x5, pool 2, 1000-1000 ReLU with dropout, "
                    "shifted images, batch 10, 40 epochs (Nielsen ch. 6)", "99.60%",
                    "--recipe nielsen-ch6 --no-monitor-train", 1),
    "simard-cnn": ("convolutional net with elastic distortions (Simard 2003)", "99.6%",
                   "--recipe simard-cnn --no-monitor-train", 1),
    "mnist-cnn": ("mnist-cnn: Nielsen ch. 6's network (conv 20@5x5, pool 2, conv 40@5x5, "
                  "pool 2, 1000-1000 ReLU with dropout) with momentum, a cosine schedule over "
                  "40 epochs, affine distortions and --ema 0.999, all 60,000 training images",
                  "99.60% (Nielsen ch. 6; Simard 2003)", "--recipe mnist-cnn", 1),
    "mnist-cnn-60": ("mnist-cnn over 60 epochs (cosine over 60)",
                     "99.60% (Nielsen ch. 6; Simard 2003)",
                     "--recipe mnist-cnn --epochs 60 --schedule cosine:60", 1),
    "mnist-cnn-bn": ("mnist-cnn with batch norm after every convolution and hidden dense "
                     "layer (per channel)", "99.60% (Nielsen ch. 6; Simard 2003)",
                     "--recipe mnist-cnn --batchnorm", 1),
    "mnist-cnn-wide": ("mnist-cnn with its convolutions widened to 32@5x5 and 64@5x5",
                       "99.60% (Nielsen ch. 6; Simard 2003)",
                       "--recipe mnist-cnn --layers "
                       "conv:32:5,pool:2,conv:64:5,pool:2,1000,1000,10", 1),
    "dropout": ("dropout 0.5 hidden + 0.2 input with max-norm (Hinton 2012 / Srivastava 2014)",
                "98.7%–98.9%", "--recipe dropout --epochs 40", 1),
    "dropout-100": ("dropout, as above, 100 epochs", "98.7%–98.9%",
                    "--recipe dropout --epochs 100 --no-monitor-train", 2),
    "dropout-100-ema": ("dropout, as above, 100 epochs, with parameter averaging (--ema 0.999)",
                        "98.7%–98.9%", "--recipe dropout --epochs 100 --ema 0.999 "
                        "--no-monitor-train", 2),
    "dropout-200": ("dropout, as above, 200 epochs", "98.7%–98.9%",
                    "--recipe dropout --epochs 200 --no-monitor-train", 2),
    "fashion-mlp": ("Fashion-MNIST, MLP", "87.1% (88.3% best MLP in its README)",
                    "--dataset fashion-mnist --layers 784,512,10 --activation relu --init he "
                    "--output softmax --cost log-likelihood --optimizer momentum --lr 0.02 "
                    "--momentum 0.9 --batch-size 64 --keep-prob 0.7 --epochs 40 "
                    "--schedule exponential:0.95", 1),
    "fashion-mlp-flip": ("Goal: Fashion-MNIST MLP [784,1024,1024,10], dropout, mirror images, "
                         "2 workers", "≥ 90.5% (goal)",
                         "--dataset fashion-mnist --layers 784,1024,1024,10 --activation relu "
                         "--init he --output softmax --cost log-likelihood --optimizer momentum "
                         "--lr 0.02 --momentum 0.9 --batch-size 64 --keep-prob 0.7 --epochs 40 "
                         "--schedule exponential:0.95 --augment flip=0.5 --no-monitor-train", 2),
    "fashion-mlp-ema": ("Fashion-MNIST, the MLP above with parameter averaging (--ema 0.999)",
                        "≥ 90.5% (goal)",
                        "--dataset fashion-mnist --layers 784,512,10 --activation relu "
                        "--init he --output softmax --cost log-likelihood --optimizer momentum "
                        "--lr 0.02 --momentum 0.9 --batch-size 64 --keep-prob 0.7 --epochs 40 "
                        "--schedule exponential:0.95 --ema 0.999", 1),
    "fashion-mlp-ema-60k": ("Fashion-MNIST, the same trained on all 60,000 training images "
                            "(--merge-valid)", "≥ 90.5% (goal)",
                            "--dataset fashion-mnist --layers 784,512,10 --activation relu "
                            "--init he --output softmax --cost log-likelihood --optimizer "
                            "momentum --lr 0.02 --momentum 0.9 --batch-size 64 --keep-prob 0.7 "
                            "--epochs 40 --schedule exponential:0.95 --ema 0.999 --merge-valid",
                            1),
    "fashion-wide-ema-60k": ("Fashion-MNIST, [784,1024,1024,10], dropout (keep 0.7), "
                             "--ema 0.999, all 60,000 training images", "≥ 90.5% (goal)",
                             "--dataset fashion-mnist --layers 784,1024,1024,10 --activation "
                             "relu --init he --output softmax --cost log-likelihood --optimizer "
                             "momentum --lr 0.02 --momentum 0.9 --batch-size 64 --keep-prob 0.7 "
                             "--epochs 40 --schedule exponential:0.95 --ema 0.999 --merge-valid "
                             "--no-monitor-train", 1),
    "mlp-elastic-goal": ("Goal: MLP [784,1000,500,10] ReLU + affine and elastic distortions, "
                         "under 1 hour on 2 workers", "≥ 99.5% (goal)",
                         "--layers 784,1000,500,10 --activation relu --init he --output softmax "
                         "--cost log-likelihood --optimizer momentum --lr 0.05 --momentum 0.9 "
                         "--batch-size 128 --epochs 400 --schedule exponential:0.988 "
                         "--augment rotate=10,shift=2,scale=0.1,shear=10,elastic=34:4 "
                         "--no-monitor-train", 2),
    "mlp-elastic-goal-60k": ("Goal: the same MLP trained on all 60,000 training images "
                             "(train + validation), 330 epochs, under 1 hour on 2 workers",
                             "≥ 99.5% (goal)",
                             "--layers 784,1000,500,10 --activation relu --init he "
                             "--output softmax --cost log-likelihood --optimizer momentum "
                             "--lr 0.05 --momentum 0.9 --batch-size 128 --epochs 330 "
                             "--schedule exponential:0.986 "
                             "--augment rotate=10,shift=2,scale=0.1,shear=10,elastic=34:4 "
                             "--merge-valid --no-monitor-train", 2),
    "mlp-elastic-goal-60k-ema": ("Goal: the same with parameter averaging (--ema 0.9998) and a "
                                 "slower decay (×0.99 per epoch)", "≥ 99.5% (goal)",
                                 GOAL_60K_EMA, 2),
    "mlp-elastic-20min": ("Stretch (#30): the row above, today's 99.5% recipe, in under 20 "
                          "minutes: the same command on AMD EPYC (Zen 5, AVX-512), 2 workers",
                          "≥ 99.5% in ≤ 20 min (goal)",
                          GOAL_60K_EMA, 2),
    "deep-elastic-screen": ("Cireşan et al. 2010's 784-2500-2000-1500-1000-500-10, ReLU, affine "
                            "and elastic distortions, 70 epochs on the 50,000 training images "
                            "(a screening run, validation monitored), 2 workers",
                            "99.65% (800 epochs, GPU)",
                            "--layers 784,2500,2000,1500,1000,500,10 --activation relu "
                            "--init he --output softmax --cost log-likelihood "
                            "--optimizer momentum --lr 0.03 --momentum 0.9 --warmup 1 "
                            "--batch-size 128 --epochs 70 --schedule exponential:0.95 "
                            "--augment rotate=10,shift=2,scale=0.1,shear=10,elastic=34:4 "
                            "--no-monitor-train", 2),
    "deep-elastic-mid-screen": ("Cireşan et al. 2010's 784-1500-1000-500-10 (their second "
                                "net), ReLU, affine and elastic distortions, cosine schedule, "
                                "200 epochs on the 50,000 training images (a screening run, "
                                "validation monitored), 2 workers",
                                "99.54% (their figure for this size)",
                                "--layers 784,1500,1000,500,10 --activation relu --init he "
                                "--output softmax --cost log-likelihood --optimizer momentum "
                                "--lr 0.05 --momentum 0.9 --warmup 1 --batch-size 128 "
                                "--epochs 200 --schedule cosine:200 "
                                "--augment rotate=10,shift=2,scale=0.1,shear=10,elastic=34:4 "
                                "--no-monitor-train", 2),
    "deep-elastic-6m": ("Cireşan et al. 2010's third net, 784-2000-1500-1000-500-10 (6.6M "
                        "parameters), ReLU, affine and elastic distortions, cosine schedule "
                        "over 260 epochs, all 60,000 training images, 2 workers, in under an "
                        "hour (AMD EPYC, Zen 5)",
                        "99.59% for this size (800 epochs, GPU); 99.65% for "
                        "784-2500-2000-1500-1000-500-10",
                        "--recipe deep-elastic --layers 784,2000,1500,1000,500,10 "
                        "--epochs 260 --schedule cosine:260", 2),
    "deep-elastic": ("deep-elastic (#30): Cireşan et al. 2010's 784-1500-1000-500-10, ReLU, "
                     "affine and elastic distortions, cosine schedule over 250 epochs, all "
                     "60,000 training images, 2 workers (Intel Xeon, AVX-512)",
                     "99.54% for this size; 99.65% for 784-2500-2000-1500-1000-500-10 "
                     "(800 epochs, GPU)", "--recipe deep-elastic", 2),
}


def _eval(path: Path, *flags: str) -> dict:
    """`distnn eval PATH --json` (a checkpoint or a checkpoint directory), as a dict."""
    ev = subprocess.run([sys.executable, "-m", "distnn.cli", "eval", str(path), "--json",
                         *flags], check=True, capture_output=True, text=True)
    return json.loads(ev.stdout)


def _train(name: str, seed: int, ckpt: Path, keep_last: int) -> str:
    """Run experiment NAME's `distnn train` into ``ckpt`` (metrics beside it); the
    command as typed."""
    _, _, args, workers = EXPERIMENTS[name]
    cmd = (f"distnn train {args} --seed {seed} --workers {workers} --checkpoint-dir {ckpt} "
           f"--metrics-out {ckpt}.metrics.json --keep-last {keep_last}")
    subprocess.run([sys.executable, "-m", "distnn.cli", "-q", *shlex.split(cmd)[1:]],
                   check=True)
    return cmd


def run(name: str, seed: int, root: Path) -> dict:
    _, _, args, workers = EXPERIMENTS[name]
    ckpt = root / f"{name}-s{seed}"
    t0 = time.time()
    cmd = _train(name, seed, ckpt, keep_last=1)
    wall = time.time() - t0
    res = _eval(ckpt)
    row = {"name": name, "seed": seed, "test_accuracy": res["accuracy"],
           "test_cost": res["cost"], "wall_seconds": wall, "workers": workers,
           "command": cmd}
    ema = json.loads(Path(f"{ckpt}.metrics.json").read_text())["config"].get("ema")
    if ema:   # (a flag or a recipe's) the ablation comes with the run: the last parameters
        row["test_accuracy_last"] = _eval(ckpt, "--last")["accuracy"]
    return row


#: `curve` keeps every epoch's checkpoint: runs up to this many epochs
CURVE_KEEP = 1000


def curve(name: str, seed: int, root: Path, every: int) -> list:
    """Train NAME (unless ROOT/NAME-curve-sSEED holds a finished run) keeping every
    checkpoint, then the test accuracy of every EVERY-th epoch and the last, against
    the training time up to it (the run's own per-epoch train_seconds, summed)."""
    ckpt = root / f"{name}-curve-s{seed}"
    metrics = Path(f"{ckpt}.metrics.json")
    if not metrics.exists():
        if ckpt.exists():
            raise SystemExit(f"{ckpt} holds a run that did not finish ({metrics} is missing): "
                             f"continue it with distnn train --resume {ckpt} --metrics-out "
                             f"{metrics}, or delete it and run this again")
        _train(name, seed, ckpt, keep_last=CURVE_KEEP)
    m = json.loads(metrics.read_text())
    hist = m["history"]
    kept = {int(d.name.split("-")[1]): d for d in ckpt.glob("epoch-*") if d.is_dir()}
    last = hist[-1]["epoch"]
    want = [e["epoch"] for e in hist if e["epoch"] % every == 0 or e["epoch"] == last]
    missing = [e for e in want if e not in kept]
    if missing:
        raise SystemExit(f"{ckpt} has no checkpoint of epoch(s) {missing[:5]}: it was not "
                         f"trained by `curve` (which keeps every epoch)")
    train_s, points = 0.0, []
    for e in hist:
        train_s += e["train_seconds"]
        if e["epoch"] in want:
            res = _eval(kept[e["epoch"]])
            points.append({"epoch": e["epoch"], "train_minutes": round(train_s / 60, 2),
                           "test_accuracy": res["accuracy"], "test_cost": res["cost"]})
            print(f"epoch {e['epoch']:4d}  {train_s / 60:6.1f} min  "
                  f"test {100 * res['accuracy']:.2f}%", flush=True)
    out = {"name": name, "seed": seed, "wall_seconds": m["wall_seconds"],
           "final_test_accuracy": m.get("test_accuracy"), "points": points}
    Path(f"{ckpt}.test.json").write_text(json.dumps(out, indent=1) + "\n")
    return points


MARKERS = ("<!-- results -->", "<!-- /results -->")


def _rows_in(text: str) -> dict:
    """The rows of the table already in ``text``, by their first cell (the label)."""
    if MARKERS[0] not in text:
        return {}
    block = text[text.index(MARKERS[0]):text.index(MARKERS[1])]
    return {line.split(" | ", 1)[0][2:]: line for line in block.splitlines()
            if line.startswith("| ") and " | " in line}


def table(root: Path, out: Path) -> None:
    log = root / "runs.jsonl"
    runs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] \
        if log.exists() else []
    text = out.read_text() if out.exists() else ""
    # runs.jsonl holds what this machine ran (results/ is not in git): an experiment it
    # has no run of keeps the row the table already has, made elsewhere
    earlier = _rows_in(text)
    rows = []
    for name, (label, published, _, workers) in EXPERIMENTS.items():
        # a re-run of a seed (e.g. after a recipe changed) replaces the earlier one
        rs = list({r["seed"]: r for r in runs if r["name"] == name}.values())
        if not rs:
            rows.append(earlier.get(label, f"| {label} | {published} | not run yet | | | |"))
            continue
        accs = [100 * r["test_accuracy"] for r in rs]
        fig = f"{accs[0]:.2f}%" if len(accs) == 1 else \
            f"{statistics.mean(accs):.2f}% ± {statistics.stdev(accs):.2f} ({len(accs)} seeds)"
        if all("test_accuracy_last" in r for r in rs):   # --ema runs: both figures
            last = statistics.mean(100 * r["test_accuracy_last"] for r in rs)
            fig += f" (last parameters, `eval --last`: {last:.2f}%)"
        wall = statistics.mean(r["wall_seconds"] for r in rs)
        cmd = rs[0]["command"]          # as it ran: the first seed's, copy-paste runnable
        cmd = re.sub(r"\S*/results/", "results/", cmd)   # runs made with --root /abs/results
        rows.append(f"| {label} | {published} | {fig} | {wall / 60:.1f} min | {workers} | "
                    f"`{cmd}` |")
    head = ("| experiment | published | distnn (test) | wall time / run | workers | command |\n"
            "|---|---|---|---|---|---|")
    marker_a, marker_b = MARKERS
    block = f"{marker_a}\n{head}\n" + "\n".join(rows) + f"\n{marker_b}"
    if marker_a in text:
        text = text[:text.index(marker_a)] + block + text[text.index(marker_b) + len(marker_b):]
    else:
        text += "\n" + block + "\n"
    out.write_text(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("names", nargs="+", choices=sorted(EXPERIMENTS))
    r.add_argument("--seeds", type=int, default=1, help="how many seeds")
    r.add_argument("--first-seed", type=int, default=0, help="seeds run from this one up")
    r.add_argument("--root", default="results")
    t = sub.add_parser("table")
    t.add_argument("--root", default=str(REPO / "results"),
                   help="where the runs were recorded (default: results/ of this checkout)")
    t.add_argument("--out", default=str(REPO / "docs" / "RESULTS.md"),
                   help="the table's file (default: docs/RESULTS.md of this checkout)")
    c = sub.add_parser("curve", help="test accuracy against training time of one run")
    c.add_argument("name", choices=sorted(EXPERIMENTS))
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--every", type=int, default=10, help="evaluate every N-th epoch (and "
                   "the last)")
    c.add_argument("--root", default="results")
    a = p.parse_args(argv)
    root = Path(a.root)
    if a.cmd == "table":
        if not Path(a.out).parent.is_dir():
            p.error(f"--out {a.out}: {Path(a.out).parent} is not a directory")
        table(root, Path(a.out))
        return 0
    root.mkdir(parents=True, exist_ok=True)
    if a.cmd == "curve":
        if a.every < 1:
            p.error("--every must be at least 1")
        curve(a.name, a.seed, root, a.every)
        return 0
    for name in a.names:
        for seed in range(a.first_seed, a.first_seed + a.seeds):
            res = run(name, seed, root)
            with open(root / "runs.jsonl", "a") as f:
                f.write(json.dumps(res) + "\n")
            print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
