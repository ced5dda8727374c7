"""The run's output directories and files: one run per directory (a lock while it runs,
refusal when a fresh run meets another run's outputs), checks before training that the
outputs can be written, and one error for a write that fails (a full disk)."""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import socket
import time
from pathlib import Path

LOCK_NAME = ".distnn.lock"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(where) -> bool:
    """True for ``scheme://...`` other than ``file://`` (a local path): a location on
    an object store or another filesystem pyarrow opens (``io.store``)."""
    return isinstance(where, str) and bool(_SCHEME.match(where)) \
        and not where.startswith("file://")


class OutputError(RuntimeError):
    """An output could not be written (a full disk, a read-only file system); what was
    already written is intact."""


class DirectoryInUse(ValueError):
    """An output directory belongs to another run (running now, or finished)."""


class OutputUnusable(ValueError):
    """Before any work: an output cannot be written where it is asked for (a missing
    bucket, refused credentials, no endpoint)."""


def describe(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "no space left on the device"
    if e.errno == errno.EDQUOT:
        return "disk quota exceeded"
    return e.strerror or str(e)


def describe_store(e: Exception) -> str:
    """pyarrow's error opening a filesystem, as one line a user can act on (HDFS's is
    every path where it looked for a JVM)."""
    text = str(e)
    if "libjvm" in text:
        return ("HDFS needs a Java runtime and Hadoop's libhdfs, which pyarrow could not "
                "load: set JAVA_HOME, HADOOP_HOME and ARROW_LIBHDFS_DIR")
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__


class DirLock:
    """An exclusive ``flock`` on ``DIR/.distnn.lock``, held while the run writes there;
    the kernel drops it when the process dies, so a killed run never leaves it held."""

    def __init__(self, path: Path, fd: int):
        self.path, self.fd = path, fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def claim(root, flag: str, *, used, clear, resume: bool, overwrite: bool) -> DirLock:
    """Make ``root`` this run's: create it, lock it, and unless the run resumes, refuse
    it when ``used(root)`` names another run's outputs (``clear(root)`` deletes them
    first when ``overwrite``)."""
    root = Path(root)
    if root.is_symlink():
        raise DirectoryInUse(f"{flag} {root} is a symbolic link; distnn does not write "
                             f"through links: give the directory itself ({root.resolve()})")
    if root.exists() and not root.is_dir():
        raise DirectoryInUse(f"{flag} {root} is a file; give a directory")
    try:
        root.mkdir(parents=True, exist_ok=True)
        # never through a link: a lock file that is one would truncate what it points to
        fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        if e.errno == errno.EISDIR:
            raise DirectoryInUse(f"{flag} {root}: its {LOCK_NAME} is a directory; distnn "
                                 "keeps a lock file there (remove the directory)") from None
        if e.errno == errno.ELOOP:
            raise DirectoryInUse(f"{flag} {root}: its {LOCK_NAME} is a symbolic link; "
                                 "distnn does not write through links (remove it)") from None
        raise DirectoryInUse(f"{flag} {root}: cannot create it ({describe(e)})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        os.close(fd)
        raise DirectoryInUse(f"{flag} {root} is in use by another run ({holder or 'unknown'})"
                             f"; give this run a {flag} of its own") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                              "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
    lock = DirLock(root, fd)
    what = None if resume else used(root)
    if what and overwrite:
        clear(root)
    elif what:
        lock.release()
        raise DirectoryInUse(f"{flag} {root} already holds {what} of another run; resume it "
                             f"with --resume, choose another {flag}, or pass --overwrite to "
                             "delete them")
    return lock


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def check_targets(outputs: dict, inputs: dict, metrics: tuple[str, str] | None,
                  beside: str | None = None) -> None:
    """Before any work, the one check that distnn writes only where the command line
    says: ``outputs`` {flag: directory}, ``inputs`` {what: path} (a config file, the
    data, the checkpoint being read), ``metrics`` (flag, file) or None.  The file may
    not be, or be inside, an output directory or an input, and what is at it now must
    be a regular file (not a link, a device or a directory); ``beside``: the output
    directory it is the run's own metrics file of (its default place).  URIs are
    checked by their own probe."""
    if metrics is None or is_uri(metrics[1]):
        return
    flag, target = metrics[0], Path(metrics[1])
    for other, d in outputs.items():
        if d and not is_uri(d) and _inside(target, Path(d)) and d != beside:
            raise ValueError(f"{flag} {target} is inside {other} {d}, which the run writes "
                             "as a directory of its own; put the metrics file elsewhere")
    for what, p in inputs.items():       # an input, or a file in an input directory
        if beside and p and not is_uri(p) and (_inside(Path(p), Path(beside))):
            continue      # the run's own checkpoints (a resume): its metrics beside them
        if p and not is_uri(p) and Path(p).exists() and (target.exists() or not Path(
                p).is_dir()) and (_inside(target, Path(p)) if Path(p).is_dir() else
                                  target.resolve() == Path(p).resolve()):
            raise ValueError(f"{flag} {target} would overwrite {what} {p}, which this run "
                             "reads; give the metrics file a path of its own")
    if target.is_symlink() or (target.exists() and not target.is_file()):
        raise ValueError(f"{flag} {target} exists and is not a regular file (a link, a "
                         "device or a directory); distnn writes only plain files")


def claim_file(path, flag: str, *, overwrite: bool = False, inputs: dict | None = None) -> None:
    """The one rule for every file a command writes (export, plot, data preview,
    lr-find's plot, ...), checked before the first byte of anything is written: never
    through a symbolic link, never onto an input or into one (``inputs``: {what: path},
    a file or a directory; --overwrite or not), never onto an existing file without
    ``overwrite``, and only where a file can be made (``check_file_target``).  A local
    path (``store.claim_file``: anywhere)."""
    p = Path(path)
    if p.is_symlink():
        raise ValueError(f"{flag} {p} is a symbolic link; distnn never writes through "
                         f"links: give the file itself ({p.resolve()}), or remove the link")
    check_file_target(p, flag)
    if p.exists() and not p.is_file():
        raise ValueError(f"{flag} {p} exists and is not a regular file (a device, a pipe); "
                         "distnn writes only plain files")
    check_not_input(p, flag, inputs)
    if p.exists() and not overwrite:
        raise ValueError(f"{flag} {p} exists; choose another path, or pass --overwrite to "
                         "replace it")


def check_not_input(target, flag: str, inputs: dict | None) -> None:
    """Refuse an output ``target`` (a file or a directory) that would write onto an input
    of ``inputs``: {what: path, or (path, whole)}.  A file input: ``target`` is it.  A
    directory read whole (``whole``: every file in it is data, as in a Parquet dataset
    directory): ``target`` is it or anywhere inside it.  Another directory (of named
    files: --data-dir, a checkpoint directory): ``target`` is it, or an existing file
    inside it.  URIs are compared as written, as directories read whole."""
    for what, q in (inputs or {}).items():
        q, whole = q if isinstance(q, tuple) else (q, False)
        if not q:
            continue
        if is_uri(q) or is_uri(target):
            t, u = str(target).rstrip("/"), str(q).rstrip("/")
            clash = t == u or t.startswith(u + "/")
        else:
            qp, tp = Path(q), Path(target)
            if not qp.exists():
                continue
            same = tp.resolve() == qp.resolve()
            inside = qp.is_dir() and _inside(tp, qp)
            clash = same or (inside and (whole or tp.is_file()))
        if clash:
            raise ValueError(f"{flag} {target} is {what} {q} or inside it, which this "
                             "command reads; an output is never an input or part of one, "
                             f"--overwrite or not: give {flag} a path of its own")


def check_file_target(path, flag: str) -> None:
    """Before training: local ``path`` can be written as a file (its directory can be
    made, it is not a directory), so a run never learns that at its end (a URI:
    ``store.check_file_target``)."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{flag} {p} is a directory; give a file name")
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{flag} {p}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"{flag} {p}: {parent} is not writable")


def write_text_atomic(path, text: str) -> None:
    """Write local ``path`` through a temporary file renamed into place: the old content
    stays whole if the write fails; the temporary file never stays behind (anywhere:
    ``store.write_text``)."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, p)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"could not write {p}: {describe(e)}") from None
