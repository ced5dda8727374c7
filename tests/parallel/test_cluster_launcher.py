"""The README's cluster section as a user runs it, on simulated machines (issue #20):
`ray up cluster/local.yaml` over SSH, `ray submit ... scripts/train.py`, `ray job
submit` with the head's token, `ray down` -- and nothing left behind."""
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import simcluster  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _missing() -> str | None:
    why = simcluster.available()
    if why:
        return why
    for tool in ("/usr/sbin/sshd", "ssh", "ssh-keygen", "rsync"):
        if not shutil.which(tool):
            return f"needs {tool} (Debian: openssh-server, openssh-client, rsync)"
    return None


@pytest.mark.skipif(_missing() is not None, reason=str(_missing()))
def test_ray_up_submit_job_submit_down_as_the_readme_says(tmp_path):
    yaml = pytest.importorskip("yaml")
    key = Path(simcluster.tempfile.mkdtemp(dir="/var/tmp")) / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    ray = str(Path(sys.executable).parent / "ray")
    try:
        with simcluster.SshHosts(2, key) as h:
            from tests.data import tiny
            (h.files / "data").mkdir()
            data = tiny.write_blobs(h.files / "data", 600, 100)
            cfg = yaml.safe_load((ROOT / "cluster" / "local.yaml").read_text())
            # the user's edits: their machines' addresses and SSH login; and, as these
            # machines already have Python, Ray and the repository's dependencies (the
            # test's own environment), a setup command that checks the synced code
            # imports instead of installing it into that shared environment
            cfg["provider"].update(head_ip=h.ips[0], worker_ips=h.ips[1:h.client])
            cfg["auth"] = {"ssh_user": "root", "ssh_private_key": str(key)}
            cfg["setup_commands"] = ['python -c "import distnn, ray"']
            conf = h.files / "cluster.yaml"
            conf.write_text(yaml.safe_dump(cfg))

            def client(*argv, env=None, timeout=400):
                r = subprocess.run(h.command(h.client, list(argv)), cwd=ROOT,
                                   env={**h.env(), **(env or {})}, capture_output=True,
                                   text=True, timeout=timeout)
                return r.returncode, r.stdout + r.stderr

            rc, out = client(ray, "up", "-y", "--no-config-cache", str(conf))
            assert rc == 0, out[-3000:]
            train = ["--dataset", "idx", "--data-dir", str(data), "--layers", "64,16,4",
                     "--epochs", "2", "--batch-size", "30", "--replace-timeout", "240"]
            # 3 workers: more than the head's 2 CPUs, so the worker machine takes part
            # once the autoscaler has started Ray there
            rc, out = client(ray, "submit", str(conf), str(ROOT / "scripts" / "train.py"),
                             "--", *train, "--workers", "3")
            assert rc == 0 and "test accuracy" in out and "3 workers" in out, out[-3000:]
            token = (Path(h.token)).read_text()
            rc, out = client(ray, "job", "submit", "--address", f"http://{h.ips[0]}:8265",
                             "--working-dir", ".", "--", "distnn", "train", *train,
                             "--workers", "2", "--address", "auto",
                             env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})
            assert rc == 0 and "succeeded" in out and "test accuracy" in out, out[-3000:]
            rc, out = client(ray, "down", "-y", str(conf))
            assert rc == 0, out[-3000:]
            deadline = time.monotonic() + 180   # a worker's agents outlive its raylet
            while True:                    # only sshd is left on each machine
                names = [_names(h.ns[i]) for i in range(h.client)]
                if all(n <= {"sh", "sshd", "unshare"} for n in names) or \
                        time.monotonic() > deadline:
                    break
                time.sleep(1)
            assert all(n <= {"sh", "sshd", "unshare"} for n in names), (names, _cmdlines(h))
            took = time.monotonic() - deadline + 180
    finally:
        shutil.rmtree(key.parent, ignore_errors=True)
    assert not [ns for ns in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                            text=True).stdout.split() if ns.startswith(h.tag)]
    print(f"Ray gone from every machine {took:.0f} s after ray down returned")


def _names(ns: str) -> set[str]:
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                          text=True).stdout.split()
    return {Path(f"/proc/{p}/comm").read_text().strip() for p in pids
            if Path(f"/proc/{p}/comm").exists()}


def _cmdlines(h) -> list[str]:
    out = []
    for ns in h.ns:
        for p in subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                text=True).stdout.split():
            try:
                out.append(Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")
                           .decode()[:160])
            except OSError:
                pass
    return out
