"""How numbers travel between the members of a group: as they are (``RAW``), or as
bfloat16 (``BF16``: half the bytes of float32).

A wire format is the encoding of a vector on the link, and the sum a member makes of
what arrives.  Members always accumulate in the vector's own dtype (float32): a member
that receives a partial sum decodes it and adds its own numbers in float32; whatever
is sent on is encoded again.  A collective ends with every member holding the same
bits: the member that finishes a piece rounds its own copy to what the others receive.

bfloat16 is the upper half of a float32 (sign, 8 exponent bits, 7 mantissa bits), so
decoding is exact and cheap (a 16-bit shift), and encoding rounds to nearest, ties to
even.  NaN stays NaN; a finite number beyond bfloat16's largest (about 3.39e38) becomes
infinite, as float32 rounding does.
"""
from __future__ import annotations

import threading

import numpy as np


class Wire:
    """Numbers travel as they are (no encoding, no rounding)."""

    name = "raw"
    exact = True

    def dtype(self, dtype) -> np.dtype:
        """The dtype of a vector of ``dtype`` on the link."""
        return np.dtype(dtype)

    def encode(self, x: np.ndarray, out: np.ndarray) -> None:
        """``out`` (the link's dtype) <- ``x``."""
        np.copyto(out, x)

    def decode(self, w: np.ndarray, out: np.ndarray) -> None:
        """``out`` (the values' dtype) <- ``w`` from the link."""
        np.copyto(out, w)

    def add_(self, acc: np.ndarray, w: np.ndarray) -> None:
        """``acc`` += the decoded ``w``."""
        np.add(acc, w, out=acc)

    def round_(self, x: np.ndarray) -> None:
        """``x`` <- what it is once it has travelled (nothing, here)."""


class BF16Wire(Wire):
    """float32 numbers travel as bfloat16, rounded to nearest even."""

    name = "bf16"
    exact = False

    def dtype(self, dtype) -> np.dtype:
        if np.dtype(dtype) != np.float32:
            raise ValueError(f"bf16 carries float32 numbers, not {np.dtype(dtype)}")
        return np.dtype(np.uint16)

    def __init__(self):
        self._local = threading.local()     # scratch per thread: members may share a process

    def _tmp(self, n: int, dtype=np.uint32) -> np.ndarray:
        name = np.dtype(dtype).name
        t = getattr(self._local, name, None)
        if t is None or t.size < n:
            t = np.empty(max(n, 1024), dtype)
            setattr(self._local, name, t)
        return t[:n]

    def encode(self, x, out):
        u = x.reshape(-1).view(np.uint32)
        t = self._tmp(u.size)
        # round to nearest even: add 0x7FFF plus the lowest kept bit, keep the top half
        np.right_shift(u, 16, out=t)
        np.bitwise_and(t, 1, out=t)
        t += np.uint32(0x7FFF)
        t += u
        np.right_shift(t, 16, out=t)
        np.copyto(out.reshape(-1), t, casting="unsafe")
        nan = np.isnan(x.reshape(-1), out=self._tmp(u.size, np.bool_))
        if nan.any():      # (a NaN's payload could carry into the exponent)
            out.reshape(-1)[nan] = np.uint16(0x7FC0)

    def decode(self, w, out):
        u = out.reshape(-1).view(np.uint32)
        np.copyto(u, w.reshape(-1))
        np.left_shift(u, 16, out=u)

    def add_(self, acc, w):
        t = self._tmp(w.size).view(np.float32)
        self.decode(w, t)
        np.add(acc, t.reshape(acc.shape), out=acc)

    def round_(self, x):
        w = self._tmp(x.size, np.uint16)
        self.encode(x, w)
        self.decode(w, x)


RAW = Wire()
BF16 = BF16Wire()
WIRES = {w.name: w for w in (RAW, BF16)}
