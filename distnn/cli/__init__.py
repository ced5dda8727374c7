"""``distnn`` command line: flags or a TOML file -> config -> run."""
from __future__ import annotations

import argparse
import logging
import sys

from .. import __version__
from ..config import parse_layers, parse_strength
from .flags import add_train_flags

log = logging.getLogger("distnn")


def _integer_from(low: int):
    """An argparse type: an integer >= ``low``."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") \
                from None
        if n < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {n}")
        return n
    return parse


natural = _integer_from(0)
positive_int = _integer_from(1)


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (x > 0 and x < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return x


def _search_args(p):
    p.add_argument("--grid", nargs="+", action="extend", default=[], metavar="KEY=V1,V2",
                   help="grid values, e.g. hidden=10,25,50 lr=0.05,0.1 l2=0.0001,0.001")
    p.add_argument("--random", nargs="+", action="extend", default=[], metavar="KEY=DIST",
                   help="random specs: lr=loguniform:1e-3:1 hidden=choice:30,100 "
                        "keep_prob=uniform:0.5:1 batch_size=randint:8:64")
    p.add_argument("--samples", type=positive_int, default=20, help="random trials to draw")
    p.add_argument("--search-seed", type=int, default=0, help="seed of the random draws")
    p.add_argument("--asha", action="store_true", help="stop poor trials early (ASHA)")
    p.add_argument("--out", default="search", help="directory for results.csv/.parquet, "
                   "best.toml, summary.json and the Tune state")
    p.add_argument("--name", default="search", help="search name (resume uses it)")
    p.add_argument("--resume-search", action="store_true",
                   help="continue an interrupted search in --out")


class Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """Each flag's default in its help, but not an unset one ("(default: None)")."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse, and for a mistyped flag the flags it may have meant."""

    def error(self, message):
        import difflib
        if message.startswith("unrecognized arguments:"):
            known = {o for a in self._all_actions() for o in a.option_strings}
            hints = []
            for word in message.split(":", 1)[1].split():
                flag = word.split("=", 1)[0]
                close = difflib.get_close_matches(flag, known, n=2, cutoff=0.75)
                if flag.startswith("-") and close:
                    hints.append(f"{flag}: did you mean {' or '.join(close)}?")
            if hints:
                message += " (" + "; ".join(hints) + ")"
        super().error(message)

    def _all_actions(self):
        for a in self._actions:
            yield a
            for sub in getattr(a, "choices", None) or {}:
                if isinstance(a.choices, dict) and isinstance(a.choices[sub], Parser):
                    yield from a.choices[sub]._actions


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="distnn", description="Data-parallel training of fully-connected "
               "networks with a NumPy core.")
    p.add_argument("--version", action="version", version=f"distnn {__version__}")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in (_add_train, _add_gradcheck, _add_data, _add_search, _add_checkpoint_tools):
        add(sub)
    for command in sub.choices.values():   # -q after the sub-command works too
        command.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                             help="log warnings only")
    return p


def _add_train(sub) -> None:
    """``distnn train``."""
    from . import commands
    t = sub.add_parser("train", help="train a network", description="Train a network. "
                       "Settings come from defaults (or, with --resume, the checkpoint), "
                       "then --recipe, then --config FILE.toml, then flags.")
    add_train_flags(t)
    t.set_defaults(fn=commands.cmd_train)


def _add_gradcheck(sub) -> None:
    """``distnn gradcheck``."""
    from . import commands
    g = sub.add_parser("gradcheck", help="compare backprop with central differences",
                       description="Check every parameter's gradient of a network against "
                       "central differences in float64, on a random batch.",
                       formatter_class=Defaults)
    g.add_argument("--layers", type=parse_layers, default="20,15,10",
                   help="the network checked, as train's --layers: widths, input first, "
                        "or image layers (conv:F:K, pool:P) then widths, with --input-shape")
    g.add_argument("--input-shape", type=parse_layers, default=None, metavar="H,W[,C]",
                   help="the input images' shape, for a network with image layers")
    # the network's settings: train's flags, with their defaults and help
    from ..config import TrainConfig
    from .flags import HELP
    defaults = TrainConfig()
    for name in ("activation", "output", "cost", "init", "init_scale", "keep_prob",
                 "keep_prob_input", "l1", "l2"):
        typ = {"init_scale": float, "keep_prob": float, "keep_prob_input": float,
               "l1": lambda t, n=name: parse_strength(t, n),
               "l2": lambda t, n=name: parse_strength(t, n)}.get(name, str)
        g.add_argument("--" + name.replace("_", "-"), type=typ,
                       default=getattr(defaults, name), help=HELP[name])
    g.add_argument("--batchnorm", action="store_true", help=HELP["batchnorm"])
    g.add_argument("--batch-size", type=positive_int, default=8,
                   help="examples in the random batch the cost is measured on")
    g.add_argument("--seed", type=int, default=0, help="seed of the weights and the batch")
    g.add_argument("--tol", type=positive_float, default=1e-6,
                   help="largest relative error accepted")
    g.add_argument("--max-per-block", type=positive_int, default=None,
                   help="check at most this many entries per parameter block")
    g.set_defaults(fn=commands.cmd_gradcheck)


def _add_data(sub) -> None:
    """``distnn data``."""
    from . import commands
    d = sub.add_parser("data", help="fetch, describe, preview or convert a dataset",
                       formatter_class=Defaults)
    d.add_argument("action", choices=("fetch", "info", "preview", "convert"),
                   help="fetch: download/cache it; info: sizes, classes, pixel statistics; "
                        "preview: a PNG of augmented training images; convert: write it as "
                        "Parquet for --dataset parquet:OUT")
    d.add_argument("name", help="the dataset: mnist, fashion-mnist, digits, idx, or "
                                "parquet:PATH_OR_URI (info, preview)")
    d.add_argument("out", nargs="?", help="preview: the output PNG; convert: a directory "
                   "(train/validation/test.parquet) or FILE.parquet (one file with a "
                   "'split' column), local or a URI such as s3://bucket/mnist")
    d.add_argument("--tabular", action="store_true",
                   help="convert: one numeric column per pixel (p0, p1, ...) instead of an "
                        "'image' column")
    d.add_argument("--overwrite", action="store_true",
                   help="convert: replace the Parquet files already at OUT; preview: "
                        "replace the PNG at OUT")
    d.add_argument("--row-group", type=positive_int, default=4096,
                   help="convert: rows per Parquet row group (a worker reads whole ones)")
    d.add_argument("--data-dir", default=None, help="where the dataset's files are (idx: "
                   "required)")
    d.add_argument("--json", action="store_true", help="info: print one JSON object")
    d.add_argument("--zoom", type=positive_int, default=3,
                   help="preview: screen pixels per image pixel")
    d.add_argument("--augment", default="rotate=15,shift=2,elastic=34:4",
                   help="augmentation spec to preview")
    d.add_argument("--count", type=positive_int, default=10, help="images per row (preview)")
    d.add_argument("--rows", type=positive_int, default=3, help="distorted rows, one per epoch")
    d.add_argument("--seed", type=int, default=0, help="preview: augmentation seed")
    d.set_defaults(fn=commands.cmd_data)


def _add_search(sub) -> None:
    """``distnn search``, ``lr-find`` and ``recipes``."""
    from . import tools
    se = sub.add_parser("search", help="grid or random hyperparameter search on Ray Tune")
    add_train_flags(se)
    _search_args(se)
    se.set_defaults(fn=tools.cmd_search)
    lf = sub.add_parser("lr-find", help="Nielsen's learning-rate threshold search")
    add_train_flags(lf)
    lf.add_argument("--start", type=float, default=0.01, help="first learning rate tried")
    lf.add_argument("--find-epochs", type=positive_int, default=3,
                    help="epochs per try: the cost must fall over these")
    lf.add_argument("--refine", type=natural, default=4,
                    help="bisection steps after the x10 search")
    lf.add_argument("--plot", metavar="OUT.png", help="plot the tried cost curves")
    lf.set_defaults(fn=tools.cmd_lr_find)
    r = sub.add_parser("recipes", help="list the named configs for --recipe, or show one "
                       "as the TOML file --config accepts")
    r.add_argument("action", nargs="?", choices=("list", "show"), default="list")
    r.add_argument("name", nargs="?", help="the recipe to show")
    r.set_defaults(fn=tools.cmd_recipes)


def _add_checkpoint_tools(sub) -> None:
    """``distnn eval``, ``inspect``, ``export``, ``import-network2``, ``plot``."""
    from . import tools
    e = sub.add_parser("eval", help="accuracy, cost, per-class accuracy and confusion matrix "
                       "of a checkpoint")
    e.add_argument("checkpoint", nargs="+", help="a checkpoint, or a --checkpoint-dir (its "
                   "best checkpoint by --monitor; see --which); several: a committee, "
                   "judged by their outputs averaged (each member's own accuracy too)")
    e.add_argument("--which", choices=("best", "latest"), default="best",
                   help="of a --checkpoint-dir: the best checkpoint or the newest")
    e.add_argument("--dataset", default=None, help="default: the one it was trained on")
    e.add_argument("--data-dir", default=None)
    e.add_argument("--split", choices=("train", "valid", "validation", "test"),
                   default="test", help="valid and validation are the same split")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--last", action="store_true",
                   help="a run trained with --ema: the last parameters trained instead of "
                        "their average")
    e.set_defaults(fn=tools.cmd_eval)
    i = sub.add_parser("inspect", help="architecture, parameter count, config and history")
    i.add_argument("checkpoint", help="a checkpoint, or a --checkpoint-dir (its latest)")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.set_defaults(fn=tools.cmd_inspect)
    x = sub.add_parser("export", help="write a model as .npz, ONNX or network2.py JSON "
                       "(input: raw pixels; output: the output activations)")
    x.add_argument("checkpoint", help="a checkpoint, or a --checkpoint-dir (its best)")
    x.add_argument("out")
    x.add_argument("--which", choices=("best", "latest"), default="best",
                   help="of a --checkpoint-dir: the best checkpoint or the newest")
    x.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    x.add_argument("--format", choices=("npz", "onnx", "network2-json"), default=None,
                   help="default: from OUT's extension (.npz, .onnx, .json); onnx needs "
                        "pip install 'distnn[onnx]'")
    x.set_defaults(fn=tools.cmd_export)
    m = sub.add_parser("import-network2", help="turn Nielsen's network2.py JSON into a "
                       "checkpoint")
    m.add_argument("json_in", metavar="IN.json")
    m.add_argument("out", metavar="CKPT_DIR")
    m.add_argument("--dataset", default="mnist", help="the dataset it was trained on")
    m.add_argument("--overwrite", action="store_true",
                   help="CKPT_DIR holds checkpoints: delete them first")
    m.set_defaults(fn=tools.cmd_import)
    pl = sub.add_parser("plot", help="cost and accuracy curves as a PNG, the best "
                        "epoch and the test accuracy marked (needs matplotlib)")
    pl.add_argument("run", help="a --metrics-out JSON, a checkpoint, or a --checkpoint-dir")
    pl.add_argument("out", help="output PNG")
    pl.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    pl.set_defaults(fn=tools.cmd_plot)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    from ..data.idx import DataError
    from ..io.checkpoint import CheckpointError
    from ..io.files import OutputError
    from ..search.results import SearchFailed
    try:
        return args.fn(args)
    except KeyboardInterrupt:   # Ctrl-C in a command other than train (which says more)
        hint = "; --resume-search continues it" if args.command == "search" else ""
        print(f"stopped (Ctrl-C){hint}", file=sys.stderr)
        return 130
    except OutputError as e:    # a full disk, a read-only file system
        print(f"error: {e}", file=sys.stderr)
        return 5
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        sys.stderr.close()
        return 0
    except SearchFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except (ValueError, DataError, KeyError, ConnectionError, CheckpointError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    except OSError as e:         # a file that cannot be read or written
        from ..io.files import describe
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{describe(e)}", file=sys.stderr)
        return 5
