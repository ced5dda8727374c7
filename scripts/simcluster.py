"""Several hosts, simulated on this machine: each a network namespace with its own
address, a private /dev/shm and a Ray node (token auth), joined by a bridge that lives
in a namespace of its own, links optionally rate-shaped with ``tc ... tbf``.

    sudo python scripts/simcluster.py --hosts 2 --cpus 2 --rate 1gbit -- \\
        distnn train --dataset mnist --layers 784,800,10 --workers 4 --batch-size 128 \\
        --address auto

runs the command after ``--`` as a driver on host 0 (with ``RAY_ADDRESS`` set to the
cluster) and tears everything down afterwards.  Tests and benchmarks use ``SimCluster``
as a context manager.  Everything it starts runs inside its own namespaces and is
stopped by PID (every process in them), never with ``ray stop`` or by name; the
namespaces, links and temporary files go with it, even when the body fails.
"""
from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUBNET = "10.77.0"     # only inside this cluster's own namespaces: nothing else sees it


def available() -> str | None:
    """None when this machine can simulate hosts, else why not (for a skip message)."""
    if os.geteuid() != 0:
        return "simulated hosts need root (network namespaces, mounts)"
    for tool in ("ip", "unshare", "tc"):
        if shutil.which(tool) is None:
            return f"simulated hosts need the {tool!r} command"
    probe = f"dnprobe{os.getpid() % 100000}"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode:
        return "this machine does not allow network namespaces (ip netns add failed)"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _sh(*argv, check=True, ns=None):
    cmd = (["ip", "netns", "exec", ns] if ns else []) + [str(a) for a in argv]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr.strip()}")
    return r.stdout


def _burst(rate: str) -> str:
    """A tbf bucket of ~2 ms at ``rate`` (at least 32 KiB), so shaping stays smooth."""
    units = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
    for u, f in units.items():
        if rate.endswith(u):
            return f"{max(32 * 1024, int(float(rate[:-len(u)]) * f / 8 * 0.002))}b"
    raise ValueError(f"rate must look like 1gbit, 500mbit, ...; got {rate!r}")


class SimCluster:
    """``hosts`` simulated hosts with ``cpus`` Ray CPUs each (or a list: host i gets
    cpus[i]; a head with 0 CPUs is the usual cluster set-up); ``rate`` (e.g. "1gbit")
    shapes every host's link both ways.  ``address`` is the head's GCS address."""

    def __init__(self, hosts: int = 2, cpus=1, rate: str | None = None,
                 shm_size: str = "2g"):
        if hosts < 1 or hosts > 200:
            raise ValueError(f"hosts must be 1..200, got {hosts}")
        self.cpus = list(cpus) if isinstance(cpus, (list, tuple)) else [cpus] * hosts
        if len(self.cpus) != hosts:
            raise ValueError(f"cpus: one count per host ({hosts}), got {self.cpus}")
        self.hosts, self.rate, self.shm_size = hosts, rate, shm_size
        self.tag = f"dn{os.getpid() % 100000}{secrets.token_hex(2)}"
        self.ns = [f"{self.tag}-h{i}" for i in range(hosts)]
        self.switch = f"{self.tag}-sw"
        self.ips = [f"{SUBNET}.{i + 1}" for i in range(hosts)]
        self.port = 6379
        self.address = f"{self.ips[0]}:{self.port}"
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.tag}-", dir="/tmp"))
        self.token = self.tmp / "token"
        self.procs: list[subprocess.Popen] = []

    # -- set-up -------------------------------------------------------------------------
    def __enter__(self) -> "SimCluster":
        try:
            self._network()
            self.token.write_text(secrets.token_hex(32))
            self.token.chmod(0o600)
            for i in range(self.hosts):
                self._start_node(i)
            self.wait_for_cpus(sum(self.cpus))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _network(self) -> None:
        _sh("ip", "netns", "add", self.switch)
        _sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        _sh("ip", "-n", self.switch, "link", "set", "br0", "up")
        for i, ns in enumerate(self.ns):
            _sh("ip", "netns", "add", ns)
            _sh("ip", "-n", self.switch, "link", "add", f"v{i}", "type", "veth", "peer",
                "name", "eth0", "netns", ns)
            _sh("ip", "-n", self.switch, "link", "set", f"v{i}", "master", "br0", "up")
            _sh("ip", "-n", ns, "addr", "add", f"{self.ips[i]}/24", "dev", "eth0")
            _sh("ip", "-n", ns, "link", "set", "eth0", "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
            # a default route, as real machines have: Ray finds a node's address by the
            # route towards 8.8.8.8 (no packet is sent); nothing leaves the bridge
            _sh("ip", "-n", ns, "route", "add", "default", "dev", "eth0")
            if self.rate:
                self.shape(i, self.rate)

    def shape(self, host: int, rate: str | None) -> None:
        """Limit host ``host``'s link to ``rate`` in both directions (None: unshaped)."""
        for ns, dev in ((self.ns[host], "eth0"), (self.switch, f"v{host}")):
            _sh("tc", "qdisc", "del", "dev", dev, "root", check=False, ns=ns)
            if rate:
                _sh("tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst",
                    _burst(rate), "latency", "100ms", ns=ns)

    def env(self) -> dict:
        """The environment of every process on the simulated hosts."""
        return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token),
                "DISTNN_SIMCLUSTER": self.tag, "RAY_ADDRESS": self.address,
                "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}

    def command(self, host: int, argv) -> list[str]:
        """``argv`` as run on host ``host``: in its namespace, with its own /dev/shm."""
        mount = f"mount -t tmpfs -o size={self.shm_size} tmpfs /dev/shm && exec \"$@\""
        return ["ip", "netns", "exec", self.ns[host], "unshare", "--mount",
                "--propagation", "private", "sh", "-c", mount, "sh", *map(str, argv)]

    def _start_node(self, i: int) -> None:
        ray = Path(sys.executable).parent / "ray"
        common = [f"--node-ip-address={self.ips[i]}", f"--num-cpus={self.cpus[i]}",
                  f"--temp-dir={self.tmp / f'h{i}'}", "--block", "--disable-usage-stats"]
        if i == 0:
            argv = [ray, "start", "--head", f"--port={self.port}", "--include-dashboard=false",
                    *common]
        else:
            argv = [ray, "start", f"--address={self.address}", *common]
        log = open(self.tmp / f"node{i}.log", "ab")
        self.procs.append(subprocess.Popen(self.command(i, argv), env=self.env(), stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True))

    def wait_for_cpus(self, cpus: int, timeout: float = 120.0) -> None:
        """Block until the cluster has ``cpus`` CPUs, or fail with the nodes' logs."""
        probe = ("import ray; ray.init(address='auto', logging_level='ERROR'); "
                 "print(ray.cluster_resources().get('CPU', 0))")
        deadline = time.monotonic() + timeout
        have = 0.0
        while time.monotonic() < deadline:
            try:      # (a loaded machine: the probe itself may outlast what is left)
                r = subprocess.run(self.command(0, [sys.executable, "-c", probe]),
                                   env=self.env(), capture_output=True, text=True,
                                   timeout=max(5.0, deadline - time.monotonic()))
                have = float(r.stdout.strip().splitlines()[-1])
            except (ValueError, IndexError, subprocess.TimeoutExpired):
                have = 0.0
            if have >= cpus:
                return
            time.sleep(1.0)
        logs = "\n".join((self.tmp / f"node{i}.log").read_text(errors="replace")[-800:]
                         if (self.tmp / f"node{i}.log").exists() else f"(host {i}: no log)"
                         for i in range(self.hosts))
        raise TimeoutError(f"the simulated cluster has {have:g} of {cpus} CPUs after "
                           f"{timeout:g}s; node logs:\n{logs}")

    # -- use ----------------------------------------------------------------------------
    def run(self, host: int, argv, timeout: float = 600.0, **kw) -> subprocess.CompletedProcess:
        """Run ``argv`` on host ``host`` (a driver on host 0, typically) and wait."""
        return subprocess.run(self.command(host, argv), env=self.env(), timeout=timeout,
                              capture_output=True, text=True, **kw)

    def link_bytes(self) -> list[tuple[int, int]]:
        """(bytes sent, bytes received) on each host's link so far."""
        out = []
        for ns in self.ns:   # /sys/class/net inside the namespace shows its eth0
            text = _sh("cat", "/sys/class/net/eth0/statistics/tx_bytes",
                       "/sys/class/net/eth0/statistics/rx_bytes", ns=ns)
            tx, rx = (int(v) for v in text.split())
            out.append((tx, rx))
        return out

    def hosts_running(self, text: str) -> list[int]:
        """The hosts with a process whose command line contains ``text``."""
        out = []
        for i, ns in enumerate(self.ns):
            for pid in _sh("ip", "netns", "pids", ns, check=False).split():
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                except OSError:
                    continue
                if text.encode() in cmd:
                    out.append(i)
                    break
        return out

    def cut(self, host: int, seconds: float) -> None:
        """A network partition: host ``host``'s link is down for ``seconds`` (its
        processes live on, unreachable), then up again."""
        _sh("ip", "-n", self.switch, "link", "set", f"v{host}", "down")
        try:
            time.sleep(seconds)
        finally:
            _sh("ip", "-n", self.switch, "link", "set", f"v{host}", "up")

    def kill_node(self, host: int) -> None:
        """SIGKILL every process on host ``host`` (a lost machine)."""
        self._kill_ns(self.ns[host])

    def restart_node(self, host: int, wait: bool = True, timeout: float = 120.0) -> None:
        """Start host ``host``'s Ray node again (a repaired machine rejoining), with a
        fresh /dev/shm; ``wait``: until its CPUs are in the cluster."""
        self._start_node(host)
        if wait:
            self.wait_for_cpus(sum(self.cpus), timeout)

    # -- tear-down ----------------------------------------------------------------------
    def _kill_ns(self, ns: str) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = _sh("ip", "netns", "pids", ns, check=False).split()
            for pid in pids:
                try:
                    os.kill(int(pid), sig)
                except (ProcessLookupError, ValueError):
                    pass
            if not pids:
                return
            time.sleep(1.0 if sig == signal.SIGTERM else 0.2)

    def close(self) -> None:
        """Stop every process in this cluster's namespaces, then remove the namespaces
        (their links go with them) and the temporary files."""
        for ns in self.ns:
            self._kill_ns(ns)
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            p.wait(timeout=10)
        for ns in [*self.ns, self.switch]:
            _sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)


class SshHosts(SimCluster):
    """Machines as a user has them before ``ray up``: ``hosts`` simulated hosts with no
    Ray running, each with an sshd that lets in root with the public key ``key.pub``,
    and a PID namespace and private /root, /tmp and /dev/shm of its own (so `ray stop`
    on one stops only its processes, and one host's ~/.ray or /tmp/ray is not
    another's).  Each host's ~/.bashrc puts this Python's bin first on PATH (Ray and its
    CLI installed, as on the user's machines) and the synced repository (~/distnn) on
    PYTHONPATH, and ~/.ray/auth_token holds one token for the cluster (the README's step
    of copying the head's token).  ``client`` is one more host without sshd, for
    `ray up` / `ray submit` / `ray job submit`, and ``files`` is a directory every host
    sees (under /var/tmp)."""

    def __init__(self, hosts: int, key: Path):
        super().__init__(hosts + 1, 0)
        self.client, self.key = hosts, Path(key)
        self.files = Path(tempfile.mkdtemp(prefix=f"{self.tag}-", dir="/var/tmp"))

    def __enter__(self) -> "SshHosts":
        try:
            self._network()
            self.token.write_text(secrets.token_hex(32))
            _sh("ssh-keygen", "-A")
            Path("/run/sshd").mkdir(exist_ok=True)
            for i in range(self.client):
                self._start_sshd(i)
            self._wait_for_ssh()
        except BaseException:
            self.close()
            raise
        return self

    def command(self, host: int, argv) -> list[str]:
        # the host's own /root and /tmp are directories under ``files`` (they outlive one
        # command: `ray up` keeps its cluster state in /tmp/ray); this Python may live
        # under /root (pyenv), so it is carried through
        mine = self.files / f"h{host}"
        for d in ("root", "tmp"):
            (mine / d).mkdir(parents=True, exist_ok=True)
        carry, back = "", ""
        for k, path in enumerate(self._kept()):
            (mine / f"keep{k}").mkdir(exist_ok=True)
            carry += f"mount --bind {path} {mine}/keep{k} && "
            back += f"mkdir -p {path} && mount --bind {mine}/keep{k} {path} && "
        home = (f"{carry}mount --bind {mine}/root /root && mount --bind {mine}/tmp /tmp && "
                f"{back}mkdir -p /root/.ssh "
                f"/root/.ray && cp {self.key}.pub /root/.ssh/authorized_keys && cp "
                f"{self.token} /root/.ray/auth_token && chmod 700 /root/.ssh && "
                "printf '%s\\n' "
                f"'export PATH={Path(sys.executable).parent}:$PATH' "
                "'export PYTHONPATH=$HOME/distnn' 'export RAY_AUTH_MODE=token' > /root/.bashrc "
                "&& mount -t tmpfs -o size=1g tmpfs /dev/shm && exec \"$@\"")
        return ["ip", "netns", "exec", self.ns[host], "unshare", "--mount", "--pid", "--fork",
                "--mount-proc", "--propagation", "private", "sh", "-c", home, "sh",
                *map(str, argv)]

    def env(self) -> dict:
        return {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}

    def _kept(self) -> list[Path]:
        """What the hosts must still see under their private /root and /tmp: this
        Python (pyenv lives in /root), its environment and the repository (a CI clone
        may be in /tmp), and the token (copied before /tmp is replaced, but kept too)."""
        paths = [Path(sys.base_prefix), Path(sys.prefix), Path(__file__).resolve().parents[1],
                 self.tmp]
        paths = [p for p in dict.fromkeys(paths)
                 if p.is_relative_to("/root") or p.is_relative_to("/tmp")]
        return [p for p in paths if not any(p != q and p.is_relative_to(q) for q in paths)]

    def _start_sshd(self, i: int) -> None:
        argv = ["/usr/sbin/sshd", "-D", "-e", "-o", f"ListenAddress={self.ips[i]}",
                "-o", "PermitRootLogin=prohibit-password", "-o", "PasswordAuthentication=no",
                "-o", "UsePAM=no", "-o", "StrictModes=no", "-o", "PidFile=none"]
        log = open(self.tmp / f"node{i}.log", "ab")
        self.procs.append(subprocess.Popen(self.command(i, argv), env=self.env(), stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True))

    def ssh(self, host: int, remote: str) -> list[str]:
        return ["ssh", "-i", str(self.key), "-o", "StrictHostKeyChecking=no", "-o",
                "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o",
                "ConnectTimeout=5", f"root@{self.ips[host]}", remote]

    def _wait_for_ssh(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for i in range(self.client):
            while True:
                r = subprocess.run(self.command(self.client, self.ssh(i, "true")),
                                   env=self.env(), capture_output=True, text=True, timeout=30)
                if r.returncode == 0:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"sshd on {self.ips[i]} did not answer: {r.stderr}")
                time.sleep(0.5)

    def run(self, host: int, argv, timeout: float = 600.0, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(host, argv), env=self.env(), timeout=timeout,
                              capture_output=True, text=True, **kw)

    def close(self) -> None:
        super().close()
        shutil.rmtree(self.files, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hosts", type=int, default=2)
    p.add_argument("--cpus", type=int, default=1, help="Ray CPUs per host")
    p.add_argument("--rate", default=None, help="link rate each way, e.g. 1gbit (tbf)")
    p.add_argument("command", nargs=argparse.REMAINDER,
                   help="after --: the driver command, run on host 0")
    args = p.parse_args(argv)
    why = available()
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        p.error("give the driver command after --")
    try:
        with SimCluster(args.hosts, args.cpus, args.rate) as c:
            print(f"{args.hosts} simulated hosts {', '.join(c.ips)} (Ray at {c.address}); "
                  f"running: {' '.join(cmd)}", flush=True)
            r = subprocess.run(c.command(0, cmd), env=c.env())
            return r.returncode
    except TimeoutError as e:          # the cluster did not come up (a loaded machine)
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
