"""Outputs on any filesystem pyarrow knows: ``s3://``, ``gs://``, ``hdfs://`` (a local
path or a shared mount is written directly).

A run writes a URI's files into a local *stage* directory first, with the same atomic
local writes as always, and ``Mirror.sync`` copies what changed to the URI after each
epoch: new and changed files first, the files named ``last`` (checkpoint pointers)
after them, then deletes what the run deleted.  An object store has no rename, so a
pointer is the commit: a crash mid-upload leaves a partial directory that no pointer
names (and whose files fail their hashes), never a bad ``latest``.  Credentials and
endpoints come from the usual places (``AWS_*`` variables, ``~/.aws``, the instance
role; ``AWS_ENDPOINT_URL`` for an S3-compatible server).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from . import files
from .files import LOCK_NAME, DirectoryInUse, OutputError, OutputUnusable, claim, is_uri


def stage(uri: str) -> Path:
    """The local directory a URI's files are written to before they are copied there:
    ``$DISTNN_STAGE`` (default: the temporary directory) / distnn-stage / a hash of it."""
    base = Path(os.environ.get("DISTNN_STAGE") or tempfile.gettempdir()) / "distnn-stage"
    tail = re.sub(r"[^A-Za-z0-9_.-]", "_", uri.rstrip("/").rsplit("/", 1)[-1])[:40]
    return base / f"{hashlib.sha256(uri.encode()).hexdigest()[:12]}-{tail}"


def keep_stage() -> bool:
    """``DISTNN_KEEP_STAGE=1``: leave stages and downloaded copies when a command ends."""
    return os.environ.get("DISTNN_KEEP_STAGE", "") not in ("", "0")


def remove_stage(uri: str) -> None:
    """Delete ``uri``'s local stage (its files are at the URI), unless they are kept."""
    if not keep_stage():
        shutil.rmtree(stage(uri), ignore_errors=True)


def local(where) -> Path:
    """Where a run writes ``where``'s files on this machine."""
    if is_uri(where):
        return stage(where)
    return Path(where[len("file://"):] if str(where).startswith("file://") else where)


class Remote:
    """A directory at a URI: list, read, write and delete files relative to it."""

    def __init__(self, uri: str):
        import pyarrow.fs as pafs
        self.uri = uri.rstrip("/")
        try:
            self.fs, self.path = pafs.FileSystem.from_uri(self.uri)
        except Exception as e:     # pyarrow raises several types for a bad URI or store
            raise OutputUnusable(f"{uri}: cannot open this location "
                                 f"({files.describe_store(e)})") from None
        self.path = self.path.rstrip("/")

    def _err(self, what: str, e: Exception) -> OutputError:
        return OutputError(f"{self.uri}: cannot {what} ({e}); check the URI, the "
                           "credentials (AWS_* variables, ~/.aws) and the endpoint "
                           "(AWS_ENDPOINT_URL)")

    def files(self, rel: str = "") -> list[str]:
        """Every file under ``rel``, as paths relative to the URI (none if absent)."""
        import pyarrow.fs as pafs
        base = f"{self.path}/{rel}".rstrip("/")
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True,
                                                            allow_not_found=True))
        except OSError as e:
            raise self._err("list it", e) from None
        return sorted(i.path[len(self.path) + 1:] for i in infos
                      if i.type == pafs.FileType.File)

    def exists(self, rel: str) -> bool:
        import pyarrow.fs as pafs
        try:
            return self.fs.get_file_info(f"{self.path}/{rel}").type == pafs.FileType.File
        except OSError as e:
            raise self._err(f"look for {rel}", e) from None

    def read(self, rel: str) -> bytes:
        try:
            with self.fs.open_input_stream(f"{self.path}/{rel}") as f:
                return f.read()
        except OSError as e:
            raise self._err(f"read {rel}", e) from None

    def write(self, rel: str, data: bytes) -> None:
        try:
            with self.fs.open_output_stream(f"{self.path}/{rel}") as f:
                f.write(data)
        except OSError as e:
            raise self._err(f"write {rel}", e) from None

    def put(self, src: Path, rel: str) -> None:
        try:
            with open(src, "rb") as f, self.fs.open_output_stream(f"{self.path}/{rel}") as o:
                shutil.copyfileobj(f, o, 1 << 22)
        except OSError as e:
            raise self._err(f"upload {rel}", e) from None

    def get(self, rel: str, dst: Path) -> None:
        """Download ``rel`` to ``dst`` (written under a temporary name, then renamed)."""
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.part")
        try:
            with self.fs.open_input_stream(f"{self.path}/{rel}") as f, open(tmp, "wb") as o:
                shutil.copyfileobj(f, o, 1 << 22)
            os.replace(tmp, dst)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise self._err(f"download {rel}", e) from None

    def probe(self, flag: str) -> None:
        """Before any work: write and delete a small object here, so that a missing
        bucket, refused credentials or an endpoint with nothing listening stop the run
        now, saying which, rather than after its first epoch."""
        import uuid
        rel = f".distnn-probe-{uuid.uuid4().hex[:12]}"
        try:
            with self.fs.open_output_stream(f"{self.path}/{rel}") as f:
                f.write(b"distnn checks that it can write here\n")
            self.fs.delete_file(f"{self.path}/{rel}")
        except OSError as e:
            raise OutputUnusable(f"{flag} {self.uri}: cannot write there: {_why(e)}") \
                from None

    def delete(self, rel: str) -> None:
        """Delete a file, or a directory with everything in it."""
        import pyarrow.fs as pafs
        target = f"{self.path}/{rel}"
        try:
            kind = self.fs.get_file_info(target).type
            if kind == pafs.FileType.Directory:
                self.fs.delete_dir(target)
            elif kind == pafs.FileType.File:
                self.fs.delete_file(target)
        except OSError as e:
            raise self._err(f"delete {rel}", e) from None


_REASONS = (
    (("NO_SUCH_BUCKET", "NoSuchBucket", "bucket does not exist"),
     "the bucket does not exist (create it, or check the name)"),
    (("ACCESS_DENIED", "AccessDenied", "Access Denied", "INVALID_ACCESS_KEY", "InvalidAccessKey",
      "SIGNATURE_DOES_NOT_MATCH", "SignatureDoesNotMatch", "403", "EXPIRED_TOKEN"),
     "access denied (check the credentials: AWS_* variables, ~/.aws, the instance role)"),
    (("NETWORK_CONNECTION", "curlCode", "Could not connect", "Connection refused",
      "Could not resolve", "Timeout", "timed out"),
     "cannot connect to the store's endpoint (check AWS_ENDPOINT_URL or the network)"),
)


def _why(e: Exception) -> str:
    """What an object store's error means, in words, with the store's own message."""
    text = str(e)
    for marks, reason in _REASONS:
        if any(m in text for m in marks):
            return f"{reason} [{text[:200]}]"
    return text[:300]


class Mirror:
    """Keeps a URI up to date with its local stage (``sync`` after each epoch)."""

    def __init__(self, uri: str):
        self.remote, self.root = Remote(uri), stage(uri)
        self.sent: dict[str, tuple[int, int]] = {}    # rel path -> (size, mtime_ns) sent

    def know(self, rels) -> None:
        """Files that are at the URI as they are here already (fetched from it)."""
        for rel in rels:
            st = (self.root / rel).stat()
            self.sent[rel] = (st.st_size, st.st_mtime_ns)

    def sync(self, last: tuple[str, ...] = ()) -> list[str]:
        """Upload new and changed files (``last`` after all the others), then delete at
        the URI what was sent before and is gone here; return the paths uploaded."""
        now = {}
        for p in sorted(self.root.rglob("*")):
            rel = p.relative_to(self.root).as_posix()
            if p.is_file() and not p.is_symlink() and not any(
                    part.startswith(".") for part in rel.split("/")):
                st = p.stat()
                now[rel] = (st.st_size, st.st_mtime_ns)
        changed = [r for r, v in now.items() if self.sent.get(r) != v]
        changed.sort(key=lambda r: r in last)
        for rel in changed:
            self.remote.put(self.root / rel, rel)
            self.sent[rel] = now[rel]
        gone = [r for r in self.sent if r not in now]
        for rel in gone:
            self.remote.delete(rel)
            del self.sent[rel]
        # directories emptied here: an object store keeps a marker for them otherwise
        for d in sorted({r.rsplit("/", 1)[0] for r in gone if "/" in r}, reverse=True):
            if not (self.root / d).exists():
                self.remote.delete(d)
        return changed


_MIRRORS: dict[str, Mirror] = {}


def mirror(uri: str) -> Mirror:
    """This run's mirror of ``uri`` (made by ``claim_uri``)."""
    if uri not in _MIRRORS:
        _MIRRORS[uri] = Mirror(uri)
    return _MIRRORS[uri]


def claim_uri(uri: str, flag: str, *, used, clear, resume: bool, overwrite: bool):
    """``files.claim`` for a URI: refuse it when ``used(names)`` (its file names) says it
    holds another run's outputs (``clear(remote, names)`` deletes them first when
    ``overwrite``), unless the run resumes; then lock and empty its local stage.  An
    object store has no locks: two machines writing one URI are not stopped."""
    remote = Remote(uri)
    remote.probe(flag)
    names = remote.files()
    what = None if resume else used(names)
    if what and overwrite:
        clear(remote, names)
    elif what:
        raise DirectoryInUse(f"{flag} {uri} already holds {what} of another run; resume it "
                             f"with --resume, choose another {flag}, or pass --overwrite to "
                             "delete them")
    root = stage(uri)
    lock = claim(root, flag, used=lambda _: None, clear=None, resume=True, overwrite=False)
    for p in root.iterdir():
        if p.name != LOCK_NAME:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    _MIRRORS[uri] = Mirror(uri)
    return lock


def write_bytes(uri: str, data: bytes) -> None:
    """Write one file at a URI (an object store's put is atomic)."""
    parent, name = uri.rstrip("/").rsplit("/", 1)
    Remote(parent).write(name, data)


def write_text(path, text: str) -> None:
    """``files.write_text_atomic`` for a local path; one put for a URI."""
    if is_uri(path):
        write_bytes(str(path), text.encode())
    else:
        files.write_text_atomic(path, text)


def claim_file(path, flag: str, *, overwrite: bool = False, inputs: dict | None = None) -> None:
    """``files.claim_file`` anywhere: for a URI, its store reached (a probe write), not
    a directory there, not an input, and not there already without ``overwrite``."""
    if not is_uri(path):
        files.claim_file(path, flag, overwrite=overwrite, inputs=inputs)
        return
    check_file_target(path, flag)
    files.check_not_input(path, flag, inputs)
    parent, name = str(path).rstrip("/").rsplit("/", 1)
    if not overwrite and Remote(parent).exists(name):
        raise ValueError(f"{flag} {path} exists; choose another path, or pass --overwrite "
                         "to replace it")


def check_file_target(path, flag: str) -> None:
    """``files.check_file_target`` anywhere: for a URI, its store is reached
    (credentials, endpoint, bucket: a probe write), and it is not a directory there."""
    if not is_uri(path):
        files.check_file_target(path, flag)
        return
    parent, name = str(path).rstrip("/").rsplit("/", 1)
    if Remote(str(path)).files():
        raise ValueError(f"{flag} {path} is a directory; give a file name")
    Remote(parent).probe(flag)
