"""Helpers for the child processes that run llama.cpp and its tools.

Every child tunegguf starts goes through `run` or `popen` here, so it dies with tunegguf:
a parent killed with kill -9 leaves no verify worker or quantizer behind, re-parented to
PID 1 and holding gigabytes of memory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any, Callable

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_prctl: Callable[..., int] | None = None


def signal_name(number: int) -> str:
    """'SIGSEGV' for 11; a child killed by a signal reports it as a negative return code."""
    try:
        return signal.Signals(abs(number)).name
    except ValueError:
        return f"signal {abs(number)}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (a zombie counts; another user's process too)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that has the kernel SIGKILL the child when this process ends, however
    it ends (Linux: prctl(PR_SET_PDEATHSIG)); None where there is no such thing.

    The kernel ties it to the thread that starts the child: start children from a thread
    that outlives them (tunegguf starts them from the calling thread and waits for them).
    """
    global _prctl
    if not sys.platform.startswith("linux"):
        return None
    if _prctl is None:
        import ctypes

        _prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: nothing to load after fork
    prctl, parent = _prctl, os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the prctl took hold
            os._exit(1)

    return preexec


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    """`subprocess.run` for a child that dies with this process."""
    return subprocess.run(cmd, preexec_fn=die_with_parent(), **kwargs)


def popen(cmd: list[str], **kwargs: Any) -> subprocess.Popen:
    """`subprocess.Popen` for a child that dies with this process."""
    return subprocess.Popen(cmd, preexec_fn=die_with_parent(), **kwargs)
