"""Clean-up of the process sessions that tests start (Ray clusters in subprocesses)."""

from __future__ import annotations

import contextlib
import os

import psutil


def session_processes(sid: int) -> list[psutil.Process]:
    """Every live process of session ``sid``.

    Ray gives its workers process groups of their own, so a process group is not enough;
    they all stay in the session of the cluster that started them.
    """
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if (
                process.pid != os.getpid()
                and os.getsid(process.pid) == sid
                and process.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(process)
    return found


def kill_session(sid: int) -> int:
    """Terminate, then kill, every process left in the session; return how many were left."""
    processes = session_processes(sid)
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=5)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=5)
    left = session_processes(sid)
    assert not left, f"processes of a test cluster survived SIGKILL: {[p.pid for p in left]}"
    return len(processes)
