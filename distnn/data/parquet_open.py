"""Opening a Parquet dataset from its footers: the files, their row groups, the layout
of an example, the class count, and which rows make up each split (see ``parquet``)."""
from __future__ import annotations

import hashlib
import re
from dataclasses import replace

import numpy as np

from .idx import DataError
from .splits import Splits
from .parquet import (SPLIT_KEY, SPLIT_NAMES, Layout, Options, ParquetSplit, Part,
                      decode_image, numeric_column)
from .parquet_files import file_infos, open_file
from ..core.random import keyed_uniform

SPLITS = ("train", "valid", "test")
#: a split named in a file's path: a word of its own (not part of another)
FILE_SPLIT = re.compile(r"(?<![a-z])(training|train|validation|valid|val|dev|test)(?![a-z])")


def open_parquet(uri: str, opts: Options):
    """``Splits`` of lazily read ``ParquetSplit``s for the dataset at ``uri``."""
    infos = file_infos(uri)
    files = [f.path for f in infos]
    handles = [open_file(uri, f) for f in files]
    schema = handles[0].schema_arrow
    if opts.split_column is None and "split" in schema.names and \
            str(schema.field("split").type) in ("string", "large_string"):
        opts = replace(opts, split_column="split")   # as ``distnn data convert`` writes
    root = _root(files)
    sizes = [(f[len(root):].lstrip("/"), i.size, [h.metadata.row_group(g).num_rows for g in
                                                  range(h.num_row_groups)])
             for f, i, h in zip(files, infos, handles)]
    layout = replace(_layout(uri, schema, handles, opts), max_pixels=opts.max_pixels,
                     root=root, content=hashlib.sha256(repr(sizes).encode()).hexdigest(),
                     version=hashlib.sha256(repr(
        [(f.path, f.size, f.mtime_ns) for f in infos]).encode()).hexdigest())
    for f, h in zip(files[1:], handles[1:]):
        for c in (opts.label, *layout.columns):
            other = h.schema_arrow
            if c not in other.names or other.field(c).type != schema.field(c).type:
                raise DataError(f"{f}: column {c!r} is missing or of another type than in "
                                f"{files[0]} ({schema.field(c).type})")
    groups, offset = [], 0
    for f, h in zip(files, handles):
        for g in range(h.num_row_groups):
            rows = h.metadata.row_group(g).num_rows
            groups.append((f, g, offset, rows))
            offset += rows
    if offset == 0:
        raise DataError(f"--dataset parquet:{uri}: the files hold no rows")
    parts = _assign(uri, files, groups, opts, layout)
    split = {s: ParquetSplit(layout, parts[s], opts.split_column) for s in SPLITS}
    if not len(split["train"]):
        raise DataError(f"--dataset parquet:{uri}: the training split is empty")
    return Splits(f"parquet:{uri}", split["train"], split["valid"], split["test"],
                  layout.n_classes, uri, pixel_max=layout.pixel_max)


def _layout(uri, schema, handles, opts: Options, n_classes: int | None = None) -> Layout:
    """How an example is laid out in ``schema`` (``handles``: the files, open; the first
    row group of the first is read for an encoded or listed image's size);
    ``n_classes``: the class count where the caller knows it (else the schema's
    metadata, or the largest label in the footers)."""
    import pyarrow.types as pt
    names = schema.names
    if opts.label not in names:
        raise DataError(f"--dataset parquet:{uri}: no label column {opts.label!r}; its "
                        f"columns are {names} (choose one with --label-column)")
    if opts.split_column and opts.split_column not in names:
        raise DataError(f"--split-column {opts.split_column!r}: not a column of {uri} "
                        f"({names})")
    meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    n_classes = n_classes or _n_classes(meta, uri) or \
        _max_label(handles, schema, opts.label) + 1
    full = _pixel_max(meta, uri)
    if "image" in names and not opts.features:
        t = schema.field("image").type
        if pt.is_struct(t) and t.get_field_index("bytes") >= 0:
            first = handles[0].read_row_group(0, columns=["image"]).column("image")[0]
            img = decode_image(first["bytes"].as_py(), f"{uri}, row 0", None, opts.max_pixels)
            return Layout(uri, opts.label, "image", ("image",), img.shape, "uint8", True,
                          n_classes, full or 255.0)
        if pt.is_fixed_size_binary(t):    # raw uint8 pixels, as `data convert` writes
            return Layout(uri, opts.label, "image", ("image",),
                          _image_shape(meta, t, handles[0], uri), "uint8", False, n_classes,
                          full or 255.0)
        if not (pt.is_list(t) or pt.is_fixed_size_list(t) or pt.is_large_list(t)) or not (
                pt.is_integer(t.value_type) or pt.is_floating(t.value_type)):
            raise DataError(f"{uri}: column 'image' is {t}; expected raw pixels "
                            "(fixed_size_binary), a list of numbers, or an encoded image "
                            "{bytes: ...}")
        shape = _image_shape(meta, t, handles[0], uri)
        integer = pt.is_integer(t.value_type)
        return Layout(uri, opts.label, "image", ("image",), shape,
                      "uint8" if integer else "float32", False, n_classes,
                      full or (255.0 if integer else 1.0))
    features = opts.features or tuple(
        n for n in names if n not in (opts.label, opts.split_column)
        and (pt.is_integer(schema.field(n).type) or pt.is_floating(schema.field(n).type)))
    for n in features:
        if n not in names:
            raise DataError(f"--feature-columns: {n!r} is not a column of {uri} ({names})")
        t = schema.field(n).type
        if not (pt.is_integer(t) or pt.is_floating(t)):
            raise DataError(f"{uri}: feature column {n!r} is {t}, not numeric; leave it "
                            "out of --feature-columns or encode it as numbers first")
    if not features:
        raise DataError(f"{uri}: no numeric feature columns besides the label")
    return Layout(uri, opts.label, "features", tuple(features), (len(features),), "float32",
                  False, n_classes, full or 1.0)


def _n_classes(meta: dict, uri: str) -> int | None:
    text = meta.get("distnn.n_classes")
    if text is None:
        return None
    if not text.isdigit() or int(text) < 1:
        raise DataError(f"{uri}: its schema metadata distnn.n_classes is {text!r}; expected "
                        "a positive integer")
    return int(text)


def _pixel_max(meta: dict, uri: str) -> float | None:
    """The schema's ``distnn.pixel_max`` (the value of full ink), checked as a flag is."""
    if "distnn.pixel_max" not in meta:
        return None
    text = meta["distnn.pixel_max"]
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not (v > 0 and v < float("inf")):
        raise DataError(f"{uri}: its schema metadata distnn.pixel_max is {text!r}; expected "
                        "a number > 0 (255 for 8-bit images)")
    return v


def _image_shape(meta, t, handle, uri) -> tuple[int, ...]:
    import pyarrow.types as pt
    if "distnn.shape" in meta:
        text = meta["distnn.shape"]
        try:
            shape = tuple(int(v) for v in text.split(","))
        except ValueError:
            shape = ()
        if not shape or min(shape) < 1:
            raise DataError(f"{uri}: its schema metadata distnn.shape is {text!r}; expected "
                            "positive sizes like 28,28")
        return shape
    if pt.is_fixed_size_list(t):
        size = t.list_size
    elif pt.is_fixed_size_binary(t):
        size = t.byte_width
    else:
        col = handle.read_row_group(0, columns=["image"]).column("image")
        size = len(col[0].as_py()) if len(col) else 0
    side = int(round(size ** 0.5))
    return (side, side) if side * side == size else (size,)


def _max_label(handles, schema, label) -> int:
    """The largest label, from the footers' statistics where they have them."""
    import pyarrow.types as pt
    if not pt.is_integer(schema.field(label).type):
        raise DataError(f"label column {label!r} is {schema.field(label).type}; expected "
                        "integers 0..K-1")
    top = -1
    j = schema.get_field_index(label)
    for h in handles:
        for g in range(h.num_row_groups):
            st = h.metadata.row_group(g).column(j).statistics
            if st is not None and st.has_min_max:
                if st.min < 0:
                    raise DataError(f"label column {label!r} has negative labels ({st.min})")
                top = max(top, int(st.max))
            else:
                y = numeric_column(h.read_row_group(g, columns=[label]).column(label))
                top = max(top, int(y.max(initial=-1)))
    if top < 0:
        raise DataError(f"label column {label!r} holds no labels")
    return top


def _assign(uri, files, groups, opts: Options, layout,
            opener=None) -> dict[str, tuple[Part, ...]]:
    """Each split's parts: by the split column, by file name, or by fraction
    (``opener(f)``: file ``f`` open, to read its split column; default ``open_file``)."""
    opener = opener or (lambda f: open_file(uri, f))
    out = {s: [] for s in SPLITS}
    if opts.split_column:
        for f, g, off, rows in groups:
            col = opener(f).read_row_group(g, columns=[opts.split_column]).column(
                opts.split_column).to_pylist()
            vals = [SPLIT_NAMES.get(str(v).lower()) for v in col]
            bad = {v for v, s in zip(col, vals) if s is None}
            if bad:
                raise DataError(f"{f}: split column {opts.split_column!r} holds "
                                f"{sorted(map(str, bad))[:5]}; expected train, validation "
                                "or test")
            for s in SPLITS:
                out[s].append(Part(f, g, off, rows, vals.count(s), names=(s,)))
        return {s: tuple(p) for s, p in out.items()}
    by_file = _files_by_split(uri, files)
    if any(s is not None for s in by_file.values()):
        unnamed = [f for f, s in by_file.items() if s is None]
        if unnamed:
            raise DataError(f"{uri}: files are named by split, but not {unnamed[:3]}; "
                            "rename them (train/validation/test in the name)")
        present = set(by_file.values())
        if "train" not in present:      # never cut a training split from held-out files
            raise DataError(f"{uri}: its files are named {sorted(present)} splits but none "
                            "is a training file: name the training files train* (or use "
                            "--split-column); distnn never trains on validation or test "
                            "files")
        cut = _cuts(opts.fractions, [s for s in SPLITS if s == "train" or s not in present])
        for f, g, off, rows in groups:
            if by_file[f] != "train":
                out[by_file[f]].append(Part(f, g, off, rows, rows))
                continue
            for s, lohi in cut.items():
                out[s].append(_fraction_part(f, g, off, rows, lohi))
        return {s: tuple(p) for s, p in out.items()}
    cut = _cuts(opts.fractions, SPLITS)
    for f, g, off, rows in groups:
        for s, lohi in cut.items():
            out[s].append(_fraction_part(f, g, off, rows, lohi))
    return {s: tuple(p) for s, p in out.items()}


def _root(files: list[str]) -> str:
    """The files' common directory."""
    import posixpath
    return posixpath.commonpath(files) if len(files) > 1 else posixpath.dirname(files[0])


def _files_by_split(uri: str, files: list[str]) -> dict[str, str | None]:
    """The split each file's name gives (train/validation/test in its path below the
    files' common directory, as Hugging Face lays datasets out), or None; a name that
    gives two splits is an error, not a guess."""
    import posixpath
    root = _root(files)
    out = {}
    for f in files:
        rel = f[len(root):].lstrip("/") if f.startswith(root) else posixpath.basename(f)
        found = {SPLIT_NAMES[m] for m in FILE_SPLIT.findall(rel.lower())}
        if len(found) > 1:
            raise DataError(f"{uri}: {rel} names more than one split ({sorted(found)}); "
                            "rename it, or give a --split-column")
        out[f] = found.pop() if found else None
    return out


def _cuts(fractions, splits) -> dict[str, tuple[float, float]]:
    """[lo, hi) of the unit interval for each of ``splits``, in proportion to their
    ``fractions`` (train, valid, test)."""
    f = np.array([fractions[SPLITS.index(s)] for s in splits], np.float64)
    if f.sum() <= 0:
        raise DataError(f"--split gives no rows to {list(splits)}")
    edges = np.concatenate([[0.0], np.cumsum(f / f.sum())])
    edges[-1] = 1.0
    return {s: (float(edges[i]), float(edges[i + 1])) for i, s in enumerate(splits)}


def _fraction_part(f, g, off, rows, lohi) -> Part:
    u = keyed_uniform(SPLIT_KEY, np.arange(off, off + rows), 1, np.float64)[:, 0]
    count = int(((u >= lohi[0]) & (u < lohi[1])).sum())
    return Part(f, g, off, rows, count, fraction=lohi)
