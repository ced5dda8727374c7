"""Elastic-distortion throughput vs. the usual per-image SciPy implementation, and the
cost of on-the-fly augmentation in a training epoch.

    python scripts/bench_augment.py [--images 4096] [--repeats 3] [--write docs/BENCHMARKS.md]

1. Elastic distortions (alpha 34, sigma 4) of 28x28 images per second on one core:
   distnn's batched Augmenter (batches of 128) vs. a per-image reference built on
   ``scipy.ndimage.gaussian_filter`` + ``map_coordinates`` (order 1).
2. A training epoch of [784,800,10]@128 (momentum SGD) with ``--augment elastic=34:4``
   vs. without.  Augmentation runs in a background thread, overlapping the gradient
   computation (BLAS pinned to one thread).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402

_bench.pin_threads(1)

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from distnn.config import TrainConfig  # noqa: E402
from distnn.data.augment import Augmenter  # noqa: E402
from distnn.data.splits import Split  # noqa: E402


def ours(images, batch=128) -> float:
    aug = Augmenter("elastic=34:4", seed=0)
    idx = np.arange(len(images))
    aug(images[:batch], idx[:batch], 0)
    t0 = time.perf_counter()
    for s in range(0, len(images), batch):
        aug(images[s:s + batch], idx[s:s + batch], 1)
    return len(images) / (time.perf_counter() - t0)


def reference(images, alpha=34.0, sigma=4.0) -> float:
    from scipy.ndimage import gaussian_filter, map_coordinates
    rng = np.random.default_rng(0)
    h, w = images.shape[1:]
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    t0 = time.perf_counter()
    for img in images:
        dx = gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma) * alpha
        dy = gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma) * alpha
        map_coordinates(img.astype(np.float32) / 255, [yy + dy, xx + dx], order=1,
                        mode="constant")
    return len(images) / (time.perf_counter() - t0)


def epoch_seconds(split, augment) -> float:
    cfg = TrainConfig(layers=(784, 800, 10), optimizer="momentum", lr=0.1, momentum=0.9,
                      batch_size=128, augment=augment)
    return _bench.epoch(_bench.one_worker(cfg, split), 0)["seconds"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--write", metavar="BENCHMARKS.md")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, 28, 28), dtype=np.uint8)
    o, r, plain, aug = [], [], [], []
    split = Split(images, rng.integers(0, 10, len(images)))
    for _ in range(args.repeats):
        o.append(ours(images))
        r.append(reference(images[:1024]))
        plain.append(epoch_seconds(split, "none"))
        aug.append(epoch_seconds(split, "elastic=34:4"))
    o, r = _bench.median(o), _bench.median(r)
    plain, aug = _bench.median(plain), _bench.median(aug)
    _bench.report("bench_augment", "Augmentation",
                  f"medians of {args.repeats} interleaved runs.", [
        _bench.table(["measure", "distnn", "reference", "ratio"], [
            ["elastic 34:4 img/s, one core", f"{o:,.0f}", f"{r:,.0f} (SciPy per image)",
             f"**{o / r:.1f}x**"],
            [f"epoch of {len(images)} images, [784,800,10]@128", f"{aug:.2f} s with elastic",
             f"{plain:.2f} s without", f"**{aug / plain:.2f}x**"],
        ]), "",
        "Targets: >= 5x the reference; an augmented epoch <= 1.25x a plain one "
        "(augmentation overlaps the gradient computation in a background thread).",
    ], args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
