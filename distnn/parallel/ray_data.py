"""Ray Datasets as training data: ``distnn.fit(config, datasets=...)``.

A ``ray.data.Dataset`` (from ``ray.data.read_parquet``, ``from_numpy``, a ``map_batches``
pipeline, ...) is read exactly as a Parquet dataset is (``data.parquet``): its rows in
the Dataset's order (materialised once, with ``preserve_order``), its blocks standing in
for row groups, the same columns (``label``; ``image`` as raw pixels, a list or a tensor
column of numbers, or encoded bytes; else numeric feature columns) and the same split
rules.  ``datasets`` is one Dataset (split by its split column, else by ``--split``
fractions) or ``{"train": ds, "valid": ds, "test": ds}`` (a split not given is cut from
"train" by the fractions, as for a Parquet directory without such a file).  The same
rows therefore train bit for bit as they do from Parquet, on any number of workers: a
worker reads only its shard's blocks, from the object store of the node that holds
them; nothing passes through the driver but each block's row count, label range and
digest.

The blocks live in the object store of the process that called ``fit`` (their owner):
the Dataset is materialised in the user's Ray session, which must stay up while
training runs (a driver that ends loses them, as for any Ray object).  A resumed run
checks the rows' digest (computed in parallel where the blocks are, one pass), so a
resume on other rows is refused whatever the blocks' sizes.
"""
from __future__ import annotations

import hashlib

import numpy as np

from ..data.idx import DataError

#: the dataset name a run on a Ray Dataset records (``--dataset`` cannot name one)
NAME = "ray-dataset"
#: what each split's Dataset is called as a "file" (sorted as a directory's files are)
NAMES = {"train": "train", "training": "train", "valid": "valid", "validation": "valid",
         "val": "valid", "test": "test"}


class Blocks:
    """The ``source`` of a Ray Dataset's ``Layout`` (``data.parquet``): each "file" (a
    split's Dataset, by name) is its blocks, read as a Parquet file's row groups.  Travels
    to the workers with the splits (ObjectRefs pickle as references)."""

    def __init__(self, files: dict):
        self.files = {name: tuple(refs) for name, refs in files.items()}

    def open(self, path: str) -> "BlockFile":
        return BlockFile(self.files[path])

    def __repr__(self) -> str:        # (in the Layout's repr: no ObjectRef ids)
        return f"Blocks({ {n: len(r) for n, r in self.files.items()} })"


class BlockFile:
    """A Ray Dataset's blocks (ObjectRefs of Arrow tables) read as a Parquet file's row
    groups; ``remote``: select the columns where the block is (the driver reading a
    split column), not after fetching it whole."""

    def __init__(self, refs, remote: bool = False):
        self.refs, self.remote = tuple(refs), remote

    @property
    def num_row_groups(self) -> int:
        return len(self.refs)

    def read_row_group(self, g: int, columns=None):
        import ray
        if self.remote:
            return ray.get(_remote(_select).remote(self.refs[g], columns))
        return _select(ray.get(self.refs[g]), columns)


_REMOTE: dict = {}


def _remote(fn):
    """``fn`` as a Ray task (made once per process)."""
    if fn not in _REMOTE:
        import ray
        _REMOTE[fn] = ray.remote(fn)
    return _REMOTE[fn]


def _select(table, columns=None):
    """``table``'s ``columns`` with Ray's (and Arrow's) tensor columns as their storage,
    a list of each row's values, the shape in the schema's ``distnn.shape``."""
    import pyarrow as pa
    if columns is not None:
        table = table.select(list(columns))
    meta = dict(table.schema.metadata or {})
    fields, cols = [], []
    for f, col in zip(table.schema, table.columns):
        t = f.type
        if isinstance(t, pa.ExtensionType):
            shape = getattr(t, "shape", None)
            if not shape or any(s is None for s in shape):
                raise DataError(f"Ray Dataset column {f.name!r} is {t}: tensors of varying "
                                "shapes; every example must have the same shape")
            if f.name == "image" or len(table.schema) == 1:
                meta[b"distnn.shape"] = ",".join(str(int(s)) for s in shape).encode()
            col = pa.chunked_array([c.storage for c in col.chunks], type=t.storage_type)
            f = pa.field(f.name, t.storage_type)
        fields.append(f)
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=pa.schema(fields, metadata=meta or None))


def _facts(table, label: str) -> dict:
    """One block's rows, schema (tensor columns as their storage) and label range."""
    import pyarrow as pa
    import pyarrow.compute as pc
    plain = _select(table)
    out = {"rows": plain.num_rows, "schema": plain.schema, "lo": None, "hi": None}
    if label in plain.schema.names and pa.types.is_integer(plain.schema.field(label).type) \
            and plain.num_rows:
        mm = pc.min_max(plain.column(label))
        out["lo"], out["hi"] = mm["min"].as_py(), mm["max"].as_py()
    return out


#: odd 64-bit multipliers of a row's position (a digest that moves when rows do)
_MIX = np.uint64(0x9E3779B97F4A7C15)


def _digest(table, layout, offset: int) -> int:
    """The rows of one block as a worker decodes them (checked as a worker checks them:
    labels in range, no NaN, images of one size), digested: sum over rows of
    blake2b(row) times an odd function of the row's position, mod 2**64; blocks of
    any sizes add up to the same digest for the same rows in the same order."""
    from ..data.parquet import decode
    x, y = decode(_select(table), layout, "Ray Dataset")
    rows = np.ascontiguousarray(x).reshape(len(y), -1).view(np.uint8)
    d = np.fromiter((int.from_bytes(hashlib.blake2b(r.tobytes() + int(v).to_bytes(8, "little"),
                                                    digest_size=8).digest(), "little")
                     for r, v in zip(rows, y)), np.uint64, count=len(y))
    pos = np.arange(offset, offset + len(y), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    with np.errstate(over="ignore"):
        return int(np.sum(d * (pos * _MIX), dtype=np.uint64))


def _named(datasets) -> dict:
    """{"train"/"valid"/"test" or "data": Dataset} from what the user gave."""
    if isinstance(datasets, dict):
        bad = [k for k in datasets if k not in NAMES]
        if bad:
            raise ValueError(f"datasets: unknown split name(s) {bad}; expected train, "
                             "valid (or validation) and test")
        named = {NAMES[k]: v for k, v in datasets.items() if v is not None}
        if "train" not in named:
            raise ValueError("datasets: no 'train' Dataset (valid and test are cut from it "
                             "when not given, never the other way round)")
    else:
        named = {"data": datasets}
    import ray.data
    for k, v in named.items():
        if not isinstance(v, ray.data.Dataset):
            raise ValueError(f"datasets[{k!r}] is a {type(v).__name__}, not a "
                             "ray.data.Dataset")
    return named


def _blocks(ds) -> list:
    """The Dataset's blocks in its order (materialised once, order preserved)."""
    from ray.data import DataContext
    ctx = DataContext.get_current()
    kept = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True
    try:
        return list(ds.to_arrow_refs())
    finally:
        ctx.execution_options.preserve_order = kept


def open_ray(datasets, opts):
    """``Splits`` of the rows of ``datasets`` (see the module's docstring), read on
    demand like a Parquet dataset's; ``opts``: a ``parquet.Options``."""
    import ray
    from dataclasses import replace
    from ..data.parquet import ParquetSplit
    from ..data.parquet_open import SPLITS, _assign, _layout
    from ..data.splits import Splits
    named = _named(datasets)
    facts_of = _remote(_facts)
    files, blocks, facts = [], {}, {}
    for name in sorted(named):          # as a directory's files: test, train, valid
        refs = _blocks(named[name])
        got = ray.get([facts_of.remote(r, opts.label) for r in refs])
        keep = [i for i, f in enumerate(got) if f["rows"]]
        if not keep:
            raise DataError(f"the {name!r} Ray Dataset holds no rows")
        files.append(name)
        blocks[name] = tuple(refs[i] for i in keep)
        facts[name] = [got[i] for i in keep]
    schema = facts[files[0]][0]["schema"]
    if opts.split_column is None and "split" in schema.names and \
            str(schema.field("split").type) in ("string", "large_string"):
        opts = replace(opts, split_column="split")   # as ``distnn data convert`` writes
    uri = f"{NAME}:" + ",".join(files)
    los = [f["lo"] for n in files for f in facts[n] if f["lo"] is not None]
    if los and min(los) < 0:
        raise DataError(f"label column {opts.label!r} has negative labels ({min(los)})")
    his = [f["hi"] for n in files for f in facts[n] if f["hi"] is not None]
    by_name = {n: BlockFile(blocks[n], remote=True) for n in files}   # the driver's reads
    handles = [by_name[n] for n in files]
    layout = _layout(uri, schema, handles, opts, n_classes=max(his) + 1 if his else None)
    read = (opts.label, *([opts.split_column] if opts.split_column else ()), *layout.columns)
    for name in files:
        for f in facts[name]:
            for c in read:
                if c not in f["schema"].names or f["schema"].field(c).type != \
                        schema.field(c).type:
                    raise DataError(f"the {name!r} Ray Dataset: column {c!r} is missing "
                                    "from a block or of another type than in the first "
                                    f"({schema.field(c).type})")
    groups, offset, offsets = [], 0, {}
    for name in files:
        for g, f in enumerate(facts[name]):
            groups.append((name, g, offset, f["rows"]))
            offsets[(name, g)] = offset
            offset += f["rows"]
    layout = replace(layout, max_pixels=opts.max_pixels, source=Blocks(blocks))
    digest_of = _remote(_digest)
    digests = ray.get([digest_of.remote(blocks[n][g], layout, offsets[(n, g)])
                       for n in files for g in range(len(blocks[n]))])
    content = hashlib.sha256(repr((files, str(schema.remove_metadata()), offset,
                                   sum(digests) % 2 ** 64)).encode()).hexdigest()
    layout = replace(layout, content=content, version=content)
    parts = _assign(uri, files, groups, opts, layout, opener=by_name.__getitem__)
    split = {s: ParquetSplit(layout, parts[s], opts.split_column) for s in SPLITS}
    if not len(split["train"]):
        raise DataError("the Ray Dataset's training split is empty")
    return Splits(NAME, split["train"], split["valid"], split["test"], layout.n_classes,
                  f"ray.data.Dataset ({', '.join(files)})", pixel_max=layout.pixel_max)
