"""A search's results on disk: each trial's directory (final model, result.json,
TensorBoard hparams), the sorted table, the winner's config and its test figures."""
from __future__ import annotations

import json
from pathlib import Path

from ..config import TrainConfig
from ..train.callbacks import Callback, mode_of
from .space import SEARCHABLE, apply


class SearchFailed(RuntimeError):
    """No trial of a search finished with a model (each one is recorded with its
    error in the results table)."""


def trial_dir(out_dir: Path, index: int) -> Path:
    return Path(out_dir) / "trials" / f"{index:04d}"


class TrialRecorder(Callback):
    """A trial's record while it trains, epoch by epoch: its learning curves in the
    search's TensorBoard (``OUT/tensorboard/NNNN``) and ``progress.json`` (for the live
    progress line).  A trial that can be ``stoppable`` (ASHA ends it after any epoch)
    also saves its model each epoch and puts its curves on disk at once, so it keeps
    both; the others do that once, in ``finish`` (~20 ms an epoch saved: a model's
    Parquet files and fsyncs, and a new event file).  ``finish`` adds result.json and
    the hparams."""

    def __init__(self, out_dir: Path, index: int, overrides: dict, cfg: TrainConfig,
                 stoppable: bool = False):
        from ..io.tensorboard import RunWriter
        self.dir, self.index, self.overrides = trial_dir(out_dir, index), index, overrides
        self.cfg, self.stoppable = cfg, stoppable
        self.writer = RunWriter(str(Path(out_dir) / "tensorboard" / self.dir.name))

    def on_epoch_end(self, epoch, logs, trainer) -> None:
        from ..train.checkpointing import save_model
        from ..train.tensorboard import SCALARS
        self.writer.scalars(epoch, {tag: logs.get(k) for k, tag in SCALARS.items()})
        if self.stoppable:
            self.writer.sync()
            save_model(self.dir, "final", trainer.net, self.cfg, trainer.data.normalizer,
                       trainer.history)
        _write_json(self.dir / "progress.json", self.index, self.overrides, clean(logs))

    def finish(self, m: dict) -> dict:
        from ..train.checkpointing import save_model
        # the model the run ended with (early stopping may have put back an earlier one)
        save_model(self.dir, "final", m["network"], self.cfg, m["normalizer"], m["history"])
        final = clean(m["history"][-1])
        _write_json(self.dir / "result.json", self.index, self.overrides, final)
        self.writer.hparams({k: v for k, v in {**self.cfg.to_dict(), **self.overrides}.items()
                             if not isinstance(v, (list, dict))},
                            {f"hparam/{k}": final.get(k) for k in ("valid_accuracy",
                                                                   "train_accuracy",
                                                                   "valid_cost")},
                            step=len(m["history"]) - 1)      # beside the last epoch's
        self.close()
        return final

    def close(self) -> None:
        self.writer.close()


def _write_json(path: Path, index: int, overrides: dict, final: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"index": index, "overrides": overrides, "final": final}) + "\n")


def record_error(out_dir: Path, index: int, overrides: dict, error: Exception) -> dict:
    """Record a trial that diverged or had invalid settings, with its error and its
    last good epoch, so the search goes on."""
    history = getattr(error, "history", None) or [{}]
    final = {**clean(history[-1]), "error": str(error)}
    _write_json(trial_dir(out_dir, index) / "result.json", index, overrides, final)
    return final


def clean(logs: dict) -> dict:
    return {k: v for k, v in logs.items() if v is not None}


def _results(out_dir: Path, name: str = "result.json") -> list[tuple[Path, dict]]:
    """Every recorded configuration: (its directory, its result.json), in index order."""
    return [(f.parent, json.loads(f.read_text()))
            for f in sorted((out_dir / "trials").glob(f"*/{name}"))]


def progress(out_dir: Path, monitor: str):
    """(trials done, running, failed, best so far as (value, index, overrides) or None)."""
    finished = {r["index"]: r for _, r in _results(out_dir)}
    started = {r["index"]: r for _, r in _results(out_dir, "progress.json")}
    failed = sum("error" in r["final"] for r in finished.values())
    scored = [({**started, **finished}[i]) for i in {**started, **finished}]
    scored = [r for r in scored if monitor in r["final"] and "error" not in r["final"]]
    pick = max if mode_of(monitor) == "max" else min
    best = pick(scored, key=lambda r: r["final"][monitor], default=None)
    return (len(finished), len(set(started) - set(finished)), failed,
            (best["final"][monitor], best["index"], best["overrides"]) if best else None)


def pending(trials: list[dict], out_dir: Path, resume: bool) -> list[tuple[int, dict]]:
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


def _row(overrides: dict, metrics: dict, trial_dir) -> dict:
    return {**overrides, "valid_accuracy": metrics.get("valid_accuracy"),
            "train_accuracy": metrics.get("train_accuracy"),
            "valid_cost": metrics.get("valid_cost"),
            "epochs_trained": int(metrics.get("epoch", -1)) + 1,
            "error": metrics.get("error"), "trial_dir": trial_dir}


def summarise(base: TrainConfig, splits, out_dir: Path, grid=()) -> dict:
    from ..train.evaluate import evaluate_chunks, load_model
    rows, done = [], set()
    for d, r in _results(out_dir):
        done.add(r["index"])
        failed = "error" in r["final"]          # diverged or invalid: no model saved
        rows.append(_row(r["overrides"], r["final"], None if failed else str(d)))
    for d, r in _results(out_dir, "progress.json"):   # stopped early (ASHA): its last epoch
        if r["index"] not in done:
            done.add(r["index"])
            rows.append({**_row(r["overrides"], r["final"], str(d)), "stopped_early": True})
    for r in grid:   # a trial stopped before it finished one epoch
        index, overrides = r.config.get("trial", (None, None))
        if index is not None and index not in done and r.metrics \
                and base.monitor in r.metrics:
            rows.append(_row(overrides, r.metrics, None))
    if not rows:
        raise SearchFailed("no trial reported a result; see the Tune logs in "
                           f"{out_dir / 'tune'}")
    import pandas as pd
    # ties on the monitored metric go to the lower validation cost
    df = pd.DataFrame(rows)
    keys = [base.monitor] + (["valid_cost"] if base.monitor != "valid_cost"
                             and "valid_cost" in df and df["valid_cost"].notna().any() else [])
    df = df.sort_values(keys, ascending=[mode_of(base.monitor) == "min", True][:len(keys)],
                        kind="stable")
    df.to_csv(out_dir / "results.csv", index=False)
    df.to_parquet(out_dir / "results.parquet", index=False)
    usable = df[df["trial_dir"].notna()]
    if usable.empty:
        first = df["error"].dropna()
        raise SearchFailed(f"no trial finished with a model ({len(df)} failed); the first "
                           f"error: {first.iloc[0] if len(first) else 'stopped early'}; the "
                           f"table of them is {out_dir / 'results.csv'}")
    best = usable.iloc[0]
    overrides = {k: best[k] for k in df.columns if k in SEARCHABLE}
    overrides = {k: (v.item() if hasattr(v, "item") else v) for k, v in overrides.items()}
    best_cfg = apply(base, overrides)
    write_toml(out_dir / "best.toml", best_cfg)
    net, norm, _, _ = load_model(Path(best["trial_dir"]))
    test = evaluate_chunks(net, norm, splits.test.chunks()) if len(splits.test) else {}
    summary = {"trials": len(df), "best": overrides, "best_valid": float(best[base.monitor]),
               "test_accuracy": test.get("accuracy"), "test_cost": test.get("cost"),
               "best_config": str(out_dir / "best.toml")}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return {**summary, "table": df}


def write_toml(path, cfg: TrainConfig) -> None:
    """Every setting as a TOML file, ready for ``distnn train --config``."""
    Path(path).write_text(cfg.to_toml())
