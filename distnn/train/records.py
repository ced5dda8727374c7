"""What a run records, defined once for any number of workers: the per-epoch logs, the
divergence error and its advice, the parameters a trained state is evaluated with, and
the metrics JSON."""
from __future__ import annotations

import json
import math

import numpy as np

from ..io.store import write_text


class DivergenceError(RuntimeError):
    """The cost became NaN or infinite.  ``history`` holds the epochs completed; the
    network's parameters were put back to the end of the last complete epoch."""

    def __init__(self, msg: str, history: list):
        super().__init__(msg)
        self.history = history


def diverged_message(loss, epoch: int, step: int, lr: float) -> str:
    return (f"training diverged: the cost became {loss} at epoch {epoch}, step {step} "
            f"(lr {lr:g}). The parameters were put back to the end of the last complete "
            f"epoch. Try a smaller --lr (e.g. {lr / 10:g}), inputs scaled to [0, 1] "
            "(or --standardize), a cross-entropy or log-likelihood cost, or a smaller "
            "--init scale.")


def epoch_logs(epoch, lr, n, seconds, loss_sum, evaluate, monitor_train, has_valid,
               **extra) -> dict:
    """The per-epoch record of every run (``evaluate(which)`` gives (cost, accuracy) for
    "train" or "valid").  ``batch_cost`` is free: the mean data cost of the epoch's
    mini-batches as they were trained on (augmented, with dropout, parameters moving),
    the one training curve a run with ``--no-monitor-train`` still has."""
    logs = {"epoch": epoch, "batch_cost": loss_sum / n, "train_cost": None,
            "train_accuracy": None, "valid_cost": None, "valid_accuracy": None, "lr": lr,
            "train_seconds": seconds, "examples_per_second": n / seconds, **extra}
    if monitor_train:
        logs["train_cost"], logs["train_accuracy"] = evaluate("train")
    if has_valid:
        logs["valid_cost"], logs["valid_accuracy"] = evaluate("valid")
    return logs


#: a rank whose own work makes the others wait longer than this share of the epoch (and
#: than STRAGGLER_SECONDS: noise in short epochs) is named in the log
STRAGGLER_SHARE, STRAGGLER_SECONDS = 0.10, 0.5


def straggler(ranks: list[dict], seconds: float) -> str | None:
    """The slowest rank, when it costs more than ``STRAGGLER_SHARE`` of the epoch: its
    own work (batches, compute, compression, update: everything but the collectives)
    against the median of the other ranks', which is about how long the others waited
    for it."""
    if len(ranks) < 2 or seconds <= 0:
        return None
    work = [r["data_seconds"] + r["compute_seconds"] + r["compress_seconds"]
            + r["update_seconds"] for r in ranks]
    slow = int(np.argmax(work))
    others = float(np.median([w for i, w in enumerate(work) if i != slow]))
    cost = work[slow] - others
    if cost <= max(STRAGGLER_SHARE * seconds, STRAGGLER_SECONDS):
        return None
    r = ranks[slow]
    return (f"rank {r['rank']} is the straggler: {work[slow]:.2f} s of its own work "
            f"(batches {r['data_seconds']:.2f}, compute {r['compute_seconds']:.2f}, "
            f"compression {r['compress_seconds']:.2f}, update {r['update_seconds']:.2f}) "
            f"against a median {others:.2f} s for the others, costing the epoch about "
            f"{cost:.2f} s ({cost / seconds:.0%} of {seconds:.2f} s): see the per-rank "
            "times in the metrics JSON (history[].ranks) or TensorBoard (ranks/)")


def all_finite(logs: dict) -> bool:
    return all(not isinstance(v, (int, float)) or math.isfinite(v) for v in logs.values())


def memory() -> dict:
    """{"rss": bytes resident now, "peak": the most resident so far} of this process
    (Linux /proc; the peak from getrusage elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            kb = {k: int(v.split()[0]) for k, v in (ln.split(":", 1) for ln in f)
                  if k in ("VmRSS", "VmHWM")}
        return {"rss": kb["VmRSS"] * 1024, "peak": kb["VmHWM"] * 1024}
    except (OSError, KeyError, ValueError):
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return {"rss": peak, "peak": peak}


def write_json(path, obj) -> None:
    """Write ``obj`` to ``path`` atomically (``io.files.OutputError`` if it cannot be)."""
    write_text(path, json.dumps(obj, indent=2, default=float) + "\n")
