"""Training curves as a PNG (needs matplotlib: ``pip install matplotlib``), for people who
do not run TensorBoard."""
from __future__ import annotations

import json
from pathlib import Path


def run_of(run) -> tuple[list[dict], str, dict]:
    """(history, name, marks) of a metrics JSON file, a checkpoint, or a checkpoint
    directory (its latest checkpoint); marks: ``best_epoch`` (by the run's --monitor: the
    metrics' ``best``, or the epoch its ``best`` checkpoint holds when that is not after
    the one plotted; None where nothing measured it) and ``test_accuracy`` (measured
    after the history's last epoch: from the metrics file, or for a checkpoint from the
    metrics.json a run writes into its checkpoint directory when that file's history ends
    at the checkpoint's epoch; None where there is none)."""
    p = Path(run)
    if p.is_file():
        doc = _metrics(p)
        if doc is None or "history" not in doc:
            raise ValueError(f"{p} has no 'history' (expected a --metrics-out file)")
        check_history(doc["history"], p)
        best = doc.get("best")
        best = best.get("epoch") if isinstance(best, dict) else doc.get("best_epoch")
        return doc["history"], p.stem, _marks(best, doc.get("test_accuracy"), doc["history"])
    from . import checkpoint as ckpt
    c = ckpt.load(p)
    history, root = c.meta["history"], c.path.parent
    beside = root / "metrics.json"
    doc = _metrics(beside, quiet=True) if beside.is_file() else None
    last = history[-1].get("epoch") if history else None
    same = bool(doc and isinstance(doc.get("history"), list) and doc["history"]
                and isinstance(doc["history"][-1], dict)
                and doc["history"][-1].get("epoch") == last)
    best = c.meta.get("best_epoch")
    if (root / "best").is_file():
        try:
            best = ckpt.read_meta(root, "best")[1]["epoch"]
        except (ckpt.CheckpointError, OSError, ValueError):
            pass
    return history, f"{root.name} ({c.path.name})", _marks(
        best, doc.get("test_accuracy") if same else None, history)


def _metrics(p: Path, quiet: bool = False) -> dict | None:
    try:
        doc = json.loads(p.read_text())
    except ValueError as e:
        if quiet:
            return None
        raise ValueError(f"{p} is not JSON ({e}); expected a --metrics-out file") from None
    return doc if isinstance(doc, dict) else None


def _marks(best, test, history: list[dict]) -> dict:
    """Marks for ``plot_history``: an epoch of the history, a number, or None."""
    epochs = {h.get("epoch") for h in history}
    ok = isinstance(test, (int, float)) and not isinstance(test, bool)
    return {"best_epoch": best if isinstance(best, int) and best in epochs else None,
            "test_accuracy": test if ok else None}


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("plotting needs matplotlib: pip install 'distnn[viz]' (or pip "
                         "install matplotlib)") from None
    return plt


def check_available() -> None:
    """Fail now, not after the work whose result is to be plotted, without matplotlib."""
    _pyplot()


def plot_lr_find(tried: dict, threshold: float, out) -> None:
    """Training cost per epoch for each learning rate tried; the threshold marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for lr, costs in tried.items():
        style = "-" if lr <= threshold else ":"
        ax.plot(range(len(costs)), costs, style, marker="o", label=f"lr {lr:.3g}")
    ax.set(xlabel="epoch", ylabel="training cost", yscale="log",
           title=f"lr-find: threshold ~ {threshold:.3g}, suggested {threshold / 2:.3g}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


CURVES = ("batch_cost", "train_cost", "train_accuracy", "valid_cost", "valid_accuracy")


def check_history(history, where) -> None:
    """Refuse a 'history' that is not a list of per-epoch records of numbers."""
    def number(v):
        return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
    ok = isinstance(history, list) and all(
        isinstance(h, dict) and isinstance(h.get("epoch"), int) and
        all(number(h.get(k)) for k in CURVES) for h in history)
    if not ok:
        raise ValueError(f"{where}: 'history' must be a list of per-epoch records "
                         "({\"epoch\": 0, \"train_cost\": ..., ...}), as --metrics-out "
                         "writes them")


def plot_history(history: list[dict], out, title: str = "", best_epoch: int | None = None,
                 test_accuracy: float | None = None) -> None:
    """Cost and accuracy per epoch: on the training split and the validation split when
    they were measured (cost with the L1/L2 penalty), and the mean data cost of the
    mini-batches as trained on (every run has that one); the best epoch (a vertical
    line) and the test accuracy measured after the last epoch (a star) where given.  The
    accuracy panel is left out when the run measured no accuracy at all."""
    if not any(h.get(k) is not None for h in history for k in CURVES):
        raise ValueError("this run recorded no cost or accuracy per epoch (it predates "
                         "batch_cost, was run with --no-monitor-train and has no validation "
                         "split): nothing to plot")
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    has_acc = test_accuracy is not None or any(
        h.get(f"{split}_accuracy") is not None for h in history for split in ("train", "valid"))
    fig, axes = plt.subplots(1, 2 if has_acc else 1, figsize=(10 if has_acc else 5.5, 4),
                             squeeze=False)
    ax1, ax2 = axes[0][0], (axes[0][1] if has_acc else None)
    batch = [h.get("batch_cost") for h in history]
    if any(v is not None for v in batch):
        ax1.plot(epochs, batch, ":", label="mini-batches as trained on (data cost)")
    for split, style in (("train", "-"), ("valid", "--")):
        cost = [h.get(f"{split}_cost") for h in history]
        acc = [h.get(f"{split}_accuracy") for h in history]
        if any(v is not None for v in cost):
            ax1.plot(epochs, cost, style, label=f"{split} (incl. L1/L2)")
        if ax2 is not None and any(v is not None for v in acc):
            ax2.plot(epochs, [100 * v if v is not None else None for v in acc], style,
                     label=split)
    if ax2 is not None and test_accuracy is not None:
        ax2.plot([epochs[-1]], [100 * test_accuracy], "*", markersize=12,
                 label=f"test {100 * test_accuracy:.2f}% (after epoch {epochs[-1]})")
    if best_epoch is not None:
        for ax in axes[0]:
            ax.axvline(best_epoch, color="grey", linestyle="-.", linewidth=1,
                       label=f"best epoch {best_epoch}" if ax is axes[0][-1] else None)
    ax1.set(xlabel="epoch", ylabel="cost", title="cost")
    if ax2 is not None:
        ax2.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
