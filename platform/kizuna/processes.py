"""Nothing a ``kizuna`` command starts outlives it.

Children are started in sessions of their own, so a terminal's Ctrl-C reaches only the
command, which then ends them in order: its children first (each gets time to stop its
own helpers: a SuperLink its ServerApp, Ray Serve its replicas), then whatever is left.
The command is a child subreaper (Linux ``PR_SET_CHILD_SUBREAPER``): a helper whose
parent exits first (Flower's SuperExec starts a ``flwr-serverapp``; Ray's raylet starts
workers) is reparented to the command instead of to init, so it stays a descendant the
command can find and end. SIGTERM becomes an exception in the main thread, so every
``finally`` and context manager runs just as on Ctrl-C.

Only SIGKILL of the command itself escapes this (nothing can catch it): then its
children live on in their own sessions, which the rollout backend relies on to adopt a
retrain job after a crash.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Iterable
from types import FrameType

import psutil

PR_SET_CHILD_SUBREAPER = 36
#: What a shell reports for a command ended by SIGTERM.
SIGTERM_EXIT_CODE = 128 + signal.SIGTERM


class Terminated(SystemExit):
    """The command received SIGTERM; raised in its main thread."""

    def __init__(self) -> None:
        super().__init__(SIGTERM_EXIT_CODE)


def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux); False where the platform has no such thing."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def raise_on_sigterm() -> None:
    """Turn SIGTERM into :class:`Terminated` in the main thread (no-op elsewhere)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def session_members(session_id: int) -> list[psutil.Process]:
    """Every live process of session ``session_id``, wherever it was reparented."""
    members = []
    for pid in psutil.pids():
        try:
            if pid != os.getpid() and os.getsid(pid) == session_id:
                members.append(psutil.Process(pid))
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            continue
    return members


def _send(processes: Iterable[psutil.Process], signum: int) -> None:
    for process in processes:
        try:
            process.send_signal(signum)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


def end(processes: Iterable[psutil.Process], *, grace_s: float) -> list[psutil.Process]:
    """SIGTERM ``processes``, SIGKILL those alive after ``grace_s``; returns the killed."""
    targets = list(processes)
    _send(targets, signal.SIGTERM)
    _, alive = psutil.wait_procs(targets, timeout=grace_s)
    _send(alive, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=5.0)
    return alive


def session_tree(leader_pid: int) -> list[psutil.Process]:
    """A child started with ``start_new_session=True``, its descendants, and any process
    still in its session (helpers that outlived their parent)."""
    found: dict[int, psutil.Process] = {p.pid: p for p in session_members(leader_pid)}
    try:
        leader = psutil.Process(leader_pid)
        found[leader_pid] = leader
        found.update({p.pid: p for p in leader.children(recursive=True)})
    except psutil.NoSuchProcess:
        pass
    return list(found.values())


def end_session(leader_pid: int, *, grace_s: float = 10.0) -> list[psutil.Process]:
    """:func:`end` the :func:`session_tree` of ``leader_pid``; returns the killed."""
    return end(session_tree(leader_pid), grace_s=grace_s)


def kill_session(leader_pid: int) -> None:
    """SIGKILL the :func:`session_tree` of ``leader_pid`` at once, with no warning."""
    targets = session_tree(leader_pid)
    _send(targets, signal.SIGKILL)
    psutil.wait_procs(targets, timeout=5.0)


#: Python's own helpers that ignore SIGTERM, end by themselves when the process that
#: started them exits (their pipe closes) and clean up as they go (shared memory,
#: semaphores): they are left to do so, since killing them would leak what they track.
SELF_ENDING_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def _self_ending(process: psutil.Process) -> bool:
    try:
        command = " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return any(helper in command for helper in SELF_ENDING_HELPERS)


def end_descendants(*, grace_s: float = 10.0) -> list[psutil.Process]:
    """End every descendant of this process: children first, so each can stop its own
    helpers, then whatever is left; returns those that had to be SIGKILLed."""
    me = psutil.Process()

    def ours(processes: list[psutil.Process]) -> list[psutil.Process]:
        return [p for p in processes if not _self_ending(p)]

    killed = end(ours(me.children()), grace_s=grace_s)
    killed += end(ours(me.children(recursive=True)), grace_s=grace_s / 2)
    return killed
