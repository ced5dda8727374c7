"""Writing a dataset as Parquet in the layout ``--dataset parquet:`` reads
(``distnn data convert``)."""
from __future__ import annotations

import numpy as np

from .parquet_files import filesystem

SPLIT_FILES = {"train": "train", "valid": "validation", "test": "test"}


def table(x: np.ndarray, y: np.ndarray, *, tabular: bool = False, split: str | None = None,
          n_classes: int | None = None, pixel_max: float | None = None):
    """A pyarrow table of examples: ``label`` (int64), and ``image`` (the raw uint8
    pixels, ``fixed_size_binary``, with the shape in the schema metadata: a list column
    costs Parquet a repetition level per pixel) or, ``tabular``, one numeric column per
    pixel ``p0``, ``p1``, ...; a ``split`` column when ``split`` is given."""
    import pyarrow as pa
    n = len(y)
    flat = np.ascontiguousarray(x).reshape(n, -1)
    cols = {}
    if tabular:
        cols.update({f"p{j}": flat[:, j] for j in range(flat.shape[1])})
    else:
        size = flat.shape[1]
        cols["image"] = pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(size), n, [None, pa.py_buffer(flat.astype(np.uint8).tobytes())])
    cols["label"] = pa.array(np.asarray(y, np.int64))
    if split is not None:
        cols["split"] = pa.array([split] * n, pa.string())
    meta = {"distnn.n_classes": str(n_classes)} if n_classes else {}
    if pixel_max is not None:
        meta["distnn.pixel_max"] = repr(float(pixel_max))
    if not tabular:
        meta["distnn.shape"] = ",".join(map(str, x.shape[1:]))
    return pa.table(cols).replace_schema_metadata(meta)


def write(out: str, splits, *, tabular: bool = False, row_group: int = 4096,
          overwrite: bool = False) -> list[str]:
    """Write ``splits`` (train, valid, test) to ``out``: a directory receives
    ``train.parquet``, ``validation.parquet`` and ``test.parquet`` (splits by file
    name); a path ending in ``.parquet`` one file with a ``split`` column.  Returns the
    files written.  Rows keep their order, in row groups of ``row_group`` rows.  A file
    that is there already is refused unless ``overwrite``."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq
    fs, path = filesystem(out)
    one_file = path.endswith(".parquet")
    targets = [path] if one_file else [f"{path}/{f}.parquet" for f in SPLIT_FILES.values()]
    there = [t for t, i in zip(targets, fs.get_file_info(targets))
             if i.type != pafs.FileType.NotFound]
    if there and not overwrite:
        raise ValueError(f"{out} already holds {', '.join(there)}; choose another output, "
                         "or pass --overwrite to replace them")
    written, writer = [], None
    try:
        if not one_file:
            fs.create_dir(path, recursive=True)
        elif "/" in path:
            fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        for part, fname in SPLIT_FILES.items():
            s = getattr(splits, part)
            if not len(s) and not one_file:
                continue
            t = table(s.x, s.y, tabular=tabular, split=fname if one_file else None,
                      n_classes=splits.n_classes, pixel_max=splits.pixel_max)
            if not one_file:
                target = f"{path}/{fname}.parquet"
                pq.write_table(t, target, filesystem=fs, row_group_size=row_group)
                written.append(target)
                continue
            if writer is None:
                writer = pq.ParquetWriter(path, t.schema, filesystem=fs)
                written.append(path)
            writer.write_table(t, row_group_size=row_group)
    finally:
        if writer is not None:
            writer.close()
    return written
