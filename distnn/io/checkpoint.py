"""Checkpoints: Parquet tensors + JSON metadata, written atomically, never pickled.

A checkpoint is a directory ``CKPT_DIR/epoch-0007/`` holding

``tensors.parquet``    one row per tensor: ``name`` (e.g. ``dense0.weight``), ``shape``
                       (list<int64>), ``dtype``, ``values`` (list<float32|float64>, C
                       order).  W is (n_in, n_out) and y = x @ W + b.  Batch-norm
                       running statistics and the input standardisation are rows too.
``optimizer.parquet``  the optimizer's state slots, same schema.
``meta.json``          format name and version, the resolved config, epoch, history,
                       optimizer and schedule scalars, the randomness contract, the
                       distnn version, the sha256 of each Parquet file, and
                       ``meta_sha256``: the sha256 of its own other fields (canonical
                       JSON), so an edited meta.json is refused, not trusted.

Writes go to a hidden temporary directory that is fsynced and renamed into place, and
``CKPT_DIR/latest`` (first line: the newest complete checkpoint's directory name;
second: ``meta.json sha256 HEX``, the hash its meta.json must have) is replaced
atomically after that, so a crash at any moment leaves the previous checkpoint
loadable; ``CKPT_DIR/best`` names the best one the same way.  ``latest`` may only name a directory inside
``CKPT_DIR``; symbolic links are refused everywhere.

What the hashes protect against: torn, truncated and corrupted writes, a file replaced
by another checkpoint's, edits made by mistake.  What they cannot: deliberate edits
(anyone can recompute a sha256).  Every value read back is therefore validated as the
same value given as a flag would be (``train.checkpointing``), and no path recorded in
a checkpoint is ever written to.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoint_store import fetch
from .files import OutputError, describe, is_uri
from .layout import (EPOCH_NAME, FILES, FORMAT, NAME, POINTERS, VERSION, CheckpointError,
                     parse_pointer)



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




def _write_pointer(root: Path, name: str, meta_hash: str, pointer: str = "latest") -> None:
    tmp = root / f".{pointer}.{uuid.uuid4().hex}"
    try:
        tmp.write_text(f"{name}\nmeta.json sha256 {meta_hash}\n")
        _fsync(tmp)
        os.replace(tmp, root / pointer)
        _fsync(root)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def meta_checksum(meta: dict) -> str:
    """sha256 of ``meta`` without its ``meta_sha256`` field, as canonical JSON."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()


def save(root, name: str, tensors: dict, optimizer: dict, meta: dict,
         pointers: tuple[str, ...] = ("latest",)) -> Path:
    """Write checkpoint ``root/name`` atomically and point ``root/latest`` (and the other
    ``pointers``, e.g. "best") at it.  A write that fails (a full disk) raises
    ``OutputError`` and leaves the previous checkpoint and pointers as they were, with
    no temporary file behind."""
    root = Path(root)
    if not NAME.match(name):
        raise ValueError(f"checkpoint name {name!r} must be a plain directory name")
    final = root / name
    if final.is_symlink():
        raise CheckpointError(f"{final} is a symbolic link; distnn does not write through "
                              "links (remove it)")
    tmp = root / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        meta_hash = _write_files(tmp, tensors, optimizer, meta)
        _install(root, name, tmp)
        for pointer in pointers:
            _write_pointer(root, name, meta_hash, pointer)
    except OSError as e:
        raise OutputError(f"could not write checkpoint {final}: {describe(e)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _write_files(tmp: Path, tensors: dict, optimizer: dict, meta: dict) -> str:
    """The checkpoint's files in ``tmp``, fsynced; returns the sha256 of meta.json."""
    import pyarrow.parquet as pq
    hashes = {}
    for fname, arrays in zip(FILES, (tensors, optimizer)):
        pq.write_table(_table(arrays), tmp / fname)
        _fsync(tmp / fname)
        hashes[fname] = _sha256(tmp / fname)
    full = {"format": FORMAT, "version": VERSION, **meta, "sha256": hashes}
    full["meta_sha256"] = meta_checksum(full)
    (tmp / "meta.json").write_text(json.dumps(full, indent=2, default=_json_default) + "\n")
    _fsync(tmp / "meta.json")
    _fsync(tmp)
    return _sha256(tmp / "meta.json")


def _install(root: Path, name: str, tmp: Path) -> None:
    final = root / name
    if final.exists():          # re-saving the same epoch: move the old one aside
        old = root / f".old-{name}-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync(root)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"cannot write {type(o).__name__} to meta.json")


def _pointer(root: Path, pointer: str = "latest") -> tuple[Path, str]:
    """The checkpoint ``root/POINTER`` names, and the sha256 its meta.json must have."""
    latest = root / pointer
    if latest.is_symlink():
        raise CheckpointError(f"{latest} is a symbolic link; refusing it")
    text = latest.read_text(errors="replace")
    name = (text.splitlines() or [""])[0].strip()
    target = root / name
    if NAME.match(name) and len(text.splitlines()) <= 2:
        if target.is_symlink() or (target / "meta.json").is_symlink():
            raise CheckpointError(f"{latest} names {name}, which is (or holds) a symbolic "
                                  "link; refusing it")
        if not (target / "meta.json").is_file():
            raise CheckpointError(f"{latest} names {name}, which is not a complete "
                                  "checkpoint directory")
    name, sha = parse_pointer(text, latest)
    return root / name, sha


def resolve(path, prefer: str = "latest") -> tuple[Path, str | None]:
    """A checkpoint directory, or a checkpoint root (then its ``prefer`` pointer, "latest"
    or "best", or ``latest`` where there is no ``best``), and the meta.json hash the
    pointer vouches for (None for a directory given directly).  A URI (``s3://...``) is
    downloaded first (``fetch``), and the local copy returned."""
    if is_uri(path):
        path = fetch(path)[0]
    p = Path(path)
    if p.is_symlink() or (p / "meta.json").is_symlink():
        raise CheckpointError(f"{p} is a symbolic link; give the directory itself")
    if (p / "meta.json").is_file():
        return p, None
    if prefer == "best" and (p / "best").exists():
        return _pointer(p, "best")
    if (p / "latest").exists():
        return _pointer(p)
    raise CheckpointError(f"{p} is neither a checkpoint (no meta.json) nor a checkpoint "
                          "directory with a 'latest' file")


def read_meta(path, prefer: str = "latest") -> tuple[Path, dict]:
    """The checkpoint's directory and verified meta.json (checksum, pointer hash, the type
    of every field), without reading its tensors."""
    p, want = resolve(path, prefer)
    f = p / "meta.json"
    try:
        raw = f.read_bytes()
        meta = json.loads(raw)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{f}: unreadable ({e})") from None
    check_meta(f, meta)
    if want is not None and hashlib.sha256(raw).hexdigest() != want:
        raise CheckpointError(f"{f} is not the file {p.parent}/latest was written for: it "
                              "was changed or damaged after it was written")
    return p, meta


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_META_TYPES = {"config": dict, "history": list, "optimizer": dict, "schedule": dict,
               "sha256": dict}


def check_meta(f: Path, meta) -> None:
    """Raise CheckpointError unless ``meta`` is a meta.json this distnn can trust."""
    def bad(msg):
        raise CheckpointError(f"{f}: {msg}")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        bad(f"not a distnn checkpoint (format {meta.get('format') if isinstance(meta, dict) else meta!r})")
    v = meta.get("version")
    if not _is_int(v) or v < 1:
        bad(f"'version' must be a positive integer, got {v!r}")
    if v > VERSION:
        bad(f"format version {v} is newer than this distnn reads ({VERSION}); upgrade distnn")
    if v < 2:     # version 1 had no checksum of meta.json: nothing to verify it by
        bad(f"format version {v} carries no checksum of meta.json, so it cannot be "
            "verified; this distnn reads version 2 and later")
    if meta.get("meta_sha256") != meta_checksum(meta):
        bad("the meta_sha256 checksum does not match: meta.json was edited or damaged "
            "after it was written")
    for key, typ in _META_TYPES.items():
        if not isinstance(meta.get(key), typ):
            bad(f"{key!r} must be a JSON {typ.__name__}, got {meta.get(key)!r:.60}")
    e, h = meta.get("epoch"), meta["history"]
    if not _is_int(e) or e < -1:
        bad(f"'epoch' must be an integer >= -1, got {e!r}")
    if not all(isinstance(x, dict) for x in h) or (h and h[-1].get("epoch") != e):
        bad(f"'history' does not end at epoch {e}")
    if [x.get("epoch") for x in h] != list(range(e - len(h) + 1, e + 1)):
        bad("'history' does not hold consecutive epochs")
    named = re.fullmatch(r"epoch-(\d+)", Path(f).parent.name)
    if named and int(named.group(1)) != e:
        bad(f"it records epoch {e} but is the checkpoint {Path(f).parent.name}: meta.json "
            "was edited (its hashes recomputed) or moved between checkpoints")
    be = meta.get("best_epoch")
    if be is not None and (not _is_int(be) or not 0 <= be <= e):
        bad(f"'best_epoch' must be null or an epoch 0..{e}, got {be!r}")
    t = meta["optimizer"].get("t")
    if not _is_int(t) or t < 0 or not isinstance(meta["optimizer"].get("name"), str):
        bad(f"'optimizer' needs a string 'name' and an integer 't' >= 0, got "
            f"{meta['optimizer']!r:.80}")
    if not isinstance(meta["schedule"].get("spec"), str):
        bad(f"'schedule' needs a string 'spec', got {meta['schedule']!r:.80}")


def load(path, prefer: str = "latest") -> Checkpoint:
    """Load and verify a checkpoint (a directory, or a root's ``prefer`` pointer: see
    ``resolve``); raise CheckpointError on any missing file, hash mismatch, edited
    meta.json, or newer format version."""
    p, meta = read_meta(path, prefer)
    for fname in FILES:
        f = p / fname
        if f.is_symlink() or not f.is_file():
            raise CheckpointError(f"{p}: {fname} is missing (or a link)")
        got = _sha256(f)
        if got != meta["sha256"].get(fname):
            raise CheckpointError(f"{f}: sha256 {got} does not match meta.json; the file was "
                                  "changed or damaged after it was written")
    return Checkpoint(p, _read_table(p / FILES[0]), _read_table(p / FILES[1]), meta)


def epochs_in(root) -> list[str]:
    """The names of the epoch checkpoints in ``root`` (real directories only), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if EPOCH_NAME.match(d.name)
                  and not d.is_symlink() and d.is_dir() and (d / "meta.json").exists())


def prune(root, keep_last: int, keep: set[str] = frozenset()) -> None:
    """Delete all but the newest ``keep_last`` epoch checkpoints and those named in
    ``keep`` (the best one).  Only ``epoch-NNNN`` directories are touched: never a link,
    another name, or a write in progress."""
    root = Path(root)
    named = pointed(root)
    names = epochs_in(root)
    for n in (names[:-keep_last] if keep_last > 0 else []):
        if n not in keep and n not in named:
            shutil.rmtree(root / n, ignore_errors=True)


def used(root) -> str | None:
    """What of another run ``root`` holds ("checkpoints epoch-0000..epoch-0007"), or None."""
    names = epochs_in(root)
    if names:
        return f"checkpoints {names[0]}..{names[-1]}" if len(names) > 1 else f"checkpoint {names[0]}"
    return "a 'latest' pointer" if (Path(root) / "latest").exists() else None


def clear(root) -> None:
    """Delete another run's checkpoints (``--overwrite``): its epoch directories and
    ``latest``; other files stay."""
    root = Path(root)
    for n in epochs_in(root):
        shutil.rmtree(root / n)
    for p in POINTERS:
        (root / p).unlink(missing_ok=True)


def roles(path) -> list[str]:
    """The pointers of its directory that name checkpoint ``path`` ("latest", "best")."""
    path = Path(path)
    out = []
    for p in POINTERS:
        try:
            if (path.parent / p).is_file() and _pointer(path.parent, p)[0].name == path.name:
                out.append(p)
        except CheckpointError:
            continue
    return out


def pointed(root) -> set[str]:
    """The checkpoint names ``root``'s pointers give."""
    root = Path(root)
    return {_pointer(root, p)[0].name for p in POINTERS if (root / p).is_file()}


def clean_leftovers(root) -> None:
    """Remove the temporary files of writes that crashed (called with the directory's lock
    held, so no write of another run is in progress)."""
    for d in Path(root).iterdir():
        if d.name.startswith((".tmp-", ".old-", ".latest.", ".best.")) and not d.is_symlink():
            if d.is_dir():
                shutil.rmtree(d, ignore_errors=True)
            else:
                d.unlink(missing_ok=True)
