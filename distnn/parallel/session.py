"""The Ray session of a run: joining a cluster (its address and token checked first, so
a mistake is one line, not Ray's retries) or starting a local Ray bound to 127.0.0.1 with
a watchdog, stopping it, and waiting for a cluster that is still starting."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import time

from ..config import TrainConfig

log = logging.getLogger(__name__)


def check_address(address: str) -> None:
    """Fail fast, with the address and what to do in the message, if HOST:PORT does not
    answer as a Ray cluster's GCS, or refuses this machine's token (Ray's token
    authentication) -- instead of Ray's 20 s of retries and a bare "Failed to connect"."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--address must be 'auto' or HOST:PORT, got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as e:
        raise ConnectionError(f"cannot reach a Ray cluster at {address} ({e}); start one "
                              "with 'ray start --head' or check the address") from None
    _check_token(address)


TOKEN_HINT = ("on the head run `ray get-auth-token`, then here `export RAY_AUTH_MODE=token "
              "RAY_AUTH_TOKEN=<that token>` (or copy the head's ~/.ray/auth_token to this "
              "machine's ~/.ray/auth_token)")


def _check_token(address: str) -> None:
    """Ask the GCS for its cluster ID with this machine's token, if it has one."""
    import grpc
    from ray._raylet import AuthenticationTokenLoader
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
    loader = AuthenticationTokenLoader.instance()
    token = loader.get_raw_token(ignore_auth_mode=True) \
        if loader.has_token(ignore_auth_mode=True) else None
    with grpc.insecure_channel(address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=10,
                              metadata=[("authorization", f"Bearer {token}")] if token else None)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAUTHENTICATED:
                raise ConnectionError(
                    f"{address} does not answer as a Ray cluster ({e.code().name}: "
                    f"{e.details()}); --address takes the head's GCS port (6379 unless "
                    "`ray start --head --port` said otherwise), not the dashboard's") from None
            what = "rejected this machine's token" if token else "requires a token (token " \
                "authentication, Ray's default), and this machine has none"
            raise ConnectionError(f"the Ray cluster at {address} {what}: {TOKEN_HINT}") from None
    if token:
        _token_mode()              # ray.init then sends it


def _token_mode() -> None:
    """RAY_AUTH_MODE=token for this process and those it starts, unless set otherwise."""
    if os.environ.get("RAY_AUTH_MODE") is None:
        from ray._raylet import Config
        os.environ["RAY_AUTH_MODE"] = "token"
        Config.initialize("")      # Ray caches the mode: re-read it (as ray.init does)


def start_ray(address: str | None, workers: int, may_wait: bool = False,
              worker_output: bool = True, threads: int = 1) -> bool:
    """Join ``address`` (auto or HOST:PORT) or start a local Ray bound to 127.0.0.1.
    Returns True if this call started Ray (and so should shut it down).  Too few CPUs
    is an error at once, unless ``may_wait`` and the cluster was joined (it may still
    be starting: see ``workers_to_start``).  ``worker_output``: show what Ray's worker
    processes print (a search's lanes say nothing worth it: their trials are recorded).
    Each worker takes ``threads`` CPUs."""
    import ray
    if ray.is_initialized():
        started = False
    elif address:
        if address != "auto":
            check_address(address)
        local = address.rpartition(":")[0] in ("127.0.0.1", "localhost")
        with _loopback() if local else contextlib.nullcontext():
            ray.init(address=address, logging_level=logging.WARNING,
                     log_to_driver=worker_output)
        started = False
    else:
        _start_local(worker_output)
        started = True
    cpus = ray.cluster_resources().get("CPU", 0)
    if workers * threads > cpus and (started or not may_wait):
        if started:
            stop_ray()
        raise ValueError(f"{_asked(workers, threads)} needs {workers * threads} CPUs but the "
                         f"Ray cluster has {cpus:g}; use {_fitting(cpus, threads)} or add "
                         "nodes")
    return started


def _asked(workers: int, threads: int) -> str:
    return f"--workers {workers}" + (f" x --threads {threads}" if threads > 1 else "")


def _fitting(cpus: float, threads: int) -> str:
    """The flags of what fits in ``cpus`` CPUs: as many workers of --threads as fit, or
    one worker of as many threads as there are CPUs."""
    fit = int(cpus) // threads
    if not fit:
        return f"--workers 1 --threads {max(int(cpus), 1)}"
    return f"--workers {fit}" + (f" --threads {threads}" if threads > 1 else "")


_reaper = None


@contextlib.contextmanager
def _loopback():
    """Ray as on a machine whose only interface is loopback, for the duration: it
    otherwise resolves 127.0.0.1 to the host's own address, binds its servers to all
    interfaces, and cannot join a head that listens on 127.0.0.1.  (The switch is Ray's
    "clusters disabled" setting, on by default on macOS; it is set in the environment
    the processes Ray starts inherit, too.)"""
    from ray._private import ray_constants
    name = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    saved = ray_constants.ENABLE_RAY_CLUSTER, os.environ.get(name)
    ray_constants.ENABLE_RAY_CLUSTER = False
    os.environ[name] = "0"
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved[0]
        if saved[1] is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved[1]


def _start_local(worker_output: bool = True) -> None:
    """A local Ray whose every process listens on 127.0.0.1 only, ignores the terminal's
    Ctrl-C (the driver shuts it down in order), and is stopped by a watchdog if the
    driver is killed.  SIGINT is blocked while Ray's processes are spawned: they inherit
    the blocked mask across ``exec``, and a Ctrl-C pressed meanwhile reaches the driver
    once it is unblocked."""
    import ray
    from . import reaper
    global _reaper
    _token_mode()      # Ray's default, said explicitly (Ray warns when it is implied)
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        with _loopback():
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                     _node_ip_address="127.0.0.1", logging_level=logging.WARNING,
                     log_to_driver=worker_output)
        _reaper = reaper.watch(os.getpid())
    except BaseException:
        ray.shutdown()
        raise
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)   # a Ctrl-C pressed meanwhile


#: the watch of the node started here (``watch_node``); set to None to end it
_node_watch = None


def watch_node(on_lost=None, poll: float = 0.1) -> None:
    """For a Ray that ``start_ray`` started here: a daemon thread that, once the node's
    raylet has died (killed, out of memory; its agent's death takes it down too), says
    so on stderr with what ``on_lost()`` returns (e.g. how to resume), and ends this
    process with exit status 4.  Ray's driver would otherwise exit on its own a moment
    later with nothing but Ray's log lines (its workers already gone with their
    raylet)."""
    import threading
    import ray
    global _node_watch
    node = getattr(getattr(ray, "_private", None), "worker", None)
    node = getattr(node, "_global_node", None)
    procs = getattr(node, "all_processes", {}).get("raylet") or []
    pid = getattr(getattr(procs[0], "process", None), "pid", None) if procs else None
    if pid is None:
        return
    token = _node_watch = object()

    def watch():
        names = {pid: f"raylet (pid {pid})"}
        waits = _Exits()
        waits.add(pid)
        rescan = 0.0
        while _node_watch is token:
            if time.monotonic() >= rescan:    # the raylet's agents, once started
                for a, name in _agents(pid).items():
                    if a not in names:
                        names[a] = f"{name} (pid {a})"
                        waits.add(a)
                rescan = time.monotonic() + (0.2 if len(names) < 3 else 5.0)
            # woken the moment one exits (a pidfd), or polled where there are none;
            # an agent's death is seen before the raylet's, and Ray's driver quits
            # on its own soon after the raylet
            woken = waits.wait(poll if not waits.fds or len(names) < 3 else 1.0)
            dead = [p for p in (woken and names) if not _alive(p)]
            if _node_watch is token and dead:
                # one write, then the exit at once: Ray's driver quits by itself (exit 1)
                # a moment after its raylet, whatever Python is doing
                # (all that are gone by now, agents first: the raylet does not
                # outlive an agent, and stops the others)
                gone = [names[p] for p in sorted(set(dead), key=lambda p: p == pid)]
                what = gone[0] if len(gone) == 1 else \
                    ", ".join(gone[:-1]) + " and " + gone[-1]
                text = (f"error: this machine's Ray node stopped: its {what} died "
                        "(killed, or out of memory; the raylet does not outlive its "
                        "agents), and with it every worker; the run cannot go on\n")
                try:
                    more = on_lost() if on_lost is not None else None
                except Exception:      # noqa: BLE001 - the message above still goes out
                    more = None
                if more:
                    text += more.rstrip("\n") + "\n"
                sys.stderr.flush()
                os.write(2, text.encode(errors="replace"))
                os._exit(4)
        waits.close()
    threading.Thread(target=watch, name="distnn-node-watch", daemon=True).start()


class _Exits:
    """Processes to be told of the moment one exits: a pidfd each where Linux offers
    them (``wait`` returns at once), else polled."""

    def __init__(self):
        import select
        self.pids, self.fds = [], {}
        self.poller = select.poll() if hasattr(os, "pidfd_open") else None

    def add(self, pid: int) -> None:
        self.pids.append(pid)
        if self.poller is not None:
            try:
                fd = os.pidfd_open(pid)
            except OSError:       # gone already (then seen dead at once), or no pidfds
                return
            self.fds[fd] = pid
            self.poller.register(fd)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = {}

    def wait(self, timeout: float) -> list[int]:
        """The pids that may have exited within ``timeout`` seconds (check them)."""
        if self.fds:
            ready = self.poller.poll(timeout * 1000)
            return [self.fds[fd] for fd, _ in ready] or \
                [p for p in self.pids if p not in self.fds.values()]
        time.sleep(timeout)
        return list(self.pids)


def _agents(raylet: int) -> dict[int, str]:
    """The raylet's agent processes ({pid: name}): Ray stops the node when one dies.
    Known by their process title, or before they set it by their script."""
    kids = []
    try:
        for task in os.listdir(f"/proc/{raylet}/task"):      # any thread may spawn
            with open(f"/proc/{raylet}/task/{task}/children") as f:
                kids += f.read().split()
    except OSError:
        return {}
    out = {}
    for k in map(int, kids):
        try:
            with open(f"/proc/{k}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ")
        except OSError:
            continue
        for marks, name in (((b"ray::DashboardAgent", b"dashboard/agent.py"),
                             "DashboardAgent"),
                            ((b"ray::RuntimeEnvAgent", b"runtime_env/agent"),
                             "RuntimeEnvAgent")):
            if any(m in cmd for m in marks):
                out[k] = name
    return out


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except FileNotFoundError:
        return False
    except OSError:            # no /proc here
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True


def stop_ray() -> None:
    """Shut down the Ray that ``start_ray`` started, and its watchdogs."""
    import ray
    global _reaper, _node_watch
    _node_watch = None
    ray.shutdown()
    if _reaper is not None:
        _reaper.terminate()
        _reaper.wait()
        _reaper = None


def workers_to_start(cfg: TrainConfig) -> int:
    """How many workers to start with on a joined cluster: all of --workers once it has
    that many CPUs or, with --min-workers K, as soon as it has K (more join later, at
    epoch boundaries).  A cluster still starting (an autoscaler adding nodes) is waited
    for up to --replace-timeout, with a line every 10 s saying what is there."""
    import ray
    least, threads = cfg.min_workers or cfg.workers, cfg.threads or 1
    deadline, said = time.monotonic() + cfg.replace_timeout, 0.0
    while True:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        if cpus // threads >= least:
            return min(cpus // threads, cfg.workers)
        now = time.monotonic()
        if now > deadline:
            raise ValueError(f"{_asked(cfg.workers, threads)} needs {least * threads} CPUs "
                             f"to start but the Ray cluster has {cpus} after "
                             f"{cfg.replace_timeout:g} s (--replace-timeout); use "
                             f"{_fitting(cpus, threads)}, --min-workers K to start with fewer, "
                             "or add nodes")
        if now - said >= 10:
            log.info("waiting for CPUs: the cluster has %d, %d needed to start (%d wanted)",
                     cpus, least * threads, cfg.workers * threads)
            said = now
        time.sleep(1.0)
