"""The BLAS under NumPy's products: how many threads it runs them on, and which kernels.

NumPy's wheels bundle OpenBLAS (``numpy.libs/libscipy_openblas*.so``); it is reached
through ctypes on that library, so nothing is installed for it.  Where NumPy uses another
BLAS, the questions answer None and :func:`set_threads` refuses.

The kernels matter as much as the threads: OpenBLAS picks them for the CPU at start-up,
unless ``OPENBLAS_CORETYPE`` names a core, and then it runs that core's kernels whatever
the CPU has (Haswell's AVX2 kernels on an AVX-512 CPU do about half the FLOPs a cycle).
"""
from __future__ import annotations

import ctypes
import functools
import glob
import os

import numpy as np

#: the variable with which OpenBLAS is told which core's kernels to run
CORETYPE = "OPENBLAS_CORETYPE"


@functools.cache
def _openblas():
    """NumPy's bundled OpenBLAS (ctypes), or None where it is not found (another BLAS)."""
    libs = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    for path in glob.glob(os.path.join(libs, "libscipy_openblas*.so*")):
        try:
            lib = ctypes.CDLL(path)
            lib.scipy_openblas_get_num_threads64_, lib.scipy_openblas_set_num_threads64_
            lib.scipy_openblas_get_corename64_.restype = ctypes.c_char_p
            return lib
        except (OSError, AttributeError):
            continue
    return None


def threads() -> int | None:
    """How many threads this process's BLAS runs a product on, or None where that
    cannot be asked."""
    lib = _openblas()
    return None if lib is None else int(lib.scipy_openblas_get_num_threads64_())


def set_threads(n: int) -> None:
    """This process's BLAS runs its products on ``n`` threads (``--threads``)."""
    lib = _openblas()
    if lib is None:
        raise ValueError("--threads sets the threads of NumPy's bundled OpenBLAS, which "
                         "this NumPy does not use; set OMP_NUM_THREADS (or your BLAS's "
                         "own variable) instead and leave --threads out")
    lib.scipy_openblas_set_num_threads64_(ctypes.c_int(n))


def kernels() -> str | None:
    """Whose kernels this process's BLAS runs, as a person reads it: ``"OpenBLAS
    SkylakeX"``, with ``" (OPENBLAS_CORETYPE=Haswell)"`` after it where the environment
    chose them rather than the CPU; None where that cannot be asked."""
    lib = _openblas()
    if lib is None:
        return None
    said = f"OpenBLAS {lib.scipy_openblas_get_corename64_().decode(errors='replace')}"
    forced = os.environ.get(CORETYPE)
    return f"{said} ({CORETYPE}={forced})" if forced else said
