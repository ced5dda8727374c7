"""The local Ray a 2-worker run starts: its processes listen on loopback only, Ctrl-C
ends the run with the resume command and nothing left behind, and a SIGKILLed driver's
Ray processes and shared-memory file are gone within seconds (issue #19)."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distnn.io import checkpoint as ckpt
from distnn.parallel.reaper import descendants
from tests.runs import train_args

pytest.importorskip("ray")


def _start(blob_dir, ck):
    args = train_args(blob_dir, ck, epochs=5000, extra=("--workers", "2"))
    # SIGINT as at a terminal: a shell's background job (a CI runner) inherits it ignored
    return subprocess.Popen([sys.executable, "-m", "distnn.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_checkpoint(proc, ck, timeout=180):
    deadline = time.monotonic() + timeout
    while not (ck / "latest").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no checkpoint: " + proc.communicate()[1][-2000:])
        time.sleep(0.1)


def _ours(pids):
    """The run's processes still alive, but the watchdog (it sweeps for ~30 s more)."""
    alive = []
    for p in pids:
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes()
        except OSError:
            continue
        if b"reaper.py" not in cmd:
            alive.append(p)
    return alive


def _shm_files(pids):
    return [f for f in os.listdir("/dev/shm") if f.startswith("distnn-")
            and f.split("-")[1] in {str(p) for p in pids}]


def _mapped_shm(pids):
    """The group files the workers have mapped: unlinked from /dev/shm once every member
    mapped its file, so only the mappings show them (as deleted)."""
    out = set()
    for p in pids:
        try:
            maps = open(f"/proc/{p}/maps").read()
        except OSError:
            continue
        out.update(line.split()[-2] for line in maps.splitlines()
                   if "/dev/shm/distnn-" in line and line.endswith("(deleted)"))
    return out


def _listening(pids):
    """(address, process) of every listening TCP socket of ``pids``."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    return [(line.split()[3], line.split()[-1]) for line in out.splitlines()
            if any(f"pid={p}," in line for p in pids)]


def _wait_gone(pids, seconds):
    deadline = time.monotonic() + seconds
    while (_ours(pids) or _shm_files(pids)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return _ours(pids), _shm_files(pids)


@pytest.mark.skipif(not shutil.which("ss"), reason="needs ss (iproute2)")
def test_loopback_only_and_ctrl_c_stops_with_the_resume_command(blob_dir, tmp_path):
    ck = tmp_path / "ck"
    proc = _start(blob_dir, ck)
    _wait_for_checkpoint(proc, ck)
    pids = [proc.pid, *descendants(proc.pid)]
    socks = _listening(pids)
    os.killpg(proc.pid, signal.SIGINT)          # Ctrl-C at the terminal: the whole group
    out, err = proc.communicate(timeout=60)
    assert len(socks) >= 5, socks              # gcs, raylet, agents, workers, driver
    assert all(a.rsplit(":", 1)[0] in ("127.0.0.1", "[::ffff:127.0.0.1]", "[::1]")
               for a, _ in socks), socks
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    last = ckpt.load(ck).meta["epoch"]
    assert err.rstrip().endswith(f"of 0..4999; the last checkpoint is {ck}/epoch-{last:04d}; "
                                 f"resume with: distnn train --resume {ck}"), err[-500:]
    assert _wait_gone(pids, 5) == ([], [])


def test_a_killed_drivers_ray_processes_and_shm_file_go_with_it(blob_dir, tmp_path):
    ck = tmp_path / "ck"
    proc = _start(blob_dir, ck)
    _wait_for_checkpoint(proc, ck)
    pids = descendants(proc.pid)
    # the group file of this run's workers: mapped, and already gone from /dev/shm
    assert _mapped_shm(pids) and not _shm_files(pids)
    proc.send_signal(signal.SIGKILL)             # the driver alone
    proc.communicate()
    t0 = time.monotonic()
    assert _wait_gone(pids, 20) == ([], [])
    assert time.monotonic() - t0 < 10            # was 30-60 s, and the file stayed


def _child(pid, comm_prefix):
    """The descendant of ``pid`` whose process name starts with ``comm_prefix``."""
    for p in descendants(pid):
        try:
            if Path(f"/proc/{p}/comm").read_text().startswith(comm_prefix):
                return p
        except OSError:
            continue
    pytest.fail(f"no {comm_prefix} process under {pid}")


@pytest.mark.parametrize("victim,named", [("raylet", "raylet"),
                                          ("ray::DashboardA", "DashboardAgent")])
def test_a_dead_raylet_or_agent_ends_the_run_with_a_message_and_the_resume(
        blob_dir, tmp_path, victim, named):
    """Ray's driver exits on its own once its node is gone, with Ray's log lines only
    (exit 1): distnn says what died and how to resume, exit 4, and the resume works."""
    ck = tmp_path / "ck"
    proc = _start(blob_dir, ck)
    _wait_for_checkpoint(proc, ck)
    pid = _child(proc.pid, victim)
    pids = descendants(proc.pid)
    os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 4, err[-3000:]
    assert "error: this machine's Ray node stopped: its " in err
    assert f"{named} (pid {pid})" in err.split("error: this machine's")[1].split("\n")[0]
    assert "Traceback" not in err
    last = ckpt.load(ck).meta["epoch"]
    assert err.rstrip().endswith(f"the last checkpoint is {ck}/epoch-{last:04d}; resume "
                                 f"with: distnn train --resume {ck}"), err[-500:]
    assert _wait_gone(pids, 20) == ([], [])


@pytest.mark.ray
def test_an_epoch_stopped_under_its_workers_leaves_no_unhandled_ray_error(ray_session,
                                                                          blob_dir, caplog):
    """Ctrl-C while an epoch runs: the driver closes the workers, and the first to close
    aborts the group under the other, whose epoch then ends in CollectiveAborted.  That
    answer is read and dropped; left unread, Ray printed it as an "Unhandled error"
    traceback (about one Ctrl-C in eight with 2 workers).  Made certain here: the
    progress report closes worker 0, waits for worker 1's epoch to fail, then
    interrupts."""
    import gc
    import logging
    from distnn.config import TrainConfig
    from distnn.parallel.driver import trainer_for
    from distnn.train.data import load_splits, prepare
    cfg = TrainConfig(dataset="idx", data_dir=str(blob_dir), layers=(64, 1024, 1024, 4),
                      epochs=1, batch_size=1, workers=2)     # an epoch of seconds
    trainer = trainer_for(cfg, prepare(cfg, load_splits(cfg)))
    pool = trainer.pool

    def interrupt(done, total):
        ray_session.get(pool.workers[0].close.remote())
        time.sleep(1.0)
        raise KeyboardInterrupt

    caplog.set_level(logging.ERROR)
    try:
        with pytest.raises(KeyboardInterrupt):
            pool.run_epoch(0, trainer.schedule.state_dict(), interrupt)
    finally:
        trainer.close()
    gc.collect()
    time.sleep(2.0)                        # Ray reports an unread error when it is freed
    said = caplog.text + "".join(str(r.msg) for r in caplog.records)
    assert "Unhandled error" not in said, said[-2000:]
