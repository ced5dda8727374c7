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
from pathlib import Path

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
    and after each of the first few epochs.  From ``start``, go up by factors of 10 while the cost falls
    (down while it does not), then bisect (geometrically) between the largest falling
    and the smallest non-falling rate ``refine`` times.  Suggests half the threshold."""
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
def _trial(config, base: dict, splits_ref, out_dir: str, per_epoch: bool):
    """One Tune trial: train each (index, overrides) of its pack in turn.  Every
    configuration's final model goes to ``out_dir/trials/NNNN``, its result to
    ``result.json`` there, and its hparams to ``out_dir/tensorboard/NNNN``.  Metrics are
    reported every epoch when a scheduler needs them (then packs hold one trial), else
    once at the end, which keeps Tune's per-result overhead off short trials."""
    import ray
    from ray import tune
    from .dist.driver import train as fit
    from .train.callbacks import Callback
    splits = ray.get(splits_ref) if isinstance(splits_ref, ray.ObjectRef) else splits_ref
    base_cfg = TrainConfig(**{**base, "layers": tuple(base["layers"])})

    class Report(Callback):
        def on_epoch_end(self, epoch, logs, trainer):
            if per_epoch:
                tune.report(_clean(logs))

    finals = []
    for index, overrides in config["pack"]:
        done = Path(out_dir) / "trials" / f"{index:04d}" / "result.json"
        if done.exists():                    # finished before the search was interrupted
            finals.append(json.loads(done.read_text())["final"])
            continue
        cfg = apply(base_cfg, overrides).replace(checkpoint_dir=None, logdir=None,
                                                 metrics_out=None, resume=None)
        m = fit(cfg, splits, callbacks=[Report()])
        finals.append(_record(Path(out_dir), index, overrides, cfg, m, splits))
    if not per_epoch:
        key = base_cfg.monitor
        pick = max if _mode(key) == "max" else min
        tune.report(pick(finals, key=lambda f: f.get(key, float("nan"))))


def _record(out_dir: Path, index: int, overrides: dict, cfg: TrainConfig, m: dict, splits):
    from .data.splits import Normalizer
    from .io.tensorboard import RunWriter
    from .train.checkpointing import save_model
    name = f"{index:04d}"
    norm = Normalizer.fit(splits.train.x, splits.pixel_max, cfg.standardize)
    save_model(out_dir / "trials" / name, "final", m["network"], cfg, norm, m["history"])
    final = _clean(m["history"][-1])
    (out_dir / "trials" / name / "result.json").write_text(
        json.dumps({"index": index, "overrides": overrides, "final": final}) + "\n")
    w = RunWriter(str(out_dir / "tensorboard" / name))
    w.hparams({k: v for k, v in {**cfg.to_dict(), **overrides}.items()
               if not isinstance(v, (list, dict))},
              {f"hparam/{k}": final.get(k) for k in ("valid_accuracy", "train_accuracy",
                                                     "valid_cost")})
    w.close()
    return final


def _clean(logs: dict) -> dict:
    return {k: v for k, v in logs.items() if v is not None}


def packs(trials: list[dict], slots: int, pack: int | None) -> list[list]:
    """Group (index, overrides) pairs: ``pack`` per Tune trial, or by default enough
    groups for about four waves over the ``slots`` trials that run at once."""
    size = pack or max(1, math.ceil(len(trials) / (4 * max(slots, 1))))
    items = list(enumerate(trials))
    return [items[i::math.ceil(len(items) / size)] for i in range(math.ceil(len(items) / size))]


def run_search(base: TrainConfig, trials: list[dict], out: str, *, name: str = "search",
               asha: bool = False, resume: bool = False, address: str | None = None,
               splits=None, pack: int | None = None) -> dict:
    """Run ``trials`` (override dicts) on Ray Tune; write results.csv/.parquet and
    best.toml into ``out``; return the summary (best trial, its test metrics).

    Without ``asha``, trials are packed several to a Tune trial (``pack``; default:
    about four waves over the CPUs) so that short trials do not drown in Tune's
    per-trial overhead; with it, each trial is its own Tune trial and reports every
    epoch for the scheduler to act on."""
    import ray
    from ray import tune
    from .data.datasets import load
    from .dist.driver import start_ray
    import os
    # distnn writes its own results table and hparams; Tune's per-result CSV/JSON/
    # TensorBoard loggers only cost time on short trials
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    out_dir = Path(out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = splits or load(base.dataset, base.data_dir)
    started = start_ray(address, base.workers)
    try:
        trainable = tune.with_resources(
            tune.with_parameters(_trial, base=base.to_dict(), splits_ref=ray.put(splits),
                                 out_dir=str(out_dir), per_epoch=asha),
            {"cpu": base.workers})
        storage = str(out_dir / "tune")
        if resume and tune.Tuner.can_restore(f"{storage}/{name}"):
            tuner = tune.Tuner.restore(f"{storage}/{name}", trainable, resume_errored=True)
        else:
            sched = tune.schedulers.ASHAScheduler(grace_period=max(1, base.epochs // 8)) \
                if asha else None
            slots = int(ray.cluster_resources().get("CPU", 1)) // base.workers
            groups = [[(i, t)] for i, t in enumerate(trials)] if asha else \
                packs(trials, slots, pack)
            tuner = tune.Tuner(
                trainable, param_space={"pack": tune.grid_search(groups)},
                tune_config=tune.TuneConfig(metric=base.monitor, mode=_mode(base.monitor),
                                            scheduler=sched, reuse_actors=True),
                run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0))
        grid = tuner.fit()
        return _summarise(grid, base, splits, out_dir)
    finally:
        if started:
            ray.shutdown()


def _row(overrides: dict, metrics: dict, trial_dir) -> dict:
    return {**overrides, "valid_accuracy": metrics.get("valid_accuracy"),
            "train_accuracy": metrics.get("train_accuracy"),
            "valid_cost": metrics.get("valid_cost"),
            "epochs_trained": int(metrics.get("epoch", -1)) + 1, "trial_dir": trial_dir}


def _mode(metric: str) -> str:
    return "max" if metric.endswith("accuracy") else "min"


def _summarise(grid, base: TrainConfig, splits, out_dir: Path) -> dict:
    from .train.evaluate import evaluate_split, load_model
    rows, done = [], set()
    for f in sorted((out_dir / "trials").glob("*/result.json")):
        r = json.loads(f.read_text())
        done.add(r["index"])
        rows.append(_row(r["overrides"], r["final"], str(f.parent)))
    for r in grid:   # trials a scheduler stopped early have no final model
        group = r.config["pack"]
        if len(group) == 1 and group[0][0] not in done and r.metrics \
                and base.monitor in r.metrics:
            rows.append(_row(group[0][1], r.metrics, None))
    if not rows:
        raise RuntimeError("no trial reported a result; see the Tune logs in "
                           f"{out_dir / 'tune'}")
    import pandas as pd
    df = pd.DataFrame(rows).sort_values(base.monitor, ascending=_mode(base.monitor) == "min")
    df.to_csv(out_dir / "results.csv", index=False)
    df.to_parquet(out_dir / "results.parquet", index=False)
    best = df[df["trial_dir"].notna()].iloc[0]
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
