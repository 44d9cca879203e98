"""Process lifetimes: a helper that outlives its parent and ignores SIGTERM is still ended;
a command's SIGTERM ends what it started; a device's SuperNode that quits is restarted."""

import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from kizuna.federation.deployment import keep_running
from kizuna.processes import SIGTERM_EXIT_CODE, end_session, session_tree

# A leader that starts a helper ignoring SIGTERM, reports its pid, then exits: the helper
# is orphaned (reparented away from the leader) but stays in the leader's session.
ORPHANING_LEADER = textwrap.dedent(
    """
    import subprocess, sys
    helper = subprocess.Popen(
        [sys.executable, "-c",
         "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"]
    )
    print(helper.pid, flush=True)
    """
)


def test_an_orphan_ignoring_sigterm_in_the_session_is_killed() -> None:
    leader = subprocess.Popen(
        [sys.executable, "-c", ORPHANING_LEADER],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert leader.stdout is not None
    helper = psutil.Process(int(leader.stdout.readline()))
    leader.wait(timeout=30)
    assert helper.is_running() and helper.ppid() != leader.pid
    assert helper.pid in {p.pid for p in session_tree(leader.pid)}
    started = time.monotonic()
    killed = end_session(leader.pid, grace_s=1.0)
    assert [p.pid for p in killed] == [helper.pid]  # SIGTERM was ignored: SIGKILL after 1 s
    assert time.monotonic() - started < 10
    assert not helper.is_running() or helper.status() == psutil.STATUS_ZOMBIE


@pytest.mark.parametrize("busy", [False, True])
def test_sigterm_of_a_kizuna_command_ends_what_it_started(busy: bool) -> None:
    # A command whose child runs until stopped: SIGTERM must end both, with status 143.
    script = textwrap.dedent(
        """
        import subprocess, sys, time
        from kizuna import processes
        processes.become_subreaper()
        processes.raise_on_sigterm()
        try:
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                                     start_new_session=True)
            print(child.pid, flush=True)
            while True:
                %s
        finally:
            processes.end_descendants(grace_s=5.0)
        """
    ) % ("pass" if busy else "time.sleep(1)")
    command = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    assert command.stdout is not None
    child = psutil.Process(int(command.stdout.readline()))
    command.terminate()
    assert command.wait(timeout=30) == SIGTERM_EXIT_CODE
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE


def test_a_device_supernode_that_quits_is_started_again_then_given_up() -> None:
    restarts: list[tuple[int, float]] = []
    status = keep_running(
        [sys.executable, "-c", "import sys; sys.exit(3)"],
        env=os.environ.copy(),
        max_restarts=2,
        on_restart=lambda code, wait_s: restarts.append((code, wait_s)),
    )
    assert status == 3
    assert restarts == [(3, 1.0), (3, 2.0)]  # growing pauses, then it gives up


def test_python_helpers_that_end_with_their_parent_are_left_to_do_so() -> None:
    # multiprocessing's resource tracker ignores SIGTERM and exits when its parent does;
    # waiting out the grace period for it would add seconds to every command.
    script = textwrap.dedent(
        """
        import multiprocessing.resource_tracker as tracker, time
        from kizuna import processes
        tracker.ensure_running()
        started = time.monotonic()
        killed = processes.end_descendants(grace_s=5.0)
        print(len(killed), round(time.monotonic() - started, 1))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    killed, seconds = result.stdout.split()
    assert killed == "0" and float(seconds) < 2.5
