"""Helpers shared by tests: ``distnn train`` arguments on a small IDX dataset (the
``blob_dir`` fixture of conftest.py), and group members run as threads."""
import threading


def train_args(data_dir, ckpt_dir, epochs=6, extra=()):
    """``distnn train`` arguments for a small sigmoid network on the blobs in ``data_dir``,
    checkpointing into ``ckpt_dir``."""
    return ["train", "--dataset", "idx", "--data-dir", str(data_dir), "--layers", "64,24,4",
            "--epochs", str(epochs), "--batch-size", "10", "--lr", "0.1",
            "--optimizer", "momentum", "--keep-prob", "0.8", "--l2", "0.5",
            "--checkpoint-dir", str(ckpt_dir), *extra]


def run_threads(fns, timeout=60):
    """Call each of ``fns`` in a thread of its own (the members of a group); their
    results in order, or the first exception raised."""
    out, errs = [None] * len(fns), []

    def call(i):
        try:
            out[i] = fns[i]()
        except BaseException as e:  # surfaced below
            errs.append(e)
    ts = [threading.Thread(target=call, args=(i,)) for i in range(len(fns))]
    [t.start() for t in ts]
    [t.join(timeout) for t in ts]
    if errs:
        raise errs[0]
    return out
