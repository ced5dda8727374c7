"""Checkpoints at a URI (``s3://...``): downloading one to read or resume it, and the
checks, clearing and pruning ``checkpoint`` does on a directory, done on a store (see
``store`` for how a run's checkpoints get there: the pointers last)."""
from __future__ import annotations

import atexit
import shutil
from pathlib import Path

from .layout import EPOCH_NAME, FILES, POINTERS, CheckpointError, parse_pointer
from .store import Remote, is_uri, remove_stage, stage


def fetch(uri: str, into: Path | None = None) -> tuple[Path, list[str]]:
    """Download the checkpoint at ``uri`` — one checkpoint directory, or a root's
    ``latest`` and ``best`` pointers and the checkpoints they name — into ``into`` (a
    root; default: a scratch copy beside the URI's stage, emptied first); return the
    local checkpoint directory or root to read in its place, and the files fetched,
    relative to the root (for ``store.Mirror.know``)."""
    remote = Remote(uri)
    single = remote.exists("meta.json")
    root_uri, name = uri.rstrip("/").rsplit("/", 1) if single else (uri, None)
    if into is None:        # a scratch copy to read: gone when the command ends
        into = stage(root_uri + "#read")
        shutil.rmtree(into, ignore_errors=True)
        atexit.register(remove_stage, root_uri + "#read")
    names = [name] if single else []
    got = []
    if not single:
        remote_root = Remote(root_uri)
        for p in POINTERS:
            if remote_root.exists(p):
                remote_root.get(p, into / p)
                got.append(p)
                names.append(_pointer_name(into / p))
        if not names:
            raise CheckpointError(f"{uri} is neither a checkpoint (no meta.json) nor a "
                                  "checkpoint directory with a 'latest' file")
    remote_root = Remote(root_uri)
    for n in dict.fromkeys(names):
        for f in ("meta.json", *FILES):
            remote_root.get(f"{n}/{f}", into / n / f)
            got.append(f"{n}/{f}")
    return (into / name if single else into), got


def shown(given, path: Path) -> str:
    """How to name checkpoint ``path`` (loaded from ``given``) to the user: the URI it
    came from rather than its local copy."""
    if not is_uri(given):
        return str(path)
    given = str(given).rstrip("/")
    return given if given.rsplit("/", 1)[-1] == path.name else f"{given}/{path.name}"


def _pointer_name(path: Path) -> str:
    return parse_pointer(path.read_text(errors="replace"), path)[0]


def used_names(names: list[str]) -> str | None:
    """``used`` for the file names at a URI."""
    epochs = sorted({n.split("/")[0] for n in names if EPOCH_NAME.match(n.split("/")[0])})
    if epochs:
        return f"checkpoints {epochs[0]}..{epochs[-1]}" if len(epochs) > 1 \
            else f"checkpoint {epochs[0]}"
    return "a 'latest' pointer" if "latest" in names else None


def clear_remote(remote, names: list[str]) -> None:
    """``clear`` at a URI: its pointers, then its epoch directories."""
    for p in POINTERS:
        if p in names:
            remote.delete(p)
    for n in sorted({n.split("/")[0] for n in names if EPOCH_NAME.match(n.split("/")[0])}):
        remote.delete(n)


def prune_remote(remote, keep_last: int, keep: set[str]) -> None:
    """``prune`` at a URI (where a resumed run may have found older checkpoints than it
    wrote); ``keep``: the names the pointers give, and the best."""
    names = sorted({n.split("/")[0] for n in remote.files() if EPOCH_NAME.match(
        n.split("/")[0])})
    for n in (names[:-keep_last] if keep_last > 0 else []):
        if n not in keep:
            remote.delete(n)


def pointer_names(where) -> dict[str, str]:
    """{"latest": name, "best": name} of a checkpoint directory, local or at a URI (read
    from its pointer files alone); pointers it lacks are left out."""
    if not is_uri(where):
        root = Path(where)
        return {p: _pointer_name(root / p) for p in POINTERS if (root / p).is_file()}
    remote = Remote(where)
    return {p: parse_pointer(remote.read(p).decode(errors="replace"), f"{where}/{p}")[0]
            for p in POINTERS if remote.exists(p)}

