"""``distnn`` command line: flags or a TOML file -> config -> run."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tomllib

import numpy as np

from . import __version__
from .config import TrainConfig, field_names, from_mapping, parse_layers, parse_strength

log = logging.getLogger("distnn")

# flag help; the default shown comes from TrainConfig so the two cannot disagree
HELP = {
    "dataset": "dataset: mnist, fashion-mnist, digits, or idx (your own IDX files in "
               "--data-dir)",
    "data_dir": "directory holding the dataset files (IDX files, mnist.pkl.gz or "
                "digits.csv); required for --dataset idx",
    "train_size": "use only the first N training examples (e.g. 1000 to study overfitting)",
    "merge_valid": "train on the training and validation splits together, for the final "
                   "model once the settings are chosen (no validation metrics then)",
    "standardize": "standardise inputs per pixel with training-split mean/std "
                   "(inputs are always scaled to [0, 1])",
    "augment": "on-the-fly augmentation, e.g. rotate=15,shift=2,scale=0.1,shear=10,"
               "elastic=34:4 (ALPHA:SIGMA), flip=0.5 (left-right mirror probability, for "
               "clothing, not digits), or none",
    "layers": "layer sizes, input first, e.g. 784,30,10",
    "activation": "hidden activation: sigmoid, tanh, scaled-tanh, relu",
    "output": "output activation: softmax, sigmoid, tanh, scaled-tanh, relu, identity",
    "cost": "cost: quadratic, cross-entropy (sigmoid output), log-likelihood (softmax output)",
    "init": "weight init: large N(0,1), fan-in N(0,1/n_in), glorot, he, uniform",
    "init_scale": "half-width a of --init uniform's U(-a, a)",
    "keep_prob": "dropout keep probability after each hidden layer (1 = no dropout)",
    "keep_prob_input": "dropout keep probability on the inputs (1 = no dropout)",
    "batchnorm": "batch normalisation before each hidden activation",
    "sync_batchnorm": "with --workers N >= 2: batch-norm statistics over the whole global "
                      "batch (all-reduced, 3 small all-reduces per layer and step) instead of "
                      "each worker's slice; training then equals one process's",
    "dtype": "float32 or float64",
    "optimizer": "sgd, momentum, nesterov, rmsprop or adam",
    "lr": "learning rate η",
    "momentum": "momentum μ (momentum, nesterov)",
    "beta1": "Adam β1", "beta2": "Adam β2", "eps": "ε of Adam and RMSprop",
    "rho": "RMSprop decay ρ",
    "l1": "L1 strength λ: adds (λ/n)Σ|w| to the cost (n = training-set size); one value, "
          "or one per weight layer like 0.5,0.1",
    "l2": "L2 strength λ: adds (λ/2n)Σw² to the cost (n = training-set size); one value, "
          "or one per weight layer like 5,1",
    "max_norm": "cap each unit's incoming weight norm at this value",
    "ema": "also keep an exponential moving average of the parameters with this decay "
           "(e.g. 0.999; Polyak averaging), and evaluate, checkpoint-evaluate and export "
           "the average instead of the last parameters (0 = off)",
    "batch_size": "mini-batch size",
    "epochs": "maximum number of epochs",
    "schedule": "learning-rate schedule: constant, step:K:G, exponential:G, inverse-time:D, "
                "plateau:N[:F] (halve after N epochs without improvement, stop after a fall "
                "by F)",
    "warmup": "linear learning-rate warm-up over this many epochs",
    "early_stop": "stop after N epochs without improvement of --monitor and restore the "
                  "best parameters (0 = off)",
    "monitor": "metric for early stopping and plateau: valid_accuracy, valid_cost, "
               "train_accuracy, train_cost",
    "seed": "seed for initial weights, shuffling, dropout and augmentation",
    "workers": "number of data-parallel workers: 1 trains in this process, N >= 2 on Ray "
               "(--batch-size stays the global batch)",
    "address": "Ray cluster to join: auto or HOST:PORT (default: start a local Ray on "
               "127.0.0.1 and stop it at the end)",
    "allreduce": "all-reduce backend: auto (shm when all workers share a node, else ring), "
                 "shm (shared memory, one node) or ring (Ray object refs, any nodes)",
    "lr_scaling": "none, or linear: multiply --lr by --workers for a global batch grown with "
                  "the worker count (pair it with --warmup)",
    "check_replicas": "compare the workers' parameter digests every K steps (0 = only at "
                      "the end of each epoch)",
    "max_failures": "replays of one epoch after worker deaths before giving up",
    "monitor_train": "evaluate cost and accuracy on the training split every epoch",
    "metrics_out": "write per-epoch history and test metrics to this JSON file",
    "checkpoint_dir": "save a checkpoint (Parquet tensors + JSON metadata) here after every "
                      "epoch; CKPT_DIR/latest names the newest",
    "keep_last": "checkpoints to keep (the best by --monitor is kept as well)",
    "resume": "continue a run: from --checkpoint-dir's latest checkpoint (no value) or the "
              "checkpoint PATH given",
    "bayes_error": "the best achievable error (e.g. human error) for the bias/variance "
                   "diagnosis, as a fraction",
    "logdir": "write TensorBoard logs here (e.g. runs/NAME); open them with "
              "tensorboard --logdir DIR",
}
BOOL_FLAGS = {"merge_valid", "standardize", "batchnorm", "sync_batchnorm", "monitor_train"}


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    p.add_argument("--recipe", metavar="NAME",
                   help="start from a named recipe (`distnn recipes` lists them); --config "
                        "and flags override it")
    p.add_argument("--config", metavar="FILE.toml",
                   help="TOML file of these settings (keys spelled with underscores); "
                        "flags given on the command line override it")
    for name in field_names():
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name)
        shown = ",".join(map(str, default)) if name == "layers" else default
        help_ = f"{HELP[name]} (default: {shown})"
        if name == "resume":
            p.add_argument(flag, dest=name, nargs="?", const="latest", default=None,
                           metavar="PATH", help=help_)
            continue
        if name in BOOL_FLAGS:
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                           default=None, help=help_)
            continue
        typ = {int: int, float: float}.get(type(default), str)
        if name in ("train_size",):
            typ = int
        if name == "max_norm":
            typ = float
        if name in ("l1", "l2"):
            typ = str   # one number, or one per weight layer: parsed by config
        metavar = {"layers": "N,N,...", "augment": "SPEC", "schedule": "SPEC",
                   "metrics_out": "FILE.json", "data_dir": "DIR", "checkpoint_dir": "DIR",
                   "logdir": "DIR"}.get(name, name.upper())
        p.add_argument(flag, dest=name, type=typ, default=None, help=help_, metavar=metavar)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults < recipe < TOML file < command-line flags."""
    from . import recipes
    cfg = TrainConfig()
    if getattr(args, "recipe", None):
        cfg = from_mapping(recipes.settings(args.recipe), where=f"recipe {args.recipe}")
    if args.config:
        try:
            with open(args.config, "rb") as f:
                values = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ValueError(f"--config {args.config}: {e}") from None
        cfg = from_mapping(values, base=cfg, where=args.config)
    flags = {k: getattr(args, k) for k in field_names() if getattr(args, k) is not None}
    return from_mapping(flags, base=cfg, where="command line")


def cmd_train(args) -> int:
    from . import fit
    from .train.loop import DivergenceError
    cfg = config_from_args(args)
    try:
        m = fit(cfg)
    except DivergenceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except RuntimeError as e:  # worker failures beyond --max-failures, replica divergence
        print(f"error: {e}", file=sys.stderr)
        return 4
    h = m["history"]
    if h:
        last = h[-1]
        if last.get("valid_accuracy") is not None:
            seen = f"; last epoch valid accuracy {100 * last['valid_accuracy']:.2f}%"
        elif last.get("batch_cost") is not None:   # --merge-valid: no validation split
            seen = f"; last epoch mini-batch cost {last['batch_cost']:.4f}"
        else:   # a history from before batch_cost was recorded
            seen = ""
        print(f"finished {len(h)} epochs in {m['wall_seconds']:.1f}s{seen}")
    if "test_accuracy" in m:
        print(f"test accuracy {100 * m['test_accuracy']:.2f}%  test cost {m['test_cost']:.4f}")
    if m.get("diagnosis"):
        from .train.diagnosis import format_diagnosis
        print(format_diagnosis(m["diagnosis"]))
    if cfg.metrics_out:
        print(f"metrics written to {cfg.metrics_out}")
    return 0


def cmd_gradcheck(args) -> int:
    from .core.gradcheck import check_network
    from .core.network import Network
    sizes = args.layers
    net = Network(sizes, activation=args.activation, output=args.output, cost=args.cost,
                  init=args.init, keep_prob=args.keep_prob, batchnorm=args.batchnorm,
                  seed=args.seed, dtype="float64", keep_prob_input=args.keep_prob_input)
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.batch_size, sizes[0]))
    y = rng.integers(0, sizes[-1], args.batch_size)
    errors = check_network(net, x, y, l1=args.l1, l2=args.l2, n=args.batch_size,
                           max_per_block=args.max_per_block, rng=rng)
    worst = max(errors.values())
    print(f"{'parameter':<20} {'max rel. error':>14}")
    for name, err in errors.items():
        flag = "" if err <= args.tol else "  FAIL"
        print(f"{name:<20} {err:>14.3e}{flag}")
    ok = worst <= args.tol
    print(f"{'PASS' if ok else 'FAIL'}: worst {worst:.3e} (tolerance {args.tol:g}, float64, "
          f"central differences)")
    return 0 if ok else 1


def cmd_data(args) -> int:
    from .data import load
    splits = load(args.name, args.data_dir)
    if args.action == "fetch":
        print(f"{args.name}: ready (source: {splits.source})")
        return 0
    if args.action == "info":
        info = {"name": splits.name, "source": splits.source, "classes": splits.n_classes,
                "pixel_max": splits.pixel_max}
        for part in ("train", "valid", "test"):
            s = getattr(splits, part)
            info[part] = {"images": list(s.x.shape), "labels_per_class":
                          np.bincount(s.y, minlength=splits.n_classes).tolist(),
                          "mean_pixel": round(float(s.x.mean()), 3) if len(s) else None}
        print(json.dumps(info, indent=2))
        return 0
    return _preview(args, splits)


def _preview(args, splits) -> int:
    from .data.augment import Augmenter
    from .io.png import grid, write_png
    if args.out is None:
        raise ValueError("data preview needs an output file: distnn data preview mnist out.png")
    aug = Augmenter(args.augment, seed=args.seed, pixel_max=splits.pixel_max)
    idx = np.arange(args.count)
    x = splits.train.x[idx]
    rows = [x.astype(np.float32) / splits.pixel_max]
    rows += [aug(x, idx, epoch) for epoch in range(args.rows)]
    tiles = np.concatenate(rows)
    img = grid(np.clip(np.rint(tiles * 255), 0, 255).astype(np.uint8), cols=args.count)
    write_png(args.out, img)
    print(f"wrote {args.out}: first row original, then {args.rows} epochs of '{aug.spec}'")
    return 0


def _search_args(p):
    p.add_argument("--grid", nargs="+", default=[], metavar="KEY=V1,V2",
                   help="grid values, e.g. hidden=10,25,50 lr=0.05,0.1 l2=0.0001,0.001")
    p.add_argument("--random", nargs="+", default=[], metavar="KEY=DIST",
                   help="random specs: lr=loguniform:1e-3:1 hidden=choice:30,100 "
                        "keep_prob=uniform:0.5:1 batch_size=randint:8:64")
    p.add_argument("--samples", type=int, default=20, help="random trials to draw")
    p.add_argument("--search-seed", type=int, default=0, help="seed of the random draws")
    p.add_argument("--asha", action="store_true", help="stop poor trials early (ASHA)")
    p.add_argument("--out", default="search", help="directory for results.csv/.parquet, "
                   "best.toml, summary.json and the Tune state")
    p.add_argument("--name", default="search", help="search name (resume uses it)")
    p.add_argument("--resume-search", action="store_true",
                   help="continue an interrupted search in --out")


def build_parser() -> argparse.ArgumentParser:
    from . import cli_tools as tools
    p = argparse.ArgumentParser(prog="distnn", description="Data-parallel training of "
                                "fully-connected networks with a NumPy core.")
    p.add_argument("--version", action="version", version=f"distnn {__version__}")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a network", description="Train a network. "
                       "Settings come from defaults, then --config FILE.toml, then flags.")
    _add_train_flags(t)
    t.set_defaults(fn=cmd_train)
    g = sub.add_parser("gradcheck", help="compare backprop with central differences",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g.add_argument("--layers", type=parse_layers, default=(20, 15, 10))
    g.add_argument("--activation", default="sigmoid")
    g.add_argument("--output", default="softmax")
    g.add_argument("--cost", default="log-likelihood")
    g.add_argument("--init", default="fan-in")
    g.add_argument("--keep-prob", type=float, default=1.0)
    g.add_argument("--keep-prob-input", type=float, default=1.0)
    g.add_argument("--batchnorm", action="store_true")
    g.add_argument("--l1", type=lambda t: parse_strength(t, "l1"), default=0.0,
                   help="L1 λ: one value or one per weight layer")
    g.add_argument("--l2", type=lambda t: parse_strength(t, "l2"), default=0.0,
                   help="L2 λ: one value or one per weight layer")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--tol", type=float, default=1e-6, help="largest relative error accepted")
    g.add_argument("--max-per-block", type=int, default=None,
                   help="check at most this many entries per parameter block")
    g.set_defaults(fn=cmd_gradcheck)
    d = sub.add_parser("data", help="fetch, describe or preview a dataset")
    d.add_argument("action", choices=("fetch", "info", "preview"))
    d.add_argument("name", choices=("mnist", "fashion-mnist", "digits", "idx"))
    d.add_argument("out", nargs="?", help="output PNG (preview)")
    d.add_argument("--data-dir", default=None)
    d.add_argument("--augment", default="rotate=15,shift=2,elastic=34:4",
                   help="augmentation spec to preview")
    d.add_argument("--count", type=int, default=10, help="images per row (preview)")
    d.add_argument("--rows", type=int, default=3, help="distorted rows, one per epoch")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(fn=cmd_data)
    se = sub.add_parser("search", help="grid or random hyperparameter search on Ray Tune")
    _add_train_flags(se)
    _search_args(se)
    se.set_defaults(fn=tools.cmd_search)
    lf = sub.add_parser("lr-find", help="Nielsen's learning-rate threshold search")
    _add_train_flags(lf)
    lf.add_argument("--start", type=float, default=0.01, help="first learning rate tried")
    lf.add_argument("--find-epochs", type=int, default=3,
                    help="epochs per try: the cost must fall over these")
    lf.add_argument("--refine", type=int, default=4, help="bisection steps after the x10 search")
    lf.add_argument("--plot", metavar="OUT.png", help="plot the tried cost curves")
    lf.set_defaults(fn=tools.cmd_lr_find)
    r = sub.add_parser("recipes", help="list the named configs for --recipe")
    r.set_defaults(fn=tools.cmd_recipes)
    e = sub.add_parser("eval", help="accuracy, cost, per-class accuracy and confusion matrix "
                       "of a checkpoint")
    e.add_argument("checkpoint", help="checkpoint directory, or a --checkpoint-dir (latest)")
    e.add_argument("--dataset", default=None, help="default: the one it was trained on")
    e.add_argument("--data-dir", default=None)
    e.add_argument("--split", choices=("train", "valid", "test"), default="test")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--last", action="store_true",
                   help="a run trained with --ema: the last parameters trained instead of "
                        "their average")
    e.set_defaults(fn=tools.cmd_eval)
    i = sub.add_parser("inspect", help="architecture, parameter count, config and history")
    i.add_argument("checkpoint")
    i.set_defaults(fn=tools.cmd_inspect)
    x = sub.add_parser("export", help="write a checkpoint in another format")
    x.add_argument("checkpoint")
    x.add_argument("out")
    x.add_argument("--format", choices=("network2-json",), default="network2-json")
    x.set_defaults(fn=tools.cmd_export)
    m = sub.add_parser("import-network2", help="turn Nielsen's network2.py JSON into a "
                       "checkpoint")
    m.add_argument("json_in", metavar="IN.json")
    m.add_argument("out", metavar="CKPT_DIR")
    m.add_argument("--dataset", default="mnist", help="the dataset it was trained on")
    m.set_defaults(fn=tools.cmd_import)
    pl = sub.add_parser("plot", help="cost and accuracy curves as a PNG (needs matplotlib)")
    pl.add_argument("run", help="a --metrics-out JSON, a checkpoint, or a --checkpoint-dir")
    pl.add_argument("out", help="output PNG")
    pl.set_defaults(fn=tools.cmd_plot)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    from .data.idx import DataError
    from .io.checkpoint import CheckpointError
    try:
        return args.fn(args)
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        sys.stderr.close()
        return 0
    except (ValueError, DataError, KeyError, ConnectionError, CheckpointError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
