"""What a checkpoint directory holds, by name: its files, the names of its epochs, its
pointers (``latest``, ``best``) and how a pointer reads, and the error for a checkpoint
that is not what it should be.  Shared by the local (``checkpoint``) and the URI
(``checkpoint_store``) sides."""
from __future__ import annotations

import re

FORMAT = "distnn-checkpoint"
VERSION = 2        # 2: meta_sha256, and the hash of meta.json in ``latest``
FILES = ("tensors.parquet", "optimizer.parquet")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
EPOCH_NAME = re.compile(r"epoch-\d{4,}\Z")
POINTERS = ("latest", "best")


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, from a newer format, or does not fit."""


def epoch_name(epoch: int) -> str:
    """The directory of epoch ``epoch``'s checkpoint: ``epoch-0007``."""
    return f"epoch-{epoch:04d}"


def parse_pointer(text: str, where) -> tuple[str, str]:
    """(checkpoint name, sha256 of its meta.json) from a pointer file's ``text``,
    exactly as distnn writes it: the name, then ``meta.json sha256 HEX``."""
    lines = text.splitlines() or [""]
    name = lines[0].strip()
    if not NAME.match(name) or len(lines) > 2:
        raise CheckpointError(f"{where} must name a checkpoint directory inside "
                              f"{str(where).rsplit('/', 1)[0]}, got {' '.join(lines)[:80]!r}")
    rest = lines[1].split() if len(lines) == 2 else []
    # the hash line is what makes the pointer a check
    if len(rest) != 3 or rest[:2] != ["meta.json", "sha256"] or \
            not re.fullmatch(r"[0-9a-f]{64}", rest[2]):
        raise CheckpointError(f"{where} must name a checkpoint and, on its second line, "
                              f"the sha256 of its meta.json ('meta.json sha256 HEX'), got "
                              f"{' '.join(lines)[:120]!r}; it was changed or damaged")
    return name, rest[2]
