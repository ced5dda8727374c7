"""The watchdog of a local Ray that distnn started: when the driver process ends in any
way, SIGKILL included, the Ray processes it started are stopped and the shared-memory
files of its dead workers removed.  Without it Ray's agents keep their ports open for a
minute or two after a killed driver, and a group file stays in /dev/shm until the next run.

Run as ``python reaper.py DRIVER_PID PID:START ...`` in a session of its own (a Ctrl-C
at the terminal does not reach it); a normal shutdown terminates it.  Standard library
only until the driver is gone, so it costs no memory worth naming while it waits.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (field 22 of /proc/PID/stat): a PID with
    another start time is another process that reused the number."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def descendants(pid: int) -> list[int]:
    """``pid``'s children, their children, ... now."""
    out = []
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for k in map(int, kids):
        out += [k, *descendants(k)]
    return out


def watch(driver: int) -> subprocess.Popen | None:
    """Start the watchdog for the Ray processes now under ``driver`` (call it right after
    ``ray.init`` started them)."""
    targets = [f"{p}:{start_time(p)}" for p in descendants(driver) if start_time(p)]
    if not targets:
        return None
    return subprocess.Popen([sys.executable, __file__, str(driver), *targets],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def _wait_for_exit(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except OSError:          # already gone
        return
    select.select([fd], [], [])
    os.close(fd)


def main(argv: list[str]) -> None:
    driver = int(argv[0])
    targets = [(int(p), s) for p, s in (t.split(":") for t in argv[1:])]
    _wait_for_exit(driver)
    targets += [(d, start_time(d)) for p, s in targets if start_time(p) == s
                for d in descendants(p)]       # the workers the raylet started since
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [p for p, s in targets if start_time(p) == s]
        for p in alive:
            try:
                os.kill(p, sig)
            except OSError:
                pass
        if alive:
            time.sleep(1.0)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from distnn.parallel.comm.shm import sweep_stale
    for delay in (1, 2, 4, 8, 15):   # the workers go when their raylet does
        time.sleep(delay)
        sweep_stale()


if __name__ == "__main__":
    main(sys.argv[1:])
