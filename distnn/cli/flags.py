"""The train settings as flags: one flag per ``TrainConfig`` field, its help, and the
order in which defaults, a recipe, a TOML file and flags combine."""
from __future__ import annotations

import argparse
import tomllib

from ..config import TrainConfig, field_names, from_mapping
from ..core.optim import OPTIMIZERS

# flag help; the default shown comes from TrainConfig so the two cannot disagree
HELP = {
    "dataset": "dataset: mnist, fashion-mnist, digits, idx (your own IDX files in "
               "--data-dir), or parquet:PATH_OR_URI (a Parquet file, directory or glob, "
               "local or s3://..., each worker reading only its shard)",
    "data_dir": "directory holding the dataset files (IDX files, mnist.pkl.gz or "
                "digits.csv); required for --dataset idx",
    "train_size": "use only the first N training examples (e.g. 1000 to study overfitting)",
    "merge_valid": "train on the training and validation splits together, for the final "
                   "model once the settings are chosen (no validation metrics then)",
    "standardize": "standardise inputs per pixel with training-split mean/std "
                   "(inputs are always scaled to [0, 1])",
    "label_column": "--dataset parquet:...: the column of integer labels 0..K-1",
    "feature_columns": "--dataset parquet:... without an 'image' column: the numeric "
                       "feature columns, A,B,C; empty: every numeric column but the label "
                       "and the split column",
    "split_column": "--dataset parquet:...: a column saying train, validation or test for "
                    "each row; unset: a string column named 'split' if there is one, else "
                    "by file name (train/validation/test in it), else --split",
    "split": "--dataset parquet:... without split files or --split-column: the "
             "train/validation/test shares of the rows, by a hash of each row's position",
    "shard_memory": "--dataset parquet:...: MB of examples a worker may hold; its shard is "
                    "read a row group at a time as training visits it, the epoch "
                    "shuffled within windows of MB/2 of examples (the same order for any "
                    "number of workers); unset: each worker holds its whole shard, "
                    "fully shuffled",
    "data_shards": "--dataset parquet:...: the contiguous shards the training split is "
                   "kept in, each worker reading its own; every global batch draws equally "
                   "from each, each shard shuffled on its own (0 = --workers; the result "
                   "depends on it, not on the number of workers: pass the same value to "
                   "compare runs with different --workers)",
    "max_image_pixels": "--dataset parquet:... with encoded images (PNG/JPEG): refuse an "
                        "image with more pixels than this, from its header, before "
                        "decoding it (a decompression bomb)",
    "augment": "on-the-fly augmentation, e.g. rotate=15,shift=2,scale=0.1,shear=10,"
               "elastic=34:4 (ALPHA:SIGMA), flip=0.5 (left-right mirror probability, for "
               "clothing, not digits), or none",
    "layers": "the network, input first: dense layer widths (784,30,10), after image "
              "layers where the input is images: conv:F:K (F filters of KxK; conv:F:K:same "
              "pads to keep the size), pool:P (PxP max pooling), e.g. "
              "conv:20:5,pool:2,conv:40:5,pool:2,1000,10 (the input width, 784, may lead; "
              "the image shape is the dataset's)",
    "input_shape": "the input images' H,W[,C] for image layers (default: the dataset's "
                   "image shape; a run records it)",
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
    "optimizer": ", ".join(OPTIMIZERS),
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
                "by F), cosine:E[:F] (half a cosine down to F times --lr over E epochs)",
    "warmup": "linear learning-rate warm-up over this many epochs",
    "early_stop": "stop after N epochs without improvement of --monitor and restore the "
                  "best parameters (0 = off)",
    "monitor": "metric for early stopping and plateau: valid_accuracy, valid_cost, "
               "train_accuracy, train_cost",
    "seed": "seed for initial weights, shuffling, dropout and augmentation",
    "workers": "number of data-parallel workers: 1 trains in this process, N >= 2 on Ray "
               "(--batch-size stays the global batch, split in N contiguous slices)",
    "threads": "BLAS threads of each worker (each Ray worker takes that many CPUs; default: 1 for a Ray worker, NumPy's own choice for --workers 1, all cores)",
    "bucket_mb": "overlap the all-reduce with backprop: all-reduce the gradient in buckets "
                 "of about MB megabytes (whole layers, from the last back) as soon as "
                 "backprop has finished them, every worker then updating everything (tcp, "
                 "and hier with one worker a node; 0: off, the default: on 2 shared cores it "
                 "measured slower, docs/BENCHMARKS.md)",
    "local_steps": "synchronise the replicas every H steps (1: every step, the "
                   "synchronous run): each logical replica applies --optimizer to its own "
                   "parameters for H steps on its slice of every global batch, then the "
                   "replicas' averaged change goes through --outer (local SGD, DiLoCo); "
                   "every epoch ends with a synchronisation. The result depends on "
                   "--replicas, never on --workers or faults",
    "outer": "with --local-steps: average (local SGD: the replicas' mean) or "
             "nesterov[:LR[:MOMENTUM]] (DiLoCo's outer Nesterov on the averaged change; "
             "defaults 0.7, 0.9)",
    "overlap_sync": "with --local-steps: run each synchronisation while the replicas "
                    "take their next H steps, and apply it one synchronisation late "
                    "(each replica's progress meanwhile moved onto the new parameters, "
                    "as Streaming DiLoCo does): hides the communication, changes the "
                    "result (still the same on any number of workers)",
    "replicas": "with --local-steps: the number K of logical replicas, fixed for the run "
                "and spread over the workers (default: --workers); K on any number of "
                "workers, with any faults, gives the same parameters bit for bit",
    "address": "Ray cluster to join: auto or HOST:PORT (default: start a local Ray on "
               "127.0.0.1 and stop it at the end)",
    "allreduce": "all-reduce backend: auto (shm on one node; on several, hier when each "
                 "has the same number of workers, else tcp), shm (shared memory, one node), "
                 "tcp (a ring over direct TCP connections), hier (shm inside each node, "
                 "tcp across nodes) or ring (Ray actor calls; slow, needs no open ports)",
    "compress": "gradient compression: none (the exact all-reduce), bf16 (gradients travel "
                "as bfloat16: half the bytes) or powersgd:R (PowerSGD, each weight matrix "
                "as a rank-R product with error feedback: R=4 sends ~1/60 of the main job's "
                "bytes); every replica applies the whole update (no parameter all-gather). "
                "N workers give one process's result with none; with powersgd each "
                "step's update is one process's up to rounding, which PowerSGD amplifies "
                "over a run: another trajectory of the same accuracy (README). With "
                "--local-steps: none or bf16 (each synchronisation in bfloat16, still an "
                "exact sum)",
    "comm_ports": "ports the tcp/hier backends listen on, LO-HI (for firewalled clusters; "
                  "default: any free port)",
    "comm_timeout": "seconds a worker waits in an all-reduce for its peers before the "
                    "epoch is given up and replayed",
    "lr_scaling": "none, or linear: multiply --lr by --workers for a global batch grown with "
                  "the worker count (pair it with --warmup)",
    "check_replicas": "compare the workers' parameter digests every K steps (0 = only at "
                      "the end of each epoch)",
    "replace_timeout": "seconds to wait for workers to be placed and to join (a replacement "
                       "after a fault, too) before the run stops with its last complete "
                       "epoch kept",
    "replace_wait": "seconds to wait for CPUs to replace a lost worker when the cluster "
                    "has none free (a lost node and no spare capacity) before going on "
                    "with the workers left; they grow back at an epoch boundary when CPUs "
                    "appear (0 = go on at once)",
    "min_workers": "start as soon as the cluster has this many CPUs (more workers join at "
                   "epoch boundaries, up to --workers), and go on with the workers left when "
                   "lost ones cannot be replaced while at least this many remain (same "
                   "global batch, same updates; default: start with all, go on down to 1)",
    "max_failures": "replays of one epoch after worker deaths before giving up",
    "monitor_train": "evaluate cost and accuracy on the training split every epoch",
    "metrics_out": "write per-epoch history and test metrics to this JSON file",
    "checkpoint_dir": "save a checkpoint (Parquet tensors + JSON metadata) here after every "
                      "epoch; CKPT_DIR/latest names the newest; one run per directory "
                      "(see --overwrite)",
    "keep_last": "checkpoints to keep (the best by --monitor is kept as well)",
    "resume": "continue a run with the settings it was started with: from PATH (a "
              "--checkpoint-dir or one epoch's checkpoint), or without a value from "
              "--checkpoint-dir's latest; flags that change what is computed need "
              "--override",
    "overwrite": "a fresh run (no --resume) whose --checkpoint-dir or --logdir already "
                 "holds another run's checkpoints or logs deletes them instead of stopping",
    "override": "with --resume: let this setting differ from the checkpoint's (repeat the "
                "flag or give KEY,KEY); the change is recorded in the checkpoint's history",
    "bayes_error": "the best achievable error (e.g. human error) for the bias/variance "
                   "diagnosis, as a fraction",
    "logdir": "write TensorBoard logs here (e.g. runs/NAME); open them with "
              "tensorboard --logdir DIR",
}
#: how a flag's text becomes a value, by the field's annotation in TrainConfig (text
#: that config parses itself, such as layers "784,30,10" or l2 "5,1", stays text)
FLAG_TYPES = {"int": int, "int | None": int, "float": float, "float | None": float}


def add_train_flags(p: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    p.add_argument("--recipe", metavar="NAME",
                   help="start from a named recipe (`distnn recipes` lists them); --config "
                        "and flags override it")
    p.add_argument("--config", metavar="FILE.toml",
                   help="TOML file of these settings (keys spelled with underscores; a "
                        "recipe file works too: `distnn recipes show NAME`); flags given "
                        "on the command line override it")
    p.add_argument("--print-config", action="store_true",
                   help="print the settings as a TOML file --config accepts, and exit")
    for name in field_names():
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name)
        shown = ",".join(map(str, default)) if name == "layers" else default
        # a help text that says its own default (what None means) is not given another;
        # an unset default (None: "not given") is not shown
        help_ = (HELP[name] if "default:" in HELP[name] or default is None
                 else f"{HELP[name]} (default: {shown})")
        if name == "resume":
            p.add_argument(flag, dest=name, nargs="?", const="latest", default=None,
                           metavar="PATH", help=help_)
            continue
        if name == "override":
            p.add_argument(flag, dest=name, action="append", default=None, metavar="KEY",
                           type=lambda t: [k.strip().replace("-", "_") for k in t.split(",")],
                           help=f"{HELP[name]} (default: none)")
            continue
        kind = TrainConfig.__dataclass_fields__[name].type
        if kind == "bool":
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                           default=None, help=help_)
            continue
        typ = FLAG_TYPES.get(kind, str)
        metavar = {"layers": "N,N,...", "input_shape": "H,W[,C]", "augment": "SPEC", "schedule": "SPEC",
                   "metrics_out": "FILE.json", "data_dir": "DIR", "checkpoint_dir": "DIR",
                   "comm_ports": "LO-HI", "label_column": "NAME",
                   "feature_columns": "A,B,C", "split_column": "NAME", "split": "T/V/T",
                   "shard_memory": "MB", "bucket_mb": "MB", "data_shards": "S", "compress": "NAME[:ARG]",
                   "local_steps": "H", "outer": "SPEC", "replicas": "K",
                   "logdir": "DIR"}.get(name, name.upper())
        p.add_argument(flag, dest=name, type=typ, default=None, help=help_, metavar=metavar)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's settings (``run_from_args`` without the checkpoint)."""
    return run_from_args(args)[0]


def run_from_args(args: argparse.Namespace):
    """(settings, the checkpoint a ``--resume`` continues or None).  Defaults < recipe
    < TOML file < command-line flags.  With ``--resume`` the checkpoint's settings take
    the place of the defaults, so a resumed run continues as it was unless a flag says
    otherwise (which the resume then checks); the checkpoint is read here, once, and
    handed to the run."""
    from .. import recipes
    sources = []
    if getattr(args, "recipe", None):
        sources.append((f"recipe {args.recipe}", recipes.settings(args.recipe)))
    if args.config:
        sources.append((args.config, recipes.split(read_toml(args.config), args.config)[0]))
    flags = {k: getattr(args, k) for k in field_names() if getattr(args, k) is not None}
    if "override" in flags:     # --override a,b --override c
        flags["override"] = [k for group in flags["override"] for k in group]
    sources.append(("command line", flags))
    merged = {k: v for _, values in sources for k, v in values.items()}
    cfg, resumed = TrainConfig(), None
    if merged.get("resume"):
        where = from_mapping({k: merged[k] for k in ("resume", "checkpoint_dir")
                              if k in merged}, where="--resume")    # types checked first
        cfg, resumed = checkpoint_config(where.resume, where.checkpoint_dir)
    for where, values in sources:
        cfg = from_mapping(values, base=cfg, where=where)
    return cfg, resumed


def print_config(args, cfg: TrainConfig) -> bool:
    """``--print-config``: print the settings as TOML; True when the command should stop."""
    if getattr(args, "print_config", False):
        print(cfg.to_toml(), end="")
        return True
    return False


def read_toml(path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"--config {path}: {e}") from None
    except UnicodeDecodeError:
        raise ValueError(f"--config {path} is not a text file (not UTF-8): give a TOML file "
                         "such as `distnn recipes show nielsen-ch3` prints") from None


def checkpoint_config(resume: str, checkpoint_dir: str | None):
    """(the settings of the run a ``--resume`` continues, saving where it saved unless
    --checkpoint-dir says otherwise; the checkpoint, read once: ``train.resume``)."""
    from ..io.checkpoint import load
    from ..train import resume as resuming
    given = resuming.source(resume, checkpoint_dir)
    if given is None:
        return TrainConfig(), None      # validation says what is missing
    c = load(given)
    return resuming.settings(c, given), c
