"""The BLAS under NumPy: its threads and kernels as distnn reports them (log, metrics)."""
import os
import platform
import subprocess
import sys

import pytest

from distnn.core import blas

pytestmark = pytest.mark.skipif(blas.threads() is None,
                                reason="NumPy does not use its bundled OpenBLAS here")


def _kernels(coretype: str | None) -> str:
    """``blas.kernels()`` in a fresh process (OpenBLAS reads its variables when loaded)."""
    env = {k: v for k, v in os.environ.items() if k != blas.CORETYPE}
    if coretype:
        env[blas.CORETYPE] = coretype
    return subprocess.run([sys.executable, "-c", "from distnn.core import blas; "
                           "print(blas.kernels())"], env=env, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_kernels_are_the_librarys_own_and_say_when_the_environment_chose_them():
    # Sandybridge's kernels run on any x86-64 CPU with AVX; the name must come back
    # from the library (it loads the core it was told), with the variable beside it
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("OpenBLAS's x86-64 core names")
    forced = _kernels("Sandybridge")
    assert forced == "OpenBLAS Sandybridge (OPENBLAS_CORETYPE=Sandybridge)"
    own = _kernels(None)
    assert own.startswith("OpenBLAS ") and "OPENBLAS_CORETYPE" not in own
    # a CPU with AVX2 gets Haswell's kernels or newer ones of its own
    assert own != "OpenBLAS Sandybridge" or " avx2" not in open("/proc/cpuinfo").read()


def test_threads_are_set_and_read_back():
    before = blas.threads()
    try:
        blas.set_threads(1)
        assert blas.threads() == 1
    finally:
        blas.set_threads(before)
