"""Checkpoints: Parquet tensors + JSON metadata, written atomically, never pickled.

A checkpoint is a directory ``CKPT_DIR/epoch-0007/`` holding

``tensors.parquet``    one row per tensor: ``name`` (e.g. ``dense0.weight``), ``shape``
                       (list<int64>), ``dtype``, ``values`` (list<float32|float64>, C
                       order).  W is (n_in, n_out) and y = x @ W + b.  Batch-norm
                       running statistics and the input standardisation are rows too.
``optimizer.parquet``  the optimizer's state slots, same schema.
``meta.json``          format name and version, the resolved config, epoch, history,
                       optimizer and schedule scalars, the randomness contract, the
                       distnn version, and the sha256 of each Parquet file.

Writes go to a hidden temporary directory that is fsynced and renamed into place, and
``CKPT_DIR/latest`` (a one-line file naming the newest complete checkpoint) is replaced
atomically after that, so a crash at any moment leaves the previous checkpoint loadable.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = "distnn-checkpoint"
VERSION = 1
FILES = ("tensors.parquet", "optimizer.parquet")


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, from a newer format, or does not fit."""


@dataclass
class Checkpoint:
    path: Path
    tensors: dict[str, np.ndarray]     # parameters, buffers, input normalisation
    optimizer: dict[str, np.ndarray]   # optimizer slots
    meta: dict


def _table(arrays: dict[str, np.ndarray]):
    import pyarrow as pa
    dtypes = {np.asarray(a).dtype for a in arrays.values()}
    value_type = pa.float64() if np.dtype(np.float64) in dtypes else pa.float32()
    flat = [np.ascontiguousarray(a).reshape(-1) for a in arrays.values()]
    offsets = np.concatenate([[0], np.cumsum([f.size for f in flat])]).astype(np.int32)
    values = np.concatenate(flat) if flat else np.zeros(0)
    vals = pa.ListArray.from_arrays(pa.array(offsets),
                                    pa.array(values.astype(value_type.to_pandas_dtype())))
    return pa.table({
        "name": pa.array(list(arrays), pa.string()),
        "shape": pa.array([list(np.shape(a)) for a in arrays.values()], pa.list_(pa.int64())),
        "dtype": pa.array([str(np.asarray(a).dtype) for a in arrays.values()], pa.string()),
        "values": vals,
    })


def _read_table(path: Path) -> dict[str, np.ndarray]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        t = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise CheckpointError(f"{path}: not a readable Parquet file ({e})") from None
    missing = {"name", "shape", "dtype", "values"} - set(t.column_names)
    if missing:
        raise CheckpointError(f"{path}: missing columns {sorted(missing)}")
    out = {}
    names, shapes, dtypes = (t.column(c).to_pylist() for c in ("name", "shape", "dtype"))
    values = t.column("values").combine_chunks()
    flat = values.values.to_numpy(zero_copy_only=False)
    offsets = values.offsets.to_numpy()
    for i, (name, shape, dtype) in enumerate(zip(names, shapes, dtypes)):
        a = flat[offsets[i]:offsets[i + 1]]
        if a.size != int(np.prod(shape)):
            raise CheckpointError(f"{path}: tensor {name} has {a.size} values for shape {shape}")
        out[name] = a.astype(dtype).reshape(shape)
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_latest(root: Path, name: str) -> None:
    tmp = root / f".latest.{uuid.uuid4().hex}"
    tmp.write_text(name + "\n")
    _fsync(tmp)
    os.replace(tmp, root / "latest")
    _fsync(root)


def save(root, name: str, tensors: dict, optimizer: dict, meta: dict) -> Path:
    """Write checkpoint ``root/name`` atomically and point ``root/latest`` at it."""
    import pyarrow.parquet as pq
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        hashes = {}
        for fname, arrays in zip(FILES, (tensors, optimizer)):
            pq.write_table(_table(arrays), tmp / fname)
            _fsync(tmp / fname)
            hashes[fname] = _sha256(tmp / fname)
        full = {"format": FORMAT, "version": VERSION, **meta, "sha256": hashes}
        (tmp / "meta.json").write_text(json.dumps(full, indent=2, default=_json_default) + "\n")
        _fsync(tmp / "meta.json")
        _fsync(tmp)
        final = root / name
        if final.exists():          # re-saving the same epoch: move the old one aside
            old = root / f".old-{name}-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_latest(root, name)
    return final


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"cannot write {type(o).__name__} to meta.json")


def resolve(path) -> Path:
    """A checkpoint directory, or a checkpoint root (then its ``latest``)."""
    p = Path(path)
    if (p / "meta.json").is_file():
        return p
    latest = p / "latest"
    if latest.is_file():
        target = p / latest.read_text().strip()
        if not (target / "meta.json").is_file():
            raise CheckpointError(f"{latest} names {target.name}, which is not a complete "
                                  "checkpoint")
        return target
    raise CheckpointError(f"{p} is neither a checkpoint (no meta.json) nor a checkpoint "
                          "directory with a 'latest' file")


def load(path) -> Checkpoint:
    """Load and verify a checkpoint (directory or root); raise CheckpointError on any
    missing file, hash mismatch, or newer format version."""
    p = resolve(path)
    try:
        meta = json.loads((p / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{p}/meta.json: unreadable ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not a distnn checkpoint (format {meta.get('format')!r})")
    if meta.get("version", 0) > VERSION:
        raise CheckpointError(f"{p}: format version {meta['version']} is newer than this "
                              f"distnn reads ({VERSION}); upgrade distnn")
    for fname in FILES:
        f = p / fname
        if not f.is_file():
            raise CheckpointError(f"{p}: {fname} is missing")
        got = _sha256(f)
        if got != meta.get("sha256", {}).get(fname):
            raise CheckpointError(f"{f}: sha256 {got} does not match meta.json; the file was "
                                  "changed or damaged after it was written")
    return Checkpoint(p, _read_table(p / FILES[0]), _read_table(p / FILES[1]), meta)


def prune(root, keep_last: int, keep: set[str] = frozenset()) -> None:
    """Delete all but the newest ``keep_last`` checkpoints and those named in ``keep``
    (e.g. the best one); leftover temporary directories of crashed writes go too."""
    root = Path(root)
    names = sorted(d.name for d in root.iterdir()
                   if d.is_dir() and not d.name.startswith(".") and (d / "meta.json").exists())
    latest = (root / "latest").read_text().strip() if (root / "latest").exists() else None
    doomed = names[:-keep_last] if keep_last > 0 else []
    for n in doomed:
        if n not in keep and n != latest:
            shutil.rmtree(root / n)
    for d in root.iterdir():
        if d.is_dir() and d.name.startswith((".tmp-", ".old-")):
            shutil.rmtree(d, ignore_errors=True)
