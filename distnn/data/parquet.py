"""Parquet datasets (``--dataset parquet:URI``), read a shard at a time.

URI is a file, a directory of ``*.parquet`` files, or a glob, on the local disk or any
filesystem pyarrow knows (``s3://``, ``gs://``, ``hdfs://``).  Each row is an example:

``label``       an integer column 0..K-1 (``--label-column``);
``image``       if the table has this column: the image, as raw uint8 pixels
                (``fixed_size_binary``, as ``distnn data convert`` writes: the cheapest
                to read), a (fixed-size) list of numbers (H = W = sqrt(length), or the
                ``distnn.shape`` schema metadata), or an encoded image ``{"bytes":
                ...}`` as Hugging Face writes it (decoded with Pillow: ``pip install
                distnn[images]``);
otherwise       numeric feature columns (``--feature-columns``, default: every numeric
                column but the label and the split column): a tabular dataset.

Splits come from, in this order: a split column (``--split-column``, values ``train``,
``validation``/``valid``/``val``, ``test``); file names (``train``, ``validation``,
``test`` in a file's path, as Hugging Face lays datasets out; a split with no file is
cut from the training files); or fractions of all rows (``--split``, default
80/10/10).  Fractions use a hash of the row's position (seed 0), so they cost no read
and do not change with ``--seed``.

Nothing here reads a whole dataset: the driver reads the footers (row counts and
label statistics) and, for a split column, that one column; a worker reads only the
row groups its shard covers (``ParquetSplit.read``); the input statistics come from
one pass over the training split, a row group at a time (``chunks``).
"""
from __future__ import annotations

import io
from dataclasses import dataclass, replace

import numpy as np

from ..core.random import fold_key, keyed_uniform
from .idx import DataError
from .parquet_files import open_file, release_freed
from .splits import Split

PREFIX = "parquet:"
SPLIT_NAMES = {"train": "train", "training": "train", "validation": "valid",
               "valid": "valid", "val": "valid", "dev": "valid", "test": "test"}
SPLIT_KEY = fold_key(0, 0x5B117)      # seed 0: splits do not move with --seed


@dataclass(frozen=True)
class Options:
    """How to read a table: the user's column and split settings."""
    label: str = "label"
    features: tuple[str, ...] = ()       # () = every numeric column but label/split
    split_column: str | None = None
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    max_pixels: int = 1 << 24            # an encoded image larger than this is refused


@dataclass(frozen=True)
class Layout:
    """What every reader of the dataset must agree on (small; shipped to workers)."""
    uri: str
    label: str
    kind: str                  # "image" or "features"
    columns: tuple[str, ...]   # the image column, or the feature columns
    shape: tuple[int, ...]     # one example: (H, W) or (D,)
    dtype: str                 # of x as delivered: uint8 images, else float32
    encoded: bool              # images as {"bytes": PNG/JPEG}
    n_classes: int
    pixel_max: float
    version: str = ""          # the files' paths, sizes and modification times, hashed
    max_pixels: int = 1 << 24  # the largest encoded image decoded (--max-image-pixels)
    root: str = ""             # the files' common directory (names are shown below it)
    content: str = ""          # the files' names below root, sizes and row groups, hashed
    #: where the rows come from when they are not files: an object whose ``open(path)``
    #: gives what ``open_file`` does (``read_row_group``, ``num_row_groups``), e.g. a Ray
    #: Dataset's blocks (``parallel.ray_data.Blocks``); ``content`` is then a digest of
    #: the rows themselves, whatever the blocks
    source: object = None

    def open(self, path: str):
        """The file ``path`` of this dataset, open (a ParquetFile, or what ``source``
        opens)."""
        if self.source is not None:
            return self.source.open(path)
        return open_file(self.uri, path)


@dataclass(frozen=True)
class Part:
    """Rows of one row group that belong to a split: those whose split column is one
    of ``names``, and/or whose position hash falls in ``fraction``; the first
    ``count`` of them."""
    file: str
    group: int
    offset: int                # the row group's first row, counted over all files
    rows: int
    count: int
    names: tuple[str, ...] | None = None
    fraction: tuple[float, float] | None = None


class ParquetSplit:
    """A split of a Parquet dataset that is read on demand: ``len``, ``shape``,
    ``read(lo, hi)`` (examples lo..hi-1 as a ``Split``), ``chunks()``."""

    #: read on demand, a part per worker (see ``splits.Split``)
    held_whole = False

    def __init__(self, layout: Layout, parts: tuple[Part, ...], split_column=None):
        self.layout, self.parts, self.split_column = layout, tuple(parts), split_column
        self._ends = np.cumsum([p.count for p in self.parts], dtype=np.int64)
        self._files: dict = {}    # path -> open ParquetFile (not pickled: __reduce__)

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def __reduce__(self):
        return ParquetSplit, (self.layout, self.parts, self.split_column)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.layout.shape)

    def head(self, n: int) -> "ParquetSplit":
        parts, left = [], n
        for p in self.parts:
            if left <= 0:
                break
            parts.append(replace(p, count=min(p.count, left)))
            left -= p.count
        return ParquetSplit(self.layout, parts, self.split_column)

    def concat(self, other: "ParquetSplit") -> "ParquetSplit":
        return ParquetSplit(self.layout, self.parts + other.parts, self.split_column)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.layout.dtype)

    @property
    def where(self) -> str:
        return self.layout.uri

    @property
    def ends(self) -> np.ndarray:
        """Where each part's examples end (cumulative counts)."""
        return self._ends

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.layout.shape)) * np.dtype(self.layout.dtype).itemsize

    def read(self, lo: int, hi: int, x: bool = True):
        """Examples lo..hi-1 (uint8 (N, H, W) images or float32 (N, D) features, int64
        labels), reading only the row groups that hold them (``x=False``: only their
        labels, as a Split whose x is None)."""
        starts = self._ends - [p.count for p in self.parts]
        hi = min(hi, len(self))
        n = max(hi - lo, 0)
        out = np.empty((n, *self.layout.shape), self.layout.dtype) if x else None
        y = np.empty(n, np.int64)     # filled part by part: no list of copies to join
        for p, s, e in zip(self.parts, starts, self._ends):
            if e <= lo or s >= hi:
                continue
            px, py = read_part(self.layout, p, self.split_column, with_x=x,
                               handle=self._file(p.file))
            a, b = max(lo - s, 0), min(hi, e) - s
            y[s + a - lo:s + b - lo] = py[a:b]
            if x:
                out[s + a - lo:s + b - lo] = px[a:b]
        return Split(out, y)

    def describe(self) -> dict:
        """What this split is: its rows, the files they come from (below the dataset's
        directory) and how they were chosen."""
        files = list(dict.fromkeys(self.rel(p.file) for p in self.parts if p.count))
        how = ("a split column" if any(p.names for p in self.parts) else
               "--split fractions of the rows" if any(p.fraction for p in self.parts) else
               "file names")
        return {"rows": len(self), "files": files, "by": how}

    def rel(self, path: str) -> str:
        root = self.layout.root.rstrip("/")
        return path[len(root) + 1:] if root and path.startswith(root + "/") else path

    def fingerprint(self, h) -> None:
        """Add what this split holds to the hash ``h``: the files' names, sizes and row
        groups, and which rows of them are in the split (not the files' times or where
        they are: a copy of the same files is the same data)."""
        if self.layout.source is not None:  # its rows' digest, whatever the blocks
            runs: list = []
            for p in self.parts:
                key = (p.file, p.names, p.fraction)
                if runs and runs[-1][0] == key:
                    runs[-1][1] += p.count
                else:
                    runs.append([key, p.count])
            h.update(repr((self.layout.content, runs)).encode())
            return
        h.update(repr((self.layout.content, [(self.rel(p.file), p.group, p.count, p.names,
                                              p.fraction) for p in self.parts])).encode())

    def normalizer(self, standardize: bool):
        """The input normaliser fitted on this split: for ``standardize``, one streaming
        pass (``Normalizer.fit_stream``), kept in the cache (``$DISTNN_DATA/stats``)
        under a hash of the files' sizes and times and of the rows, so the next run or
        search trial on the same data reuses it."""
        import hashlib
        from .sources import atomic_write, cache_root
        from .splits import Normalizer
        pixel_max = self.layout.pixel_max
        if not standardize:
            return Normalizer(pixel_max)
        if self.layout.source is not None:    # not files: nothing to key a cache by
            return Normalizer.fit_stream(self.chunks(), pixel_max, True)
        key = hashlib.sha256(repr((self.layout, self.parts, self.split_column)).encode())
        path = cache_root() / "stats" / f"{key.hexdigest()[:32]}.npz"
        if path.is_file():
            with np.load(path) as z:
                return Normalizer(pixel_max, z["mean"], z["std"])
        norm = Normalizer.fit_stream(self.chunks(), pixel_max, True)
        buf = io.BytesIO()
        np.savez(buf, mean=norm.mean, std=norm.std)
        atomic_write(path, buf.getvalue())
        return norm

    def _file(self, path: str):
        """``path`` opened once for this split's reads (its footer read once)."""
        if path not in self._files:
            self._files[path] = self.layout.open(path)
        return self._files[path]

    def chunks(self):
        """The split a row group at a time (``Split`` each): one streaming pass."""
        for p in self.parts:
            if p.count:
                x, y = read_part(self.layout, p, self.split_column,
                                 handle=self._file(p.file))
                yield Split(x, y)
                del x, y
                release_freed()


# -- reading one row group --------------------------------------------------------------
def read_part(layout: Layout, p: Part, split_column=None, with_x: bool = True,
              handle=None) -> tuple[np.ndarray | None, np.ndarray]:
    """(x, y) of the rows of ``p`` (its first ``count`` selected rows); x None when
    not ``with_x`` (then only the label column is read); ``handle``: ``p.file``
    already open."""
    cols = [layout.label, *(layout.columns if with_x else ())] + \
        ([split_column] if p.names else [])
    table = (handle or layout.open(p.file)).read_row_group(p.group, columns=cols)
    keep = _selected(p, table.column(split_column) if p.names else None)
    x, y = decode(table, layout, p.file, f"{p.file}, row group {p.group}", with_x)
    if keep is not None:
        x, y = (x[keep] if with_x else None), y[keep]
    return (x[:p.count] if with_x else None), y[:p.count]


def decode(table, layout: Layout, where: str, where_images: str | None = None,
           with_x: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
    """(x, y) of every row of ``table`` as ``layout`` says, checked (labels in range, no
    NaN, images of one size); x None when not ``with_x``.  ``where``: what to name in
    messages (``where_images`` for the images, if more precise)."""
    y = _labels(table.column(layout.label), layout, where)
    if not with_x:
        return None, y
    x = (_images(table.column(layout.columns[0]), layout, where_images or where)
         if layout.kind == "image" else _features(table, layout, where))
    return x, y


def _selected(p: Part, split_values) -> np.ndarray | None:
    keep = None
    if p.names is not None:
        vals = np.array([SPLIT_NAMES.get(str(v).lower(), "?") for v in
                         split_values.to_pylist()])
        keep = np.isin(vals, p.names)
    if p.fraction is not None:
        u = keyed_uniform(SPLIT_KEY, np.arange(p.offset, p.offset + p.rows), 1,
                          np.float64)[:, 0]
        f = (u >= p.fraction[0]) & (u < p.fraction[1])
        keep = f if keep is None else keep & f
    return keep


def numeric_column(col) -> np.ndarray:
    """A numeric column without nulls as NumPy, read from its buffer (pyarrow's
    ``to_numpy`` imports pandas, ~60 MB more in every worker)."""
    import pyarrow as pa
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    dt = np.dtype(arr.type.to_pandas_dtype())
    return np.frombuffer(arr.buffers()[1], dt, count=len(arr), offset=arr.offset * dt.itemsize)


def _labels(col, layout: Layout, where: str) -> np.ndarray:
    import pyarrow.types as pt
    if not pt.is_integer(col.type):
        raise DataError(f"{where}: label column {layout.label!r} is {col.type}; expected "
                        "integers 0..K-1 (map class names to numbers first)")
    if col.null_count:
        raise DataError(f"{where}: label column {layout.label!r} has {col.null_count} "
                        "missing values")
    y = numeric_column(col).astype(np.int64)
    if len(y) and (y.min() < 0 or y.max() >= layout.n_classes):
        raise DataError(f"{where}: labels go from {y.min()} to {y.max()}, expected "
                        f"0..{layout.n_classes - 1}")
    return y


def _images(col, layout: Layout, where: str) -> np.ndarray:
    import pyarrow as pa
    if col.null_count:
        raise DataError(f"{where}: image column {layout.columns[0]!r} has {col.null_count} "
                        "missing images")
    n, size = len(col), int(np.prod(layout.shape))
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if layout.encoded:
        if not n:
            return np.zeros((0, *layout.shape), np.uint8)
        return np.stack([decode_image(v, f"{where}, row {i}", layout.shape, layout.max_pixels)
                         for i, v in enumerate(arr.field("bytes").to_pylist())])
    if pa.types.is_fixed_size_binary(arr.type):       # raw pixels: one buffer, no levels
        return np.frombuffer(arr.buffers()[1], np.uint8, count=n * size,
                             offset=arr.offset * size).reshape(n, *layout.shape)
    values = numeric_column(arr.flatten())
    if values.size != n * size:
        lengths = set(arr.value_lengths().to_numpy().tolist())
        raise DataError(f"{where}: images of mixed sizes ({sorted(lengths)[:5]} values); "
                        f"expected {size} each ({'x'.join(map(str, layout.shape))})")
    return _as_pixels(values, layout, where).reshape(n, *layout.shape)


def _as_pixels(values: np.ndarray, layout: Layout, where: str) -> np.ndarray:
    if layout.dtype == "uint8":
        if values.dtype != np.uint8:
            if values.size and (values.min() < 0 or values.max() > 255):
                raise DataError(f"{where}: integer pixels outside 0..255")
            values = values.astype(np.uint8)
        return values
    values = values.astype(np.float32)
    if not np.isfinite(values).all():      # (else the first step's cost is NaN: --lr blamed)
        raise DataError(f"{where}: float pixels hold NaN or infinity")
    return values


def decode_image(data: bytes, where: str, shape: tuple[int, ...] | None,
            max_pixels: int = 1 << 24) -> np.ndarray:
    """A greyscale uint8 (H, W) image from PNG/JPEG bytes (of ``shape`` if given); an
    image of more than ``max_pixels`` pixels (a decompression bomb: a few bytes that
    decode to gigabytes) is refused from its header, before it is decoded."""
    try:
        from PIL import Image
    except ImportError:
        raise DataError(f"{where}: the images are encoded (PNG/JPEG bytes); decoding them "
                        "needs Pillow: pip install 'distnn[images]'") from None
    too_big = (f"{where}: an image of more than --max-image-pixels {max_pixels} pixels "
               "(a decompression bomb?); raise the limit if your images really are that "
               "large")
    import warnings
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > max_pixels:
                raise DataError(f"{too_big} ({w}x{h})")
            img = np.asarray(im.convert("L"))
    except Image.DecompressionBombError:
        raise DataError(too_big) from None
    except (OSError, ValueError, SyntaxError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{where}: an image cannot be decoded ({e})") from None
    if shape is not None and img.shape != shape:
        raise DataError(f"{where}: images of mixed sizes: {img.shape} and {shape}")
    return img


def _features(table, layout: Layout, where: str) -> np.ndarray:
    x = np.empty((table.num_rows, len(layout.columns)), np.float32)
    for j, name in enumerate(layout.columns):
        col = table.column(name)
        if col.null_count:
            raise DataError(f"{where}: feature column {name!r} has {col.null_count} missing "
                            "values; fill or drop them first")
        x[:, j] = numeric_column(col)
    if not np.isfinite(x).all():
        raise DataError(f"{where}: a feature column holds NaN or infinity")
    return x
