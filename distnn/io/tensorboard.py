"""The TensorBoard writer (tensorboardX) used by the TensorBoard callback; the driver is
the only process that writes."""
from __future__ import annotations

import sys
import uuid
from pathlib import Path

import numpy as np


def _import_tensorboardx():
    """Import tensorboardX without the PyTorch import it attempts at module level.

    tensorboardX's writer does ``try: import torch`` only to accept torch tensors; where
    torch is installed that costs ~2 s per process (measured: 2.0 s of a 2.1 s import),
    paid by every trial process of a search.  distnn passes NumPy arrays and floats only,
    so unless torch is already loaded it is hidden for the duration of the import, then
    made importable again."""
    if "tensorboardX.writer" in sys.modules or "torch" in sys.modules:
        import tensorboardX
        return tensorboardX
    sys.modules["torch"] = None          # makes ``import torch`` raise ImportError
    try:
        import tensorboardX
        import tensorboardX.summary  # noqa: F401
    finally:
        del sys.modules["torch"]
    return tensorboardX


def _event_files(logdir) -> list[Path]:
    root = Path(logdir)
    return sorted(p for p in root.rglob("events.out.tfevents.*") if p.is_file()) \
        if root.is_dir() else []


def used_events(logdir) -> str | None:
    """What of another run ``logdir`` holds ("3 TensorBoard event files"), or None."""
    n = len(_event_files(logdir))
    return f"{n} TensorBoard event file{'s' if n > 1 else ''}" if n else None


def clear_events(logdir) -> None:
    """Delete another run's event files (``--overwrite``); other files stay."""
    for p in _event_files(logdir):
        p.unlink()


def used_event_names(names: list[str]) -> str | None:
    """``used_events`` for the file names at a URI."""
    n = sum(1 for x in names if x.rsplit("/", 1)[-1].startswith("events.out.tfevents"))
    return f"{n} TensorBoard event file{'s' if n > 1 else ''}" if n else None


def clear_remote_events(remote, names: list[str]) -> None:
    for x in names:
        if x.rsplit("/", 1)[-1].startswith("events.out.tfevents"):
            remote.delete(x)


class RunWriter:
    """Scalars, histograms, text, images and hparams for one run directory.
    ``purge_step``: a resumed run's first epoch; TensorBoard then hides what an earlier
    attempt logged from that step on, so a replayed epoch is not drawn twice."""

    def __init__(self, logdir: str, purge_step: int | None = None):
        self.logdir, self.files, self.id = logdir, 0, uuid.uuid4().hex[:8]
        self.w = self._open(purge_step)

    def _open(self, purge_step=None):
        # the suffix: two writers in one second (a quick resume) would share a file name,
        # and one writer's files (see ``sync``) must sort in order within a second
        self.files += 1
        return _import_tensorboardx().SummaryWriter(
            logdir=self.logdir, purge_step=purge_step,
            filename_suffix=f".{self.id}.{self.files:05d}")

    def sync(self) -> None:
        """Everything written so far is on disk when this returns (tensorboardX's flush
        does not wait for its writer thread's queue): the file is closed, and the next
        events go to a new one.  For a process that may be stopped at any moment (a
        search trial that ASHA ends)."""
        self.w.close()
        self.w = self._open()

    def scalars(self, step: int, values: dict) -> None:
        for tag, v in values.items():
            if v is not None:
                self.w.add_scalar(tag, float(v), step)

    def histograms(self, step: int, arrays: dict) -> None:
        for tag, a in arrays.items():
            self.w.add_histogram(tag, np.asarray(a, np.float64).reshape(-1), step)

    def text(self, tag: str, body: str, step: int = 0) -> None:
        self.w.add_text(tag, body, step)

    def image(self, tag: str, img: np.ndarray, step: int = 0) -> None:
        """A uint8 (H, W) greyscale image."""
        self.w.add_image(tag, img[None, :, :], step, dataformats="CHW")

    def hparams(self, hparams: dict, metrics: dict, step: int = 0) -> None:
        """The hparams view's summaries, written into this run's own event file.
        (tensorboardX's add_hparams opens a second writer whose file name repeats the
        first's when both start in the same second, clobbering the run's scalars.)"""
        hparams_summaries = _import_tensorboardx().summary.hparams
        clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                 for k, v in hparams.items() if v is not None}
        values = {k: float(v) for k, v in metrics.items() if v is not None}
        for summary in hparams_summaries(clean, values):
            self.w.file_writer.add_summary(summary)
        self.scalars(step, values)

    def flush(self) -> None:
        self.w.flush()

    def close(self) -> None:
        self.w.close()
