"""``distnn train``, ``gradcheck`` and ``data``."""
from __future__ import annotations

import json
import shlex
import sys

import numpy as np

from .flags import print_config, run_from_args


def cmd_train(args) -> int:
    from ..io.files import OutputError
    from ..parallel.driver import train
    from ..train.trainer import Interrupted
    from ..train.records import DivergenceError
    cfg, resumed = run_from_args(args)
    if print_config(args, cfg):
        return 0
    try:
        m = train(cfg, inputs={"--config": args.config}, resumed=resumed,
                  on_node_lost=lambda: resume_hint(cfg))
    except DivergenceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except (Interrupted, KeyboardInterrupt) as e:
        print(str(e) or "stopped before the first epoch", end="; ", file=sys.stderr)
        _print_resume(cfg)
        return 130
    except OutputError as e:
        print(f"error: {e}", file=sys.stderr)
        _print_resume(cfg)
        return 5
    except RuntimeError as e:  # workers lost beyond recovery, replica divergence
        print(f"error: {e}", file=sys.stderr)
        _print_resume(cfg)
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
        ran = len(h) - m.get("first_epoch", 0)
        this_run = f" ({ran} in this run)" if ran != len(h) else ""
        print(f"finished {len(h)} epochs{this_run} in {m['wall_seconds']:.1f}s{seen}")
    if "test_accuracy" in m:
        pen = m.get("test_penalty") or 0.0
        parts = f" (data cost {m['test_cost'] - pen:.4f} + L1/L2 penalty {pen:.4f})" \
            if pen else ""
        which = f"epoch {m['best_epoch']}, the best, restored by --early-stop" \
            if m.get("best_epoch") is not None else \
            f"epoch {h[-1]['epoch']}, the last" if h else "no epoch"
        print(f"test accuracy {100 * m['test_accuracy']:.2f}%  test cost "
              f"{m['test_cost']:.4f}{parts}  ({which})")
    if m.get("diagnosis"):
        from ..train.diagnosis import format_diagnosis
        print(format_diagnosis(m["diagnosis"]))
    if m.get("metrics_path"):
        print(f"metrics written to {m['metrics_path']} (each epoch's figures: "
              "pandas.DataFrame(json.load(open(PATH))['history']))")
    if cfg.checkpoint_dir:
        _print_checkpoints(cfg)
    return 0


def _pointers(d) -> dict:
    from ..io.checkpoint import CheckpointError
    from ..io.checkpoint_store import pointer_names
    from ..io.files import OutputError
    try:
        return pointer_names(d)
    except (CheckpointError, OSError, OutputError):
        return {}


def _print_checkpoints(cfg) -> None:
    d = cfg.checkpoint_dir
    names = _pointers(d)
    if "latest" not in names:
        return
    latest, best = names["latest"], names.get("best", names["latest"])
    more = _output_flags(cfg)
    # no best pointer where nothing measured cfg.monitor (--merge-valid: no validation)
    which = f"best {best} by {cfg.monitor}" if "best" in names else \
        f"no best by {cfg.monitor} (nothing measured it), so eval takes the latest"
    print(f"checkpoints in {d}: latest {latest}, {which}; "
          f"evaluate with: distnn eval {shlex.quote(d)}; continue with: "
          f"distnn train --resume {shlex.quote(d)} --epochs N{more}")
    if best != latest:     # what that eval will say, beside what was shown above
        acc = _test_accuracy(f"{d.rstrip('/')}/{best}")
        if acc is not None:
            print(f"the best checkpoint ({best}), which `distnn eval {shlex.quote(d)}` "
                  f"measures, has test accuracy {100 * acc:.2f}%")


def _test_accuracy(path) -> float | None:
    from ..data import load
    from ..train.evaluate import evaluate_chunks, load_model
    net, norm, cfg, _ = load_model(path)
    test = load(cfg.dataset, cfg.data_dir, options=cfg.data_options()).test
    return evaluate_chunks(net, norm, test.chunks())["accuracy"] if len(test) else None


def _output_flags(cfg) -> str:
    """The --logdir/--metrics-out of this run, for the resume command it prints: a
    resumed run writes only where its own command line says."""
    return "".join(f" --{flag} {shlex.quote(v)}" for flag, v in (
        ("logdir", cfg.logdir), ("metrics-out", cfg.metrics_out)) if v)


def _print_resume(cfg) -> None:
    """After a stop, where the last complete epoch is and the command that continues
    (the checkpoint holds every setting, so ``--resume DIR`` is the whole command)."""
    print(resume_hint(cfg), file=sys.stderr)


def resume_hint(cfg) -> str:
    """``_print_resume``'s line."""
    if not cfg.checkpoint_dir:
        return "no --checkpoint-dir was given, so there is nothing to resume from"
    name = _pointers(cfg.checkpoint_dir).get("latest")
    if name is None:
        return "no epoch was completed; start the run again"
    where = f"the last checkpoint is {cfg.checkpoint_dir.rstrip('/')}/{name}"
    return f"{where}; resume with: distnn train --resume {shlex.quote(cfg.checkpoint_dir)}" \
        f"{_output_flags(cfg)}"


def cmd_gradcheck(args) -> int:
    from ..config import TrainConfig
    from ..core.gradcheck import check_network
    from ..core.network import Network
    cfg = TrainConfig(layers=args.layers, input_shape=args.input_shape or (), dtype="float64",
                      batch_size=args.batch_size,
                      **{k: getattr(args, k) for k in (
                          "activation", "output", "cost", "init", "init_scale", "keep_prob",
                          "keep_prob_input", "batchnorm", "seed", "l1", "l2")})
    net = Network.from_spec(cfg.network_spec())
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.batch_size, net.n_inputs))
    y = rng.integers(0, net.n_classes, args.batch_size)
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
    from ..data import load
    splits = load(args.name, args.data_dir)      # an unknown name: one line, listing them
    if args.action == "convert":
        return _convert(args, splits)
    if args.action == "fetch":
        print(f"{args.name}: ready (source: {splits.source})")
        return 0
    if args.action == "info":
        info = {"name": splits.name, "source": splits.source, "classes": splits.n_classes,
                "pixel_max": splits.pixel_max}
        for part in ("train", "valid", "test"):
            s = getattr(splits, part)
            counts, total = np.zeros(splits.n_classes, np.int64), 0.0
            for c in s.chunks():          # a Parquet split a row group at a time
                counts += np.bincount(c.y, minlength=splits.n_classes)
                total += float(c.x.sum(dtype=np.float64))
            info[part] = {"images": list(s.shape), "labels_per_class": counts.tolist(),
                          "mean_pixel": round(total / max(int(np.prod(s.shape)), 1), 3)
                          if len(s) else None}
        if args.json:
            print(json.dumps(info, indent=2))
            return 0
        print(f"{info['name']}  (source: {info['source']}; {info['classes']} classes, "
              f"pixels 0..{info['pixel_max']:g})")
        for part in ("train", "valid", "test"):
            d = info[part]
            what = "images" if len(d["images"]) == 3 else "examples"
            print(f"  {part:<5} {d['images'][0]:>6} {what} of {d['images'][1:]}  mean pixel "
                  f"{d['mean_pixel']}  per class {d['labels_per_class']}")
        return 0
    return _preview(args, splits)


def _convert(args, splits) -> int:
    from ..data.parquet_write import write
    if args.out is None:
        raise ValueError("data convert needs an output: distnn data convert mnist "
                         "mnist-parquet/ (or OUT.parquet, or s3://bucket/path)")
    from ..data.datasets import location, read_from
    if location(args.name) is not None:
        raise ValueError("the dataset is Parquet already")
    from ..io.files import check_not_input
    check_not_input(args.out, "OUT", read_from(args.name, args.data_dir))
    files = write(args.out, splits, tabular=args.tabular, row_group=args.row_group,
                  overwrite=args.overwrite)
    sizes = ", ".join(f"{p} {len(getattr(splits, p))}" for p in ("train", "valid", "test"))
    print(f"wrote {', '.join(files)} ({sizes} rows); train on it with: distnn train "
          f"--dataset parquet:{args.out}")
    return 0


def _preview(args, splits) -> int:
    from ..data.augment import Augmenter
    from ..io.png import grid, write_png
    if args.out is None:
        raise ValueError("data preview needs an output file: distnn data preview mnist out.png")
    from ..data.datasets import read_from
    from ..io.store import claim_file
    claim_file(args.out, "OUT", overwrite=args.overwrite,
               inputs=read_from(args.name, args.data_dir))
    if args.count > len(splits.train):
        raise ValueError(f"--count {args.count} is more than the {len(splits.train)} "
                         "training images")
    aug = Augmenter(args.augment, seed=args.seed, pixel_max=splits.pixel_max)
    idx = np.arange(args.count)
    x = splits.train.read(0, args.count).x          # in memory or read from Parquet
    if x.ndim != 3:
        raise ValueError(f"{splits.name} holds feature vectors, not images: nothing to preview")
    rows = [x.astype(np.float32) / splits.pixel_max]
    rows += [aug(x, idx, epoch) for epoch in range(args.rows)]
    tiles = np.concatenate(rows)
    img = grid(np.clip(np.rint(tiles * 255), 0, 255).astype(np.uint8), cols=args.count)
    img = img.repeat(args.zoom, axis=0).repeat(args.zoom, axis=1)
    write_png(args.out, img)
    print(f"wrote {args.out} ({img.shape[1]}x{img.shape[0]}, {args.zoom}x): training images "
          f"0..{args.count - 1} in columns; row 1 the originals, rows 2..{args.rows + 1} "
          f"epochs 0..{args.rows - 1} of '{aug.spec}' (seed {args.seed})")
    return 0
