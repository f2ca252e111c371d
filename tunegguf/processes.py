"""Helpers for the child processes that run llama.cpp and its tools."""

from __future__ import annotations

import os
import signal


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


def signal_name(number: int) -> str:
    """'SIGSEGV' for 11; a child killed by a signal reports it as a negative return code."""
    try:
        return signal.Signals(abs(number)).name
    except ValueError:
        return f"signal {abs(number)}"
