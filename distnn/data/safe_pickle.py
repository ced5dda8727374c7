"""A restricted unpickler for NumPy arrays in legacy pickles (``mnist.pkl.gz``).

Only the globals a pickled ndarray needs are resolved; any other global (the
way a malicious pickle runs code, e.g. ``os.system``) is refused before it is
called, so nothing runs.
"""
from __future__ import annotations

import io
import pickle

import numpy as np

import codecs

try:  # NumPy 2 moved the modules; pickles may name either path
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.multiarray import _reconstruct
    from numpy.core.numeric import _frombuffer

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # protocol-2 pickles written by Python 3 wrap bytes as codecs.encode(str, "latin1")
    ("_codecs", "encode"): codecs.encode,
}


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asked for something other than NumPy arrays."""


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load {module}.{name}: this pickle holds more than NumPy "
                "arrays, and loading it could run code") from None


def loads(data: bytes):
    """Unpickle ``data`` (Python 2 pickles decoded as latin-1) allowing only arrays."""
    return _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
