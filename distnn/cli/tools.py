"""The ``distnn`` sub-commands beyond ``train``, ``gradcheck`` and ``data``: search,
lr-find, recipes and the checkpoint tools (eval, inspect, export, import, plot)."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path


from ..io.store import claim_file
from .flags import config_from_args, print_config


def cmd_search(args) -> int:
    from .. import recipes
    from ..search import space, tune
    cfg = config_from_args(args)
    if print_config(args, cfg):
        return 0
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a file; give a directory for the results")
    from ..io.files import check_not_input
    check_not_input(args.out, "--out", run_inputs(args, cfg))
    grid, rand = list(args.grid), list(args.random)
    if not grid and not rand and (args.recipe or args.config):
        table = recipes.load(args.recipe) if args.recipe else {}
        if args.config:       # a --config file's [search] table wins over the recipe's
            from .flags import read_toml
            table = {**table, **read_toml(args.config)}
        spec = recipes.split(table, args.config or args.recipe)[1]
        grid, rand = spec.get("grid", []), spec.get("random", [])
    trials = space.trials(grid, rand, args.samples, args.search_seed)
    space.check_trials(cfg, trials)
    print(f"{len(trials)} trials, {cfg.workers} CPU each, selecting on {cfg.monitor}")
    res = tune.run_search(cfg, trials, args.out, name=args.name, asha=args.asha,
                          resume=args.resume_search, address=cfg.address)
    table = res["table"]
    cols = [c for c in table.columns if c != "trial_dir" and table[c].notna().any()]
    shown = table[cols].head(15).copy()
    if "error" in shown:                 # the CSV keeps the whole message
        shown["error"] = shown["error"].map(lambda e: e if not isinstance(e, str)
                                            else e.split(":")[0][:40])
    for c in shown.columns:          # accuracies as percentages, as everywhere else
        if c.endswith("accuracy"):
            shown[c] = shown[c].map(lambda v: f"{100 * v:.2f}%" if v == v else "-")
    print(shown.to_string(index=False))
    best = res["best_valid"]
    shown_best = f"{100 * best:.2f}%" if cfg.monitor.endswith("accuracy") else f"{best:.4f}"
    print(f"best: {res['best']}  {cfg.monitor} {shown_best}  "
          f"test accuracy (winner, once) {100 * (res['test_accuracy'] or 0):.2f}%")
    print(f"best config: {res['best_config']}  (distnn train --config {res['best_config']})")
    return 0


def run_inputs(args, cfg) -> dict:
    """What a command that trains reads, which none of its outputs may be: its --config
    and its dataset's files."""
    from ..data.datasets import read_from
    return {"--config": getattr(args, "config", None), **read_from(cfg.dataset, cfg.data_dir)}


def cmd_lr_find(args) -> int:
    from ..train.data import load_splits
    from ..search.lr_find import find_lr
    cfg = config_from_args(args).replace(epochs=args.find_epochs)
    if print_config(args, cfg):
        return 0
    if args.plot:
        from ..io.plot import check_available
        check_available()
        claim_file(args.plot, "--plot", overwrite=cfg.overwrite,
                   inputs=run_inputs(args, cfg))
    res = find_lr(cfg, load_splits(cfg), start=args.start, refine=args.refine,
                  report=lambda line: print(line, flush=True))
    print(f"threshold learning rate ~ {res['threshold']:.4g} (cost no longer falls at "
          f"{res['first_failing']:.4g}); suggested --lr {res['suggested_lr']:.4g}")
    if args.plot:
        _plot_lr_find(res, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _plot_lr_find(res, out):
    from ..io.plot import plot_lr_find
    plot_lr_find(res["tried"], res["threshold"], out)


def cmd_recipes(args) -> int:
    from .. import recipes
    if args.action == "show":
        if not args.name:
            raise ValueError(f"which recipe? distnn recipes show NAME, NAME one of "
                             f"{recipes.names()}")
        print(recipes.text(args.name), end="")
        return 0
    for name in recipes.names():
        print(f"{name:<16} {recipes.load(name)['description']}")
    return 0


SPLIT_ARGS = {"train": "train", "valid": "valid", "validation": "valid", "test": "test"}


def epoch_said(c) -> str:
    """Which epoch a checkpoint holds, and what its directory's pointers call it."""
    from ..io.checkpoint import roles
    names = roles(c.path)
    monitor = c.meta["config"].get("monitor", "valid_accuracy")
    said = " and ".join("the latest" if r == "latest" else f"the best by {monitor}"
                        for r in names)
    return f"epoch {c.meta['epoch']}" + (f", {said}" if said else "")


def cmd_eval(args) -> int:
    from ..data import load
    from ..io.checkpoint_store import shown
    from ..train.evaluate import evaluate_chunks, evaluate_committee, load_model
    models = [load_model(path, average=not args.last, prefer=args.which)
              for path in args.checkpoint]
    net, norm, cfg, c = models[0]
    which = SPLIT_ARGS[args.split]
    for path, (_, _, cfg_i, c_i) in zip(args.checkpoint, models):
        if which == "valid" and cfg_i.merge_valid:
            raise ValueError(f"{c_i.path} was trained on the validation split too "
                             "(--merge-valid): its accuracy there is not a held-out "
                             "measure; use --split test")
        if not args.dataset and (cfg_i.dataset, cfg_i.data_dir) != (cfg.dataset, cfg.data_dir):
            raise ValueError(f"{shown(path, c_i.path)} was trained on {cfg_i.dataset}, "
                             f"{shown(args.checkpoint[0], c.path)} on {cfg.dataset}: a "
                             "committee is judged on one dataset; name it with --dataset")
    splits = load(args.dataset or cfg.dataset, args.data_dir or cfg.data_dir,
                  options=cfg.data_options())
    split = getattr(splits, which)
    if len(models) > 1:
        return _print_committee(args, models, splits.name, which,
                                evaluate_committee([(m[0], m[1]) for m in models],
                                                   split.chunks()))
    res = {"checkpoint": shown(args.checkpoint[0], c.path), "epoch": c.meta["epoch"],
           "which": epoch_said(c), "dataset": splits.name, "split": which,
           "parameters": _parameters(cfg, args),
           **evaluate_chunks(net, norm, split.chunks())}
    if args.json:
        print(json.dumps(res))
        return 0
    params = "the parameter average (--ema)" if res["parameters"] == "average" else \
        "the trained parameters" + (" (not their --ema average)" if cfg.ema else "")
    print(f"{res['checkpoint']} ({res['which']}): {splits.name} {which} "
          f"({res['examples']} examples, {params})")
    print(f"accuracy {100 * res['accuracy']:.2f}%  cost {res['cost']:.4f} (the data cost, "
          "without an L1/L2 penalty)")
    _print_confusion(res)
    return 0


def _parameters(cfg, args) -> str:
    """Which parameters ``eval`` measures of a run: its --ema average or the last."""
    return "average" if cfg.ema and not args.last else "last"


def _print_confusion(res) -> None:
    print("per-class accuracy: " + "  ".join(f"{k}:{100 * a:.1f}%"
                                             for k, a in enumerate(res["per_class_accuracy"])))
    print("confusion matrix (rows: true class, columns: predicted class):")
    print("  true\\pred " + " ".join(f"{k:>5}" for k in range(len(res["confusion"]))))
    for k, row in enumerate(res["confusion"]):
        print(f"  {k:>9} " + " ".join(f"{v:>5}" for v in row))


def _print_committee(args, models, dataset, which, res) -> int:
    from ..io.checkpoint_store import shown
    members = [{"checkpoint": shown(path, m[3].path), "epoch": m[3].meta["epoch"],
                "parameters": _parameters(m[2], args),
                "accuracy": acc}
               for path, m, acc in zip(args.checkpoint, models, res.pop("member_accuracy"))]
    res = {"committee": members, "dataset": dataset, "split": which, **res}
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"a committee of {len(members)} networks, their outputs averaged: {dataset} "
          f"{which} ({res['examples']} examples)")
    for m in members:
        print(f"  {m['checkpoint']} (epoch {m['epoch']}, {m['parameters']} parameters): "
              f"alone {100 * m['accuracy']:.2f}%")
    print(f"accuracy {100 * res['accuracy']:.2f}%  cost {res['cost']:.4f} (-log of the "
          "averaged probability of the true class)")
    _print_confusion(res)
    return 0


def cmd_inspect(args) -> int:
    from ..io.checkpoint import load
    c = load(args.checkpoint)
    shapes = {k: list(v.shape) for k, v in c.tensors.items()}
    from ..core.network import parameter_count
    n_params = parameter_count(c.meta["config"].get("layers", ()),
                               bool(c.meta["config"].get("batchnorm")),
                               c.meta["config"].get("input_shape") or ())
    from ..io.checkpoint_store import shown
    info = {"checkpoint": shown(args.checkpoint, c.path), "format": f"{c.meta['format']} v{c.meta['version']}",
            "distnn_version": c.meta.get("distnn_version"), "epoch": c.meta["epoch"],
            "parameters": n_params, "tensors": shapes,
            "optimizer": c.meta["optimizer"], "config": c.meta["config"],
            "history": c.meta["history"]}
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    cfg = c.meta["config"]
    print(f"{info['checkpoint']}  ({info['format']}, distnn {info['distnn_version']}, "
          f"{epoch_said(c)})")
    print(f"network    {cfg.get('layers')}  {cfg.get('activation')} hidden, "
          f"{cfg.get('output')} output, {cfg.get('cost')}  ({n_params:,} parameters, "
          f"{cfg.get('dtype')})")
    print(f"optimizer  {c.meta['optimizer'].get('name')}  lr {cfg.get('lr')}  batch "
          f"{cfg.get('batch_size')}  step {c.meta['optimizer'].get('t')}")
    print(f"data       {cfg.get('dataset')}  augment {cfg.get('augment')}")
    for name, shape in shapes.items():
        print(f"  {name:<22} {shape}")
    _print_history(c.meta["history"])
    print("(--json for everything, the full config included)")
    return 0


def _print_history(history) -> None:
    keys = [k for k in ("batch_cost", "train_cost", "train_accuracy", "valid_cost",
                        "valid_accuracy", "lr") if any(h.get(k) is not None for h in history)]
    print("epoch " + " ".join(f"{k:>15}" for k in keys))
    for h in history:
        # one format a column: accuracies as percentages, costs to 4 decimals, lr as given
        cells = [("" if h.get(k) is None else f"{100 * h[k]:.2f}%" if k.endswith("accuracy")
                  else f"{h[k]:.4g}" if k == "lr" else f"{h[k]:.4f}") for k in keys]
        print(f"{h['epoch']:>5} " + " ".join(f"{v:>15}" for v in cells))


EXPORTS = {".json": "network2-json", ".npz": "npz", ".onnx": "onnx"}


def cmd_export(args) -> int:
    from ..io import export, network2
    from ..train.evaluate import load_model
    fmt = args.format or EXPORTS.get(Path(args.out).suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot tell the format from {args.out!r}: name it .npz, .onnx or "
                         ".json (network2), or give --format")
    claim_file(args.out, "OUT", overwrite=args.overwrite,
               inputs={"the checkpoint": args.checkpoint})
    net, norm, _, c = load_model(args.checkpoint, prefer=args.which)
    if fmt == "network2-json" and norm.mean is not None:
        raise ValueError("this model standardises its inputs, which network2.py cannot "
                         "do; export it as .npz or .onnx")
    from ..io.checkpoint_store import shown
    from ..io.store import is_uri, write_bytes
    with tempfile.TemporaryDirectory(prefix="distnn-export-") as tmp:
        out = Path(tmp) / Path(args.out).name if is_uri(args.out) else args.out
        if fmt == "network2-json":
            network2.export(net, out)
        else:
            (export.to_npz if fmt == "npz" else export.to_onnx)(net, norm, out)
        if is_uri(args.out):       # written here, then put there whole
            write_bytes(args.out, Path(out).read_bytes())
    print(f"wrote {args.out} ({fmt}) from {shown(args.checkpoint, c.path)}")
    return 0


def cmd_import(args) -> int:
    from ..config import TrainConfig
    from ..io import network2
    from ..train.checkpointing import save_model
    from ..io import checkpoint as ckpt
    from ..io.files import claim
    # a checkpoint directory of its own: one holding another run's checkpoints is
    # refused (its latest would point at the import), or cleared with --overwrite
    lock = claim(args.out, "CKPT_DIR", used=ckpt.used, clear=ckpt.clear, resume=False,
                 overwrite=args.overwrite)
    lock.release()
    net = network2.load(args.json_in)
    cfg = TrainConfig(dataset=args.dataset, layers=tuple(net.sizes), activation="sigmoid",
                      output="sigmoid", cost=net.config["cost"], dtype="float64")
    path = save_model(args.out, "imported", net, cfg, imported_from=str(args.json_in))
    print(f"wrote checkpoint {path}; evaluate it with: distnn eval {path}")
    return 0


def cmd_plot(args) -> int:
    from ..io.plot import plot_history, run_of
    claim_file(args.out, "OUT", overwrite=args.overwrite, inputs={"the run": args.run})
    history, name, marks = run_of(args.run)
    plot_history(history, args.out, title=name, **marks)
    shown = [f"best epoch {marks['best_epoch']}"] if marks["best_epoch"] is not None else []
    if marks["test_accuracy"] is not None:
        shown.append(f"test accuracy {100 * marks['test_accuracy']:.2f}%")
    print(f"wrote {args.out}" + (f" (marked: {', '.join(shown)})" if shown else ""))
    return 0
