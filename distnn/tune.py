"""Hyperparameter search on Ray Tune, Nielsen's learning-rate finder, and the
bias/variance diagnosis.

Search spaces are expanded here, deterministically, into an explicit list of trials
(a grid is the product of its value lists; random specs are drawn from
``np.random.default_rng(seed)``), so a search is reproducible and resumable, and Tune
schedules the trials in parallel with their resources declared.  Selection is on the
validation split; the winner's checkpoint is evaluated once on the test split.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import os
from pathlib import Path
from unittest import mock

import numpy as np

from .config import TrainConfig, field_names

log = logging.getLogger(__name__)

SEARCHABLE = set(field_names()) | {"hidden"}


# -- search spaces -------------------------------------------------------------------------
def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_grid(items) -> dict[str, list]:
    """``["hidden=10,25", "lr=0.05,0.1"]`` -> {"hidden": [10, 25], "lr": [0.05, 0.1]}."""
    out = {}
    for item in items:
        key, sep, vals = item.partition("=")
        if not sep or not vals:
            raise ValueError(f"grid item {item!r} must look like KEY=V1,V2,...")
        _check_key(key)
        out[key] = [_value(v) for v in vals.split(",")]
    return out


def _check_key(key):
    if key not in SEARCHABLE:
        raise ValueError(f"cannot search over {key!r}; use hidden or a train setting such as "
                         "lr, l2, batch_size, keep_prob")


def expand_grid(grid: dict[str, list]) -> list[dict]:
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def parse_random(items) -> dict[str, tuple]:
    """``["lr=loguniform:1e-3:1", "hidden=choice:30,100", "batch_size=randint:8:64"]``."""
    out = {}
    for item in items:
        key, sep, spec = item.partition("=")
        kind, _, args = spec.partition(":")
        _check_key(key)
        if not sep or kind not in ("uniform", "loguniform", "randint", "choice"):
            raise ValueError(f"random item {item!r} must be KEY=uniform:A:B, loguniform:A:B, "
                             "randint:A:B or choice:V1,V2,...")
        if kind == "choice":
            out[key] = (kind, [_value(v) for v in args.split(",")])
            continue
        try:
            a, b = (float(v) for v in args.split(":"))
        except ValueError:
            raise ValueError(f"random item {item!r}: {kind} needs two numbers A:B") from None
        if not a < b or (kind == "loguniform" and a <= 0):
            raise ValueError(f"random item {item!r}: need A < B (and A > 0 for loguniform)")
        out[key] = (kind, (a, b))
    return out


def sample_random(space: dict[str, tuple], samples: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    trials = []
    for _ in range(samples):
        t = {}
        for key, (kind, args) in space.items():
            if kind == "choice":
                t[key] = args[int(rng.integers(len(args)))]
            elif kind == "uniform":
                t[key] = float(rng.uniform(*args))
            elif kind == "loguniform":
                t[key] = float(math.exp(rng.uniform(math.log(args[0]), math.log(args[1]))))
            else:
                t[key] = int(rng.integers(int(args[0]), int(args[1]) + 1))
        trials.append(t)
    return trials


def apply(base: TrainConfig, overrides: dict) -> TrainConfig:
    """The trial's config: ``hidden=H`` sets every hidden layer to H."""
    o = dict(overrides)
    if "hidden" in o:
        h = int(o.pop("hidden"))
        o["layers"] = (base.layers[0], *([h] * (len(base.layers) - 2) or [h]), base.layers[-1])
    return base.replace(**o)


from .train.diagnosis import REMEDIES, diagnose, format_diagnosis  # noqa: E402,F401


# -- learning-rate finder (Nielsen ch. 3) --------------------------------------------------
def decreasing(costs: list[float]) -> bool:
    """'The training cost falls over the first few epochs': ``costs`` starts with the
    untrained network's cost; every later value must be below it, and the last the
    lowest so far (no blow-up, no oscillation upward)."""
    return all(math.isfinite(c) for c in costs) and costs[-1] < costs[0] and \
        costs[-1] <= min(costs) + 1e-12 and max(costs[1:]) < costs[0]


def find_threshold(cost_curve, start: float = 0.01, refine: int = 4,
                   lo_limit: float = 1e-6, hi_limit: float = 1e4) -> dict:
    """Nielsen's procedure.  ``cost_curve(lr)`` returns the training cost before training
    and after each of the first few epochs.  From ``start``, go up by factors of 10 while
    the cost falls (down while it does not), then bisect (geometrically) between the
    largest falling and the smallest non-falling rate ``refine`` times.  Suggests half
    the threshold."""
    tried = {}

    def ok(lr):
        if lr not in tried:
            tried[lr] = cost_curve(lr)
        return decreasing(tried[lr])

    lr = start
    if ok(lr):
        while lr * 10 <= hi_limit and ok(lr * 10):
            lr *= 10
        good, bad = lr, lr * 10
    else:
        while lr / 10 >= lo_limit and not ok(lr / 10):
            lr /= 10
        if lr / 10 < lo_limit:
            raise ValueError("the training cost does not fall at any learning rate tried; "
                             "check the data and the network")
        good, bad = lr / 10, lr
    for _ in range(refine):
        mid = math.sqrt(good * bad)
        good, bad = (mid, bad) if ok(mid) else (good, mid)
    return {"threshold": good, "suggested_lr": good / 2, "first_failing": bad,
            "tried": {k: tried[k] for k in sorted(tried)}}


# -- running a search on Ray Tune -----------------------------------------------------------
def _trial_dir(out_dir: Path, index: int) -> Path:
    return Path(out_dir) / "trials" / f"{index:04d}"


def _unpack(base: dict, splits_ref):
    """The base config and the splits a Tune trial was given."""
    import ray
    splits = ray.get(splits_ref) if isinstance(splits_ref, ray.ObjectRef) else splits_ref
    return TrainConfig(**{**base, "layers": tuple(base["layers"])}), splits


def _run_one(index: int, overrides: dict, base_cfg: TrainConfig, splits, out_dir: Path,
             callbacks=()) -> dict:
    """Train one configuration and record it in ``out_dir/trials/NNNN``: the final model,
    ``result.json`` and the hparams for TensorBoard.  A run that diverges, or whose
    settings are invalid, is recorded with its error (and its last good epoch) instead
    of stopping the search."""
    from .dist.driver import train as fit
    from .train.loop import DivergenceError
    try:
        cfg = apply(base_cfg, overrides).replace(checkpoint_dir=None, logdir=None,
                                                 metrics_out=None, resume=None)
        m = fit(cfg, splits, callbacks=callbacks)
    except (DivergenceError, ValueError) as e:
        history = getattr(e, "history", None) or [{}]
        final = {**_clean(history[-1]), "error": str(e)}
        d = _trial_dir(out_dir, index)
        d.mkdir(parents=True, exist_ok=True)
        _write_result(d, index, overrides, final)
        return final
    return _record(out_dir, index, overrides, cfg, m, splits)


def _lane(config, base: dict, splits_ref, out_dir: str, queue):
    """One Tune trial per CPU slot: take the next configuration from the search's queue
    until it is empty, so every slot stays busy to the end (dynamic load balancing: a
    fast node simply takes more), then report the lane's best result once."""
    import ray
    from ray import tune
    base_cfg, splits = _unpack(base, splits_ref)
    finals = []
    while (item := ray.get(queue.next.remote())) is not None:
        finals.append(_run_one(*item, base_cfg, splits, Path(out_dir)))
    key = base_cfg.monitor
    scored = [f for f in finals if key in f and "error" not in f]
    pick = max if _mode(key) == "max" else min
    tune.report({"configurations": len(finals),
                 **(pick(scored, key=lambda f: f[key]) if scored else {})})


def _trial(config, base: dict, splits_ref, out_dir: str):
    """One configuration as one Tune trial, reporting every epoch (for ASHA)."""
    from ray import tune
    from .train.callbacks import Callback
    base_cfg, splits = _unpack(base, splits_ref)

    class Report(Callback):
        def on_epoch_end(self, epoch, logs, trainer):
            tune.report(_clean(logs))

    index, overrides = config["trial"]
    if not (_trial_dir(out_dir, index) / "result.json").exists():
        _run_one(index, overrides, base_cfg, splits, Path(out_dir), callbacks=[Report()])


def _record(out_dir: Path, index: int, overrides: dict, cfg: TrainConfig, m: dict, splits):
    from .data.splits import Normalizer
    from .io.tensorboard import RunWriter
    from .train.checkpointing import save_model
    d = _trial_dir(out_dir, index)
    norm = Normalizer.fit(splits.train.x, splits.pixel_max, cfg.standardize)
    save_model(d, "final", m["network"], cfg, norm, m["history"])
    final = _clean(m["history"][-1])
    _write_result(d, index, overrides, final)
    w = RunWriter(str(out_dir / "tensorboard" / d.name))
    w.hparams({k: v for k, v in {**cfg.to_dict(), **overrides}.items()
               if not isinstance(v, (list, dict))},
              {f"hparam/{k}": final.get(k) for k in ("valid_accuracy", "train_accuracy",
                                                     "valid_cost")})
    w.close()
    return final


def _write_result(trial_dir: Path, index: int, overrides: dict, final: dict) -> None:
    (trial_dir / "result.json").write_text(
        json.dumps({"index": index, "overrides": overrides, "final": final}) + "\n")


def _clean(logs: dict) -> dict:
    return {k: v for k, v in logs.items() if v is not None}


def cost(cfg: TrainConfig, n_train: int) -> float:
    """A relative estimate of a configuration's training time, used to hand out the
    longest trials first: steps x (a fixed per-step overhead, worth ~20k weights in
    NumPy calls, + the weights)."""
    weights = sum(a * b for a, b in zip(cfg.layers[:-1], cfg.layers[1:]))
    return cfg.epochs * math.ceil(n_train / cfg.batch_size) * (20_000 + weights)


def _results(out_dir: Path) -> list[tuple[Path, dict]]:
    """Every recorded configuration: (its directory, its result.json), in index order."""
    return [(f.parent, json.loads(f.read_text()))
            for f in sorted((out_dir / "trials").glob("*/result.json"))]


def _pending(trials: list[dict], out_dir: Path, resume: bool) -> list[tuple[int, dict]]:
    """The (index, overrides) pairs still to run.  A search resumes only what it
    started: a finished result whose settings differ from this search's is an error,
    as is an --out that already holds a search when not resuming."""
    done = {r["index"]: r["overrides"] for _, r in _results(out_dir)}
    if done and not resume:
        raise ValueError(f"{out_dir} already holds the results of {len(done)} trials; "
                         "continue that search with --resume-search or choose another --out")
    for i, overrides in done.items():
        if i >= len(trials) or json.loads(json.dumps(trials[i])) != overrides:
            raise ValueError(f"{out_dir} holds trial {i} with settings {overrides}, which is "
                             f"not trial {i} of this search; resume with the same search "
                             "arguments or choose another --out")
    return [(i, t) for i, t in enumerate(trials) if i not in done]


def run_search(base: TrainConfig, trials: list[dict], out: str, *, name: str = "search",
               asha: bool = False, resume: bool = False, address: str | None = None,
               splits=None) -> dict:
    """Run ``trials`` (override dicts) on Ray Tune; write results.csv/.parquet and
    best.toml into ``out``; return the summary (best trial, its test metrics).

    Without ``asha``, Tune runs one *lane* per CPU slot (``base.workers`` CPUs each);
    each lane takes configurations, longest first, from a shared queue until none are
    left, so no slot idles while another still has a backlog and Tune's per-trial
    overhead is paid once per lane.  With it, each configuration is its own Tune trial
    and reports every epoch for the scheduler to act on."""
    import ray
    from .data.datasets import load
    from .dist.driver import start_ray
    out_dir = Path(out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    pending = _pending(trials, out_dir, resume)
    splits = splits or load(base.dataset, base.data_dir)
    started = start_ray(address, base.workers) if pending else False
    try:
        grid = _fit(base, pending, splits, out_dir, name, asha, resume) if pending else []
        return _summarise(base, splits, out_dir, grid)
    finally:
        if started:
            ray.shutdown()


def _fit(base, pending, splits, out_dir, name, asha, resume):
    import ray
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    common = dict(base=base.to_dict(), splits_ref=ray.put(splits), out_dir=str(out_dir))
    storage = str(out_dir / "tune")
    # distnn writes its own results table and hparams: of Tune's loggers keep the
    # CSV/JSON ones its result table reads, not its TensorBoard one
    run_config = tune.RunConfig(name=name, storage_path=storage, verbose=0,
                                callbacks=[CSVLoggerCallback(), JsonLoggerCallback()])
    resources = {"cpu": base.workers}
    if asha:
        trainable = tune.with_resources(tune.with_parameters(_trial, **common), resources)
        if resume and tune.Tuner.can_restore(f"{storage}/{name}"):
            tuner = tune.Tuner.restore(f"{storage}/{name}", trainable, resume_errored=True)
        else:
            sched = tune.schedulers.ASHAScheduler(grace_period=max(1, base.epochs // 8))
            tuner = tune.Tuner(
                trainable, param_space={"trial": tune.grid_search(pending)},
                tune_config=tune.TuneConfig(metric=base.monitor, mode=_mode(base.monitor),
                                            scheduler=sched, reuse_actors=True),
                run_config=run_config)
    else:
        n = len(splits.train)
        order = sorted(pending, key=lambda it: -cost(apply(base, it[1]), n))
        queue = ray.remote(num_cpus=0)(_Queue).remote(order)
        slots = max(1, int(ray.cluster_resources().get("CPU", 1)) // base.workers)
        trainable = tune.with_resources(tune.with_parameters(_lane, queue=queue, **common),
                                        resources)
        tuner = tune.Tuner(
            trainable, param_space={"lane": tune.grid_search(list(range(min(slots,
                                                                             len(order)))))},
            run_config=run_config)
    with mock.patch.dict(os.environ, TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1"):
        grid = tuner.fit()
    errors = [r.error for r in grid if r.error]
    if errors:
        log.warning("%d Tune trials failed (the first: %s); the table covers the "
                    "configurations that finished, and --resume-search runs the rest",
                    len(errors), errors[0])
    return grid


class _Queue:
    """The search's backlog of (index, overrides) pairs, served in order (a Ray actor:
    every lane, on any node, takes from the same one)."""

    def __init__(self, items):
        self.items = list(items)

    def next(self):
        return self.items.pop(0) if self.items else None


def _row(overrides: dict, metrics: dict, trial_dir) -> dict:
    return {**overrides, "valid_accuracy": metrics.get("valid_accuracy"),
            "train_accuracy": metrics.get("train_accuracy"),
            "valid_cost": metrics.get("valid_cost"),
            "epochs_trained": int(metrics.get("epoch", -1)) + 1,
            "error": metrics.get("error"), "trial_dir": trial_dir}


def _mode(metric: str) -> str:
    return "max" if metric.endswith("accuracy") else "min"


def _summarise(base: TrainConfig, splits, out_dir: Path, grid=()) -> dict:
    from .train.evaluate import evaluate_split, load_model
    rows, done = [], set()
    for d, r in _results(out_dir):
        done.add(r["index"])
        failed = "error" in r["final"]          # diverged or invalid: no model saved
        rows.append(_row(r["overrides"], r["final"], None if failed else str(d)))
    for r in grid:   # ASHA: trials the scheduler stopped early have no final model
        index, overrides = r.config.get("trial", (None, None))
        if index is not None and index not in done and r.metrics \
                and base.monitor in r.metrics:
            rows.append(_row(overrides, r.metrics, None))
    if not rows:
        raise RuntimeError("no trial reported a result; see the Tune logs in "
                           f"{out_dir / 'tune'}")
    import pandas as pd
    df = pd.DataFrame(rows).sort_values(base.monitor, ascending=_mode(base.monitor) == "min")
    df.to_csv(out_dir / "results.csv", index=False)
    df.to_parquet(out_dir / "results.parquet", index=False)
    usable = df[df["trial_dir"].notna()]
    if usable.empty:
        first = df["error"].dropna()
        raise RuntimeError(f"no trial finished with a model ({len(df)} failed); the first "
                           f"error: {first.iloc[0] if len(first) else 'stopped early'}")
    best = usable.iloc[0]
    overrides = {k: best[k] for k in df.columns if k in SEARCHABLE}
    overrides = {k: (v.item() if hasattr(v, "item") else v) for k, v in overrides.items()}
    best_cfg = apply(base, overrides)
    write_toml(out_dir / "best.toml", best_cfg)
    net, norm, _, _ = load_model(Path(best["trial_dir"]))
    test = evaluate_split(net, norm, splits.test.x, splits.test.y) if len(splits.test) else {}
    summary = {"trials": len(df), "best": overrides, "best_valid": float(best[base.monitor]),
               "test_accuracy": test.get("accuracy"), "test_cost": test.get("cost"),
               "best_config": str(out_dir / "best.toml")}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return {**summary, "table": df}


def write_toml(path, cfg: TrainConfig) -> None:
    """A flat TOML file of every setting, ready for ``distnn train --config``."""
    lines = []
    for k, v in cfg.to_dict().items():
        if v is None:
            continue
        if isinstance(v, bool):
            lines.append(f"{k} = {'true' if v else 'false'}")
        elif isinstance(v, (int, float)):
            lines.append(f"{k} = {v!r}")
        elif isinstance(v, list):
            lines.append(f"{k} = [{', '.join(map(str, v))}]")
        else:
            lines.append(f"{k} = {json.dumps(str(v))}")
    Path(path).write_text("\n".join(lines) + "\n")
