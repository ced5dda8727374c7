"""Cluster launcher configs (validated by Ray itself) and the Jobs API, for real."""
import copy
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["aws", "gcp", "local"])
def test_cluster_yaml_passes_rays_validation(name):
    pytest.importorskip("ray")
    yaml = pytest.importorskip("yaml")
    pytest.importorskip("jsonschema")
    from ray.autoscaler._private.util import prepare_config, validate_config
    config = yaml.safe_load((ROOT / "cluster" / f"{name}.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    assert any("pip install" in c and "distnn" in c for c in config["setup_commands"])
    broken = copy.deepcopy(config)
    broken["setup_comands"] = broken.pop("setup_commands")  # a typo must not pass
    with pytest.raises(Exception, match="setup_comands"):
        validate_config(prepare_config(broken))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def token_head(bindir: Path):
    """What a token-auth Ray head of its own needs: (its temp directory, the environment
    for the ray CLI, the GCS and dashboard ports, the agents' port flags)."""
    temp = tempfile.mkdtemp(prefix="rj", dir="/tmp")   # short: Ray's socket paths are limited
    token = Path(temp) / "token"           # this head's own, not the machine's ~/.ray one
    token.write_text(os.urandom(16).hex())
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{bindir}:{os.environ['PATH']}",
           "RAY_TMPDIR": temp, "RAY_AUTH_TOKEN_PATH": str(token)}
    # free ports for every agent too, so another Ray on this machine cannot clash with it
    agents = [f"--{flag}={_free_port()}" for flag in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
        "metrics-export-port")]
    return temp, env, _free_port(), _free_port(), agents


def _kill_session(marker: str):
    """Stop every process whose command line or environment mentions ``marker`` (our
    --temp-dir / RAY_TMPDIR), and their descendants (Ray's agents rename themselves
    "ray::DashboardAgent" and outlive a SIGKILLed driver's raylet), by PID, so other
    Ray instances on the machine are left alone."""
    pids, parent = [], {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if any(marker.encode() in (proc / f).read_bytes()
                       for f in ("cmdline", "environ")):
                    pids.append(int(proc.name))
                stat = (proc / "stat").read_text()
                parent[int(proc.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    for pid in pids:   # grows while it runs: children of children
        pids.extend(c for c, pp in parent.items() if pp == pid and c not in pids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(1.0)
    import shutil
    shutil.rmtree(marker, ignore_errors=True)


@pytest.fixture
def idx_dir(tmp_path):
    from tests.data import tiny
    return tiny.write_blobs(tmp_path, 600, 100)


@pytest.mark.ray
@pytest.mark.slow
def test_ray_job_submit_with_token_auth(idx_dir):
    bindir = Path(sys.executable).parent
    ray_cli = bindir / "ray"
    if not ray_cli.exists():
        pytest.skip("the ray CLI is not installed next to this Python")
    temp, env, gcs, dash, agents = token_head(bindir)
    try:
        subprocess.run([str(ray_cli), "start", "--head", f"--port={gcs}", "--num-cpus=2",
                        f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
                        "--node-ip-address=127.0.0.1", f"--temp-dir={temp}", *agents],
                       env=env, check=True, capture_output=True, timeout=120)
        argv = [str(ray_cli), "job", "submit", "--address", f"http://127.0.0.1:{dash}",
                "--working-dir", str(ROOT), "--", "python", "-m", "distnn.cli", "train",
                "--dataset", "idx", "--data-dir", str(idx_dir), "--layers", "64,16,4",
                "--epochs", "2", "--workers", "2", "--batch-size", "20", "--address", "auto"]
        for _ in range(20):  # the job agent can come up a little after `ray start` returns
            job = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
            out = job.stdout + job.stderr
            if "No available agent" not in out:
                break
            time.sleep(3)
        assert job.returncode == 0, out[-3000:]
        assert "succeeded" in out and "test accuracy" in out and "2 workers" in out
        # the job's workers compute as a local run's do: one BLAS thread each on their
        # CPU (scripts/bench_jobs.py measures the speed side by side)
        assert "2 workers x 1 BLAS thread(s)" in out, out[-3000:]
        _join_by_address(env, temp, gcs, dash, idx_dir)
    finally:
        _kill_session(temp)


def _join_by_address(env, temp, gcs, dash, idx_dir):
    """``distnn train --address HOST:PORT`` to that head: without a token, with a wrong
    one and on the dashboard's port, one line saying what to do within seconds (it was
    20 s of Ray's InvalidAuthToken lines, then "Failed to connect"); with the head's
    token in the environment, as the README says, it trains."""
    argv = [sys.executable, "-m", "distnn.cli", "-q", "train", "--dataset", "idx",
            "--data-dir", str(idx_dir), "--layers", "64,16,4", "--epochs", "1",
            "--workers", "2", "--batch-size", "20", "--address", f"127.0.0.1:{gcs}"]
    bare = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
    bare["HOME"] = temp                       # no ~/.ray/auth_token there
    for extra, port, said in (({}, gcs, "requires a token"),
                              ({"RAY_AUTH_TOKEN": "wrong"}, gcs, "rejected this machine's token"),
                              ({}, dash, "does not answer as a Ray cluster")):
        t0 = time.monotonic()
        r = subprocess.run([*argv[:-1], f"127.0.0.1:{port}"], env={**bare, **extra},
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and said in r.stderr, r.stderr[-2000:]
        assert "InvalidAuthToken" not in r.stderr and time.monotonic() - t0 < 15
    token = Path(env["RAY_AUTH_TOKEN_PATH"]).read_text()
    r = subprocess.run(argv, env={**bare, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "test accuracy" in r.stdout, r.stderr[-2000:]
