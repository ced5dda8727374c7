"""scripts/simcluster.py's own failures are one line, not a traceback (issue 41)."""
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import simcluster  # noqa: E402


def test_a_cluster_that_does_not_come_up_is_a_timeout_error_not_a_raw_expiry(monkeypatch):
    """On a loaded machine the probe (ray.init inside a namespace) may itself outlast the
    wait: that is the cluster not coming up in time, said as such."""
    def hangs(*args, timeout=None, **kwargs):
        raise subprocess.TimeoutExpired(args[0], timeout)
    c = simcluster.SimCluster(2, 1)
    try:
        monkeypatch.setattr(simcluster.subprocess, "run", hangs)
        with pytest.raises(TimeoutError, match="the simulated cluster has 0 of 2 CPUs"):
            c.wait_for_cpus(2, timeout=0.5)
    finally:
        monkeypatch.undo()
        import shutil
        shutil.rmtree(c.tmp, ignore_errors=True)
