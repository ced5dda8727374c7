"""The IDX file format of MNIST and Fashion-MNIST (LeCun et al.).

Header: two zero bytes, a type code (0x08 = uint8), the number of dimensions d,
then d big-endian uint32 sizes; the data follow in C order.  Files may be gzipped.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """A data file is missing, corrupt or not what it claims to be; the message names it."""


def read_bytes(path: Path) -> bytes:
    """The file's content, transparently gunzipped when it starts with the gzip magic."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: truncated or corrupt gzip data ({e})") from None
    return raw


def parse(raw: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes into a uint8 array; raise DataError naming ``source``."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{source}: not an IDX file (bad magic number "
                        f"{raw[:4].hex() or 'empty'}; expected 0000 08 0d)")
    if raw[2] != 0x08:
        raise DataError(f"{source}: IDX type code 0x{raw[2]:02x} is not unsigned byte (0x08)")
    ndim = raw[3]
    if ndim < 1 or len(raw) < 4 + 4 * ndim:
        raise DataError(f"{source}: IDX header with {ndim} dimensions is truncated")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    expected = 1
    for n in shape:         # Python integers: np.prod would overflow int64 and wrap
        expected *= n
    body = raw[4 + 4 * ndim:]
    if len(body) != expected:
        raise DataError(f"{source}: header says shape {shape} ({expected} bytes of data) "
                        f"but the file holds {len(body)}; the file is truncated or corrupt")
    try:
        return np.frombuffer(body, np.uint8).reshape(shape)
    except ValueError as e:      # e.g. (0, 0, 3119, 784354): no data, but too big a shape
        raise DataError(f"{source}: header shape {shape} is not a usable array ({e})") from None


def encode(array: np.ndarray) -> bytes:
    """IDX bytes for a uint8 array (the inverse of ``parse``)."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def load(path: Path) -> np.ndarray:
    return parse(read_bytes(path), str(path))
