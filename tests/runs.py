"""Helpers for tests that run ``distnn train`` on a small IDX dataset (the ``blob_dir``
fixture of conftest.py)."""


def train_args(data_dir, ckpt_dir, epochs=6, extra=()):
    """``distnn train`` arguments for a small sigmoid network on the blobs in ``data_dir``,
    checkpointing into ``ckpt_dir``."""
    return ["train", "--dataset", "idx", "--data-dir", str(data_dir), "--layers", "64,24,4",
            "--epochs", str(epochs), "--batch-size", "10", "--lr", "0.1",
            "--optimizer", "momentum", "--keep-prob", "0.8", "--l2", "0.5",
            "--checkpoint-dir", str(ckpt_dir), *extra]
